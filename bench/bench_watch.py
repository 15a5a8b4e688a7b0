"""`asd watch` under the loads a recorder gives it, against `asd score` of the same files.

    python bench/bench_watch.py --work /tmp/watch            # trains a tiny run on synthetic data first
    python bench/bench_watch.py --work /tmp/watch --run RUN --clips DIR

Every figure comes from `asd watch` running as a separate process, as a user runs it:

1. latency: one file a second; from the moment a file's writer closes it to its line in the log
   (median, 90th percentile), beside the time `Detector.score` takes for one clip in-process;
2. burst: 500 files at once, scored as a backlog; clips per second against `asd score` of the same
   files in the same call;
3. crash: files arriving while the watcher is killed with SIGKILL at random moments and restarted;
   then every file must be in the log exactly once, no line cut, every score equal to `asd score`'s;
4. memory and idle CPU: peak RSS after 1,000 and after all clips of a long run (flat: within 5 %),
   then the watcher's CPU share over 20 s with no new file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ASD = [sys.executable, "-m", "asdcli"]


def log_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def clips_logged(path: Path) -> list[dict]:
    return [line for line in log_lines(path) if line["kind"] in ("clip", "skipped")]


def name(source: Path, i: int) -> str:
    """The ``i``-th copy's file name: the source's (its section and domain still read from it) and a number."""
    return f"{source.stem}_n{i:06d}{source.suffix}"


WATCH_OPTIONS: list[str] = []  # --where: ["--where", "--data", DATA]


def start(folder: Path, run: Path, log: Path) -> subprocess.Popen:
    """asd watch on ``folder``; what it says goes to ``<log>.stderr`` (a pipe nobody reads would
    fill up and stop it)."""
    stderr = open(log.with_suffix(".stderr"), "ab")
    return subprocess.Popen(ASD + ["watch", str(folder), "--run", str(run), "--log", str(log), "--json",
                                   "--settle", "0.5", *WATCH_OPTIONS], stdout=subprocess.DEVNULL, stderr=stderr)


def said(log: Path) -> str:
    path = log.with_suffix(".stderr")
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def wait_for(log: Path, count: int, timeout: float, proc: subprocess.Popen | None = None) -> float:
    """Seconds until ``count`` clips are in the log."""
    begin = time.perf_counter()
    while len(clips_logged(log)) < count:
        if time.perf_counter() - begin > timeout:
            raise SystemExit(f"only {len(clips_logged(log))} of {count} clips logged after {timeout:.0f} s")
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"asd watch ended: {said(log)}")
        time.sleep(0.05)
    return time.perf_counter() - begin


def ready(log: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the watcher has loaded its run (it opens the log then)."""
    begin = time.perf_counter()
    while not log.exists():
        if proc.poll() is not None or time.perf_counter() - begin > timeout:
            raise SystemExit(f"asd watch did not start: {said(log)}")
        time.sleep(0.1)
    time.sleep(1.0)


