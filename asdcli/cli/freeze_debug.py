"""`asd freeze-debug --branch b3 --epochs 10`: train with parts frozen; log losses and gradient norms."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from asdcli.cli.common import (show_notice, say, GpuOption, OverridesArgument, DeviceOption, CacheOption, ConfigOption, SeedOption, err, gpu_or_cpu, handle_errors, out,
                               progress_bar, resolve_config, run_option)


@handle_errors
def freeze_debug(
    branch: List[str] = typer.Option(..., "--branch", "-b", help="Part to freeze: b1..b5 (or names), fusion or meta; "
                                     "repeatable."),
    epochs: int = typer.Option(10, "--epochs", "-e", min=1, max=2**31 - 1, help="Epochs over the training clips."),
    data: Path = typer.Option(Path("data"), "--data", "-d", help="Dataset root with <machine>/train/*.wav."),
    run: Optional[Path] = run_option("A trained run: frozen branches start from its checkpoints, fusion and "
                                     "meta-learner train on its examples.", default=None),
    log_dir: Path = typer.Option(Path("logs"), "--log-dir", help="Folder of debug_freeze_<parts>.csv."),
    config: Optional[str] = ConfigOption,
    overrides: Optional[List[str]] = OverridesArgument,
    gpu: Optional[int] = GpuOption,
    device: Optional[str] = DeviceOption,
    seed: Optional[int] = SeedOption,
    cache_dir: Optional[Path] = CacheOption,
) -> None:
    """Train all branches, the fusion head and the meta-learner with some parts frozen; one CSV row
    per step with every part's loss and gradient norm; trouble is reported as it begins."""
    from asdcli.services.training.debug import debug_log_path, freeze_debug as debug_service, parse_parts
    from asdcli.services.inputs.features import default_cache_dir
    from asdcli.services.store.runs import saved_config

    config = config or saved_config(run)  # the run's own config
    cfg = resolve_config(config, overrides, seed=seed)
    frozen = parse_parts(branch)
    log_path = debug_log_path(log_dir, frozen)
    with progress_bar(unit="steps") as bar:
        task = bar.add_task("freeze-debug", total=None)

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, description=f"freeze-debug loss {loss:.4f}")

        def on_trouble(trouble) -> None:
            bar.console.print(f"[bold yellow]trouble:[/] {trouble}", highlight=False)

        result = debug_service(data, cfg, frozen, epochs, log_path, run, gpu_or_cpu(gpu, device),
                               cache_dir or default_cache_dir(), on_step, on_trouble)
    for notice in result.notices:
        show_notice(notice)
    table = Table(title=f"freeze-debug: {result.steps} steps -> {result.log}")
    table.add_column("part")
    table.add_column("state")
    for part in result.parts:
        state = "trained"
        if part in result.frozen:
            state = "frozen, weights bit-identical" if result.unchanged[part] else "[red]frozen, but its weights CHANGED[/]"
        table.add_row(part, state)
    out.print(table)
    if result.troubles:
        say(f"{len(result.troubles)} problem(s):", "bold yellow", "")
        for trouble in result.troubles:
            err.print(f"  {trouble}", highlight=False)
    else:
        err.print("no non-finite loss, exploding or vanishing gradient seen")
