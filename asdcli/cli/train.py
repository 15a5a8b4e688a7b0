"""`asd train DATA --run RUN`: every stage of a run in order (branches, fusion, meta-learner), then,
where the test clips are labelled, the scores and the evaluation table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from asdcli.cli.common import (show_notice, say, CacheOption, ConfigOption, DeviceOption, GpuOption, OverridesArgument, SeedOption, err,
                               gpu_or_cpu, handle_errors, out, resolve_config, run_option)
from asdcli.cli.evaluate import means_table, section_table
from asdcli.cli.meta_train import fit_meta
from asdcli.cli.train_branch import run_branch
from asdcli.cli.train_fusion import fit_head


@handle_errors
def train(
    data: Path = typer.Argument(..., help="Dataset root with <machine>/train/*.wav (and test/*.wav to score)."),
    overrides: Optional[List[str]] = OverridesArgument,
    run: Path = run_option("Run folder (made or continued)."),
    config: Optional[str] = ConfigOption,
    skip: Optional[List[str]] = typer.Option(None, "--skip", help="Leave this branch out (repeatable), e.g. --skip b1 "
                                             "where its pretrained weights cannot be had."),
    evaluate: Optional[bool] = typer.Option(None, "--evaluate/--no-evaluate", help="Score the test clips and print the "
                                            "evaluation table (default: where the test clips are labelled)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Also write the DCASE score and decision CSVs of "
                                           "the test clips here."),
    gpu: Optional[int] = GpuOption,
    device: Optional[str] = DeviceOption,
    seed: Optional[int] = SeedOption,
    cache_dir: Optional[Path] = CacheOption,
) -> None:
    """Train every stage of a run in order: the branches (b2, b3, b4, b1, b5), the fusion head and the
    meta-learner. Every stage is checked before the first long step; a second call continues where the
    first stopped (finished stages are kept, an interrupted training resumes)."""
    from asdcli.data.audio import length_notice
    from asdcli.services.dataset import training_clips, untrained_machines
    from asdcli.services.features import default_cache_dir
    from asdcli.services.pipeline import FUSION, plan, preflight
    from asdcli.services.runs import open_run, saved_config

    cfg = resolve_config(config or saved_config(run), overrides, seed=seed)
    steps = plan(run, cfg, skip)
    clips = preflight(data, cfg, steps)
    torch_device, cache = gpu_or_cpu(gpu, device), cache_dir or default_cache_dir()
    err.print(f"{clips} training clips under {data}; run {run}: "
              + ", ".join(f"{s.label} {s.action}" + (f" ({s.why})" if s.why and s.action != "keep" else "")
                          for s in steps), highlight=False)
    untrained = untrained_machines(str(data))
    if untrained:
        show_notice(f"{', '.join(untrained)} {'has' if len(untrained) == 1 else 'have'} no training clips under {data}: "
                    "left out of the run, its scores and the evaluation")
    notice = length_notice([c.path for c in training_clips(str(data))], cfg.audio)
    if notice:
        show_notice(notice)
    done = []
    for step in steps:
        if step.action in ("keep", "skip"):
            continue
        start = time.perf_counter()
        say(step.label, "bold", f": {step.action}")
        if step.stage == FUSION:
            fit_head(data, open_run(run), cfg, None, torch_device)
        elif step.stage == "meta-learner":
            fit_meta(open_run(run), cfg, None, data, torch_device)
        else:
            run_branch(step.stage, data, run, cfg, torch_device, cache, step.action == "resume")
        done.append((step.label, time.perf_counter() - start))
    summary = Table(title=f"asd train -> {run}")
    summary.add_column("stage")
    summary.add_column("this call", justify="right")
    for step in steps:
        seconds = dict(done).get(step.label)
        summary.add_row(step.label, f"done in {seconds:.0f} s" if seconds is not None else
                        f"{step.action}" + (f": {step.why}" if step.why else ""))
    out.print(summary)
    _score_tests(data, run, cache, torch_device, evaluate, out_dir, set(untrained))


def _score_tests(data: Path, run: Path, cache: Path, torch_device, evaluate: bool | None, out_dir: Path | None,
                 untrained: set[str]) -> None:
    """Score the test clips (where asked or labelled) of the machines the run was trained on:
    DCASE files and the evaluation table."""
    from asdcli.data.layout import discover
    from asdcli.services.dcase_files import write_dcase_files
    from asdcli.services.evaluate import clip_rows, evaluate_rows
    from asdcli.services.runs import open_run
    from asdcli.services.score import METHODS, score_clips

    tests = [c for c in discover(data) if c.split == "test" and c.machine not in untrained]
    labelled = any(c.label is not None for c in tests)
    show = labelled if evaluate is None else evaluate
    if not tests or (not show and out_dir is None):
        return
    result = score_clips(open_run(run), tests, cache, device=torch_device)
    err.print(f"{len(result.clips)} test clips scored: {METHODS[result.method]}", highlight=False)
    for notice in result.notices:
        show_notice(notice)
    if out_dir is not None:
        written = write_dcase_files(result, out_dir)
        err.print(f"wrote {len(written)} DCASE files to {out_dir}", highlight=False)
    if show and labelled:
        evaluation = evaluate_rows(clip_rows(result.clips, result.score, result.decision), confidence=False)
        out.print(section_table(evaluation))
        out.print(means_table(evaluation))
        for notice in evaluation.notices:
            show_notice(notice)
