"""Services: one plain-function module per job. No typer, no printing: progress via callbacks."""
