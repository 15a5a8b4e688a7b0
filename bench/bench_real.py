"""Detection on real recordings: every stage of the pipeline against a baseline-style reference.

    python bench/bench_real.py                                  # every real set, 3 folds x 2 seeds
    python bench/bench_real.py --sets mimii-fan-8ch --folds 2 --seeds 0
    python bench/bench_real.py --work /tmp/real --reuse          # keep runs; later calls refit the heads only

Folds come from the real sets in ``../shared/data`` (bench/real_folds.py): normal clips are split
between training and test per fold, anomalies are only ever test clips. For every fold and seed
the whole pipeline runs with the given config (default: the default preset) exactly as
``train_ae.sh`` does it: the branches (b1 is left out, with the reason, where its AST cannot be
loaded, e.g. offline), ``train-fusion``, ``meta-train --data`` and ``score``. Rows: each branch's
standardised score, their plain average, the attention-fused score, the final (meta-learner)
score, and the reference autoencoder in the style of the DCASE 2023 baseline (bench/baseline_ae.py,
MSE and selective Mahalanobis), trained on the same training clips in the same run. Figures are
AUC and pAUC averaged over the machine sections (IDs) of the set; no set here has domains, so
there is no official harmonic-mean score. Per-run results go to ``<work>/<set>/fold<f>/seed<s>/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asdcli.config import load_config
from asdcli.data.layout import discover
from asdcli.errors import AsdError
from asdcli.metrics import auc, pauc
from asdcli.models.registry import BRANCHES, canonical_name
from asdcli.services.branch_scores import trained_branches
from asdcli.services.dataset import training_clips
from asdcli.services.fuse import train_fusion
from asdcli.services.meta import meta_train
from asdcli.services.score import score_clips
from asdcli.services.train import train_branch
from baseline_ae import ReferenceScores, reference_scores
from real_folds import build_fold, real_sets

ORDER = ["b2", "b3", "b4", "b1", "b5"]  # b5 models embeddings of b3, so it comes after
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
STAGES = ["average", "fused", "final"]
REFERENCES = ["ref AE (MSE)", "ref AE (Mahalanobis)"]


def section_metrics(groups: list[str], labels: np.ndarray, scores: np.ndarray) -> dict[str, tuple[float, float]]:
    """(AUC, pAUC) per section that has both classes."""
    out = {}
    for g in sorted(set(groups)):
        rows = np.array([x == g for x in groups])
        if len(set(labels[rows].tolist())) == 2:
            out[g] = (auc(labels[rows], scores[rows]), pauc(labels[rows], scores[rows]))
    return out


def _train_branches(data: Path, run: Path, config, cache: Path, unavailable: dict[str, str]) -> None:
    done = set(trained_branches(run)) if (run / "run.json").exists() else set()
    for name in ORDER:
        full = canonical_name(name)
        if full in done or full in unavailable:
            continue
        try:
            train_branch(name, data, run, config, cache_dir=cache)
        except AsdError as error:  # b1 offline: the AST cannot be downloaded
            unavailable[full] = str(error)
            print(f"  {name} left out: {error}", file=sys.stderr, flush=True)


def run_one(real, fold: int, seed: int, args, unavailable: dict[str, str]) -> dict:
    """Train and score one fold with one seed; the per-run result (also written as result.json)."""
    fold_dir = args.work / real.name / f"fold{fold}"
    out = fold_dir / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    data, _ = build_fold(real, fold, fold_dir)
    config = load_config(args.config).with_overrides(seed=seed)
    cache, run = args.work / "cache", out / "run"
    start = time.perf_counter()
    _train_branches(data, run, config, cache, unavailable)
    fusion = train_fusion(data, run, config)
    notes = []
    try:
        meta_train(run, config, data=data)
    except AsdError as error:  # the run then scores with the fusion head, as asd score does
        (run / "meta.json").unlink(missing_ok=True)
        notes.append(f"meta-train: {error}")
        print(f"  meta-train failed: {error}", file=sys.stderr, flush=True)
    test = [c for c in discover(data) if c.split == "test" and c.label is not None]
    result = score_clips(run, test, cache)
    seconds = time.perf_counter() - start
    # every trained branch's standardised score, including those the fusion left out
    branches = score_clips(run, result.clips, cache, names=trained_branches(run))
    reference = _reference(out, result.clips, labels_groups(result.clips), args.reuse) or \
        reference_scores(training_clips(str(data)), result.clips, config, seed)
    rows = {BRANCHES[n].bid: branches.normalized[n] for n in branches.branches}
    rows.update({"average": np.mean(list(branches.normalized.values()), axis=0), "fused": result.fused,
                 "final": result.score, REFERENCES[0]: reference.mse, REFERENCES[1]: reference.mahalanobis})
    groups, labels = [c.group for c in result.clips], np.array([c.is_anomaly for c in result.clips])
    metrics = {name: section_metrics(groups, labels, np.asarray(s)) for name, s in rows.items()}
    record = {"set": real.name, "fold": fold, "seed": seed, "seconds": seconds, "reference_s": reference.train_s,
              "train_clips": len(training_clips(str(data))), "test_clips": len(result.clips),
              "mean_weights": fusion.mean_weights, "pseudo_auc": fusion.pseudo_auc, "left_out": fusion.left_out,
              "fair_pseudo_auc": fusion.fair_pseudo_auc, "prior_temperature": fusion.prior_temperature,
              "unavailable": dict(unavailable), "notes": notes,
              "metrics": {n: {g: list(v) for g, v in m.items()} for n, m in metrics.items()}}
    (out / "result.json").write_text(json.dumps(record, indent=1))
    np.savez(out / "scores.npz", labels=labels, groups=np.array(groups), clips=np.array([c.path.name for c in result.clips]), **{k: np.asarray(v) for k, v in rows.items()})
    return record


def labels_groups(clips) -> tuple[np.ndarray, np.ndarray]:
    """(N,) anomaly labels and (N,) section names of the scored clips."""
    return np.array([c.is_anomaly for c in clips]), np.array([c.group for c in clips])


def _reference(out: Path, clips, expected: tuple[np.ndarray, np.ndarray], reuse: bool) -> ReferenceScores | None:
    """With --reuse, the reference scores of an earlier call on the same fold and seed (the
    reference depends on neither the pipeline's code nor its heads), where its clips are the same."""
    scores, record = out / "scores.npz", out / "result.json"
    if not (reuse and scores.exists() and record.exists()):
        return None
    old = np.load(scores)
    keys = [str(c.path.name) for c in clips]
    same = (len(old["labels"]) == len(clips) and np.array_equal(old["labels"], expected[0])
            and np.array_equal(old["groups"], expected[1]) and ("clips" not in old or old["clips"].tolist() == keys))
    if not same or REFERENCES[0] not in old:
        return None
    return ReferenceScores(old[REFERENCES[0]], old[REFERENCES[1]], json.loads(record.read_text())["reference_s"],
                           float("nan"))


def _mean_metric(record: dict, name: str, k: int) -> float:
    values = [v[k] for v in record["metrics"].get(name, {}).values()]
    return float(np.mean(values)) if values else float("nan")


def _columns(records: list[dict]) -> list[str]:
    branches = sorted({n for r in records for n in r["metrics"]} - set(STAGES) - set(REFERENCES))
    return branches + STAGES + REFERENCES


def print_runs(records: list[dict], k: int, what: str) -> None:
    cols = _columns(records)
    print(f"\n{what} (mean over the set's sections), every fold and seed\n")
    print("| set | fold | seed | " + " | ".join(cols) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in cols) + " |")
    for r in records:
        cells = [f"{_mean_metric(r, c, k):.3f}" for c in cols]
        print(f"| {r['set']} | {r['fold']} | {r['seed']} | " + " | ".join(cells) + " |")


