"""`asd learn-prior`: learn the fusion's prior over branches from labelled runs of other machines."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from asdcli.cli.common import CacheOption, handle_errors, out
from asdcli.errors import ConfigError


@handle_errors
def learn_prior(
    run: List[Path] = typer.Option(..., "--run", "-r", help="A run trained on another machine's normal clips "
                                   "(repeatable; each pairs with the --data in the same place)."),
    data: List[Path] = typer.Option(..., "--data", "-d", help="That run's data folder, with labelled test clips "
                                    "(<machine>/test/*_normal_* and *_anomaly_*)."),
    out_file: Path = typer.Option(..., "--out", "-o", help="The prior file to write (use it with fusion.prior: FILE)."),
    description: Optional[str] = typer.Option(None, "--description", help="Where the labelled data came from "
                                              "(shown by asd info for every run fused with this prior)."),
    cache_dir: Optional[Path] = CacheOption,
) -> None:
    """Learn the fusion's prior over branches from labelled faults of other machines. Never give
    labelled clips of the machine you will score: that would tune the fusion on its own test set."""
    from asdcli.models.registry import BRANCHES
    from asdcli.services.training.branch_prior import save_prior
    from asdcli.services.training.learn_prior import learn_from_runs

    if len(run) != len(data):
        raise ConfigError(f"--run and --data pair up: got {len(run)} --run and {len(data)} --data")
    prior = learn_from_runs(list(zip(run, data)), cache_dir, description)
    save_prior(prior, out_file)
    table = Table(title=f"branch prior -> {out_file}", caption=f"{prior.source.choice}; use it with "
                  f"`fusion.prior: {out_file}` in a config")
    for column in ("branch", "mean real AUC", "sets", "sections", "prior weight"):
        table.add_column(column, justify="left" if column == "branch" else "right")
    names = list(prior.branches)
    for name, weight in zip(names, prior.weights(names)):
        record = prior.branches[name]
        table.add_row(f"{BRANCHES[name].bid} {name}" if name in BRANCHES else name, f"{record.auc:.3f}",
                      str(record.sets), str(record.sections), f"{weight:.3f}")
    out.print(table)
