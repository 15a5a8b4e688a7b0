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

import asdcli
from asdcli.config import load_config
from asdcli.models.registry import BRANCHES, branch_config, training_order
from asdcli.data.layout import discover
from asdcli.errors import AsdError
from asdcli.services.scoring.branch_scores import trained_branches
from asdcli.services.inputs.dataset import training_clips
from asdcli.services.training.fuse import train_fusion
from asdcli.services.training.meta import meta_train
from asdcli.services.scoring.score import score_clips
from asdcli.services.training.branch_prior import learn_prior, save_prior
from asdcli.services.training.learn_prior import labelled_run
from baseline_ae import ReferenceScores, reference_scores
from loso import DEFAULT_RULES, RunRecord, fused_records, hold_out, load_record, save_record
from real_folds import build_fold, real_sets
from peers import AUDIO_ANOMALY, audio_anomaly_scores
from real_report import (REFERENCES, print_attention, print_checks, print_fixed_rules, print_held, print_peers,
                         print_runs, print_summary, print_without, section_metrics)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _train_branches(data: Path, run: Path, config, cache: Path, unavailable: dict[str, str]) -> None:
    """Every branch not finished in ``run``, through the library pipeline (the heads are fitted per
    prior by the caller); a branch that cannot be built (b1 offline) is left out, saying so."""
    for name in training_order(config):
        if name not in unavailable:
            try:
                BRANCHES[name].check(branch_config(config, name))
            except AsdError as error:  # b1 offline: the AST cannot be downloaded
                unavailable[name] = str(error)
                print(f"  {name} left out: {error}", file=sys.stderr, flush=True)
    asdcli.train(data, run, config, skip=list(unavailable), cache_dir=cache, heads=False)


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
                 "final": result.score, REFERENCES[0]: reference.mse, REFERENCES[1]: reference.mahalanobis,
                 **_peer_scores(out.parent, data, result.clips, config)})
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


def _peer_scores(fold_dir: Path, data: Path, clips, config) -> dict[str, np.ndarray]:
    """audio-anomaly's scores of the fold's test clips (bench/peers.py), computed once per fold
    (they depend on no seed) and kept in ``peers.npz`` beside the fold's data."""
    path, names = fold_dir / "peers.npz", [c.path.name for c in clips]
    if path.exists():
        saved = np.load(path)
        if saved["clips"].tolist() == names:
            return {k: saved[k] for k in AUDIO_ANOMALY}
    scores = audio_anomaly_scores(training_clips(str(data)), clips, config.audio).scores
    np.savez(path, clips=np.array(names), **scores)
    return scores


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


def _arguments() -> argparse.Namespace:
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
    return parser.parse_args()


def fit_variant(args, names: list[str], variant: Variant, mine: list[RunRecord]) -> tuple[list[dict], list]:
    """The priors and rules chosen without each set (``--prior loso``), then every run's fusion
    head and meta-learner fitted with them and scored: (per-run results, held-out choices)."""
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
    return records, held


def main() -> None:
    args = _arguments()
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
        results = {v.name: fit_variant(args, names, v, [r for r in prepared if r.variant == v.name])
                   for v in variants(args)}
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
            print_peers(records, {n: available[n].role for n in names})
            if held:
                print_held(held)
            suffix = next(v.suffix for v in variants(args) if v.name == variant)
            if args.b1:
                print_without(records, args.work, suffix)
            print_fixed_rules(records, args.work, suffix)
            print_attention(records)
            print(f"\nPipeline time per run (train + score): mean {np.mean([r['seconds'] for r in records]):.0f} s; "
                  f"reference training: mean {np.mean([r['reference_s'] for r in records]):.0f} s")
    if handle:
        handle.close()


if __name__ == "__main__":
    main()
