"""`asd score DATA --run RUN > scores.csv`: one CSV row per clip."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from asdcli.cli.common import with_identity, show_notice, gpu_or_cpu, DeviceOption, GpuOption, CacheOption, err, handle_errors, out, progress_bar, report_failures, run_option, write_out, MachineOption, SectionOption

if TYPE_CHECKING:
    from asdcli.services.scoring.score import ScoreResult


def _clips(path: Path) -> list:
    """The clips a DATA argument names: a folder's test clips (all of them where it has none), or a file."""
    from asdcli.data.layout import discover

    clips = [c for c in discover(path) if c.split != "train" or path.is_file()]
    return clips or discover(path)


def _name(path: Path, roots: list[Path]) -> str:
    """A clip's name in the CSV: relative to the folder given for it, or its file name."""
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


def _explained(result: ScoreResult, rows: list[tuple], decision: bool) -> list[tuple]:
    """Header + per clip: final score, fused score, then z_<id> and w_<id> of every branch."""
    import numpy as np

    from asdcli.models.registry import BRANCHES

    ids = [BRANCHES[n].bid for n in result.branches]
    header = ("filename", "score") + (("decision",) if decision else ()) + ("fused",) + tuple(
        f"{kind}_{i}" for i in ids for kind in ("z", "w"))
    fused = result.fused if result.fused is not None else np.mean([result.normalized[n] for n in result.branches], axis=0)
    weights = result.weights if result.weights is not None else np.full((len(rows), len(ids)), 1.0 / len(ids))
    body = []
    for r, row in enumerate(rows):
        parts = [f"{v:.4f}" for k, n in enumerate(result.branches) for v in (result.normalized[n][r], weights[r, k])]
        body.append(row + (f"{fused[r]:.6f}",) + tuple(parts))
    return [header] + body


@handle_errors
def score(
    data: List[Path] = typer.Argument(..., help="DCASE test folders, a dataset root, folders of audio or files."),
    run: Path = run_option("Trained run folder."),
    branch: Optional[List[str]] = typer.Option(None, "--branch", "-b", help="Use only these branches (repeatable)."),
    decision: bool = typer.Option(False, "--decision", help="Add the 0/1 decision as a third column."),
    fpr: Optional[float] = typer.Option(None, "--fpr", help="Decide at this false-positive rate of the training clips "
                                        "instead of the gamma-fit 90th percentile."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Also write the DCASE score and decision CSVs here."),
    support: Optional[Path] = typer.Option(None, "--support", help="Normal clips (a folder or file) of machine "
                                           "sections the run never saw: the run adapts to them."),
    explain: bool = typer.Option(False, "--explain", help="Add each branch's standardised score (z_<id>), its "
                                 "attention weight (w_<id>) and the fused score; the CSV then has a header."),
    machine: Optional[str] = MachineOption,
    section: Optional[int] = SectionOption,
    gpu: Optional[int] = GpuOption,
    device: Optional[str] = DeviceOption,
    cache_dir: Optional[Path] = CacheOption,
) -> None:
    """Anomaly score per clip (higher = more anomalous) as CSV on stdout: filename,score[,decision]
    (no header, as the DCASE files), or with --explain a header and how each branch contributed."""
    from asdcli.data.audio import length_notice
    from asdcli.data.layout import discover
    from asdcli.services.scoring.dcase_files import csv_text, write_dcase_files
    from asdcli.services.inputs.features import default_cache_dir
    from asdcli.services.store.runs import open_run
    from asdcli.services.scoring.score import METHODS, score_clips

    clips = [c for path in data for c in _clips(path)]
    clips = with_identity(clips, machine, section)
    torch_device = gpu_or_cpu(gpu, device)
    opened = open_run(run)  # once for the whole command
    with progress_bar() as bar:
        task = bar.add_task("scoring (features: first half; branches: second)", total=len(clips))
        support_clips = discover(support) if support is not None else None
        result = score_clips(opened, clips, cache_dir or default_cache_dir(), branch, fpr, torch_device, support_clips,
                             progress=lambda n: bar.advance(task, n / 2))  # each clip: features, then scoring
    for notice in result.notices:
        show_notice(notice)
    err.print(f"{len(result.clips)} clips scored with {', '.join(result.branches)}: {METHODS[result.method]}",
              highlight=False)
    rows = [(_name(c.path, data), f"{s:.6f}") + ((str(d),) if decision else ())
            for c, s, d in zip(result.clips, result.score, result.decision)]
    if explain:
        rows = _explained(result, rows, decision)
    write_out(csv_text(rows))
    out.file.flush()
    if out_dir is not None:
        written = write_dcase_files(result, out_dir)
        err.print(f"wrote {len(written)} DCASE files to {out_dir}")
    report_failures(result.skipped)
    notice = length_notice([c.path for c in result.clips], opened.audio)
    if notice:
        show_notice(notice)
