"""`asd train-branch NAME`: train one model branch into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from asdcli.cli.reports import report_branch
from asdcli.cli.common import (show_notice, gpu_or_cpu, DeviceOption, GpuOption, OverridesArgument, CacheOption, ConfigOption, DataOption, RunOption, SeedOption, WorkersOption, handle_errors,
                               progress_bar, resolve_config)


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


