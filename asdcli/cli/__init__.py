"""The `asd` command line: parse, load config, call a service, print the result.

`asd` loads a command's module (and with it torch and the services) only when that command runs
or shows its own help, so that `asd --help` and `asd --version` answer at once. All commands as
one Typer application, for tests and library use: ``from asdcli.cli import app``.
"""

from __future__ import annotations

import importlib
import sys

import typer

from asdcli import __version__

# name -> (module and function in asdcli.cli, one line for `asd --help`)
COMMANDS = {
    "synth": ("synth", "Generate the seeded synthetic dataset (DCASE 2021+ layout)."),
    "train": ("train", "Train every stage of a run in order; a second call continues where the first stopped."),
    "features": ("features", "Compute and cache the log-mel features of every clip."),
    "train-branch": ("train_branch", "Train one branch (b1..b5) on the normal training clips."),
    "train-fusion": ("train_fusion", "Fit the attention fusion head on normal clips vs pseudo-anomalies."),
    "learn-prior": ("learn_prior", "Learn the fusion's prior over branches from labelled runs of other machines."),
    "meta-train": ("meta_train", "Meta-train the final classifier with MAML over the machine sections."),
    "score": ("score", "Anomaly score (and decision) per clip; DCASE files with --out-dir."),
    "explain": ("explain", "When, where and what in a clip drove its score: spans, bands, branches, a PNG per clip."),
    "watch": ("watch", "Score each recording dropped into a folder once, as it arrives; log, alert, resume."),
    "evaluate": ("evaluate", "The official DCASE evaluator's figures from score and decision files."),
    "freeze-debug": ("freeze_debug", "Train with some parts frozen; log every part's loss and gradient norm."),
    "plot": ("plot", "Plot training losses, freeze-debug logs or ROC curves and score histograms as PNG."),
    "info": ("info", "A run's sections and stages: finished, unfinished, stale or missing, with their settings."),
}
HELP = "Anomalous sound detection for machines, following DCASE Task 2 conventions."


def _function(name: str):
    module = importlib.import_module(f"asdcli.cli.{COMMANDS[name][0]}")
    return getattr(module, COMMANDS[name][0])


def build_app(names: list[str] | None = None) -> typer.Typer:
    """The commands ``names`` (default: all) as one Typer application; imports just those."""
    full = typer.Typer(name="asd", help=HELP, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False)

    def version(value: bool) -> None:
        if value:
            typer.echo(f"asd {__version__}")
            raise typer.Exit()

    @full.callback()
    def _root(_: bool = typer.Option(False, "--version", callback=version, is_eager=True, help="Show the version.")) -> None:
        """asd: train on normal machine sounds, flag the recordings that sound wrong."""

    for name in names or COMMANDS:
        full.command(name)(_function(name))
    return full


def __getattr__(name: str):
    if name == "app":
        globals()["app"] = built = build_app()
        return built
    raise AttributeError(name)


def usage() -> str:
    """`asd --help`: the commands, from :data:`COMMANDS` (nothing imported)."""
    width = max(len(n) for n in COMMANDS) + 2
    lines = ["Usage: asd [--version] [--help] COMMAND [ARGS]...", "", f"  {HELP}", "",
             "Commands (asd COMMAND --help for each):"]
    lines += [f"  {name:<{width}}{text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


PLUGIN_GROUP = "asd.branches"


def load_branch_plugins() -> None:
    """Register the branches other installed packages offer: entry points of group
    ``asd.branches``, each a :class:`~asdcli.models.base.Branch` subclass (see the README's code
    layout). Nothing is imported where no package offers one. A plugin that does not load is one
    line naming it (exit 1)."""
    from importlib.metadata import entry_points

    found = entry_points(group=PLUGIN_GROUP)
    if not found:
        return
    from asdcli.models.registry import BRANCHES, register_branch

    for point in found:
        try:
            cls = point.load()
            if getattr(cls, "name", None) not in BRANCHES or BRANCHES[cls.name] is not cls:
                register_branch(cls)
        except Exception as error:  # a plugin's own import error is a line, not a traceback
            print(f"error: branch plugin '{point.name}' ({point.value}) does not load: {error}", file=sys.stderr)
            sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: only the named command is loaded."""
    args = sys.argv[1:] if argv is None else argv
    name = next((a for a in args if not a.startswith("-")), None)
    if name in COMMANDS:
        if name in ("score", "explain"):  # measured there (bench_score.py); training's memory was not
            from asdcli.memory import keep_freed_memory

            keep_freed_memory()
        load_branch_plugins()
        build_app([name])(args=args, prog_name="asd")
    elif "--version" in args:
        print(f"asd {__version__}")
    elif name is None:
        print(usage())
        sys.exit(0 if set(args) <= {"--help", "-h"} and args else 2)
    else:
        print(f"error: no such command '{name}' (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        sys.exit(2)
