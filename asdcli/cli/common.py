"""Options, console and error handling shared by every command (defined once)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from asdcli.errors import AsdError, os_error_message

if TYPE_CHECKING:
    import torch

    from asdcli.config import AsdConfig
    from asdcli.services.store.runs import Run

# A command's module imports torch, the models and the services inside its function, not at the top,
# so that `asd COMMAND --help` answers at once (Typer reads only the signature).

# Results go to stdout; progress, notices and errors to stderr, so `asd score > x.csv` stays clean.
# Piped to a file, rich would cut tables at 80 columns: give them room instead.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def write_out(text: str) -> None:
    """Results text on stdout as it is: a clip name that is not valid UTF-8 is written as the bytes
    its file has (so that it still names the file), whatever the terminal's encoding."""
    stream = out.file
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        return
    stream.flush()
    buffer.write(text.encode(getattr(stream, "encoding", None) or "utf-8", "surrogateescape"))
    buffer.flush()
# Messages hold paths, config values and reasons: never markup (`asdcli[meta]` is not a style).
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200, markup=False, highlight=False)


def say(label: str, style: str, text: str) -> None:
    """One line on stderr: ``label`` styled, then ``text`` exactly as it is."""
    err.print(Text.assemble((label, style), text))


def show_notice(text: str) -> None:
    """A notice on stderr."""
    say("notice: ", "yellow", text)


ConfigOption = typer.Option(None, "--config", "-c", help="Preset name (default, tiny, large) or a YAML file.")
SeedOption = typer.Option(None, "--seed", help="Random seed (overrides the config's seed).")
WorkersOption = typer.Option(None, "--workers", "-j", min=1, help="Threads decoding audio (overrides loader.workers).")
MachineOption = typer.Option(None, "--machine", help="The machine type of every clip, for files whose path does not "
                             "say it (default: the folder above test/ or the clips).")
SectionOption = typer.Option(None, "--section", min=0, max=99, help="The section (2020: machine ID) of every clip, for "
                             "files whose names do not say it.")
DataOption = typer.Option(..., "--data", "-d", help="Dataset root with <machine>/train/*.wav (or one machine folder).")


def run_option(help: str, default: Optional[Path] = Path("checkpoints/run")):
    """``--run`` (also ``--run-dir``: under torchrun, which takes ``--run`` for its own ``--run-path``, and ``-r``)."""
    return typer.Option(default, "--run", "--run-dir", "-r", help=help)


RunOption = run_option("Run folder for checkpoints and logs (under torchrun write --run-dir: torchrun takes --run for "
                       "its own --run-path).")
CacheOption = typer.Option(
    None, "--cache-dir", help="Feature cache folder (default: $ASD_CACHE_DIR or ~/.cache/asd/features)."
)


def run_config_option(stage: str):
    """``--config`` of a command that continues a run: by default the run's own config."""
    return typer.Option(None, "--config", "-c", help=f"Preset or YAML file for the {stage} settings "
                        "(default: the config the run's branches were trained with).")


OverridesArgument = typer.Argument(None, metavar="[KEY=VALUE]...", show_default=False,
                                   help="Config overrides by dotted name, validated as the config file is, e.g. "
                                        "train.lr=0.01 branches.b1.finetune_layers=-1 (branches by id or name).")


def resolve_run_config(run: Path, config: Optional[str], overrides: Optional[list[str]] = None,
                       **options: object) -> tuple[Run, AsdConfig]:
    """The run, opened once for the command and handed to its services, and its config (or
    ``config``, checked against the run's features) with the ``key=value`` overrides and the
    command's own options."""
    from asdcli.config import load_config, parse_overrides
    from asdcli.services.store.runs import open_run, run_config

    opened = open_run(run)
    base = run_config(opened, load_config(config) if config else None)
    return opened, run_config(opened, base.with_settings(parse_overrides(overrides)).with_overrides(**options))


def gpu_or_cpu(gpu: Optional[int], device: Optional[str] = None) -> torch.device:
    """``--gpu N`` -> CUDA device N (an error without CUDA); ``--device`` cpu, cuda, cuda:N or
    auto; neither -> auto: CUDA where there is a device (saying so once), else the CPU."""
    import torch

    from asdcli.services.inputs.device import resolve_device

    chosen = resolve_device(gpu, device)
    if gpu is None and device in (None, "auto") and chosen.type == "cuda" and not _SAID["device"]:
        _SAID["device"] = True
        err.print(f"using {torch.cuda.get_device_name(chosen)} (CUDA); --device cpu stays on the CPU", highlight=False)
    return chosen


_SAID = {"device": False}
DeviceOption = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto (default: auto, CUDA where present).")
GpuOption = typer.Option(None, "--gpu", min=0, help="CUDA device N (an error where there is none); same as --device cuda:N.")


def resolve_config(config: Optional[str], overrides: Optional[list[str]] = None, **options: object) -> AsdConfig:
    """Load the preset or file and apply the ``key=value`` overrides, then the command's own options."""
    from asdcli.config import load_config, parse_overrides

    return load_config(config).with_settings(parse_overrides(overrides)).with_overrides(**options)


def handle_errors(func: Callable) -> Callable:
    """Turn an :class:`AsdError` or an operating-system error (a place that cannot be read or
    written, a full disk) into one line on stderr and exit status 1, and Ctrl-C into a line and
    exit status 130; bugs keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except AsdError as error:
            say("error: ", "bold red", str(error))
            raise typer.Exit(1) from None
        except OSError as error:
            say("error: ", "bold red", os_error_message(error, "cannot access"))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            say("interrupted: ", "yellow", f"every file written so far is complete; {INTERRUPT_HINT}")
            raise typer.Exit(130) from None

    return wrapper


INTERRUPT_HINT = ("run the same command again: `asd train` continues where it stopped (finished stages are kept, "
                  "a cut-off branch resumes from its last epoch; `asd train-branch` with --resume)")


class RateColumn(ProgressColumn):
    """Items per second of a progress task."""

    def __init__(self, unit: str = "clips"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", self.unit)  # a task may count something else than its bar's default
        return Text("" if speed is None else f"{speed:,.1f} {unit}/s", style="progress.data.speed")


def progress_bar(unit: str = "clips") -> Progress:
    """A rich progress bar on stderr with count, rate, elapsed and remaining time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def with_identity(clips: list, machine: Optional[str], section: Optional[int]) -> list:
    """The clips with the machine type and section ``--machine``/``--section`` give (where given)."""
    from dataclasses import replace

    if machine is None and section is None:
        return clips
    return [replace(c, machine=machine or c.machine, section=f"{section:02d}" if section is not None else c.section)
            for c in clips]


def report_failures(failures: list[tuple[Path, str]]) -> None:
    """List skipped clips at the end of a batch command."""
    if not failures:
        return
    say(f"skipped {len(failures)} clip(s):", "yellow", "")
    for _, message in failures:
        err.print(f"  {message}", highlight=False, markup=False)
