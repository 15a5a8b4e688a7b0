"""`asd synth OUT`: write the built-in synthetic dataset."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from asdcli.cli.common import OverridesArgument, ConfigOption, SeedOption, err, handle_errors, progress_bar, resolve_config


@handle_errors
def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write <machine>/{train,test}/*.wav into."),
    config: Optional[str] = ConfigOption,
    overrides: Optional[List[str]] = OverridesArgument,
    seed: Optional[int] = SeedOption,
) -> None:
    """Generate the seeded synthetic dataset (DCASE 2021+ layout): same seed, same files."""
    from asdcli.data.synth import count_clips, generate

    cfg = resolve_config(config, overrides, seed=seed)
    with progress_bar() as bar:
        task = bar.add_task("synth", total=count_clips(cfg.synth))
        written = generate(out_dir, cfg.synth, cfg.seed, progress=lambda _: bar.advance(task))
    machines = ", ".join(cfg.synth.machines)
    err.print(f"wrote {len(written)} clips ({machines}; {cfg.synth.sections} section(s) each) to {out_dir}")
