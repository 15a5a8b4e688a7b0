"""bench_real.py's tables: per run, per set, the fusion's checks against the best branch, the
leave-one-set-out choices, a branch's contribution, fixed label-free rules, attention."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asdcli.metrics import auc, pauc
from asdcli.models.registry import BRANCHES
from loso import DEFAULT_RULES

STAGES = ["average", "fused", "final"]
REFERENCES = ["ref AE (MSE)", "ref AE (Mahalanobis)", "audio-anomaly (mean)", "audio-anomaly (max)"]
# what a user would pick instead of asd (bench/peers.py): b1 alone is frozen-embedding kNN
PEERS = {"b1": "b1 alone (frozen kNN)", **{r: r for r in REFERENCES}}


def section_metrics(groups: list[str], labels: np.ndarray, scores: np.ndarray) -> dict[str, tuple[float, float]]:
    """(AUC, pAUC) per section that has both classes."""
    out = {}
    for g in sorted(set(groups)):
        rows = np.array([x == g for x in groups])
        if len(set(labels[rows].tolist())) == 2:
            out[g] = (auc(labels[rows], scores[rows]), pauc(labels[rows], scores[rows]))
    return out


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


def print_peers(records: list[dict], roles: dict[str, str]) -> dict[str, float]:
    """Per set, the final score's mean AUC against each peer's on the same folds (the issue's
    goals: no set more than 0.03 below its best peer; pooled, 0.03 above every peer); returns the
    pooled means."""
    peers = [p for p in PEERS if any(p in r["metrics"] for r in records)]
    print("\nasd against the peers a user would pick instead (AUC, mean over the same folds and seeds): the final "
          "score, each peer, the set's best peer and the difference\n")
    print("| set | role | final | " + " | ".join(PEERS[p] for p in peers) + " | best peer | final - best peer |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in peers) + " | --- | ---: |")
    pooled = {}
    for name in sorted({r["set"] for r in records}) + ["all"]:
        chosen = [r for r in records if name in ("all", r["set"])]
        means = {c: float(np.nanmean([_mean_metric(r, c, 0) for r in chosen])) for c in ["final", *peers]}
        best = max(peers, key=lambda p: means[p])
        print(f"| {name} | {roles.get(name, '')} | {means['final']:.3f} | " + " | ".join(f"{means[p]:.3f}" for p in peers)
              + f" | {PEERS[best]} | {means['final'] - means[best]:+.3f} |")
        if name == "all":
            pooled = means
    print("\nHow b1, b2 and b4 pool frames into a clip score, and b1 from which block (every choice scored on these "
          "runs' trained weights, each set judged with the choice made on the others): [pooling.md](pooling.md), "
          "written by bench/bench_pooling.py")
    return pooled


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


def _saved_scores(work: Path, record: dict, suffix: str):
    """The per-clip scores bench_real saved for one run (labels, groups, every branch's and stage's)."""
    return np.load(work / record["set"] / f"fold{record['fold']}" / f"seed{record['seed']}" / f"scores{suffix}.npz")


def print_without(records: list[dict], work: Path, suffix: str, bid: str = "b1") -> None:
    """Per set, the fused score's AUC with and without one branch: its saved per-branch scores
    fused again with the run's mean attention weights, that branch's share spread over the rest
    (with a uniform prior and trust 0 the weights are the same for every clip: exactly the fusion
    without it). Whether the branch helps the fused score."""
    rows = {}
    for r in records:
        saved = _saved_scores(work, r, suffix)
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


FIXED_RULES = {
    "mean of all": lambda a: a.mean(1),
    "median": lambda a: np.median(a, 1),
    "max": lambda a: a.max(1),
    "mean of the positive parts": lambda a: np.clip(a, 0, None).mean(1),
    "mean of the top two": lambda a: np.sort(a, 1)[:, -2:].mean(1),
}


def _is_branch(key: str) -> bool:
    """Whether a saved score's key names a branch (b1..b5) rather than a stage or a reference."""
    return key[:1] == "b" and key[1:].isdigit()


def print_fixed_rules(records: list[dict], work: Path, suffix: str) -> None:
    """Fixed label-free rules over every trained branch's standardised scores (arcsinh, as the
    fusion uses them), and each branch alone, judged by the fusion issue's criterion on every set:
    whether any rule that needs no label of the machine would hold everywhere."""
    per_set: dict[str, dict[str, list[float]]] = {}  # set -> score (branch id, rule, stage) -> AUC per run
    for r in records:
        saved = _saved_scores(work, r, suffix)
        groups, labels = [str(g) for g in saved["groups"]], saved["labels"]
        ids = sorted(i for i in saved.files if _is_branch(i))
        z = np.arcsinh(np.stack([saved[i] for i in ids], 1))
        scores = {**{i: z[:, k] for k, i in enumerate(ids)}, **{name: rule(z) for name, rule in FIXED_RULES.items()},
                  "final (the product)": saved["final"], "average": saved["average"]}
        cell = per_set.setdefault(r["set"], {})
        for name, score in scores.items():
            values = [a for a, _ in section_metrics(groups, labels, score).values()]
            cell.setdefault(name, []).append(float(np.mean(values)) if values else float("nan"))
    ids = sorted({k for cell in per_set.values() for k in cell if _is_branch(k)})
    rules = [*FIXED_RULES, *(f"{i} alone" for i in ids), "final (the product)"]
    best = {}  # set -> AUC per run of its best branch (the best mean over its runs)
    for set_name, cell in per_set.items():
        branches = {k: np.array(v) for k, v in cell.items() if _is_branch(k)}
        best[set_name] = branches[max(branches, key=lambda b: np.nanmean(branches[b]))]
    print("\nFixed rules that need no label (every trained branch's standardised scores, none left out), "
          "judged like the final score above: per set, mean AUC >= the set's best branch - 0.02, >= the plain "
          "average, no run below the best branch by more than 0.05\n")
    print("| rule | mean AUC over sets | sets where it holds | worst set: rule - best branch |")
    print("| --- | ---: | ---: | --- |")
    for name in rules:
        key = name.removesuffix(" alone")
        holds, gaps = 0, []
        for set_name, cell in sorted(per_set.items()):
            value = np.array(cell[key])
            gap = value - best[set_name]
            holds += bool(np.nanmean(gap) >= -0.02 and np.nanmean(value - np.array(cell["average"])) >= -1e-9
                          and np.nanmin(gap) >= -0.05)
            gaps.append((float(np.nanmean(gap)), set_name))
        worst = min(gaps)
        mean = np.mean([np.nanmean(cell[key]) for cell in per_set.values()])
        print(f"| {name} | {mean:.3f} | {holds} of {len(per_set)} | {worst[1]} {worst[0]:+.3f} |")