def print_summary(records: list[dict], k: int, what: str) -> None:
    cols = _columns(records)
    print(f"\n{what}: mean ± standard deviation over folds and seeds\n")
    print("| set | runs | " + " | ".join(cols) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in cols) + " |")
    sets = sorted({r["set"] for r in records})
    for name in sets + (["all"] if len(sets) > 1 else []):
        chosen = [r for r in records if name in ("all", r["set"])]
        cells = []
        for c in cols:
            v = np.array([_mean_metric(r, c, k) for r in chosen])
            cells.append(f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}" if np.isfinite(v).any() else "-")
        print(f"| {name} | {len(chosen)} | " + " | ".join(cells) + " |")


def print_checks(records: list[dict]) -> None:
    """The final score against the best branch (chosen after the fact, by test labels: the one with
    the best mean over the runs, and the best of each run), the plain average and the references,
    in AUC: what the pipeline must not lose to."""
    branches = [c for c in _columns(records) if c.startswith("b")]
    table = {c: np.array([_mean_metric(r, c, 0) for r in records]) for c in _columns(records)}
    best = max(branches, key=lambda b: np.nanmean(table[b]))
    final = table["final"]
    per_run = final - np.nanmax(np.stack([table[b] for b in branches]), axis=0)
    print("\nFinal score's AUC against what it must not lose to (all runs)\n")
    print(f"- best branch over all runs ({best}, mean {np.nanmean(table[best]):.3f}): final - {best} "
          f"mean {np.nanmean(final - table[best]):+.3f}, worst run {np.nanmin(final - table[best]):+.3f}")
    print(f"- best branch of each run: final - best mean {np.nanmean(per_run):+.3f}, worst run {np.nanmin(per_run):+.3f}")
    print(f"- plain average: final - average mean {np.nanmean(final - table['average']):+.3f}")
    for ref in REFERENCES:
        print(f"- {ref}: final - reference mean {np.nanmean(final - table[ref]):+.3f}")


