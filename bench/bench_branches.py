"""Each branch alone: training and scoring throughput (clips/s) and detection (AUC, pAUC), CPU.

    python bench/bench_branches.py                       # default config, default synthetic data
    python bench/bench_branches.py --data ../shared/data/dcase2020-mini/slider --config default
    python bench/bench_branches.py --config tiny --branches b2 b3

Without --data the default synthetic dataset is generated into a temporary folder. b1 uses the
config's AST source; offline, pass ``--ast random`` (an untrained AST: its figures measure the
pipeline, not AudioSet pretraining).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asdcli.config import load_config
from asdcli.models.registry import BRANCHES, canonical_name, training_order
from common import bench_data
from asdcli.data.layout import group_clips
from asdcli.metrics import auc, pauc
from asdcli.services.scoring.branch_scores import score_branches
from asdcli.services.training.train import train_branch



def _section_means(clips, scores) -> tuple[float, float]:
    aucs, paucs = [], []
    for group, members in group_clips(clips).items():
        idx = [i for i, c in enumerate(clips) if c.group == group]
        labels = [clips[i].is_anomaly for i in idx]
        if len(set(labels)) < 2:
            continue
        aucs.append(auc(labels, scores[idx]))
        paucs.append(pauc(labels, scores[idx]))
    return float(np.mean(aucs)), float(np.mean(paucs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--config", default="default")
    parser.add_argument("--branches", nargs="+", help="ids or names (default: every branch, upstream first)")
    parser.add_argument("--epochs", type=int, help="override every branch's epochs")
    parser.add_argument("--b1", "--ast", dest="ast", help="override branches.pretrained.source: a weights file, or random")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = load_config(args.config).with_overrides(seed=args.seed, **{"branches.pretrained.source": args.ast})
    if args.epochs is not None:
        config = config.with_overrides(**{"train.epochs": args.epochs})
    args.branches = args.branches or [BRANCHES[n].bid for n in training_order(config)]
    with tempfile.TemporaryDirectory() as tmp:
        data, test = bench_data(args.data, config, Path(tmp))
        run, cache = Path(tmp) / "run", Path(tmp) / "cache"
        rows = []
        for name in [canonical_name(b) for b in args.branches]:
            start = time.perf_counter()
            result = train_branch(name, data, run, config, cache_dir=cache)
            train_s = time.perf_counter() - start
            start = time.perf_counter()
            scored = score_branches(run, [name], test, cache)
            score_s = time.perf_counter() - start
            scores = scored.scores[name]
            labels = [c.is_anomaly for c in scored.clips]
            mean_auc, mean_pauc = _section_means(scored.clips, scores)
            seen = result.clips * max(1, result.epochs)
            rows.append((name, result.epochs, seen / train_s, len(scored.clips) / score_s,
                         auc(labels, scores), pauc(labels, scores), mean_auc, mean_pauc))
            print(f"done {name}: {rows[-1]}", file=sys.stderr, flush=True)
    print(f"\nData: {args.data or 'default synthetic data'}; config: {args.config}; {len(test)} test clips; "
          f"CPU threads {torch.get_num_threads()}\n")
    print("| branch | epochs | train clips/s | score clips/s | AUC (pooled) | pAUC (pooled) | AUC (mean over sections) | pAUC (mean) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, epochs, train_rate, score_rate, a, p, ma, mp in rows:
        print(f"| {name} | {epochs} | {train_rate:,.1f} | {score_rate:,.1f} | {a:.3f} | {p:.3f} | {ma:.3f} | {mp:.3f} |")


if __name__ == "__main__":
    main()
