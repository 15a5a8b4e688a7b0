"""How the cost of every stage grows with the data, and what a DCASE-sized set would cost.

    python bench/bench_scale.py                              # 100, 300, 1000 normal clips per section
    python bench/bench_scale.py --sizes 20 40 80 --epochs 2  # a quick look at the growth
    python bench/bench_scale.py --config large --devices cpu cuda --threads 16   # GPU against CPU

Synthetic data (one machine, ``--sections`` sections, 10 s clips) at each size; every stage runs
in a fresh child process, so that its wall time and its peak resident memory are its own: the
features, each branch's training and its scoring of the training clips (b1 is left out where its
AST cannot be loaded), the fusion head (its pseudo-anomalies included), the meta-learner, the
scoring of the test clips, and in the same run the baseline-style reference autoencoder of
bench/baseline_ae.py (train + score). It prints a table per size, the growth exponent of each
stage's time and memory between the two largest sizes (1: linear; memory 0: flat), the CPU hours
of a DCASE-sized set (7 machines x 1,000 normal training clips) extrapolated with that exponent,
and the pipeline/reference time ratio. With several ``--devices`` every stage runs on each (the
first is the one compared against), and a last table gives each stage's minutes and speed-up.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asdcli.config import AsdConfig, load_config
from asdcli.models.registry import BRANCHES, training_order
from asdcli.data.layout import discover
from asdcli.data.synth import generate
from asdcli.errors import AsdError
from asdcli.services.inputs.dataset import training_clips
from asdcli.services.inputs.features import extract_features
from asdcli.services.training.fuse import train_fusion
from asdcli.services.training.meta import meta_train
from asdcli.services.inputs.device import resolve_device
from asdcli.services.scoring.score import score_clips
from asdcli.services.training.train import train_branch
from baseline_ae import reference_scores

DCASE_CLIPS = 7 * 1000  # normal training clips of a DCASE development set


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _stage(kind: str, args: dict, queue) -> None:
    """One stage in this (child) process; puts {stage: seconds} (several for a branch) and the peak."""
    torch.set_num_threads(args["threads"])
    config, data, run, cache, device = args["config"], args["data"], args["run"], args["cache"], args["device"]
    times: dict[str, float] = {}
    start = time.perf_counter()
    try:
        if kind == "features":
            extract_features(discover(data), config, cache)
            times["features"] = time.perf_counter() - start
        elif kind.startswith("b"):
            scoring: list[float] = []
            train_branch(kind, data, run, config, device, cache_dir=cache,
                         on_score=lambda done, total: scoring.append(time.perf_counter()) if not scoring else None)
            end = time.perf_counter()
            first = scoring[0] if scoring else end
            times[f"{kind} training"] = first - start
            times[f"{kind} scoring its training clips"] = end - first
        elif kind == "fusion":
            train_fusion(data, run, config, device=device)
            times["fusion (pseudo-anomalies + head)"] = time.perf_counter() - start
        elif kind == "meta":
            meta_train(run, config, data=data, device=device)
            times["meta-learner"] = time.perf_counter() - start
        elif kind == "score":
            test = [c for c in discover(data) if c.split == "test"]
            score_clips(run, test, cache, device=device)
            times[f"scoring {len(test)} test clips"] = time.perf_counter() - start
        elif kind == "reference":
            test = [c for c in discover(data) if c.split == "test"]
            ref = reference_scores(training_clips(str(data)), test, config, config.seed, device=device)
            times["reference AE training"], times["reference AE scoring"] = ref.train_s, ref.score_s
        queue.put((times, _peak_mb(), None))
    except AsdError as error:
        queue.put((times, _peak_mb(), str(error)))


def run_stage(kind: str, args: dict) -> tuple[dict[str, float], float, str | None]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_stage, args=(kind, args, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def size_config(size: int, args) -> AsdConfig:
    """The config of a run at ``size`` normal training clips per section."""
    config = load_config(args.config)
    overrides = {"synth.machines": ["fan"], "synth.sections": args.sections, "synth.train_source": size,
                 "synth.train_target": 0, "synth.test_per_domain": args.test_per_domain, "synth.duration_s": 10.0}
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.ast:
        overrides["branches.pretrained.source"] = args.ast
    return config.with_overrides(**overrides)


def measure(size: int, args, tmp: Path, device: str) -> dict[str, tuple[float, float]]:
    """{stage: (seconds, peak MB)} at ``size`` normal training clips per section on ``device``
    (the data generated under ``tmp`` already)."""
    config, data = size_config(size, args), tmp / f"data{size}"
    where = "" if device == "cpu" else f"-{device.replace(':', '')}"
    shared = {"config": config, "data": data, "run": tmp / f"run{size}{where}", "cache": tmp / f"cache{size}{where}",
              "threads": args.threads, "device": torch.device(device)}
    out: dict[str, tuple[float, float]] = {}
    ids = [BRANCHES[n].bid for n in training_order(config)]  # upstream branches first
    for kind in ["features", *ids, "fusion", "meta", "score", "reference"]:
        times, peak, error = run_stage(kind, shared)
        if error is not None:
            print(f"  size {size} on {device}: {kind} left out: {error.splitlines()[0][:160]}", file=sys.stderr,
                  flush=True)
            continue
        for stage, seconds in times.items():
            out[stage] = (seconds, peak)
        print(f"  size {size} on {device}: {kind} done ({sum(times.values()):.0f} s, peak {peak:,.0f} MB)",
              file=sys.stderr, flush=True)
    return out


def _exponent(a: float, b: float, n_a: int, n_b: int) -> float:
    return math.log(max(b, 1e-9) / max(a, 1e-9)) / math.log(n_b / n_a)


def report(results: dict[int, dict[str, tuple[float, float]]], sections: int, device: str) -> None:
    sizes = sorted(results)
    stages = list(dict.fromkeys(s for size in sizes for s in results[size]))
    small, large = sizes[-2], sizes[-1]
    n_large = large * sections
    header = ["stage", *(f"{s}/section: s" for s in sizes), *(f"{s}: peak MB" for s in sizes),
              "time exponent", "memory exponent", f"DCASE-sized h ({device})"]
    print("| " + " | ".join(header) + " |")
    print("| --- " + "| ---: " * (len(header) - 1) + "|")
    pipeline_s = 0.0
    totals = {"pipeline": 0.0, "reference": 0.0}
    for stage in stages:
        times = [results[s].get(stage, (float("nan"), float("nan")))[0] for s in sizes]
        peaks = [results[s].get(stage, (float("nan"), float("nan")))[1] for s in sizes]
        t_exp = _exponent(times[-2], times[-1], small, large)
        m_exp = _exponent(peaks[-2], peaks[-1], small, large)
        hours = times[-1] * (DCASE_CLIPS / n_large) ** t_exp / 3600 if np.isfinite(t_exp) else float("nan")
        is_reference = stage.startswith("reference")
        if not stage.startswith("scoring") and np.isfinite(hours):
            totals["reference" if is_reference else "pipeline"] += hours
        if not is_reference and not stage.startswith("scoring") and np.isfinite(times[-1]):
            pipeline_s += times[-1]
        print("| " + " | ".join([stage, *(f"{t:.1f}" for t in times), *(f"{p:,.0f}" for p in peaks),
                                 f"{t_exp:.2f}", f"{m_exp:.2f}", f"{hours:.2f}"]) + " |")
    ref_large = sum(results[large][s][0] for s in results[large] if s.startswith("reference AE training"))
    print(f"\nTraining the pipeline at {large} clips per section: {pipeline_s:.0f} s; the reference AE "
          f"(100 epochs): {ref_large:.0f} s; ratio {pipeline_s / max(ref_large, 1e-9):.2f} (goal <= 1)")
    print(f"Extrapolated to {DCASE_CLIPS:,} training clips: pipeline {totals['pipeline']:.1f} h, "
          f"reference {totals['reference']:.1f} h on {device} (wall hours with this many CPU threads, each stage by "
          "its own exponent)")


def speedups(results: dict[str, dict[int, dict[str, tuple[float, float]]]]) -> None:
    """Minutes of every stage on each device at the largest size, and the speed-up over the first device."""
    devices = list(results)
    base, large = devices[0], max(results[devices[0]])
    stages = list(dict.fromkeys(s for d in devices for s in results[d][large]))
    print(f"\nAt {large} clips per section, minutes per stage and speed-up over {base}:\n")
    print("| stage | " + " | ".join(f"{d}: min" for d in devices) + " | "
          + " | ".join(f"{d} speed-up" for d in devices[1:]) + " |")
    print("| --- " + "| ---: " * (2 * len(devices) - 1) + "|")
    for stage in stages:
        minutes = [results[d][large].get(stage, (float("nan"), 0.0))[0] / 60 for d in devices]
        print(f"| {stage} | " + " | ".join(f"{m:.2f}" for m in minutes) + " | "
              + " | ".join(f"{minutes[0] / max(m, 1e-9):.1f}x" for m in minutes[1:]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000],
                        help="normal training clips per section (two at least)")
    parser.add_argument("--sections", type=int, default=2)
    parser.add_argument("--test-per-domain", type=int, default=10, help="test clips per section (half anomalous)")
    parser.add_argument("--config", default="default")
    parser.add_argument("--epochs", type=int, help="override train.epochs (a quicker look; say so when reporting)")
    parser.add_argument("--b1", "--ast", dest="ast", help="override branches.pretrained.source: a weights file, or random")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="folder for data, runs and caches (default: a temporary one)")
    parser.add_argument("--devices", nargs="+", default=["cpu"], help="run every stage on each (cpu, cuda, cuda:N)")
    args = parser.parse_args()
    if len(args.sizes) < 2:
        sys.exit("--sizes: give two sizes at least")
    try:
        devices = [str(resolve_device(device=d)) for d in args.devices]
    except AsdError as error:
        sys.exit(str(error))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        results: dict[str, dict] = {d: {} for d in devices}
        for size in sorted(args.sizes):
            print(f"size {size} ...", file=sys.stderr, flush=True)
            config = size_config(size, args)
            generate(work / f"data{size}", config.synth, config.seed)
            for device in devices:
                results[device][size] = measure(size, args, work, device)
    for device in devices:
        print(f"\nScale: config {args.config}" + (f", train.epochs {args.epochs}" if args.epochs else "")
              + f", {args.sections} sections of 10 s clips, {args.threads} CPU threads, device {device}\n")
        report(results[device], args.sections, device)
    if len(devices) > 1:
        speedups(results)


if __name__ == "__main__":
    main()
