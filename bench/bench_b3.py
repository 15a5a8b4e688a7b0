"""b3 (the machine-ID contrastive branch) alone on the real folds, with and without outlier exposure.

    python bench/bench_b3.py --work /tmp/b3 --variants base bg bg+np bg+branches.contrastive.k=3

A variant is ``base`` (the config as it is) or tokens joined by ``+``: ``bg`` a background of
other machines' normal recordings (``branches.contrastive.background``: for each judged set, a
folder of links to the normal clips of every *other* real set whose machine type the judged set
does not have, at most --per-type per type: the background never holds the judged set or its
machine type), ``bgid`` the same clips with one class per machine type and machine ID (a folder
each, so the background has many classes, as the DCASE first-shot systems' outlier exposure over
every section of a development set), ``np`` no perturbed copies (``branches.contrastive.perturbations=0``), and
``key=value`` config overrides. Each fold and seed trains b3 alone (bench/real_folds.py, the same
folds as bench_real.py) and scores the labelled test clips; the table is b3's AUC (mean over the
set's sections) per set, then for each set the variant with the best mean on the *other* sets
(leave one set out): a variant becomes the default only where it wins on sets it was not chosen on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asdcli.config import load_config
from asdcli.data.layout import discover
from asdcli.services.scoring.score import score_clips
from asdcli.services.training.train import train_branch
from real_folds import RealSet, build_fold, real_sets
from real_report import section_metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def background(sets: dict[str, RealSet], judged: str, work: Path, per_type: int, by_id: bool = False) -> Path:
    """A folder of links ``<type>/normal_NNN.wav`` to normal clips of the other sets' machine
    types (none of the judged set's types), ``per_type`` of each spread over its clips; ``by_id``:
    one folder, so one class, per machine type and machine ID (``<type>-id_XX``)."""
    folder = work / "background" / f"{judged}-{per_type}{'-id' if by_id else ''}"
    if folder.exists():
        return folder
    own = {s.machine.lower() for s in sets[judged].clips}
    pool: dict[str, set[Path]] = {}
    for real in sets.values():
        for clip in real.clips:
            if clip.label == "normal" and clip.machine.lower() not in own:
                pool.setdefault(f"{clip.machine}-id_{clip.mid}" if by_id else clip.machine, set()).add(clip.path)
    for kind, paths in sorted(pool.items()):
        ordered = sorted(paths)
        for k, i in enumerate(np.linspace(0, len(ordered) - 1, min(per_type, len(ordered))).astype(int)):
            link = folder / kind / f"normal_{k:03d}.wav"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(ordered[i].resolve())
    return folder


def overrides(variant: str, bg: Path, bg_id: Path | None = None) -> dict:
    """The config overrides a variant names (module docstring)."""
    out: dict = {}
    for part in variant.split("+"):
        if part == "bg":
            out["branches.contrastive.background"] = str(bg)
        elif part == "bgid":
            out["branches.contrastive.background"] = str(bg_id)
        elif part == "np":
            out["branches.contrastive.perturbations"] = 0
        elif "=" in part:
            key, value = part.split("=", 1)
            out[key] = json.loads(value) if value[:1].isdigit() or value[:1] == "-" else value
        elif part != "base":
            sys.exit(f"unknown variant part {part!r} (base, bg, bgid, np or key=value)")
    return out


def one_run(real: RealSet, fold: int, seed: int, variant: str, args, bg: Path, bg_id: Path | None = None) -> dict:
    """Train b3 on one fold and seed and score its labelled test clips (kept as result.json)."""
    fold_dir = args.work / real.name / f"fold{fold}"
    data, _ = build_fold(real, fold, fold_dir)
    out = fold_dir / f"seed{seed}" / variant
    saved = out / "result.json"
    if saved.exists():
        return json.loads(saved.read_text())
    config = load_config(args.config).with_overrides(seed=seed, **overrides(variant, bg, bg_id))
    start = time.perf_counter()
    train_branch("b3", data, out / "run", config, cache_dir=args.work / "cache")
    seconds = time.perf_counter() - start
    test = [c for c in discover(data) if c.split == "test" and c.label is not None]
    result = score_clips(out / "run", test, args.work / "cache", names=["contrastive"])
    labels = np.array([c.is_anomaly for c in result.clips])
    metrics = section_metrics([c.group for c in result.clips], labels, np.asarray(result.normalized["contrastive"]))
    record = {"auc": float(np.mean([a for a, _ in metrics.values()])), "seconds": seconds}
    saved.write_text(json.dumps(record))
    return record


def report(table: dict[str, dict[str, list[float]]], sets: list[str], args) -> None:
    print(f"# b3 alone on the real folds, with and without outlier exposure\n\nWritten by `python bench/bench_b3.py "
          f"{' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')}; do not edit by hand.\n")
    print(f"b3's AUC (mean over the set's sections), mean ± sd over {args.folds} folds x {len(args.seeds)} seeds; "
          f"background: up to {args.per_type} normal clips of each machine type of the *other* sets, none of the "
          "judged set's types.\n")
    print("| variant | " + " | ".join(sets) + " | mean |")
    print("| --- | " + " | ".join("---:" for _ in sets) + " | ---: |")
    for variant, cells in table.items():
        means = [np.mean(cells[s]) for s in sets]
        print(f"| {variant} | " + " | ".join(f"{np.mean(cells[s]):.3f} ± {np.std(cells[s]):.3f}" for s in sets)
              + f" | {np.mean(means):.3f} |")
    print("\nLeave one set out: for each set, the variant with the best mean AUC on the other sets, judged on it\n")
    print("| judged set | chosen on the others | its AUC there | base |")
    print("| --- | --- | ---: | ---: |")
    judged = []
    for name in sets:
        pick = max(table, key=lambda v: np.mean([np.mean(table[v][o]) for o in sets if o != name]))
        judged.append(np.mean(table[pick][name]))
        print(f"| {name} | {pick} | {judged[-1]:.3f} | {np.mean(table['base'][name]):.3f} |")
    base = np.mean([np.mean(table["base"][s]) for s in sets])
    print(f"\nMean over the judged sets: {np.mean(judged):.3f} with the variant chosen without each set, "
          f"{base:.3f} with base.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, required=True, help="folds, runs and results (reused when present)")
    parser.add_argument("--variants", nargs="+", default=["base", "bg", "bg+np"])
    parser.add_argument("--sets", nargs="*")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--per-type", type=int, default=8)
    parser.add_argument("--config", default="default")
    parser.add_argument("--markdown", type=Path, help="also write the report here (docs/b3-background.md)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    available = real_sets(args.data_root)
    sets = args.sets or list(available)
    variants = ["base"] + [v for v in args.variants if v != "base"]
    table = {v: {} for v in variants}
    for name in sets:
        bg = background(available, name, args.work, args.per_type)
        bg_id = (background(available, name, args.work, args.per_type, by_id=True)
                 if any("bgid" in v.split("+") for v in variants) else None)
        for variant in variants:
            table[variant][name] = [one_run(available[name], fold, seed, variant, args, bg, bg_id)["auc"]
                                    for fold in range(args.folds) for seed in args.seeds]
        print(f"{name}: " + ", ".join(f"{v} {np.mean(table[v][name]):.3f}" for v in variants), file=sys.stderr)
    if args.markdown:
        import contextlib
        with args.markdown.open("w") as handle, contextlib.redirect_stdout(handle):
            report(table, sets, args)
    report(table, sets, args)


if __name__ == "__main__":
    main()
