"""Training and scoring throughput of the convolutional branches against their previous settings, in one command.

    python bench/bench_training.py                         # default synthetic data, 2 epochs
    python bench/bench_training.py --data ../shared/data/dcase2020-mini/slider --epochs 3

Trains b3 (contrastive) and b4 (diffusion) on the same data in this process, with the settings
of the builds before the speed work and with the current defaults:

- b3 previous: blocks of conv, batch norm, ReLU, max pool in the standard memory layout, fp32,
  every clip's 3 perturbed copies in every step. Current: conv, batch norm, max pool, ReLU (the
  same values) in channels-last, one perturbed copy per clip of a random kind
  (``copies_per_clip``), trained at ``branches.contrastive.precision`` (auto: bf16 where the CPU
  has AVX512-BF16 or AMX); a third row trains the current settings in fp32, to show what the
  hardware's bf16 adds.
- b4 previous: scoring with 4 DDIM steps in the standard layout. Current: 1 step, channels-last.

It prints the clips/s of each branch's training epochs (from its training log) and of its
scoring of the labelled test clips, and the speed-up over the previous settings. Detection is
measured by bench_real.py and bench_pipeline.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from asdcli.config import load_config
from asdcli.models import branch_contrastive
from asdcli.models.branch_contrastive import ContrastiveBranch
from asdcli.models.branch_diffusion import DiffusionBranch
from asdcli.services.scoring.branch_scores import score_branches
from asdcli.services.inputs.device import native_bf16
from asdcli.services.training.train import train_branch
from common import bench_data, train_rate

# (branch, variant) -> config overrides; "previous" variants also run in the previous network layout
VARIANTS = {("contrastive", "previous"): {"branches.contrastive.precision": "fp32",
                                          "branches.contrastive.copies_per_clip": 3},
            ("contrastive", "current, fp32"): {"branches.contrastive.precision": "fp32"},
            ("contrastive", "current"): {},
            ("diffusion", "previous"): {"branches.diffusion.ddim_steps": 4},
            ("diffusion", "current"): {}}


def previous_block(c_in: int, c_out: int) -> nn.Sequential:
    """b3's block before the speed work: ReLU before the pooling."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.MaxPool2d(2, ceil_mode=True))


@contextmanager
def previous_layout():
    """b3's previous blocks, and b3's and b4's networks in the standard (contiguous) memory layout."""
    init, train, block = ContrastiveBranch.__init__, DiffusionBranch.train, branch_contrastive.conv_block

    def contrastive(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.features.to(memory_format=torch.contiguous_format)

    def diffusion(self, mode: bool = True):
        return super(DiffusionBranch, self).train(mode)  # no switch to channels-last for scoring

    ContrastiveBranch.__init__, DiffusionBranch.train = contrastive, diffusion
    branch_contrastive.conv_block = previous_block
    try:
        yield
    finally:
        ContrastiveBranch.__init__, DiffusionBranch.train, branch_contrastive.conv_block = init, train, block


def measure(name: str, variant: str, config, data: Path, test, work: Path) -> tuple[float, float]:
    """(training clips/s, scoring clips/s) of branch ``name`` with the settings of ``variant``."""
    run = work / f"{name}-{variant.replace(', ', '-')}"
    config = config.with_overrides(**VARIANTS[name, variant])
    with previous_layout() if variant == "previous" else nullcontext():
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
        rates = {key: measure(*key, config, data, test, Path(tmp)) for key in VARIANTS}
    print(f"\nconfig {args.config}, {args.epochs} epochs, {len(test)} test clips, 2 CPU threads"
          f"{'; this CPU computes bf16 natively' if native_bf16(torch.device('cpu')) else ''}\n")
    print("| branch | settings | train clips/s | speed-up | score clips/s | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for (name, variant), (train, score) in rates.items():
        train_0, score_0 = rates[name, "previous"]
        print(f"| {name} | {variant} | {train:.1f} | {train / train_0:.2f}x | {score:.1f} | {score / score_0:.2f}x |")


if __name__ == "__main__":
    main()
