"""Scoring one clip: `asd score` in a fresh process against a `Detector` loaded once.

    python bench/bench_api.py --run demo/run --data demo/data      # after `make demo`

Prints, in the same command: the wall time of `asd score CLIP --run RUN` (a new process: imports,
loading every stage, scoring), of `Detector.load` (no disk cache: every call decodes and computes
its features), and the median time of `Detector.score([CLIP])` and `Detector.score_waveform(...)`
over repeats on the loaded detector.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

from asdcli import Detector
from asdcli.data.layout import discover


def _median_s(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder with test clips of the run's sections")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    clip = next(c for c in discover(args.data) if c.split == "test")
    asd = Path(sys.executable).with_name("asd")
    start = time.perf_counter()
    done = subprocess.run([str(asd), "score", str(clip.path), "--run", str(args.run)], capture_output=True, text=True)
    cli_s = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(done.stderr)
    start = time.perf_counter()
    detector = Detector.load(args.run)
    load_s = time.perf_counter() - start
    detector.score([clip.path])  # warm: the section's adapted meta-learner and thresholds are made once
    wave, rate = sf.read(str(clip.path), dtype="float32")
    file_s = _median_s(lambda: detector.score([clip.path]), args.repeats)
    wave_s = _median_s(lambda: detector.score_waveform(wave, rate, clip.machine, clip.section, clip.domain), args.repeats)
    print(f"\nOne clip ({clip.path.name}), run {args.run} ({detector.method}, {len(detector.names)} branches), "
          f"CPU threads 2\n")
    print("| what | seconds | share of `asd score` |")
    print("| --- | ---: | ---: |")
    for name, value in (("`asd score CLIP` (new process)", cli_s), ("`Detector.load(run)` (once)", load_s),
                        (f"`Detector.score([path])` (median of {args.repeats})", file_s),
                        (f"`Detector.score_waveform(...)` (median of {args.repeats})", wave_s)):
        print(f"| {name} | {value:.3f} | {value / cli_s:.1%} |")


if __name__ == "__main__":
    main()
