"""`asd meta-train`: MAML meta-training of a run's final classifier."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from asdcli.cli.reports import report_meta
from asdcli.cli.common import (GpuOption, OverridesArgument, DeviceOption, RunOption, SeedOption, gpu_or_cpu, handle_errors, progress_bar,
                               resolve_run_config, run_config_option)


@handle_errors
def meta_train(
    run: Path = RunOption,
    config: Optional[str] = run_config_option("meta-learner"),
    overrides: Optional[List[str]] = OverridesArgument,
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", min=1, help="Meta-updates (overrides meta.iterations)."),
    holdout: Optional[List[str]] = typer.Option(None, "--holdout", help="Never use this section as a task "
                                                "(repeatable), e.g. to measure adaptation to an unseen section."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="The training data of the run: make the "
                                        "meta-learner its own pseudo-anomalies from it (default: reuse the fusion "
                                        "head's examples)."),
    gpu: Optional[int] = GpuOption,
    device: Optional[str] = DeviceOption,
    seed: Optional[int] = SeedOption,
) -> None:
    """Meta-train the final classifier with MAML over the run's machine sections (needs asd train-fusion)."""
    opened, cfg = resolve_run_config(run, config, overrides, seed=seed, **{"meta.iterations": iterations})
    fit_meta(opened, cfg, holdout, data, gpu_or_cpu(gpu, device))


def fit_meta(opened, cfg, holdout, data: Path | None, torch_device) -> None:
    """Meta-train with a progress bar, then print the query losses (or why it abstains)."""
    from asdcli.services.training.meta import meta_train as meta_service

    run = opened.path
    with progress_bar(unit="steps") as bar:
        made = bar.add_task("scoring pseudo-anomalies", total=None, visible=data is not None, unit="clips")
        task = bar.add_task("meta-training", total=cfg.meta.iterations, visible=False)  # shown once it trains

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, description=f"meta-training loss {loss:.4f}", visible=True)

        result = meta_service(opened, cfg, holdout, progress, data, torch_device,
                              lambda done, total: bar.update(made, completed=done, total=total))
    report_meta(result, run, cfg)