def drop(source: Path, target: Path) -> float:
    """Write ``source`` to ``target`` as a recorder would (one write, then close); the close time."""
    data = source.read_bytes()
    with open(target, "wb") as handle:
        handle.write(data)
    return time.time()


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def rss_kb(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def asd_score(folder: Path, run: Path) -> tuple[dict[str, float], float]:
    begin = time.perf_counter()
    done = subprocess.run(ASD + ["score", str(folder), "--run", str(run)], capture_output=True, check=True)
    seconds = time.perf_counter() - begin
    rows = [line.split(",") for line in done.stdout.decode("utf-8", "surrogateescape").splitlines() if line]
    return {name: float(score) for name, score, *_ in rows}, seconds


def session(args, name: str) -> tuple[Path, Path, subprocess.Popen]:
    """A fresh recorder folder ``<work>/<name>/fan``, its log, and asd watch on it, ready to score."""
    folder, log = args.work / name / "fan", args.work / f"{name}.jsonl"
    folder.mkdir(parents=True)
    proc = start(folder.parent, args.run, log)
    ready(log, proc)
    return folder, log, proc


def latency(args, sources: list[Path]) -> None:
    folder, log, proc = session(args, "latency")
    closed = {}
    for i in range(args.latency_files):
        source = sources[i % len(sources)]
        closed[f"fan/{name(source, i)}"] = drop(source, folder / name(source, i))
        time.sleep(1.0)
    wait_for(log, args.latency_files, 60, proc)
    stop(proc)
    from datetime import datetime
    delays = sorted(datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp() - closed[line["file"]]
                    for line in clips_logged(log))
    from asdcli.services.scoring.score import Detector
    detector = Detector.load(args.run)
    detector.score([sources[0]])
    begin = time.perf_counter()
    for source in sources[:5]:
        detector.score([source])
    one = (time.perf_counter() - begin) / 5
    print(f"| latency, 1 file/s ({args.latency_files} files) | median {statistics.median(delays):.2f} s, 90th "
          f"percentile {delays[int(0.9 * (len(delays) - 1))]:.2f} s | scoring one clip in-process: {one:.2f} s |")


def burst(args, sources: list[Path]) -> None:
    folder, log, proc = session(args, "burst")
    for i in range(args.burst):
        os.link(sources[i % len(sources)], folder / name(sources[i % len(sources)], i))
    seconds = wait_for(log, args.burst, 1800, proc)
    stop(proc)
    _, score_s = asd_score(folder, args.run)
    print(f"| burst of {args.burst} files | {args.burst / seconds:.1f} clips/s from the first file to the last line "
          f"({seconds:.1f} s) | asd score of the same files: {args.burst / score_s:.1f} clips/s "
          f"({score_s:.1f} s, start-up included) |")


def crash(args, sources: list[Path]) -> None:
    folder, log = args.work / "crash" / "fan", args.work / "crash.jsonl"
    folder.mkdir(parents=True)
    rng = random.Random(0)
    names = [name(sources[i % len(sources)], i) for i in range(args.crash_files)]
    kills, written = 0, 0
    proc = start(folder.parent, args.run, log)
    while written < len(names) or kills < args.kills:
        for i in range(written, min(len(names), written + rng.randint(50, 400))):
            os.link(sources[i % len(sources)], folder / names[i])
            written += 1
        time.sleep(rng.uniform(0.5, 4.0))
        if kills < args.kills:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start(folder.parent, args.run, log)
    wait_for(log, len(names), 1800, proc)
    stop(proc)
    raw = log.read_bytes()
    lines = clips_logged(log)
    files = [line["file"] for line in lines]
    expected, _ = asd_score(folder, args.run)
    mismatched = sum(abs(line["score"] - expected[Path(line["file"]).name]) > 1e-5 for line in lines)
    whole = raw.endswith(b"\n")
    print(f"| {len(names)} files, killed {kills} times | {len(set(files))} in the log, {len(files) - len(set(files))} "
          f"twice, {len(names) - len(set(files))} missing; log ends with a whole line: {whole} | "
          f"scores unlike asd score's: {mismatched} |")


def memory(args, sources: list[Path]) -> None:
    folder, log, proc = session(args, "memory")
    marks = {}
    for step in range(0, args.memory_files, 500):
        for i in range(step, min(step + 500, args.memory_files)):
            os.link(sources[i % len(sources)], folder / name(sources[i % len(sources)], i))
        wait_for(log, min(step + 500, args.memory_files), 1800, proc)
        done = min(step + 500, args.memory_files)
        if done in (1000, args.memory_files):
            marks[done] = rss_kb(proc.pid)
    begin_cpu, begin = cpu_seconds(proc.pid), time.perf_counter()
    time.sleep(20)
    idle = (cpu_seconds(proc.pid) - begin_cpu) / (time.perf_counter() - begin)
    stop(proc)
    (rss1, peak1), (rss2, peak2) = marks[1000], marks[args.memory_files]
    print(f"| {args.memory_files} clips | RSS after 1,000: {rss1 / 1024:.0f} MB (peak {peak1 / 1024:.0f}); after "
          f"{args.memory_files:,}: {rss2 / 1024:.0f} MB (peak {peak2 / 1024:.0f}), {100 * (peak2 / peak1 - 1):+.1f} % | "
          f"idle CPU with no new file: {100 * idle:.2f} % |")


def prepare(args) -> list[Path]:
    """The run and the clips: given, or a tiny run trained on fresh synthetic data."""
    data = args.work / "data"
    if args.run is None:
        subprocess.run(ASD + ["synth", str(data), "-c", "tiny"], check=True, capture_output=True)
        args.run = args.work / "run"
        subprocess.run(ASD + ["train", str(data), "--run", str(args.run), "-c", "tiny", "--no-evaluate"], check=True,
                       capture_output=True)
    folder = args.clips or data
    return sorted(p for p in folder.rglob("*.wav") if "/test/" in str(p) or args.clips)[:200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--clips", type=Path, help="audio files to drop (default: the synthetic test clips)")
    parser.add_argument("--latency-files", type=int, default=30)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--crash-files", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--memory-files", type=int, default=10_000)
    parser.add_argument("--only", nargs="*", choices=["latency", "burst", "crash", "memory"])
    parser.add_argument("--where", action="store_true", help="asd watch --where --data (the synthetic training "
                        "data; only with the run this script trains): anomalous clips are explained as they are logged")
    args = parser.parse_args()
    if args.where and args.run is not None:
        sys.exit("--where needs the run this script trains (its training data are the baselines)")
    for given in (args.run, args.clips):
        if given is not None and args.work.resolve() in (given.resolve(), *given.resolve().parents):
            sys.exit(f"{given} lies in --work {args.work}, which this script empties first: give another --work")
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    sources = prepare(args)
    if args.where:
        WATCH_OPTIONS.extend(["--where", "--data", str(args.work / "data")])
    print(f"asd watch{' --where' if args.where else ''} with {args.run}, {len(sources)} distinct clips, "
          f"CPU threads {os.cpu_count()}\n")
    print("| case | asd watch | reference |")
    print("| --- | --- | --- |")
    for name, case in (("latency", latency), ("burst", burst), ("crash", crash), ("memory", memory)):
        if not args.only or name in args.only:
            case(args, sources)


if __name__ == "__main__":
    main()
