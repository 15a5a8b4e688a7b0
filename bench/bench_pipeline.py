"""The whole pipeline: detection of every stage in one table, and end-to-end scoring cost.

    python bench/bench_pipeline.py                                  # default config, default synthetic data
    python bench/bench_pipeline.py --data ../shared/data/dcase2020-mini/slider
    python bench/bench_pipeline.py --config tiny --holdout fan_section_00

Trains the five branches, the fusion head and the meta-learner on the normal training clips,
then scores the labelled test clips once and evaluates each stage on the same scores: every
branch alone (its per-section standardised score), their plain average, the attention-fused
score and the final meta-learner score. The end-to-end scoring (audio -> features -> five
branches -> fusion -> adapted meta-learner) runs in a fresh child process (cold feature cache)
so that its throughput and peak memory are those of `asd score` alone. ``--holdout SECTION``
(several, or none for every section) meta-trains without each in turn and compares the unadapted
with the adapted classifier on its test clips. Without --data the synthetic dataset of the config is generated into a temporary
folder; b1 uses the config's source (offline: ``--b1 PATH`` to a weights file, or ``--b1 random``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import asdcli
from asdcli.config import load_config
from common import bench_data
from asdcli.metrics import auc, pauc
from asdcli.services.evaluation.evaluate import clip_rows, evaluate_rows
from asdcli.services.scoring.branch_scores import trained_branches
from asdcli.services.training.fuse import train_fusion
from asdcli.services.scoring.stages import fused_features, load_fusion, load_meta, meta_examples, support_rows
from asdcli.services.training.meta import meta_train
from asdcli.services.store.runs import open_run
from asdcli.services.scoring.score import score_clips



def _row(name: str, clips, scores) -> tuple:
    ev = evaluate_rows(clip_rows(clips, scores))
    labels = [c.is_anomaly for c in clips]
    return (name, auc(labels, scores), pauc(labels, scores), float(np.mean([s.auc for s in ev.sections])),
            float(np.mean([s.pauc for s in ev.sections])), ev.official)


def _score_child(run: Path, test, cache: Path, queue) -> None:
    torch.set_num_threads(2)
    start = time.perf_counter()
    result = score_clips(run, test, cache)
    queue.put((time.perf_counter() - start, len(result.clips)))


def _timed_scoring(run: Path, test, cache: Path) -> tuple[float, float]:
    """(clips/s, peak RSS MB) of one cold `score_clips` in a child process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_score_child, args=(run, test, cache, queue))
    child.start()
    seconds, count = queue.get()
    child.join()
    return count / seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _holdout(run: Path, config, section: str, result) -> tuple[float, float, float, float]:
    """Meta-train without ``section`` (in ``run``, a copy of the benchmark's run, on the examples the
    fusion head was fitted on); (AUC, pAUC) on its test clips unadapted, then adapted."""
    meta_train(run, config, [section])
    run_obj = open_run(run)
    learner, (fusion, _) = load_meta(run_obj), load_fusion(run_obj)
    examples = meta_examples(run_obj, learner.meta)
    rows = [i for i, c in enumerate(result.clips) if c.group == section]
    z = np.stack([result.normalized[n][rows] for n in result.branches], axis=1)
    x, ex_x = fused_features(fusion, z), fused_features(fusion, examples.z)
    sup = support_rows(examples, examples.groups.index(section), learner.cfg, learner.seed)
    labels = [result.clips[i].is_anomaly for i in rows]
    before = learner.scores(x, None, None)
    after = learner.scores(x, ex_x[sup], torch.from_numpy(examples.label).float()[sup])
    return auc(labels, before), pauc(labels, before), auc(labels, after), pauc(labels, after)


