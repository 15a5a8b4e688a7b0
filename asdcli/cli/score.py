"""`asd score DATA --run RUN > scores.csv`: one CSV row per clip."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List, Optional

import typer

from asdcli.atomic import write_text
from asdcli.cli.common import CacheOption, err, handle_errors, out, progress_bar, report_failures
from asdcli.data.layout import discover
from asdcli.services.features import default_cache_dir
from asdcli.services.score import ScoreResult, score_clips


def _name(path: Path, root: Path) -> str:
    return path.name if root.is_file() else path.relative_to(root).as_posix()


def _csv(rows: list[tuple]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_dcase_files(result: ScoreResult, out_dir: Path) -> list[Path]:
    """``anomaly_score_<machine>_section_<XX>_test.csv`` and ``decision_result_...`` (no header)."""
    written = []
    for group in sorted({c.group for c in result.clips}):
        idx = [i for i, c in enumerate(result.clips) if c.group == group]
        for kind, values in (("anomaly_score", [f"{result.score[i]:.6f}" for i in idx]),
                             ("decision_result", [str(result.decision[i]) for i in idx])):
            path = out_dir / f"{kind}_{group}_test.csv"
            write_text(path, _csv([(result.clips[i].name, v) for i, v in zip(idx, values)]))
            written.append(path)
    return written


@handle_errors
def score(
    data: Path = typer.Argument(..., help="A DCASE test folder, a dataset root, any folder of audio or one file."),
    run: Path = typer.Option(Path("checkpoints/run"), "--run", "--run-dir", "-r", help="Trained run folder."),
    branch: Optional[List[str]] = typer.Option(None, "--branch", "-b", help="Use only these branches (repeatable)."),
    decision: bool = typer.Option(False, "--decision", help="Add the 0/1 decision as a third column."),
    fpr: Optional[float] = typer.Option(None, "--fpr", help="Decide at this false-positive rate of the training clips "
                                        "instead of the gamma-fit 90th percentile."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Also write the DCASE score and decision CSVs here."),
    cache_dir: Optional[Path] = CacheOption,
) -> None:
    """Anomaly score per clip (higher = more anomalous) as CSV on stdout: filename,score[,decision]."""
    clips = [c for c in discover(data) if c.split != "train" or data.is_file()]
    if not clips:
        clips = discover(data)
    with progress_bar() as bar:
        bar.add_task("scoring", total=None)
        result = score_clips(run, clips, cache_dir or default_cache_dir(), branch, fpr)
    for notice in result.notices:
        err.print(f"[yellow]notice:[/] {notice}", highlight=False)
    err.print(f"{len(result.clips)} clips scored with {', '.join(result.branches)} "
              "(per-section standardised scores, averaged)", highlight=False)
    rows = [(_name(c.path, data), f"{s:.6f}") + ((str(d),) if decision else ())
            for c, s, d in zip(result.clips, result.score, result.decision)]
    out.file.write(_csv(rows))
    out.file.flush()
    if out_dir is not None:
        written = write_dcase_files(result, out_dir)
        err.print(f"wrote {len(written)} DCASE files to {out_dir}")
    report_failures(result.skipped)
