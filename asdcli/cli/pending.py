"""Design-card commands not built yet: they say so and exit with status 2 (no fake success)."""

from __future__ import annotations

import typer

from asdcli.cli.common import not_built

# command name -> (one-line help, issue that builds it)
PENDING = {
    "freeze-debug": ("Train with a branch frozen; log losses and gradient norms.", 5),
    "plot": ("Plot loss curves, gradient norms, ROC curves and score histograms.", 5),
}


def _make(name: str, issue: int):
    def command(ctx: typer.Context) -> None:
        not_built(name, issue)

    return command


def register(app: typer.Typer) -> None:
    """Add a command per pending name that exits non-zero with a notice."""
    for name, (help_text, issue) in PENDING.items():
        app.command(name, help=f"{help_text} [not built yet]", context_settings={
            "allow_extra_args": True, "ignore_unknown_options": True})(_make(name, issue))
