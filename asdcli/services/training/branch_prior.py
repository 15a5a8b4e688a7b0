"""The fusion's prior over branches, learned from labelled real faults of *other* machines.

A machine with a handful of normal clips cannot rank the branches by itself: its pseudo-anomalies
(perturbed copies, other sections) are separated best by whichever branch happens to model them,
not by the branch that catches its real faults (measured on real fan recordings: the contrastive
branch separated pseudo-anomalies at AUC 0.93 and ranked the real faults at 0.35). So the fusion
starts from a prior learned on labelled recordings of other machines: a branch's weight is
``softmax((AUC_k - max AUC) / temperature)`` of its mean real AUC there. The machine's own
pseudo-anomaly evidence moves the weights only by ``trust`` (0: not at all), and both the
temperature and the trust are chosen on those labelled sets by leaving one set out at a time:
a value is kept only for what it does on sets it was not chosen on.

The prior is a small versioned JSON file: one ships in the package (``asdcli/priors/``, learned
from the real development recordings named in its ``source``), and ``asd learn-prior`` makes
another from a user's own labelled runs. No label of the machine being scored is ever read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from scipy.stats import rankdata

from asdcli.errors import ConfigError
from asdcli.files import CONFIG_LIMIT, parse_json, read_regular

PRIOR_FORMAT = 1
BUILTIN = Path(__file__).resolve().parents[2] / "priors" / "real_dev.json"
TEMPERATURES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1000.0)  # 1000: uniform in effect
TRUSTS = (0.0, 0.5, 1.0)
TIE = 0.002  # AUC differences below this do not choose a sharper prior or more trust


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PriorBranch(_Strict):
    """One branch's evidence in the labelled data: its real AUC relative to the other branches of
    the same sets, on the scale of the sets' mean AUC (:func:`branch_aucs`), and on how many sets
    and sections it was measured."""

    auc: float = Field(ge=0, le=1)
    sets: int = Field(ge=1)
    sections: int = Field(ge=1)


class PriorSource(_Strict):
    """Where a prior came from, shown by ``asd info``."""

    description: str
    sets: list[str]
    sections: int = Field(ge=0)
    test_clips: int = Field(ge=0)
    max_train_clips: int = Field(ge=0, description="most training clips of a labelled section: trust was not "
                                 "measured beyond it")
    choice: str = Field("", description="how the temperature and trust were chosen")


class BranchPrior(_Strict):
    """A prior over branches (see the module docstring); a temperature of 1000 is uniform in effect."""

    format_version: Literal[1]
    kind: Literal["asd-branch-prior"]
    branches: dict[str, PriorBranch] = Field(min_length=1)
    temperature: float = Field(gt=0)
    trust: float = Field(ge=0, le=1)
    source: PriorSource

    @field_validator("branches")
    @classmethod
    def _known(cls, value: dict[str, PriorBranch]) -> dict[str, PriorBranch]:
        from asdcli.models.registry import BRANCHES

        unknown = sorted(set(value) - set(BRANCHES))
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a branch (choose from {', '.join(BRANCHES)})")
        return value

    def weights(self, names: list[str]) -> np.ndarray:
        """(K,) prior weights of ``names``; a branch the labelled data never measured counts as
        the weakest one that was (it has shown nothing)."""
        known = [r.auc for r in self.branches.values()]
        floor = min(known) if known else 0.5
        values = np.array([self.branches[n].auc if n in self.branches else floor for n in names])
        return softmax_weights(values, self.temperature)


def softmax_weights(values: np.ndarray, temperature: float) -> np.ndarray:
    """softmax((values - max) / temperature)."""
    logits = (values - values.max()) / temperature
    w = np.exp(logits - logits.max())
    return w / w.sum()


def combine(prior: np.ndarray, evidence: np.ndarray, trust: float) -> np.ndarray:
    """(K,) attention start: softmax(log prior + trust * log evidence)."""
    logits = np.log(np.clip(prior, 1e-12, None)) + trust * np.log(np.clip(evidence, 1e-12, None))
    w = np.exp(logits - logits.max())
    return w / w.sum()


def prior_digest(prior: BranchPrior) -> str:
    """A short hash of the prior's content (recorded by the fusion head that used it)."""
    return hashlib.sha1(json.dumps(prior.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def load_prior(spec: str) -> BranchPrior | None:
    """The prior named by ``fusion.prior``: ``builtin`` (shipped), a path to a prior file, or
    ``none`` (None: the fusion weighs branches by the machine's pseudo-anomalies alone)."""
    if spec == "none":
        return None
    path = BUILTIN if spec == "builtin" else Path(spec)
    what = f"fusion.prior: {path}"
    try:
        data = parse_json(read_regular(path, "prior file", ConfigError, CONFIG_LIMIT), path, "prior file", ConfigError)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file (make one with asd learn-prior, or use 'builtin' or 'none')") from None
    except ConfigError as error:
        raise ConfigError(f"fusion.prior: {error}") from None
    try:
        return BranchPrior.model_validate(data)
    except ValidationError as error:
        item = error.errors()[0]
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        raise ConfigError(f"{what}: field '{field}': {item['msg']}") from None


def save_prior(prior: BranchPrior, path: Path) -> None:
    """Write a prior file atomically (sorted keys: the same prior gives the same bytes)."""
    from asdcli.atomic import write_text
    write_text(path, json.dumps(prior.model_dump(mode="json"), indent=1, sort_keys=True) + "\n")


@dataclass
class Labelled:
    """One labelled run of another machine: its branches' standardised scores (N, K) of labelled
    test clips, labels (N,) 1 = anomaly, sections (N,), the evidence weights (K,) its own
    pseudo-anomalies gave (:func:`asdcli.services.training.fuse.fusion_prior`) and the most training clips
    of its sections. ``set`` groups runs of the same recordings (folds, seeds)."""

    set: str
    branches: list[str]
    z: np.ndarray
    label: np.ndarray
    section: np.ndarray
    evidence: np.ndarray
    train_clips: int

    def section_aucs(self, score: np.ndarray) -> list[float]:
        """AUC of ``score`` (N,) in every section with both classes."""
        out = []
        for s in np.unique(self.section):
            rows = self.section == s
            if len(np.unique(self.label[rows])) == 2:
                out.append(rank_auc(self.label[rows], score[rows]))
        return out

    def fused(self, weights: np.ndarray) -> np.ndarray:
        """(N,) the fused score a fusion head with constant attention ``weights`` gives."""
        return np.arcsinh(self.z) @ weights


def rank_auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties count half): equal to sklearn's roc_auc_score,
    without its checks, for the many small AUCs of :func:`choose`."""
    ranks = rankdata(score)
    positive = label == 1
    n1, n0 = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def branch_aucs(runs: list[Labelled]) -> dict[str, PriorBranch]:
    """Per branch, its mean section AUC within each set, measured against the other branches of
    the same set: the mean over sets of (its AUC - the set's mean over its branches), plus the
    mean AUC of every set and branch. A branch used only on easy sets (the flow needs 20 clips per
    section) is thus not credited with their ease."""
    per_set: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for k, name in enumerate(r.branches):
            per_set.setdefault(r.set, {}).setdefault(name, []).extend(r.section_aucs(r.z[:, k]))
    means = {s: {n: float(np.mean(v)) for n, v in names.items() if v} for s, names in per_set.items()}
    means = {s: m for s, m in means.items() if m}
    if not means:
        return {}
    grand = float(np.mean([v for m in means.values() for v in m.values()]))
    out = {}
    for name in sorted({n for m in means.values() for n in m}):
        gaps = [m[name] - float(np.mean(list(m.values()))) for m in means.values() if name in m]
        sections = sum(len(per_set[s][name]) for s in means if name in means[s])
        out[name] = PriorBranch(auc=float(np.clip(grand + np.mean(gaps), 0.0, 1.0)), sets=len(gaps), sections=sections)
    return out


def fused_auc(run: Labelled, records: dict[str, PriorBranch], temperature: float, trust: float) -> float:
    """Mean section AUC of ``run`` fused with a prior of ``records`` at ``temperature`` and ``trust``."""
    prior = BranchPrior(format_version=1, kind="asd-branch-prior", branches=records, temperature=temperature,
                        trust=trust, source=PriorSource(description="", sets=[], sections=0, test_clips=0,
                                                       max_train_clips=0))
    weights = combine(prior.weights(run.branches), run.evidence, trust)
    values = run.section_aucs(run.fused(weights))
    return float(np.mean(values)) if values else float("nan")


def leave_one_set_out(runs: list[Labelled], temperature: float, trust: float) -> dict[str, float]:
    """Per set, the mean fused AUC of its runs with the prior learned from the other sets."""
    out = {}
    for name in sorted({r.set for r in runs}):
        records = branch_aucs([r for r in runs if r.set != name])
        values = [fused_auc(r, records, temperature, trust) for r in runs if r.set == name]
        values = [v for v in values if np.isfinite(v)]
        if records and values:
            out[name] = float(np.mean(values))
    return out


def choose(runs: list[Labelled]) -> tuple[float, float, str]:
    """(temperature, trust, how): the pair whose mean held-out-set AUC is best, where held-out
    means the prior was learned without that set; a sharper prior or more trust must win by more
    than :data:`TIE`. With a single labelled set nothing can be judged on another: a mild prior
    (0.1) and no trust."""
    sets = {r.set for r in runs}
    if len(sets) < 2:
        return 0.1, 0.0, "one labelled set: temperature 0.1 and trust 0 by default (nothing to judge them on)"
    best, best_value = (TEMPERATURES[-1], 0.0), -1.0
    for trust in TRUSTS:  # from the mildest: ties keep the milder choice
        for temperature in sorted(TEMPERATURES, reverse=True):
            held = leave_one_set_out(runs, temperature, trust)
            value = float(np.mean(list(held.values()))) if held else float("nan")
            if np.isfinite(value) and value > best_value + TIE:
                best, best_value = (temperature, trust), value
    how = (f"leave one set out over {len(sets)} sets: temperature {best[0]:g}, trust {best[1]:g} "
           f"(mean held-out-set AUC {best_value:.3f})")
    return best[0], best[1], how


def learn_prior(runs: list[Labelled], description: str) -> BranchPrior:
    """A prior from labelled runs of other machines (see :func:`choose` and :func:`branch_aucs`)."""
    records = branch_aucs(runs)
    if not records:
        raise ConfigError("no labelled section with both normal and anomalous test clips: nothing to learn a prior from")
    temperature, trust, how = choose(runs)
    sections = sum(len(np.unique(r.section)) for r in runs)
    source = PriorSource(description=description, sets=sorted({r.set for r in runs}), sections=sections,
                         test_clips=int(sum(len(r.label) for r in runs)),
                         max_train_clips=max(r.train_clips for r in runs), choice=how)
    return BranchPrior(format_version=PRIOR_FORMAT, kind="asd-branch-prior", branches=records,
                       temperature=temperature, trust=trust, source=source)
