"""`asd plot LOG` of an ``asd watch`` decision log: each section's scores over time with its
decision threshold, anomalous clips marked, alerts and notices as marks on the time axis."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from asdcli.errors import DataError  # noqa: E402
from asdcli.services.scoring.watch_log import DecisionLog, LogLine  # noqa: E402


def _when(line: LogLine, path: Path) -> datetime:
    try:
        return datetime.fromisoformat(line.time.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"{path}: time '{line.time}' is not an ISO 8601 time") from None


def watch_figure(path: Path):
    """The timeline of the log at ``path`` (CSV, or JSON lines where its name ends in .jsonl)."""
    lines = DecisionLog(path, as_json=path.suffix == ".jsonl").read()
    clips = [line for line in lines if line.kind == "clip" and line.score is not None]
    if not clips:
        raise DataError(f"{path}: no scored clip in this asd watch log to plot")
    sections = sorted({f"{line.machine} {line.section}".strip() for line in clips})
    fig, axes = plt.subplots(len(sections), 1, figsize=(13, 2.6 + 2.2 * len(sections)), sharex=True, squeeze=False,
                             layout="constrained")
    marks = [(_when(line, path), line) for line in lines if line.kind in ("alert", "notice")]
    for ax, section in zip(axes[:, 0], sections):
        own = [line for line in clips if f"{line.machine} {line.section}".strip() == section]
        times = np.array([_when(line, path) for line in own])
        score = np.array([line.score for line in own])
        anomalous = np.array([line.decision == 1 for line in own])
        ax.plot(times[~anomalous], score[~anomalous], ".", ms=3, color="tab:blue", rasterized=True,
                label=f"decided normal ({int((~anomalous).sum())})")
        ax.plot(times[anomalous], score[anomalous], "x", ms=5, color="tab:red", rasterized=True,
                label=f"decided anomalous ({int(anomalous.sum())})")
        limits = [(t, line.threshold) for t, line in zip(times, own) if line.threshold is not None]
        if limits:
            ax.step(*zip(*limits), where="post", color="black", lw=1, ls="--", label="decision threshold")
        for when, line in marks:
            if line.kind == "alert" and f"{line.machine} {line.section}".strip() == section:
                ax.axvline(when, color="tab:red", alpha=0.35, lw=1)
            elif line.kind == "notice" and (not line.machine or f"{line.machine} {line.section}".strip() == section):
                ax.axvline(when, color="grey", alpha=0.5, lw=1, ls=":")
        ax.set_title(f"{section}: {len(own)} clips", fontsize=10, loc="left")
        ax.set_ylabel("anomaly score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", ncol=3, framealpha=0.85)
    bottom = axes[-1, 0]
    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    bottom.set_xlabel("time (UTC); red lines: alerts, grey dotted: notices (silence, drift, run reloaded)")
    fig.suptitle(f"asd watch: {path}")
    return fig


def plot_watch(path: Path, out: Path) -> Path:
    """The timeline of a watch log as a PNG."""
    from asdcli.services.evaluation.plot import _save

    return _save(watch_figure(path), out)
