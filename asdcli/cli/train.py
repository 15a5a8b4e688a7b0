"""`asd train DATA --run RUN`: every stage of a run in order (branches, fusion, meta-learner), then,
where the test clips are labelled, the scores and the evaluation table."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from asdcli.cli.common import (show_notice, say, CacheOption, ConfigOption, DeviceOption, GpuOption, OverridesArgument, SeedOption, err,
                               gpu_or_cpu, handle_errors, out, progress_bar, resolve_config, run_option)
from asdcli.cli.reports import means_table, report_branch, report_fusion, report_meta, section_table


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
    from asdcli.services.inputs.features import default_cache_dir
    from asdcli.services.training.pipeline import Progress, train as train_pipeline
    from asdcli.services.store.runs import saved_config

    cfg = resolve_config(config or saved_config(run), overrides, seed=seed)
    torch_device, cache = gpu_or_cpu(gpu, device), cache_dir or default_cache_dir()
    display = _Display(run, data, cfg)
    trained = train_pipeline(data, run, cfg, skip, torch_device, cache,
                             Progress(display.planned, display.stage, display.step, display.scored, display.meta,
                                      display.done))
    summary = Table(title=f"asd train -> {run}")
    summary.add_column("stage")
    summary.add_column("this call", justify="right")
    for step in trained.steps:
        seconds = trained.seconds.get(step.stage)
        summary.add_row(step.label, f"done in {seconds:.0f} s" if seconds is not None else
                        f"{step.action}" + (f": {step.why}" if step.why else ""))
    out.print(summary)
    _score_tests(data, run, cache, torch_device, evaluate, out_dir, set(trained.untrained))


class _Display:
    """What asd train shows while the library pipeline runs (:class:`~asdcli.services.training.pipeline.Progress`):
    the plan, a progress bar per stage, each stage's report as its command prints it."""

    def __init__(self, run: Path, data: Path, cfg):
        self.run, self.data, self.cfg, self.bar, self.task = run, data, cfg, None, None

    def planned(self, trained) -> None:
        from asdcli.data.audio import length_notice
        from asdcli.services.inputs.dataset import training_clips

        err.print(f"{trained.clips} training clips under {self.data}; run {self.run}: "
                  + ", ".join(f"{s.label} {s.action}" + (f" ({s.why})" if s.why and s.action != "keep" else "")
                              for s in trained.steps), highlight=False)
        if trained.untrained:
            show_notice(f"{', '.join(trained.untrained)} {'has' if len(trained.untrained) == 1 else 'have'} no training "
                        f"clips under {self.data}: left out of the run, its scores and the evaluation")
        notice = length_notice([c.path for c in training_clips(str(self.data))], self.cfg.audio)
        if notice:
            show_notice(notice)

    def stage(self, step) -> None:
        say(step.label, "bold", f": {step.action}" + (f" ({step.why})" if step.why else ""))
        self.bar = progress_bar(unit="steps" if step.stage != "fusion" else "clips")
        self.task = self.bar.add_task(step.label, total=None, visible=False)
        self.bar.start()

    def step(self, info) -> None:
        self.bar.update(self.task, visible=True, total=info.steps * info.epochs,
                        completed=(info.epoch - 1) * info.steps + info.step,
                        description=f"epoch {info.epoch}/{info.epochs} loss {info.loss:.4f} {info.clips_per_s:,.1f} clips/s")

    def scored(self, done: int, total: int) -> None:
        self.bar.update(self.task, visible=True, completed=done, total=total, description="scoring clips")

    def meta(self, step: int, total: int, loss: float) -> None:
        self.bar.update(self.task, visible=True, completed=step, total=total, description=f"meta-training loss {loss:.4f}")

    def done(self, step, result, seconds: float) -> None:

        self.bar.stop()
        if step.stage == "fusion":
            report_fusion(result, self.run)
        elif step.stage == "meta-learner":
            report_meta(result, self.run, self.cfg)
        else:
            report_branch(result, self.cfg)


def _score_tests(data: Path, run: Path, cache: Path, torch_device, evaluate: bool | None, out_dir: Path | None,
                 untrained: set[str]) -> None:
    """Score the test clips (where asked or labelled) of the machines the run was trained on:
    DCASE files and the evaluation table."""
    from asdcli.data.layout import discover
    from asdcli.services.scoring.dcase_files import write_dcase_files
    from asdcli.services.evaluation.evaluate import clip_rows, evaluate_rows
    from asdcli.services.store.runs import open_run
    from asdcli.services.scoring.score import METHODS, score_clips

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
