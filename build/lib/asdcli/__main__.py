"""`python -m asdcli` runs the `asd` command line (used with torchrun)."""

from asdcli.cli import main

main()
