"""Whether the batch loader keeps a fast device fed, in one command.

    python bench/bench_loading.py                        # default synthetic data
    python bench/bench_loading.py --data ../shared/data/dcase2020-mini/slider --config large

Training reads every batch's features from the feature cache (the clips are not held in memory,
so that memory stays flat in their number). Three measurements on the training clips of the
data, their features already cached, as in every epoch of a training:

1. Assembly rate: clips/s of batches read and stacked with ``loader.prefetch 0`` (each batch read
   when the model asks for it: the loader before this bench) and with batches assembled ahead by
   1, 2 and 4 ``loader.workers`` threads.
2. A device that never waits for the host: each step takes STEP ms during which the host holds
   no lock (``time.sleep``, as a host waits for a GPU). Busy = the steps' time / wall time: the
   share of the time a GPU of that speed would compute rather than wait for the next batch.
   This is a model of a GPU, not a GPU: none was measured.
3. Real training on this CPU: clips/s of b2 and b3 epochs with ``loader.prefetch`` 0 and the
   default, to show what the loader threads cost where the model is slow (the weights are the
   same either way: tests/services/test_train.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from asdcli.config import load_config
from asdcli.services.dataset import ClipSet, Vocabulary, training_clips
from asdcli.services.features import make_extractor
from asdcli.services.train import train_branch
from common import bench_data, train_rate

LOADERS = [(0, 1), (2, 1), (2, 2), (4, 4)]  # (loader.prefetch, loader.workers)
STEPS_MS = [2.0, 5.0, 20.0]


def _chunks(clipset: ClipSet, batch_size: int, seed: int) -> list[list[int]]:
    order = torch.randperm(len(clipset), generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pass(clipset: ClipSet, prefetch: int, workers: int, step_s: float, epochs: int) -> tuple[float, int]:
    """(wall seconds, clips) of ``epochs`` passes over the clips, each step taking ``step_s`` without the GIL."""
    clipset.config = clipset.config.with_overrides(**{"loader.prefetch": prefetch, "loader.workers": workers})
    start, clips = time.perf_counter(), 0
    for epoch in range(epochs):
        for batch in clipset.on_device(_chunks(clipset, clipset.config.train.batch_size, epoch), "cpu"):
            clips += len(batch)
            if step_s:
                time.sleep(step_s)
    return time.perf_counter() - start, clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--config", default="default")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the clips per loader measurement")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        data, _ = bench_data(args.data, config, Path(tmp))
        clips = training_clips(str(data))
        clipset = ClipSet(clips, config, make_extractor(config, Path(tmp) / "cache"), Vocabulary.from_clips(clips))
        shape = tuple(clipset.batch([0]).feats.shape[1:])
        _pass(clipset, 0, 1, 0.0, 1)  # the page cache holds the feature files, as after a training's first epoch
        rates = {}
        for prefetch, workers in LOADERS:
            seconds, n = _pass(clipset, prefetch, workers, 0.0, args.epochs)
            rates[prefetch, workers] = n / seconds
        busy = {}
        for step_ms in STEPS_MS:
            for prefetch, workers in LOADERS:
                seconds, n = _pass(clipset, prefetch, workers, step_ms / 1000, 1)
                steps = -(-n // config.train.batch_size) if n else 0
                busy[step_ms, prefetch, workers] = steps * step_ms / 1000 / seconds
        training = {}
        for name in ("b2", "b3"):
            for prefetch in (0, config.loader.prefetch):
                run = Path(tmp) / f"{name}-{prefetch}"
                train_branch(name, data, run, config.with_overrides(**{"loader.prefetch": prefetch, "train.epochs": 1}),
                             cache_dir=Path(tmp) / "cache")
                training[name, prefetch] = train_rate(run, {"b2": "transformer-ae", "b3": "contrastive"}[name])
    print(f"\nconfig {args.config}: {len(clipset)} training clips, batch size {config.train.batch_size}, "
          f"features {shape}, {args.epochs} passes per loader, 2 CPU threads\n")
    print("| loader | assembled clips/s | " + " | ".join(f"busy at {s:g} ms/step" for s in STEPS_MS) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in STEPS_MS) + " |")
    for prefetch, workers in LOADERS:
        what = "each batch when needed" if prefetch == 0 else f"prefetch {prefetch}, {workers} worker(s)"
        print(f"| {what} | {rates[prefetch, workers]:,.0f} | "
              + " | ".join(f"{busy[s, prefetch, workers]:.0%}" for s in STEPS_MS) + " |")
    print("\n| branch | train clips/s, prefetch 0 | train clips/s, prefetch "
          f"{config.loader.prefetch} | ratio |\n| --- | ---: | ---: | ---: |")
    for name in ("b2", "b3"):
        a, b = training[name, 0], training[name, config.loader.prefetch]
        print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
