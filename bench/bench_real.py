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
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
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
from asdcli.services.branch_prior import learn_prior, save_prior
from asdcli.services.learn_prior import labelled_run
from baseline_ae import ReferenceScores, reference_scores
from loso import DEFAULT_RULES, RunRecord, fused_records, hold_out, load_record, save_record
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


@dataclass(frozen=True)
class Variant:
    """One way of running b1 (frozen or fine-tuned): its config overrides and its run folder's
    suffix (the first variant uses ``run``; the others copy its b2-b5 and train their own b1)."""

    name: str
    suffix: str
    overrides: dict

    def folder(self, out: Path) -> Path:
        return out / ("run" + self.suffix)

    def file(self, out: Path, stem: str, ext: str) -> Path:
        return out / f"{stem}{self.suffix}.{ext}"


def variants(args) -> list[Variant]:
    """Without --b1, the config as it is; with it, b1 from that source for each --b1-finetune
    (frozen in ``run``, the others in ``run-v1`` (whole model) or ``run-top<N>``)."""
    if not args.b1:
        return [Variant("config", "", {})]
    out = []
    for layers in args.b1_finetune:
        what = "frozen" if layers == 0 else "fine-tuned (all)" if layers < 0 else f"fine-tuned (top {layers} blocks)"
        overrides = {"branches.pretrained.source": args.b1, "branches.pretrained.finetune_layers": layers}
        if layers:
            overrides["branches.pretrained.lr"] = args.b1_lr
        out.append(Variant(f"b1 {what}", "" if layers == 0 else "-v1" if layers < 0 else f"-top{layers}", overrides))
    return out


def prepare(real, fold: int, seed: int, args, unavailable: dict[str, str], variant: Variant) -> RunRecord:
    """Train the branches of one fold and seed (kept with --reuse) and score its labelled test
    clips with every trained branch (cached as labelled.npz): the record the priors learn from.
    A fine-tuned b1 variant starts from a copy of the frozen one's b2-b5 (``run``)."""
    fold_dir = args.work / real.name / f"fold{fold}"
    out = fold_dir / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    data, _ = build_fold(real, fold, fold_dir)
    config = load_config(args.config).with_overrides(seed=seed, **variant.overrides)
    cache, run = args.work / "cache", variant.folder(out)
    if variant.suffix and not run.exists():
        shutil.copytree(out / "run", run, ignore=shutil.ignore_patterns("pretrained*", "fusion*", "meta*", "examples*",
                                                                        ".lock*", "meta_examples*"))
    start = time.perf_counter()
    _train_branches(data, run, config, cache, unavailable)
    seconds = variant.file(out, "train_seconds", "txt")
    if not seconds.exists():
        seconds.write_text(f"{time.perf_counter() - start:.1f}\n")
    path = variant.file(out, "labelled", "npz")
    names = trained_branches(run)
    if path.exists() and load_record(path).branches == names:
        labelled = load_record(path)
    else:
        labelled = labelled_run(run, data, real.name, cache, names=names, config=config)
        save_record(labelled, path)
    return RunRecord(real.name, fold, seed, run, labelled, variant.name)


