"""End-to-end scoring speed and memory of a trained run, each measure in a fresh process.

    python bench/bench_score.py --run RUN --data DATA            # its test clips, then half of them
    python bench/bench_score.py --run RUN --data DATA --branches transformer-ae contrastive diffusion flow
    python bench/bench_score.py --run RUN --data DATA --cached 200 [--reference OTHER_CHECKOUT] [--peer]

What `asd score` does, timed from a fresh interpreter with a cold feature cache: imports, loading
the run (branches, fusion head, meta-learner), decoding audio, features, every branch, fusion,
the adapted meta-learner, decisions. It prints the clips/s with and without the start-up
(imports and loading) and the peak resident memory, for all the test clips of DATA and for half of
them: memory that does not grow with the clips is flat. ``--branches``: score a run that only
has these (the others' files are left out of a copy of the run, whose fusion head and
meta-learner are trained anew on DATA), e.g. the branches that run offline.

``--cached N``: the command a user types, ``asd score FOLDER --run RUN`` over N test clips of DATA
whose features (and frozen b1 embeddings) are already cached, timed from outside as a fresh
process (interpreter start, imports, loading, scoring, writing the CSV), three times after one call
that fills the cache. ``--reference DIR``: the same call with the asdcli of another checkout (the
build before), alternating with this one, so that both see the same machine. ``--peer``: the PyPI
package audio-anomaly on the same clips in a fresh process (bench/peers.py: its ``Monitor`` with the
section's training clips of DATA as the reference).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(run: Path, data: Path, count: int, cache: Path, queue) -> None:
    start = time.perf_counter()
    import torch

    from asdcli.data.layout import discover
    from asdcli.services.scoring.score import Detector

    torch.set_num_threads(2)
    clips = [c for c in discover(data) if c.split == "test"][:count]
    imported = time.perf_counter()
    detector = Detector.load(run, "cpu", cache)
    loaded = time.perf_counter()
    result = detector.score(clips)
    done = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((len(result.clips), imported - start, loaded - imported, done - loaded, peak, result.method,
               result.branches))


def measure(run: Path, data: Path, count: int, tmp: Path) -> tuple:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    cache = Path(tempfile.mkdtemp(dir=tmp))
    child = ctx.Process(target=_child, args=(run, data, count, cache, queue))
    child.start()
    out = queue.get()
    child.join()
    return out


def only_branches(run: Path, data: Path, names: list[str], tmp: Path) -> Path:
    """A copy of ``run`` with only the branches ``names``, its fusion head and meta-learner trained anew."""
    from asdcli.models.registry import BRANCHES, canonical_name
    from asdcli.services.training.fuse import train_fusion
    from asdcli.services.training.meta import meta_train
    from asdcli.services.store.runs import open_run, run_config

    keep = {canonical_name(n) for n in names}
    copy = tmp / "run"
    shutil.copytree(run, copy)
    for name in set(BRANCHES) - keep:
        for path in copy.glob(f"{name}.*"):
            path.unlink()
    for stage in ("fusion", "meta", "examples", "meta_examples"):
        for path in copy.glob(f"{stage}.*"):
            path.unlink()
    config = run_config(open_run(copy))
    train_fusion(data, copy, config)
    meta_train(copy, config, data=data)
    return copy


def _cached_copy(data: Path, count: int, tmp: Path) -> Path:
    """N test clips of DATA copied into a folder of the same layout (their names and sections kept)."""
    from asdcli.data.layout import discover

    clips = [c for c in discover(data) if c.split == "test"][:count]
    folder = tmp / "clips"
    for clip in clips:
        target = folder / clip.path.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip.path, target)
    return folder


def _timed(command: list[str], env: dict, cwd: Path) -> float:
    """Seconds ``command`` takes. ``cwd``: a folder without asdcli in it, so that PYTHONPATH decides
    which build runs (``python -m`` puts the working folder first on the path)."""
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _peer_child(data: str, folder: str) -> None:
    start = time.perf_counter()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import audio_anomaly_scores

    from asdcli.config import AudioConfig
    from asdcli.data.layout import discover

    test = discover(Path(folder))
    groups = {c.group for c in test}
    train = [c for c in discover(Path(data)) if c.split == "train" and c.group in groups]
    scores = audio_anomaly_scores(train, test, AudioConfig())
    print(f"{len(test)} {time.perf_counter() - start:.3f} {scores.seconds:.3f}")


def cached(args, tmp: Path) -> None:
    """The --cached table (module docstring)."""
    folder = _cached_copy(args.data, args.cached, tmp)
    count = sum(1 for _ in folder.rglob("*.wav"))
    cache = tmp / "cache"
    builds = {"this build": Path(__file__).resolve().parents[1]}
    if args.reference:
        builds["reference"] = args.reference.resolve()
    env = {**os.environ, "ASD_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "asdcli", "score", str(folder), "--run", str(args.run.resolve())]
    times: dict[str, list[float]] = {name: [] for name in builds}
    for name, root in builds.items():  # fill the cache (the same entries for both builds)
        _timed(command, {**env, "PYTHONPATH": str(root)}, tmp)
    for _ in range(args.repeats):
        for name, root in builds.items():
            times[name].append(_timed(command, {**env, "PYTHONPATH": str(root)}, tmp))
    print(f"\n`asd score` of {count} cached clips with {args.run} (fresh process each call, wall clock, "
          f"{os.cpu_count()} CPUs)\n")
    print("| build | calls | seconds (each call) | clips/s (median) |")
    print("| --- | ---: | --- | ---: |")
    for name, values in times.items():
        print(f"| {name} | {len(values)} | {', '.join(f'{v:.2f}' for v in values)} | "
              f"{count / statistics.median(values):.1f} |")
    if args.peer:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--peer-child", str(args.data.resolve()),
                              str(folder)], check=True, capture_output=True, text=True, cwd=tmp,
                             env={**env, "PYTHONPATH": str(builds["this build"])})
        wall = time.perf_counter() - start
        clips, _, scoring = out.stdout.split()[-3:]
        print(f"| audio-anomaly (peer, fresh process; reference: the sections' training clips) | 1 | {wall:.2f} "
              f"(its scoring {float(scoring):.2f}) | {int(clips) / wall:.1f} |")


def main() -> None:
    if sys.argv[1:2] == ["--peer-child"]:
        _peer_child(*sys.argv[2:4])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a dataset folder whose test clips are scored")
    parser.add_argument("--branches", nargs="+", help="score with only these branches (fusion and meta-learner refitted)")
    parser.add_argument("--cached", type=int, metavar="N", help="time `asd score` of N cached clips (see above)")
    parser.add_argument("--reference", type=Path, help="with --cached: the repository root of another build")
    parser.add_argument("--peer", action="store_true", help="with --cached: audio-anomaly on the same clips")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.cached:
        with tempfile.TemporaryDirectory() as tmp:
            cached(args, Path(tmp))
        return
    from asdcli.data.layout import discover

    total = sum(1 for c in discover(args.data) if c.split == "test")
    if total < 2:
        sys.exit(f"no test clips under {args.data}")
    with tempfile.TemporaryDirectory() as tmp:
        run = only_branches(args.run, args.data, args.branches, Path(tmp)) if args.branches else args.run
        rows = [measure(run, args.data, count, Path(tmp)) for count in (total // 2, total)]
    print(f"\nScoring with {', '.join(rows[-1][6])} ({rows[-1][5]}), cold feature cache, fresh process, 2 CPU threads\n")
    print("| clips | imports s | loading s | scoring s | clips/s (scoring) | clips/s (with start-up) | peak RSS MB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for count, imports, loading, scoring, peak, _, _ in rows:
        print(f"| {count} | {imports:.1f} | {loading:.1f} | {scoring:.1f} | {count / scoring:.1f} | "
              f"{count / (imports + loading + scoring):.1f} | {peak:,.0f} |")


if __name__ == "__main__":
    main()
