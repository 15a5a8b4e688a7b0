"""End-to-end scoring speed and memory of a trained run, each measure in a fresh process.

    python bench/bench_score.py --run RUN --data DATA            # its test clips, then half of them
    python bench/bench_score.py --run RUN --data DATA --branches transformer-ae contrastive diffusion flow

What `asd score` does, timed from a fresh interpreter with a cold feature cache: imports, loading
the run (branches, fusion head, meta-learner), decoding audio, features, every branch, fusion,
the adapted meta-learner, decisions. It prints the clips/s with and without the start-up
(imports and loading) and the peak resident memory, for all the test clips of DATA and for half of
them: memory that does not grow with the clips is flat. ``--branches``: score a run that only
has these (the others' files are left out of a copy of the run, whose fusion head and
meta-learner are trained anew on DATA), e.g. the branches that run offline.
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


def _child(run: Path, data: Path, count: int, cache: Path, queue) -> None:
    start = time.perf_counter()
    import torch

    from asdcli.data.layout import discover
    from asdcli.services.score import Detector

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
    from asdcli.services.fuse import train_fusion
    from asdcli.services.meta import meta_train
    from asdcli.services.runs import open_run, run_config

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a dataset folder whose test clips are scored")
    parser.add_argument("--branches", nargs="+", help="score with only these branches (fusion and meta-learner refitted)")
    args = parser.parse_args()
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