def print_attention(records: list[dict]) -> None:
    print("\nFusion: mean attention weight per branch (normal-vs-pseudo-anomaly AUC on every kind / on the kinds "
          "the branch was not trained on), prior temperature, per run\n")
    for r in records:
        fair = r.get("fair_pseudo_auc", {})
        parts = [f"{BRANCHES[n].bid} {w:.2f} ({r['pseudo_auc'].get(n, float('nan')):.2f}/{fair.get(n, float('nan')):.2f})"
                 for n, w in r["mean_weights"].items()]
        left = [f"{BRANCHES[n].bid} left out" for n in r.get("left_out", {})]
        print(f"{r['set']} fold {r['fold']} seed {r['seed']}: " + ", ".join(parts + left)
              + f"; T {r.get('prior_temperature', float('nan')):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=SHARED, help="the shared data folder (default: %(default)s)")
    parser.add_argument("--sets", nargs="*", help="which real sets (default: every one present)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--config", default="default")
    parser.add_argument("--work", type=Path, help="folder for folds, runs and results (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="reuse branches already trained in --work "
                        "and the reference scores (the fusion head and meta-learner are always refitted)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    available = real_sets(args.data_root)
    if not available:
        sys.exit(f"no real sets under {args.data_root}")
    names = args.sets or list(available)
    unknown = sorted(set(names) - set(available))
    if unknown:
        sys.exit(f"unknown or absent sets {unknown}; present: {sorted(available)}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.work is None:
            args.work = Path(tmp)
        elif not args.reuse and any(args.work.glob("*/fold*/seed*/run")):
            sys.exit(f"{args.work} holds runs already: give --reuse to reuse their branches or another --work")
        records, unavailable = [], {}
        for name in names:
            for fold in range(args.folds):
                for seed in args.seeds:
                    print(f"{name} fold {fold} seed {seed} ...", file=sys.stderr, flush=True)
                    records.append(run_one(available[name], fold, seed, args, unavailable))
    print(f"\nReal recordings, config {args.config}, CPU threads 2; left out: "
          + ("; ".join(f"{k}: {v}" for k, v in unavailable.items()) or "nothing"))
    for name in names:
        print(f"- {name}: {available[name].description}")
    print_runs(records, 0, "AUC")
    print_runs(records, 1, "pAUC")
    print_summary(records, 0, "AUC")
    print_summary(records, 1, "pAUC")
    print_checks(records)
    print_attention(records)
    print(f"\nPipeline time per run (train + score): mean {np.mean([r['seconds'] for r in records]):.0f} s; "
          f"reference training: mean {np.mean([r['reference_s'] for r in records]):.0f} s")


if __name__ == "__main__":
    main()
