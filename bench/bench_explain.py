"""Localisation: does `asd explain` point at the span (and band) where a fault really is?

    python bench/bench_explain.py --work /tmp/bench_explain [--seeds 0 1] [--config tiny]

For each seed: `asd synth` with the localised faults only (knock, whine, dropout; their spans and
bands in faults.csv), `asd train` on it, then `Detector.explain` of every test clip (its
sections' normal training clips as the frame-by-frame baseline, as `asd explain --data` does). Per kind: the
clip-level AUC of the final score (anomalous clips of that kind against all normal test clips),
how many anomalous clips asd flags, and of those the share whose top span overlaps the true span
with IoU >= 0.3; for whines also the share whose reported band holds the true band. The PyPI
package audio-anomaly on the same clips (its Monitor with the section's training clips as the
reference; its strongest event as its top span; it reports no band): the share of clips it
reports an event for, and of those the share with IoU >= 0.3.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ASD = [sys.executable, "-m", "asdcli"]
KINDS = ("knock", "whine", "dropout")
NAMED = {"knock": "burst", "whine": "tone", "dropout": "dropout"}  # the kind asd explain should name


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def peer_spans(data: Path, clips) -> dict[str, tuple[float, float] | None]:
    """audio-anomaly's strongest event per clip (None: no event), the section's training clips as reference."""
    import audio_anomaly
    import soundfile as sf

    from asdcli.data.layout import discover

    train = [c for c in discover(data) if c.split == "train"]
    monitors, out = {}, {}
    for clip in clips:
        if clip.group not in monitors:
            waves = [sf.read(str(c.path), dtype="float32")[0] for c in train if c.group == clip.group]
            monitors[clip.group] = audio_anomaly.Monitor((np.concatenate(waves), 16000))
        wave, rate = sf.read(str(clip.path), dtype="float32")
        events = monitors[clip.group].check((wave, rate)).anomalies
        best = max(events, key=lambda e: e.score) if events else None
        out[clip.path.name] = (best.start_s, best.end_s) if best else None
    return out


def one_seed(seed: int, args) -> dict[str, dict]:
    from asdcli.data.layout import discover
    from asdcli.metrics import auc
    from asdcli.services.scoring.score import Detector

    data, run, cache = args.work / f"data{seed}", args.work / f"run{seed}", args.work / "cache"
    subprocess.run(ASD + ["synth", str(data), "-c", args.config, "--seed", str(seed),
                          "synth.anomalies=[knock,whine,dropout]"], check=True, capture_output=True)
    subprocess.run(ASD + ["train", str(data), "--run", str(run), "-c", args.config, "--seed", str(seed),
                          "--no-evaluate", "--cache-dir", str(cache)], check=True, capture_output=True)
    truth = {r["file"]: r for r in csv.DictReader((data / "faults.csv").open())}
    test = [c for c in discover(data) if c.split == "test"]
    detector = Detector.load(run, "cpu", cache)
    reference = [c for c in discover(data) if c.split == "train"]
    start = time.perf_counter()
    explained = detector.explain(test, reference).explanations
    seconds = (time.perf_counter() - start) / max(1, len(explained))
    alone = []
    for given in (None, reference):  # one clip, as `asd explain CLIP` without and with --data (its
        start = time.perf_counter()  # section's baseline kept in the cache by the call above)
        detector.explain(test[:1], given)
        alone.append(time.perf_counter() - start)
    by_name = {e.clip.path.name: e for e in explained}
    normals = [e.score for e in explained if e.clip.is_anomaly == 0]
    peers = peer_spans(data, [c for c in test if c.path.name in truth])
    rows = {}
    for kind in KINDS:
        faults = [(by_name[f], r) for f, r in truth.items() if r["kind"] == kind and f in by_name]
        flagged = [(e, r) for e, r in faults if e.decision]
        spans = [iou(e.span, (float(r["start_s"]), float(r["end_s"]))) >= 0.3 for e, r in flagged]
        bands = [e.band_hz[0] <= float(r["low_hz"]) and float(r["high_hz"]) <= e.band_hz[1] for e, r in flagged]
        named = [e.kind == NAMED[kind] for e, _ in flagged]
        peer = [peers[e.clip.path.name] for e, _ in faults]
        peer_hits = [iou(p, (float(r["start_s"]), float(r["end_s"]))) >= 0.3 for p, (_, r) in zip(peer, faults) if p]
        rows[kind] = {"auc": auc([0] * len(normals) + [1] * len(faults), normals + [e.score for e, _ in faults]),
                      "clips": len(faults), "flagged": len(flagged), "span": float(np.mean(spans)) if spans else None,
                      "band": float(np.mean(bands)) if bands and kind == "whine" else None,
                      "named": float(np.mean(named)) if named else None,
                      "peer_events": sum(p is not None for p in peer) / max(1, len(peer)),
                      "peer_span": float(np.mean(peer_hits)) if peer_hits else None, "seconds": seconds,
                      "alone": alone}
    return rows


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="an empty folder (emptied first)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", default="tiny")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    results = {seed: one_seed(seed, args) for seed in args.seeds}
    print(f"\nLocalisation of synthetic localised faults (asd synth, config {args.config}, seeds "
          f"{', '.join(map(str, args.seeds))}); per kind and seed\n")
    print("| kind | seed | clip AUC | flagged / clips | top span IoU >= 0.3 (flagged) | band holds the true band | "
          "kind named right (burst, tone, dropout) | audio-anomaly: clips with an event | "
          "audio-anomaly: top event IoU >= 0.3 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in KINDS:
        for seed in args.seeds:
            r = results[seed][kind]
            print(f"| {kind} | {seed} | {r['auc']:.3f} | {r['flagged']} / {r['clips']} | {_fmt(r['span'])} | "
                  f"{_fmt(r['band'])} | {_fmt(r['named'])} | {r['peer_events']:.2f} | {_fmt(r['peer_span'])} |")
    flagged = sum(results[s][k]["flagged"] for s in args.seeds for k in KINDS)
    hits = sum(round((results[s][k]["span"] or 0) * results[s][k]["flagged"]) for s in args.seeds for k in KINDS)
    seconds = statistics.mean(results[s][KINDS[0]]["seconds"] for s in args.seeds)
    alone = [statistics.mean(results[s][KINDS[0]]["alone"][i] for s in args.seeds) for i in (0, 1)]
    print(f"\nAll kinds: {hits} of {flagged} flagged anomalous clips have a top span with IoU >= 0.3 "
          f"({hits / max(1, flagged):.2f}); explaining took {seconds:.2f} s a clip (run loaded, every test clip and "
          f"its section's baseline); one clip alone {alone[0]:.2f} s, and with --data, its section's baseline kept "
          f"in the cache by an earlier call, {alone[1]:.2f} s.")


if __name__ == "__main__":
    main()
