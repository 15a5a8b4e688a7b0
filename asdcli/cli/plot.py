"""`asd plot`: loss curves and gradient norms, ROC curves and score histograms, as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from asdcli.cli.common import err, handle_errors
from asdcli.errors import DataError
from asdcli.services.plot import log_kind, plot_debug, plot_epochs, plot_scores


def _default_out(path: Path, kind: str) -> Path:
    if kind == "run":
        return path / "logs" / "training_loss.png"
    return path / "scores.png" if path.is_dir() else path.with_suffix(".png")


@handle_errors
def plot(
    paths: List[Path] = typer.Argument(..., help="freeze-debug CSVs (overlaid), score CSVs or folders of DCASE score "
                                       "files, per-epoch logs (<run>/logs/*_train.csv), or a run folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: beside the first input)."),
) -> None:
    """Plot logs and results as one PNG: freeze-debug losses and gradient norms per part; ROC curves
    (pAUC region marked) and score histograms by domain and label; training-loss curves of a run."""
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
    kinds = {log_kind(p) for p in paths}
    if len(kinds) > 1:
        raise DataError(f"cannot plot different kinds of input together ({', '.join(sorted(kinds))})")
    kind = kinds.pop()
    target = out or _default_out(paths[0], kind)
    if kind == "debug":
        written = plot_debug(paths, target)
    elif kind in ("run", "epochs"):
        logs = sorted((paths[0] / "logs").glob("*_train.csv")) if kind == "run" else paths
        if not logs:
            raise DataError(f"{paths[0]}: no training logs (logs/<branch>_train.csv) in this run")
        written = plot_epochs(logs, target)
    else:
        written = plot_scores(paths, target)
    err.print(f"wrote {written}", highlight=False)
