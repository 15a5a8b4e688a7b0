"""`asd train-fusion`: fit the attention fusion head of a run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from asdcli.cli.common import (show_notice, GpuOption, OverridesArgument, DeviceOption, DataOption, RunOption, SeedOption, gpu_or_cpu, handle_errors, out, progress_bar,
                               report_failures, resolve_run_config, run_config_option)


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


def report_fusion(result, run: Path) -> None:
    """The fusion head's branches, prior, pseudo-anomaly evidence and weights."""
    from asdcli.services.evaluation.info import prior_summary

    report_failures(result.skipped)
    if result.missing:
        show_notice(f"not fused (not trained): {', '.join(result.missing)}")
    for name, reason in result.left_out.items():
        show_notice(f"{name} left out: {reason}")
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    prior = result.prior
    table = Table(title=f"fusion of {len(result.branches)} branches -> {run}",
                  caption=f"examples: {counts}; {prior_summary(prior)}. Fair AUC: normal vs the pseudo-anomaly kinds "
                          f"the branch's own training did not already separate (temperature "
                          f"{result.prior_temperature:.3f}); it moves the weights as far as the prior trusts it.")
    for column in ("branch", "prior", "pseudo-anomaly AUC (mean over sections)", "fair AUC", "mean attention weight"):
        table.add_column(column, justify="left" if column == "branch" else "right")
    for name in result.branches:
        table.add_row(name, f"{prior['prior_weights'][name]:.3f}", f"{result.pseudo_auc[name]:.3f}",
                      f"{result.fair_pseudo_auc[name]:.3f}", f"{result.mean_weights[name]:.3f}")
    table.add_row("fused", "", f"{result.pseudo_auc['fused']:.3f}", "")
    out.print(table)
