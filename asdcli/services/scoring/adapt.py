"""A machine section the run never saw, made scorable from a few of its normal clips: they give
each branch's score statistics for the section (so its scores can be standardised) and, with
perturbed copies of them as pseudo-anomalies, the support set the meta-learner adapts from."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asdcli.config import AsdConfig
from asdcli.data.layout import Clip
from asdcli.errors import DataError
from asdcli.services.scoring.branch_scores import DomainShift, normalize, score_branches
from asdcli.services.scoring.branch_setup import BranchSet
from asdcli.services.scoring.examples import perturbed, score_pseudo
from asdcli.services.store.runs import Run
from asdcli.services.store.records import BranchRecord, ScoreStats


@dataclass
class Support:
    """Per new section: standardised scores (S, K) of the support set and its labels (S,)
    (0 the given normal clips, 1 their perturbed copies); ``metas`` are the branches' metadata
    with the new sections' score statistics added, ``shift`` the target-domain shift of the new
    sections (from their target-domain normal clips, if any were given)."""

    metas: dict[str, BranchRecord]
    shift: DomainShift = field(default_factory=DomainShift)
    z: dict[str, np.ndarray] = field(default_factory=dict)
    label: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def normals(self, section: str) -> np.ndarray:
        """(S0, K) standardised scores of the section's given normal clips."""
        return self.z[section][self.label[section] == 0]


def _stats(values: np.ndarray) -> dict:
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std(ddof=1))}


def section_support(run: Run, clips: list[Clip], names: list[str], metas: dict[str, BranchRecord], config: AsdConfig,
                    cache_dir: Path | None, device: torch.device | str = "cpu",
                    loaded: BranchSet | None = None) -> Support:
    """Score the normal clips of sections the run never saw (clips of known sections are ignored)
    and ``config.meta.support_anomalies`` perturbed copies per section. ``loaded``: the branches
    and upstream branches (:meth:`BranchSet.load`), if the caller has them."""
    new = [c for c in clips if run.vocab.group_index(c) < 0 and c.is_anomaly != 1]
    if not new:
        raise DataError("--support: none of these clips is a normal clip of a section the run did not train on "
                        f"(the run knows {', '.join(run.vocab.groups)})")
    loaded = loaded or BranchSet.load(run, names, device)
    raw = score_branches(run, names, new, cache_dir, device, loaded=loaded)
    groups = [c.group for c in raw.clips]
    metas = copy.deepcopy(metas)
    for name in names:
        for section in set(groups):
            values = raw.scores[name][[i for i, g in enumerate(groups) if g == section]]
            if values.size < 2:
                raise DataError(f"--support: section {section} needs at least 2 readable normal clips")
            metas[name].score_stats[section] = ScoreStats(**_stats(values))
    support = Support(metas, skipped=list(raw.skipped))
    rng = np.random.default_rng(config.seed)
    for section in sorted(set(groups)):
        own = [c for c in raw.clips if c.group == section]
        plan = perturbed(own, -1, section, config.meta.support_anomalies, rng)
        items, pseudo_raw, failures = score_pseudo(plan, loaded.branches, loaded.upstream, config, device)
        support.skipped += failures
        rows = [i for i, g in enumerate(groups) if g == section]
        z_normal = np.stack([normalize(raw.scores[n][rows], [section] * len(rows), metas[n]) for n in names], axis=1)
        z_pseudo = np.stack([normalize(pseudo_raw[n], [section] * len(items), metas[n]) for n in names], axis=1)
        domains = [raw.clips[i].domain for i in rows]
        shift = DomainShift.fit(z_normal, [section] * len(rows), domains)
        support.shift.update(shift)
        z_normal = shift.apply(z_normal, [section] * len(rows), domains, fitted=True)
        z_pseudo = shift.apply(z_pseudo, [section] * len(items), [i.clip.domain for i in items])
        support.z[section] = np.concatenate([z_normal, z_pseudo])
        support.label[section] = np.concatenate([np.zeros(len(rows), dtype=np.int64), np.ones(len(items), dtype=np.int64)])
    return support
