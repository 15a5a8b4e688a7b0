"""The `asd` command line: parse, load config, call a service, print the result."""

from __future__ import annotations

import typer

from asdcli import __version__
from asdcli.cli import evaluate, features, freeze_debug, info, meta_train, plot, score, synth, train_branch, train_fusion

app = typer.Typer(
    name="asd",
    help="Anomalous sound detection for machines, following DCASE Task 2 conventions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"asd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """asd: train on normal machine sounds, flag the recordings that sound wrong."""


app.command("synth")(synth.synth)
app.command("features")(features.features)
app.command("train-branch")(train_branch.train_branch)
app.command("train-fusion")(train_fusion.train_fusion)
app.command("meta-train")(meta_train.meta_train)
app.command("evaluate")(evaluate.evaluate)
app.command("freeze-debug")(freeze_debug.freeze_debug)
app.command("plot")(plot.plot)
app.command("score")(score.score)
app.command("info")(info.info)


def main() -> None:
    """Console-script entry point."""
    app()
