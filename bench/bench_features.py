"""Feature-extraction throughput and peak memory: asd against the DCASE baseline's way.

Reference: what the DCASE 2020-2023 baselines do, one file at a time with librosa
(``librosa.load(sr=None)``, ``librosa.feature.melspectrogram``, ``20 / power * log10(mel + eps)``).
asd: soundfile decoding and torchaudio log-mel in a thread pool, cold (no cache) and as a cached
re-read. Each mode runs in its own subprocess so that its peak RSS is its own.

    python bench/bench_features.py [--data ../shared/data/dcase2020-mini] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dcase2020-mini"


def _files(data: Path, repeat: int) -> list[Path]:
    files = sorted(p for p in data.rglob("*.wav"))
    return files * repeat


def run_reference(files: list[Path]) -> int:
    import librosa
    import numpy as np

    kept = []  # the baselines hold every clip's features in one in-memory array
    for path in files:
        y, sr = librosa.load(str(path), sr=None, mono=False)
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=1024, hop_length=512, n_mels=128, power=2.0)
        kept.append(20.0 / 2.0 * np.log10(mel + sys.float_info.epsilon))
    return len(kept)


def run_asd(files: list[Path], cache: str | None, workers: int) -> int:
    from asdcli.config import load_config
    from asdcli.data.layout import parse_clip
    from asdcli.services.inputs.features import iter_features, make_extractor

    cfg = load_config("default")
    extractor = make_extractor(cfg, cache)
    clips = [parse_clip(p) for p in files]  # the listing step, as the reference's file list
    done = 0
    for item in iter_features(clips, extractor, workers):
        if item.error is not None:
            raise RuntimeError(item.error)
        done += 1
    return done


def _child(mode: str, data: Path, repeat: int, cache: str | None, workers: int) -> None:
    files = _files(data, repeat)
    run = (lambda fs: run_reference(fs)) if mode == "reference" else (
        lambda fs: run_asd(fs, cache if mode in ("warm", "write") else None, workers))
    # Untimed warm-up: imports and first-call set-up of either library; for "warm", fill the cache.
    run(files if mode == "warm" else files[:2])
    if mode == "write":  # time computing and writing every entry once
        shutil.rmtree(cache, ignore_errors=True)
        files = _files(data, 1)
    start = time.perf_counter()
    count = run(files)
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"clips": count, "seconds": elapsed, "peak_mb": peak_mb}))


def _spawn(mode: str, data: Path, repeat: int, cache: str, workers: int, tries: int = 2) -> dict:
    """Run one mode in a fresh process ``tries`` times; keep the fastest (this VM's speed drifts)."""
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--repeat", str(repeat),
           "--cache", cache, "--workers", str(workers)]
    runs = []
    for _ in range(tries):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"] / r["clips"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=4, help="pass over the file list this many times")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", choices=["reference", "cold", "write", "warm"])
    parser.add_argument("--cache")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.data, args.repeat, args.cache, args.workers)
        return
    if not args.data.is_dir():
        sys.exit(f"data folder {args.data} not found (pass --data)")
    n_files = len(_files(args.data, 1))
    with tempfile.TemporaryDirectory() as cache:
        rows = [
            ("reference: librosa, one file at a time", _spawn("reference", args.data, args.repeat, cache, 1)),
            (f"asd cold ({args.workers} threads, no cache)", _spawn("cold", args.data, args.repeat, cache, args.workers)),
            (f"asd cold, {4 * args.repeat}x the clips", _spawn("cold", args.data, 4 * args.repeat, cache, args.workers)),
            ("asd cold, writing the cache (`asd features`)", _spawn("write", args.data, args.repeat, cache, args.workers)),
            ("asd cached re-read", _spawn("warm", args.data, args.repeat, cache, args.workers)),
        ]
    ref_rate = rows[0][1]["clips"] / rows[0][1]["seconds"]
    print(f"Feature extraction on {n_files} real clips from {args.data} (128 mels, n_fft 1024, hop 512)\n")
    print("| mode | clips | clips/s | speed-up | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        rate = r["clips"] / r["seconds"]
        print(f"| {name} | {r['clips']} | {rate:,.1f} | {rate / ref_rate:,.1f}x | {r['peak_mb']:,.0f} |")


if __name__ == "__main__":
    main()