def run_one(record: RunRecord, args, prior: str, rules: dict) -> dict:
    """Fit the fusion head (with ``prior`` and the left-out ``rules``) and the meta-learner of
    one trained fold and seed, score its test clips; the per-run result (also result.json)."""
    out = record.run.parent
    data = out.parent / "data"
    suffix = record.run.name[len("run"):]
    overrides = {k: v for k, v in rules.items() if "." in k}
    config = load_config(args.config).with_overrides(seed=record.seed, **{"fusion.prior": prior}, **overrides)
    cache, run = args.work / "cache", record.run
    start = time.perf_counter()
    fusion = train_fusion(data, run, config)
    notes = []
    try:
        meta = meta_train(run, config, data=data)
        if meta.abstained:
            notes.append(f"meta-learner: {meta.abstained}")
    except AsdError as error:  # the run then scores with the fusion head, as asd score does
        (run / "meta.json").unlink(missing_ok=True)
        notes.append(f"meta-train: {error}")
        print(f"  meta-train failed: {error}", file=sys.stderr, flush=True)
    test = [c for c in discover(data) if c.split == "test" and c.label is not None]
    result = score_clips(run, test, cache)
    seconds = time.perf_counter() - start + float((out / f"train_seconds{suffix}.txt").read_text())
    # every trained branch's standardised score, including those the fusion left out: the record's
    # (the same clips, scored by the same branches when it was made)
    labelled = record.labelled
    if len(labelled.label) != len(result.clips) or not np.array_equal(labelled.label, [c.is_anomaly for c in result.clips]):
        labelled = labelled_run(run, data, record.set, cache, names=trained_branches(run), config=config)
    normalized = {n: labelled.z[:, k] for k, n in enumerate(labelled.branches)}
    reference = _reference(out, result.clips, labels_groups(result.clips), args.reuse, suffix) or \
        reference_scores(training_clips(str(data)), result.clips, config, record.seed)
    rows = {BRANCHES[n].bid: v for n, v in normalized.items()}
    rows.update({"average": np.mean(list(normalized.values()), axis=0), "fused": result.fused,
                 "final": result.score, REFERENCES[0]: reference.mse, REFERENCES[1]: reference.mahalanobis})
    groups, labels = [c.group for c in result.clips], np.array([c.is_anomaly for c in result.clips])
    metrics = {name: section_metrics(groups, labels, np.asarray(s)) for name, s in rows.items()}
    result_record = {"set": record.set, "fold": record.fold, "seed": record.seed, "seconds": seconds,
                     "reference_s": reference.train_s, "train_clips": len(training_clips(str(data))),
                     "test_clips": len(result.clips), "mean_weights": fusion.mean_weights,
                     "pseudo_auc": fusion.pseudo_auc, "left_out": fusion.left_out,
                     "fair_pseudo_auc": fusion.fair_pseudo_auc, "prior_temperature": fusion.prior_temperature,
                     "prior": fusion.prior, "rules": rules, "notes": notes,
                     "metrics": {n: {g: list(v) for g, v in m.items()} for n, m in metrics.items()}}
    (out / f"result{suffix}.json").write_text(json.dumps(result_record, indent=1))
    np.savez(out / f"scores{suffix}.npz", labels=labels, groups=np.array(groups), clips=np.array([c.path.name for c in result.clips]), **{k: np.asarray(v) for k, v in rows.items()})
    return result_record


def labels_groups(clips) -> tuple[np.ndarray, np.ndarray]:
    """(N,) anomaly labels and (N,) section names of the scored clips."""
    return np.array([c.is_anomaly for c in clips]), np.array([c.group for c in clips])


def _reference(out: Path, clips, expected: tuple[np.ndarray, np.ndarray], reuse: bool,
               suffix: str = "") -> ReferenceScores | None:
    """With --reuse, the reference scores of an earlier call on the same fold and seed (the
    reference depends on neither the pipeline's code nor its heads), where its clips are the same."""
    scores, record = out / f"scores{suffix}.npz", out / f"result{suffix}.json"
    if not (scores.exists() and record.exists()):
        scores, record = out / "scores.npz", out / "result.json"  # the first variant's: the same clips
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


