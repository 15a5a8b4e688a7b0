"""`asd plot`: loss curves and gradient norms, ROC curves and score histograms, as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from asdcli.cli.common import err, handle_errors
from asdcli.errors import DataError


@handle_errors
def plot(
    paths: List[Path] = typer.Argument(..., help="freeze-debug CSVs (overlaid), score CSVs or folders of DCASE score "
                                       "files, per-epoch logs (<run>/logs/*_train.csv), a run folder, or an asd "
                                       "watch log (its timeline)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: beside the first input)."),
) -> None:
    """Plot logs and results as one PNG: freeze-debug losses and gradient norms per part; ROC curves
    (pAUC region marked) and score histograms by domain and label; training-loss curves of a run; the
    timeline of an asd watch log (each section's scores over time, threshold, anomalies, alerts)."""
    from asdcli.services.evaluation.plot import log_kind, plot_debug, plot_epochs, plot_scores, run_logs

    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
    kinds = {log_kind(p) for p in paths}
    if len(kinds) > 1:
        raise DataError(f"cannot plot different kinds of input together ({', '.join(sorted(kinds))})")
    kind = kinds.pop()
    first = paths[0]
    beside = first / "scores.png" if first.is_dir() else first.with_suffix(".png")
    if kind == "debug":
        written = plot_debug(paths, out or beside)
    elif kind == "run":
        logs, default = run_logs(first)
        written = plot_epochs(logs, out or default)
    elif kind == "epochs":
        written = plot_epochs(paths, out or beside)
    elif kind == "watch":
        from asdcli.services.evaluation.plot_watch import plot_watch

        if len(paths) > 1:
            raise DataError("give one asd watch log at a time")
        written = plot_watch(first, out or beside)
    else:
        written = plot_scores(paths, out or beside)
    err.print(f"wrote {written}", highlight=False)