def _print_holdouts(holdouts: dict[str, tuple], steps: int) -> None:
    print(f"\nMeta-learner on sections held out of meta-training: unadapted vs adapted ({steps} inner steps "
          "on the section's support set of training clips and pseudo-anomalies), test clips of that section\n")
    print("| held-out section | AUC unadapted | AUC adapted | pAUC unadapted | pAUC adapted |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for section, (a0, p0, a1, p1) in holdouts.items():
        print(f"| {section} | {a0:.3f} | {a1:.3f} | {p0:.3f} | {p1:.3f} |")
    m = np.mean(list(holdouts.values()), axis=0)
    print(f"| mean | {m[0]:.3f} | {m[2]:.3f} | {m[1]:.3f} | {m[3]:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--config", default="default")
    parser.add_argument("--b1", "--ast", dest="ast", help="override branches.pretrained.source: a weights file, or random")
    parser.add_argument("--holdout", nargs="*", help="sections to hold out of meta-training one at a time "
                        "(no names: every section)")
    parser.add_argument("--run", type=Path, help="a run folder to use (and keep): branches already complete in it "
                        "are not retrained; fusion and meta-learner always are")
    parser.add_argument("--cache", type=Path, help="feature cache folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--priors", nargs="+", default=["builtin"], help="fusion.prior values to compare on the same "
                        "branches (e.g. builtin none: the shipped prior against the pseudo-anomalies alone)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = load_config(args.config).with_overrides(seed=args.seed, **{"branches.pretrained.source": args.ast})
    with tempfile.TemporaryDirectory() as tmp:
        data, test = bench_data(args.data, config, Path(tmp))
        run, cache = args.run or Path(tmp) / "run", args.cache or Path(tmp) / "cache"
        start = time.perf_counter()
        done = set(trained_branches(run)) if (run / "run.json").exists() else set()
        asdcli.train(data, run, config, cache_dir=cache, heads=False, progress=asdcli.Progress(
            done=lambda step, _, __: print(f"trained {step.label} ({time.perf_counter() - start:.0f} s)",
                                           file=sys.stderr, flush=True)))
        stages = []
        for prior in reversed(args.priors):  # the first one last: the run keeps it for what follows
            chosen = config.with_settings({"fusion.prior": prior})
            train_fusion(data, run, chosen)
            meta_train(run, chosen, data=data)
            result = score_clips(run, test, cache)
            label = f" (fusion.prior {prior})" if len(args.priors) > 1 else ""
            stages[:0] = [_row(f"attention fusion{label}", result.clips, result.fused),
                          _row(f"final (meta-learner){label}", result.clips, result.score)]
        train_s = time.perf_counter() - start
        rate, peak_mb = _timed_scoring(run, test, Path(tmp) / "cold-cache")
        stages[:0] = [_row(n, result.clips, result.normalized[n]) for n in result.branches]
        stages.insert(len(result.branches), _row("average of branches", result.clips,
                                                 np.mean(list(result.normalized.values()), axis=0)))
        holdouts = {}
        if args.holdout is not None:
            shutil.copytree(run, Path(tmp) / "holdout-run")
            for section in args.holdout or sorted({c.group for c in result.clips}):
                holdouts[section] = _holdout(Path(tmp) / "holdout-run", config, section, result)
    print(f"\nData: {args.data or 'synthetic data of the ' + args.config + ' config'}; config: {args.config}; "
          f"{len(result.clips)} test clips; training{' fusion and meta-learner' if done else ' everything'} took "
          f"{train_s:.0f} s; CPU threads 2\n")
    print("| scores | AUC (pooled) | pAUC (pooled) | AUC (mean over sections) | pAUC (mean) | official score |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, a, p, ma, mp, off in stages:
        print(f"| {name} | {a:.3f} | {p:.3f} | {ma:.3f} | {mp:.3f} | {off:.3f} |")
    if holdouts:
        _print_holdouts(holdouts, config.meta.inner_steps)
    print(f"\nEnd-to-end scoring (cold feature cache, child process): {rate:,.1f} clips/s, peak RSS {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
