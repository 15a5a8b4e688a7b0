"""Leave-one-set-out judging for bench_real.py: every choice is made without the set it is judged on.

For each real set S, the fusion's prior over branches is learned from the labelled runs of the
other sets (asdcli.services.training.branch_prior.learn_prior, which itself picks its temperature and
trust by leaving one of *those* sets out), and the rules that leave a branch out of the fusion
(train.heldout_max_z, train.heldout_min_clips, the flow's minimum clips) are chosen from a small
grid on the other sets. S's runs are then fused with that prior by the product's own
train-fusion / meta-train / score (bench_real.py), and the rules' effect on S is computed with
the constant attention the prior gives (exact for a trust of 0 and without a meta-learner).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asdcli.config import AsdConfig
from asdcli.services.training.branch_prior import BranchPrior, Labelled, combine, learn_prior
from asdcli.services.scoring.branch_scores import trained_branches
from asdcli.services.scoring.reliability import split_usable
from asdcli.services.store.runs import open_run, read_branch_record

RULES = {"train.heldout_max_z": (3.0, 5.0, 1e9), "train.heldout_min_clips": (1, 2, 3), "flow limitation": (True, False),
         "branches.contrastive.min_classes": (1, 2)}
DEFAULT_RULES = {"train.heldout_max_z": 3.0, "train.heldout_min_clips": 2, "flow limitation": True,
                 "branches.contrastive.min_classes": 2}


def save_record(record: Labelled, path: Path) -> None:
    np.savez(path, set=record.set, branches=np.array(record.branches), z=record.z, label=record.label,
             section=record.section, evidence=record.evidence, train_clips=record.train_clips)


def load_record(path: Path) -> Labelled:
    data = np.load(path, allow_pickle=False)
    return Labelled(str(data["set"]), data["branches"].tolist(), data["z"], data["label"], data["section"],
                    data["evidence"], int(data["train_clips"]))


@dataclass
class RunRecord:
    """One fold and seed of a set: its run folder and labelled record (every trained branch)."""

    set: str
    fold: int
    seed: int
    run: Path
    labelled: Labelled
    variant: str = "config"


def kept(record: RunRecord, rules: dict, config: AsdConfig) -> list[str]:
    """The branches the fusion keeps under ``rules`` (the product's split_usable)."""
    run = open_run(record.run)
    metas = {n: read_branch_record(run, n) for n in trained_branches(run)}
    if not rules["flow limitation"] and "flow" in metas:
        metas["flow"] = metas["flow"].model_copy(update={"limitation": None})
    overrides = {k: v for k, v in rules.items() if "." in k}
    return split_usable(record.labelled.branches, metas, config.with_overrides(**overrides))[0]


def restrict(record: Labelled, names: list[str]) -> Labelled:
    """The record with only ``names`` (their evidence weights renormalised, as a softmax over them)."""
    idx = [record.branches.index(n) for n in names]
    evidence = record.evidence[idx] / record.evidence[idx].sum()
    return Labelled(record.set, names, record.z[:, idx], record.label, record.section, evidence, record.train_clips)


def static_auc(record: Labelled, prior: BranchPrior) -> float:
    """Mean section AUC of the constant-attention fusion of ``record`` under ``prior``."""
    weights = combine(prior.weights(record.branches), record.evidence, prior.trust)
    values = record.section_aucs(record.fused(weights))
    return float(np.mean(values)) if values else float("nan")


def rule_grid() -> list[dict]:
    return [dict(zip(RULES, values)) for values in itertools.product(*RULES.values())]


@dataclass
class Held:
    """What leaving set ``name`` out chose, and how the choice fared on it."""

    name: str
    prior: BranchPrior
    rules: dict
    default_rules_auc: float  # static fusion on the held-out set with the default rules
    chosen_rules_auc: float   # ... with the rules chosen on the other sets


def fused_records(records: list[RunRecord], rules: dict, config: AsdConfig, cache: dict) -> list[Labelled]:
    """Each run's record with only the branches the fusion keeps under ``rules``."""
    out = []
    for r in records:
        key = (str(r.run), tuple(rules.items()))
        if key not in cache:
            cache[key] = kept(r, rules, config)
        out.append(restrict(r.labelled, cache[key]))
    return out


def hold_out(records: list[RunRecord], name: str, config: AsdConfig, cache: dict) -> Held:
    """Learn the prior (from the branches the fusion keeps, by the default rules) and choose the
    rules without set ``name``; judge the rules on it."""
    others = [r for r in records if r.set != name]
    prior = learn_prior(fused_records(others, DEFAULT_RULES, config, cache),
                        f"bench_real leave-one-set-out: every real set but {name}")

    def mean_auc(chosen: list[RunRecord], rules: dict) -> float:
        per_set: dict[str, list[float]] = {}
        for r, record in zip(chosen, fused_records(chosen, rules, config, cache)):
            per_set.setdefault(r.set, []).append(static_auc(record, prior))
        return float(np.nanmean([np.nanmean(v) for v in per_set.values()]))

    best, best_value = DEFAULT_RULES, mean_auc(others, DEFAULT_RULES)
    for rules in rule_grid():
        value = mean_auc(others, rules)
        if value > best_value + 0.002:  # the default stays unless another does better elsewhere
            best, best_value = rules, value
    mine = [r for r in records if r.set == name]
    return Held(name, prior, best, mean_auc(mine, DEFAULT_RULES), mean_auc(mine, best))
