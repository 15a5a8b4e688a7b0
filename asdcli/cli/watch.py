"""`asd watch DIR --run RUN`: score each recording a recorder drops into DIR, once, as it arrives."""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from asdcli.cli.common import (DeviceOption, GpuOption, MachineOption, SectionOption, err, gpu_or_cpu, handle_errors,
                               run_option, say, show_notice)
from asdcli.errors import ConfigError

_DURATION = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>s|m|h|d)?$")


def duration(text: str | None, option: str) -> float | None:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` as seconds; a :class:`ConfigError` naming the option."""
    if text is None:
        return None
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"{option}: '{text}' is not a duration (e.g. 90s, 15m, 2h, 7d)")
    return float(match["value"]) * {"s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[match["unit"]]


def alert_after(text: str) -> tuple[int, int]:
    """``K/N`` (``3/5``: 3 anomalous of the last 5 clips of a section), 1 <= K <= N <= 1000."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]) <= 1000:
        raise ConfigError(f"--alert-after: '{text}' is not K/N with 1 <= K <= N <= 1000 (e.g. 3/5)")
    return int(match[1]), int(match[2])


def _shown(verbose: bool):
    """What the watcher shows on stderr: anomalous clips (every clip with --verbose), alerts, notices."""
    from asdcli.services.scoring.watch import where_text

    def shown(line) -> None:
        if line.kind == "clip":
            if line.decision or verbose:
                err.print(f"{line.time} {line.file}: {line.score:.3f}"
                          + (f" ANOMALOUS{where_text(line)}" if line.decision else ""))
        elif line.kind == "alert":
            say("alert: ", "bold red", line.message)
        else:
            show_notice(line.message)

    return shown


@handle_errors
def watch(
    folder: Path = typer.Argument(..., help="The folder the recorder writes into (watched with its subfolders)."),
    run: Path = run_option("Run folder to score with (reloaded when a retrained stage is committed in it)."),
    log: Optional[Path] = typer.Option(None, "--log", help="The decision log (default: DIR/.asd-watch.csv, or .jsonl "
                                       "with --json); a restart continues it."),
    as_json: bool = typer.Option(False, "--json", help="Log JSON lines instead of CSV."),
    on_alert: Optional[str] = typer.Option(None, "--on-alert", help="Shell command run for an alert, with ASD_FILE, "
                                           "ASD_MACHINE, ASD_SECTION, ASD_SCORE, ASD_DECISION, ASD_TIME and (with "
                                           "--where) ASD_SPAN_S, ASD_BAND_HZ, ASD_WHAT set."),
    after: str = typer.Option("1/1", "--alert-after", help="Alert when K of the last N clips of a section are "
                              "anomalous (K/N)."),
    since: Optional[str] = typer.Option(None, "--since", help="At start, catch up only on files newer than this "
                                        "(e.g. 2h); older ones are left alone."),
    silence: Optional[str] = typer.Option(None, "--silence", help="A notice when no recording arrived for this long "
                                          "(e.g. 10m)."),
    drift: float = typer.Option(1.0, "--drift", min=0.0, max=100.0, help="A notice when the median score of a "
                                "section's last 50 normal clips exceeds this (its training clips: about 0)."),
    settle: float = typer.Option(1.0, "--settle", min=0.05, max=3600.0, help="Seconds a file must stay unchanged "
                                 "to count as complete where no close event tells."),
    poll: bool = typer.Option(False, "--poll", help="Poll the folder instead of inotify events."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show every clip decided normal on stderr (the "
                                 "log always holds them)."),
    where: bool = typer.Option(False, "--where", help="Log where each anomalous clip sounds wrong: the time span "
                               "(s), band (Hz) and kind of change that drove it (as asd explain; about as long as "
                               "asd explain of the clip, for each anomalous clip)."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="The run's training data (normal clips): --where "
                                        "reads each section's maps against up to 16 of them frame by frame "
                                        "(recommended, as for asd explain)."),
    machine: Optional[str] = MachineOption,
    section: Optional[int] = SectionOption,
    gpu: Optional[int] = GpuOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """Score each new audio file under FOLDER once, when it is complete, and append a line per clip to
    a decision log (time, file, machine, section, score, decision). A restart skips what the log holds
    and catches up on what arrived meanwhile. SIGTERM or Ctrl-C finish the clip in hand, then stop."""
    from asdcli.data.layout import discover
    from asdcli.services.scoring.score import Detector
    from asdcli.services.scoring.watch import Watch, WatchOptions, alert_command
    from asdcli.services.scoring.watch_log import DecisionLog

    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder to watch")
    k, n = alert_after(after)
    options = WatchOptions(settle_s=settle, since_s=duration(since, "--since"), alert_k=k, alert_n=n,
                           silence_s=duration(silence, "--silence"), drift_z=drift, poll=poll, machine=machine,
                           section=None if section is None else f"{section:02d}", where=where)
    reference = [c for c in discover(data) if c.split == "train"] if data is not None and where else None
    path = log or folder / (".asd-watch.jsonl" if as_json else ".asd-watch.csv")
    torch_device = gpu_or_cpu(gpu, device)
    watcher = Watch(folder, run, DecisionLog(path, as_json), options, lambda r: Detector.load(r, torch_device),
                    _shown(verbose), alert_command(on_alert), lambda done, total: err.print(f"backlog: {done}/{total} scored"),
                    reference)
    err.print(f"watching {folder} with {run}; log {path}; {len(watcher.state.done)} file(s) already logged"
              + ("; polling" if poll else ""))
    _until_stopped(watcher)


def _until_stopped(watcher) -> None:
    """Run the watcher until SIGTERM or Ctrl-C (the clip in hand is finished), then say what it did."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    summary = watcher.run(stop)
    err.print(f"stopped: {summary.scored} clip(s) scored ({summary.caught_up} caught up on at the start), "
              f"{summary.skipped} skipped, {summary.older} older than --since left alone, run reloaded "
              f"{summary.reloads} time(s)")
