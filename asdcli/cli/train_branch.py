"""`asd train-branch NAME`: train one model branch into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from asdcli.cli.common import (show_notice, gpu_or_cpu, DeviceOption, GpuOption, OverridesArgument, CacheOption, ConfigOption, DataOption, RunOption, SeedOption, WorkersOption, err, handle_errors, out,
                               progress_bar, report_failures, resolve_config)


@handle_errors
def train_branch(
    name: str = typer.Argument(..., help="b1..b5 or pretrained, transformer-ae, contrastive, diffusion, flow."),
    data: Path = DataOption,
    run: Path = RunOption,
    config: Optional[str] = ConfigOption,
    overrides: Optional[List[str]] = OverridesArgument,
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=0, help="Epochs (overrides the config)."),
    gpu: Optional[int] = GpuOption,
    device: Optional[str] = DeviceOption,
    seed: Optional[int] = SeedOption,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted training of this branch."),
    cache_dir: Optional[Path] = CacheOption,
    workers: Optional[int] = WorkersOption,
) -> None:
    """Train one branch on the normal training clips of every machine section under --data."""
    from asdcli.data.audio import length_notice
    from asdcli.models.registry import canonical_name, config_key
    from asdcli.services.inputs.dataset import training_clips
    from asdcli.services.inputs.features import default_cache_dir
    from asdcli.services.store.runs import has_finished, saved_config

    name = canonical_name(name)
    key = f"{config_key(name)}.epochs"
    config = config or saved_config(run)  # a later branch of a run: the run's own config
    cfg = resolve_config(config, overrides, seed=seed, **{key: epochs, "loader.workers": workers})
    torch_device = gpu_or_cpu(gpu, device)
    if not resume and has_finished(run, name):
        show_notice(f"{run} has a finished {name}; this training replaces it when it completes "
                    "(until then, and if it fails, the finished one stays)")
    run_branch(name, data, run, cfg, torch_device, cache_dir or default_cache_dir(), resume)
    notice = length_notice([c.path for c in training_clips(str(data))], cfg.audio)
    if notice:
        show_notice(notice)


def run_branch(name: str, data: Path, run: Path, cfg, torch_device, cache_dir: Path, resume: bool) -> None:
    """Train one branch with a progress bar, then print its statistics and reliability."""
    from asdcli.services.training.train import train_branch as train_service

    with progress_bar(unit="steps") as bar:
        task = bar.add_task(f"{name}", total=None, visible=False)  # shown once it trains (a frozen b1 does not)

        def on_step(info) -> None:
            bar.update(task, visible=True, total=info.steps * info.epochs, completed=(info.epoch - 1) * info.steps + info.step,
                       description=f"{name} epoch {info.epoch}/{info.epochs} loss {info.loss:.4f} "
                                   f"{info.clips_per_s:,.1f} clips/s")

        scoring = bar.add_task("scoring the training clips", total=None, visible=False, unit="clips")

        def on_score(done: int, total: int) -> None:
            bar.update(scoring, completed=done, total=total, visible=True)

        result = train_service(name, data, run, cfg, torch_device, cache_dir, resume, on_step=on_step,
                               on_score=on_score)
    report_branch(result, cfg)


def report_branch(result, cfg) -> None:
    """A trained branch's statistics per section, what it cannot learn and how its held-out clips scored."""
    if result.rank != 0:  # under torchrun, the first process reports for all
        return
    report_failures(result.skipped)
    table = Table(title=f"{result.branch}: {result.clips} training clips, {result.epochs} epochs -> {result.run}")
    for column in ("section", "clips", "train score mean", "std", "decision threshold"):
        table.add_column(column, justify="right" if column != "section" else "left")
    for group, st in result.score_stats.items():
        table.add_row(group, str(st["count"]), f"{st['mean']:.4f}", f"{st['std']:.4f}", f"{st['threshold']:.4f}")
    out.print(table)
    _report_reliability(result, cfg.train.heldout_max_z, cfg.train.heldout_min_clips)
    if result.final_loss is not None:
        err.print(f"final training loss {result.final_loss:.5f}; log: {result.log}")
    if result.world_size > 1:
        err.print(f"{result.world_size} processes; replicas identical: {result.replicas_identical}")


def _report_reliability(result, max_z: float, min_clips: int) -> None:
    """What the branch says it cannot learn, and how its held-out clips scored."""
    from asdcli.services.scoring.reliability import heldout_gap, heldout_summary
    from asdcli.services.store.records import HeldOut

    if result.limitation:
        show_notice(f"{result.branch}: {result.limitation}; the fusion leaves it out")
    z, clips = result.heldout.get("median_z"), result.heldout.get("clips", 0)
    held = HeldOut.model_validate(result.heldout) if result.heldout else None
    gap = heldout_gap(held)
    if z is None:
        err.print("no held-out clips (train.holdout is 0 or every section has fewer than 3 clips): whether the branch "
                  "generalises from its training clips is not checked", highlight=False)
    elif gap > max_z and clips < min_clips:
        show_notice(f"{result.branch}: {heldout_summary(held)}; too few held-out clips "
                    f"(fewer than train.heldout_min_clips={min_clips}) to leave it out of the fusion")
    elif gap > max_z:
        show_notice(f"{result.branch}: {heldout_summary(held)}: it does not generalise "
                    "from them; the fusion leaves it out")
    else:
        err.print(f"held-out normal clips: {clips}, median {z:+.2f} standard deviations from the training clips "
                  f"({gap:+.2f} as a normal deviate given how few they are; limit {max_z:g})", highlight=False)