def print_checks(records: list[dict], roles: dict[str, str]) -> None:
    """Per set, the final score's AUC against what it must not lose to: the set's best branch
    (chosen after the fact, by test labels: the best mean over the set's runs), in the mean and in
    every run, and the plain average; then the worst set."""
    print("\nFinal score's AUC against the set's best branch and the plain average (each set judged with the "
          "prior and rules chosen without it)\n")
    print("| set | role | runs | best branch | final - best (mean) | worst run: final - best | final - average | "
          "final - ref AE (MSE) | holds (>= -0.02, >= average, no run < -0.05) | branch chosen on the other folds, "
          "with this set's labels - best |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    worst = None
    for name in sorted({r["set"] for r in records}):
        chosen = [r for r in records if r["set"] == name]
        table = {c: np.array([_mean_metric(r, c, 0) for r in chosen]) for c in _columns(chosen)}
        branches = [c for c in table if c.startswith("b") and np.isfinite(table[c]).any()]
        best = max(branches, key=lambda b: np.nanmean(table[b]))
        gap = table["final"] - table[best]
        vs_average = np.nanmean(table["final"] - table["average"])
        holds = np.nanmean(gap) >= -0.02 and vs_average >= -1e-9 and np.nanmin(gap) >= -0.05
        oracle = _cross_fold_choice(chosen, branches) - np.nanmean(table[best])
        print(f"| {name} | {roles.get(name, '')} | {len(chosen)} | {best} ({np.nanmean(table[best]):.3f}) | "
              f"{np.nanmean(gap):+.3f} | {np.nanmin(gap):+.3f} | {vs_average:+.3f} | "
              f"{np.nanmean(table['final'] - table[REFERENCES[0]]):+.3f} | {'yes' if holds else 'NO'} | {oracle:+.3f} |")
        if worst is None or np.nanmean(gap) < worst[1]:
            worst = (name, float(np.nanmean(gap)))
    if worst:
        print(f"\nWorst set: {worst[0]}, final - its best branch {worst[1]:+.3f} (mean over its runs)")


def _cross_fold_choice(records: list[dict], branches: list[str]) -> float:
    """Mean AUC of the branch picked, for each fold, by its mean AUC on the set's *other* folds
    (with the set's own test labels, which no rule here may use): how well even a choice made on
    the same machine's labelled clips tracks the best branch chosen after the fact."""
    values = []
    for fold in sorted({r["fold"] for r in records}):
        train = [r for r in records if r["fold"] != fold]
        if not train:
            return float("nan")
        pick = max(branches, key=lambda b: np.nanmean([_mean_metric(r, b, 0) for r in train]))
        values += [_mean_metric(r, pick, 0) for r in records if r["fold"] == fold]
    return float(np.nanmean(values))


def print_held(held: list) -> None:
    """What leaving each set out chose: the prior's weights, temperature and trust, the rules, and
    the rules' effect on the held-out set."""
    print("\nLeave one set out: the prior learned and the rules chosen without each set\n")
    print("| held-out set | prior (mean real AUC on the other sets -> weight) | temperature | trust | rules chosen | "
          "held-out AUC, default rules | chosen rules |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: |")
    for h in held:
        names = list(h.prior.branches)
        weights = h.prior.weights(names)
        prior = ", ".join(f"{BRANCHES[n].bid} {h.prior.branches[n].auc:.2f}->{w:.2f}" for n, w in zip(names, weights))
        rules = "default" if h.rules == DEFAULT_RULES else ", ".join(f"{k} {v}" for k, v in h.rules.items())
        print(f"| {h.name} | {prior} | {h.prior.temperature:g} | {h.prior.trust:g} | {rules} | "
              f"{h.default_rules_auc:.3f} | {h.chosen_rules_auc:.3f} |")


def print_without(records: list[dict], work: Path, suffix: str, bid: str = "b1") -> None:
    """Per set, the fused score's AUC with and without one branch: its saved per-branch scores
    fused again with the run's mean attention weights, that branch's share spread over the rest
    (with a uniform prior and trust 0 the weights are the same for every clip: exactly the fusion
    without it). Whether the branch helps the fused score."""
    rows = {}
    for r in records:
        saved = np.load(work / r["set"] / f"fold{r['fold']}" / f"seed{r['seed']}" / f"scores{suffix}.npz")
        weights = {BRANCHES[n].bid: w for n, w in r["mean_weights"].items()}
        groups, labels = [str(g) for g in saved["groups"]], saved["labels"]

        def fused(ids: list[str]) -> float:
            total = sum(weights[i] for i in ids)
            score = sum(weights[i] / total * np.arcsinh(saved[i]) for i in ids)
            return float(np.mean([a for a, _ in section_metrics(groups, labels, score).values()]))

        others = [i for i in weights if i != bid]
        rows.setdefault(r["set"], []).append((fused(list(weights)), fused(others) if others else float("nan"),
                                             bid in weights))
    print(f"\nThe fused score with and without {bid} (AUC, mean ± standard deviation over folds and seeds; the "
          f"runs' mean attention weights, {bid}'s share spread over the other fused branches)\n")
    print(f"| set | runs | {bid} fused in | fused | fused without {bid} | difference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, values in sorted(rows.items()) + [("all", [v for vs in rows.values() for v in vs])]:
        with_it, without, used = (np.array(v, dtype=float) for v in zip(*values))
        print(f"| {name} | {len(values)} | {int(used.sum())} | {with_it.mean():.3f} ± {with_it.std():.3f} | "
              f"{np.nanmean(without):.3f} ± {np.nanstd(without):.3f} | {np.nanmean(with_it - without):+.3f} |")


def print_attention(records: list[dict]) -> None:
    print("\nFusion: mean attention weight per branch (normal-vs-pseudo-anomaly AUC on every kind / on the kinds "
          "the branch was not trained on), prior temperature, per run\n")
    for r in records:
        fair = r.get("fair_pseudo_auc", {})
        parts = [f"{BRANCHES[n].bid} {w:.2f} ({r['pseudo_auc'].get(n, float('nan')):.2f}/{fair.get(n, float('nan')):.2f})"
                 for n, w in r["mean_weights"].items()]
        left = [f"{BRANCHES[n].bid} left out" for n in r.get("left_out", {})]
        prior = r.get("prior", {}).get("prior_weights", {})
        start = ", ".join(f"{BRANCHES[n].bid} {w:.2f}" for n, w in prior.items())
        print(f"{r['set']} fold {r['fold']} seed {r['seed']}: " + ", ".join(parts + left)
              + f"; T {r.get('prior_temperature', float('nan')):.3f}; labelled prior {start or '-'}")


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
    parser.add_argument("--prior", default="loso", help="the fusion's prior: loso (for each set, learned from the "
                        "others: the judged figures), builtin, none, or a prior file")
    parser.add_argument("--b1", help="b1's source (e.g. ../shared/models/efficientat-mn04-as/model.safetensors): "
                        "one variant of every run per --b1-finetune")
    parser.add_argument("--b1-finetune", type=int, nargs="+", default=[0, -1], help="b1 variants: 0 frozen, -1 "
                        "fine-tuned whole, N its top N blocks (default: %(default)s)")
    parser.add_argument("--b1-lr", type=float, default=1e-4, help="learning rate of a fine-tuned b1")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file (docs/real-data.md)")
    parser.add_argument("--report-only", action="store_true", help="with --reuse: report the runs' saved results "
                        "instead of refitting their fusion heads (the priors and rules are chosen again)")
    parser.add_argument("--write-prior", type=Path, help="also learn a prior from every set's runs and write it here "
                        "(how asdcli/priors/real_dev.json is made)")
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
        prepared, unavailable = [], {}
        for variant in variants(args):
            for name in names:
                for fold in range(args.folds):
                    for seed in args.seeds:
                        print(f"{name} fold {fold} seed {seed} ({variant.name}): branches ...", file=sys.stderr, flush=True)
                        prepared.append(prepare(available[name], fold, seed, args, unavailable, variant))
        results = {}
        for variant in variants(args):
            mine = [r for r in prepared if r.variant == variant.name]
            held, rules_cache = [], {}
            if args.prior == "loso":
                config = load_config(args.config)
                for name in names:
                    print(f"{variant.name}: leaving {name} out: prior and rules ...", file=sys.stderr, flush=True)
                    held.append(hold_out(mine, name, config, rules_cache))
                    save_prior(held[-1].prior, args.work / "priors" / f"{name}{variant.suffix}.json")
            if args.write_prior and variant.suffix == "":
                fused = fused_records(mine, DEFAULT_RULES, load_config(args.config), rules_cache)
                save_prior(learn_prior(fused, "bench/bench_real.py: labelled test clips of the real sets "
                                       + ", ".join(names) + f" ({variant.name}), every fold and seed"), args.write_prior)
            records = []
            for r in mine:
                print(f"{r.set} fold {r.fold} seed {r.seed} ({variant.name}): fusion, meta-learner, scores ...",
                      file=sys.stderr, flush=True)
                prior = str(args.work / "priors" / f"{r.set}{variant.suffix}.json") if args.prior == "loso" else args.prior
                rules = next((h.rules for h in held if h.name == r.set), DEFAULT_RULES)
                saved = r.run.parent / f"result{variant.suffix}.json"
                records.append(json.loads(saved.read_text()) if args.report_only and saved.exists()
                               else run_one(r, args, prior, rules))
            results[variant.name] = (records, held)
    report(args, available, names, unavailable, results)


class Tee(io.TextIOBase):
    """Writes go to every stream (the terminal and the --markdown file)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def report(args, available: dict, names: list[str], unavailable: dict, results: dict) -> None:
    """Print every table; with --markdown, into that file too (the docs page is this output)."""
    handle = args.markdown.open("w") if args.markdown else None
    with contextlib.redirect_stdout(Tee(sys.stdout, handle) if handle else sys.stdout):
        if handle:
            print("# Detection on real recordings\n\nWritten by `python bench/bench_real.py "
                  + " ".join(sys.argv[1:]) + f"` on {time.strftime('%Y-%m-%d')}; do not edit by hand.")
        print(f"\nReal recordings, config {args.config}, CPU threads 2; left out: "
              + ("; ".join(f"{k}: {v}" for k, v in unavailable.items()) or "nothing"))
        for name in names:
            print(f"- {name}: {available[name].description}")
        for variant, (records, held) in results.items():
            if len(results) > 1:
                print(f"\n## {variant}")
            print_runs(records, 0, "AUC")
            print_runs(records, 1, "pAUC")
            print_summary(records, 0, "AUC")
            print_summary(records, 1, "pAUC")
            print_checks(records, {n: available[n].role for n in names})
            if held:
                print_held(held)
            if args.b1:
                print_without(records, args.work, next(v.suffix for v in variants(args) if v.name == variant))
            print_attention(records)
            print(f"\nPipeline time per run (train + score): mean {np.mean([r['seconds'] for r in records]):.0f} s; "
                  f"reference training: mean {np.mean([r['reference_s'] for r in records]):.0f} s")
    if handle:
        handle.close()


if __name__ == "__main__":
    main()
