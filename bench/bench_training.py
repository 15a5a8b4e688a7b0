"""Training and scoring throughput of the convolutional branches against their previous settings, in one command.

    python bench/bench_training.py                         # default synthetic data, 2 epochs
    python bench/bench_training.py --data ../shared/data/dcase2020-mini/slider --epochs 3

Trains b3 (contrastive) and b4 (diffusion) on the same data, each twice in this process: with
the settings of the build before this one (b3 on whole clips, every convolution in the standard
memory layout; b4 scoring with 4 DDIM steps) and with the current defaults (b3 on
``contrastive.crop_frames`` windows, channels-last convolutions; b4 with 1 DDIM step). It prints
the clips/s of each branch's training epochs (from its training log) and of its scoring of the
labelled test clips, and the speed-up. Detection is measured by bench_real.py and bench_pipeline.py.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from asdcli.config import load_config
from asdcli.models.branch_contrastive import ContrastiveBranch
from asdcli.models.branch_diffusion import DiffusionBranch
from asdcli.services.branch_scores import score_branches
from asdcli.services.train import train_branch
from common import bench_data

PREVIOUS = {"contrastive": {"branches.contrastive.crop_frames": 0},
            "diffusion": {"branches.diffusion.ddim_steps": 4}}


@contextmanager
def standard_layout():
    """Keep b3's and b4's networks in the standard (contiguous) memory layout, as before."""
    init, train = ContrastiveBranch.__init__, DiffusionBranch.train

    def contrastive(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.features.to(memory_format=torch.contiguous_format)

    def diffusion(self, mode: bool = True):
        return super(DiffusionBranch, self).train(mode)  # no switch to channels-last for scoring

    ContrastiveBranch.__init__, DiffusionBranch.train = contrastive, diffusion
    try:
        yield
    finally:
        ContrastiveBranch.__init__, DiffusionBranch.train = init, train


def train_rate(run: Path, name: str) -> float:
    """Clips/s over the training epochs, from the branch's training log."""
    with (run / "logs" / f"{name}_train.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return sum(int(r["clips"]) for r in rows) / sum(float(r["seconds"]) for r in rows)


def measure(name: str, config, data: Path, test, work: Path, previous: bool) -> tuple[float, float]:
    """(training clips/s, scoring clips/s) of branch ``name``."""
    run = work / f"{name}-{'previous' if previous else 'current'}"
    config = config.with_overrides(**PREVIOUS[name]) if previous else config
    with standard_layout() if previous else nullcontext():
        train_branch(name, data, run, config, cache_dir=work / "cache")
        start = time.perf_counter()
        scores = score_branches(run, [name], test, work / "cache")
        score_s = time.perf_counter() - start
    return train_rate(run, name), len(scores.clips) / score_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--config", default="default")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = load_config(args.config).with_overrides(**{"train.epochs": args.epochs})
    with tempfile.TemporaryDirectory() as tmp:
        data, test = bench_data(args.data, config, Path(tmp))
        rows = []
        for name in ("contrastive", "diffusion"):
            before = measure(name, config, data, test, Path(tmp), previous=True)
            after = measure(name, config, data, test, Path(tmp), previous=False)
            rows.append((name, before, after))
    print(f"\nconfig {args.config}, {args.epochs} epochs, {len(test)} test clips, 2 CPU threads\n")
    print("| branch | previous train clips/s | train clips/s | speed-up | previous score clips/s | score clips/s | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (train_0, score_0), (train_1, score_1) in rows:
        print(f"| {name} | {train_0:.1f} | {train_1:.1f} | {train_1 / train_0:.2f}x | {score_0:.1f} | {score_1:.1f} | "
              f"{score_1 / score_0:.2f}x |")


if __name__ == "__main__":
    main()
