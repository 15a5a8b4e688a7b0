"""`asd train-fusion`: fit the attention fusion head of a run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from asdcli.cli.reports import report_fusion
from asdcli.cli.common import (GpuOption, OverridesArgument, DeviceOption, DataOption, RunOption, SeedOption, gpu_or_cpu, handle_errors, progress_bar,
                               resolve_run_config, run_config_option)


@handle_errors
def train_fusion(
    data: Path = DataOption,
    run: Path = RunOption,
    config: Optional[str] = run_config_option("fusion"),
    overrides: Optional[List[str]] = OverridesArgument,
    branch: Optional[List[str]] = typer.Option(None, "--branch", "-b", help="Fuse only these branches (repeatable) "
                                               "(default: every trained branch)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Optimisation steps (overrides fusion.epochs)."),
    gpu: Optional[int] = GpuOption,
    device: Optional[str] = DeviceOption,
    seed: Optional[int] = SeedOption,
) -> None:
    """Fit the attention fusion head on normal training clips vs pseudo-anomalies (perturbed clips,
    other sections, synthetic machines). Test clips are never read."""
    opened, cfg = resolve_run_config(run, config, overrides, seed=seed, **{"fusion.epochs": epochs})
    fit_head(data, opened, cfg, branch, gpu_or_cpu(gpu, device))


def fit_head(data: Path, opened, cfg, branch, torch_device) -> None:
    """Fit the fusion head with a progress bar, then print its weights and evidence."""
    from asdcli.services.training.fuse import train_fusion as train_service

    run = opened.path
    with progress_bar() as bar:
        task = bar.add_task("scoring pseudo-anomalies", total=None)
        result = train_service(data, opened, cfg, branch, torch_device,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    report_fusion(result, run)


