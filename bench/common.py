"""What the benchmarks share: the data to run on."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from asdcli.config import AsdConfig
from asdcli.data.layout import Clip, discover
from asdcli.data.synth import generate


def bench_data(data: Path | None, config: AsdConfig, tmp: Path) -> tuple[Path, list[Clip]]:
    """``data``, or the config's synthetic dataset generated under ``tmp``, and its labelled test clips."""
    if data is None:
        data = tmp / "data"
        generate(data, config.synth, config.seed)
    test = [c for c in discover(data) if c.split == "test" and c.label is not None]
    if not test:
        sys.exit(f"no labelled test clips under {data}")
    return data, test


def train_rate(run: Path, name: str) -> float:
    """Clips/s over the training epochs, from the branch's training log."""
    with (run / "logs" / f"{name}_train.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return sum(int(r["clips"]) for r in rows) / sum(float(r["seconds"]) for r in rows)
