"""Training examples for the fusion head and the meta-learner: the normalised branch scores of
the normal training clips (label 0) and of pseudo-anomalies (label 1).

Pseudo-anomalies are perturbed training clips of the same section, clips of other sections scored
as if they belonged to it (outlier exposure) and, where the data holds a single section, clips of
the built-in synthetic machines. No test clip is ever read. Perturbed clips are scored leaving their
clean original out of the memory banks, as the normal training clips are, so that a kNN branch is
not credited for recognising the clip it was made from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from asdcli.checkpoints import check_arrays, load_arrays, save_arrays
from asdcli.config import AsdConfig, SynthConfig
from asdcli.data.audio import load_audio
from asdcli.data.features import LogMel
from asdcli.data.layout import Clip, parse_clip
from asdcli.data.pseudo_anomalies import KINDS, OTHER_SECTION, PERTURBATIONS, SYNTHETIC_MACHINE, perturb
from asdcli.data.synth import ClipSpec, render_clip
from asdcli.errors import CheckpointError, DataError
from asdcli.models.base import Batch
from asdcli.models.registry import BRANCHES, canonical_name
from asdcli.services.scoring.branch_scores import DomainShift, normalize
from asdcli.services.scoring.branch_setup import BranchSet
from asdcli.services.inputs.dataset import clip_key, training_clips
from asdcli.services.store.records import TrainScores, read_record
from asdcli.services.inputs.embeddings import with_embeddings
from asdcli.services.store.migrate import upgrade_examples
from asdcli.services.store.runs import Run, read_branch_record

OUTLIER, SYNTH = OTHER_SECTION, SYNTHETIC_MACHINE


@dataclass
class Examples:
    """``z`` (N, K) standardised scores of ``branches``; ``label`` (N,) 0 normal / 1 pseudo-anomaly;
    ``group`` (N,) index into ``groups``; ``kind`` (N,) index into :data:`KINDS`; ``trained_kinds``:
    per branch, the pseudo-anomaly kinds its training objective (or an upstream branch's) already
    separates (:meth:`~asdcli.models.base.Branch.trained_kinds`)."""

    branches: list[str]
    groups: list[str]
    z: np.ndarray
    label: np.ndarray
    group: np.ndarray
    kind: np.ndarray
    trained_kinds: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def fair_pseudo(self, branch: int) -> np.ndarray:
        """(N,) mask of the pseudo-anomalies branch ``branch`` may be judged on: those of the
        kinds its training did not already separate."""
        blind = [KINDS.index(k) for k in self.trained_kinds.get(self.branches[branch], [])]
        return (self.label == 1) & ~np.isin(self.kind, blind)

    def rows(self, group: int, label: int | None = None) -> np.ndarray:
        """Indices of the examples of one section (and one label)."""
        keep = self.group == group
        return np.flatnonzero(keep if label is None else keep & (self.label == label))

    def counts(self) -> dict[str, int]:
        """Examples per kind."""
        return {k: int((self.kind == i).sum()) for i, k in enumerate(KINDS) if (self.kind == i).any()}

    def save(self, path: Path) -> None:
        arrays = {"z": torch.from_numpy(self.z).float(), "label": torch.from_numpy(self.label).long(),
                  "group": torch.from_numpy(self.group).long(), "kind": torch.from_numpy(self.kind).long()}
        save_arrays(path, arrays, {"branches": ",".join(self.branches), "groups": ",".join(self.groups),
                                   "kinds": ",".join(KINDS), "trained_kinds": json.dumps(self.trained_kinds)})

    @classmethod
    def load(cls, path: Path) -> "Examples":
        what = "fusion training examples (asd train-fusion writes them)"
        arrays, meta = _read_examples(path, what)
        return cls(meta["branches"].split(","), meta["groups"].split(","), arrays["z"].double().numpy(),
                   arrays["label"].numpy(), arrays["group"].numpy(), arrays["kind"].numpy(),
                   json.loads(meta["trained_kinds"]))


def _read_examples(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The examples file's tensors, checked against their declared shapes and the ranges their
    metadata gives (a label 0/1, a section of the run or -1, a known kind)."""
    arrays, meta = load_arrays(path, what)
    meta = upgrade_examples(meta)
    branches, groups = meta.get("branches", "").split(","), meta.get("groups", "").split(",")
    check_arrays(path, what, arrays, {"z": (torch.float32, ("N", len(branches))), "label": (torch.int64, ("N",)),
                                         "group": (torch.int64, ("N",)), "kind": (torch.int64, ("N",))})
    for key, low, high in (("label", 0, 1), ("group", -1, len(groups) - 1), ("kind", 0, len(KINDS) - 1)):
        values = arrays[key]
        if values.numel() and (int(values.min()) < low or int(values.max()) > high):
            raise CheckpointError(f"{path}: tensor '{key}' holds values outside {low}..{high} ({what}); write it again")
    return arrays, meta


@dataclass
class Normals:
    """The normal training clips every named branch scored, in training order: clip keys, (N, K)
    standardised leave-one-out scores with the target-domain shift taken out (each target clip
    left out of its own shift), sections, domains, and the shift fitted on them."""

    keys: list[str]
    z: np.ndarray
    groups: list[str]
    domains: list[str | None]
    shift: DomainShift


def normal_examples(run: Run, names: list[str]) -> Normals:
    """The run's normal training clips, from ``<branch>.train_scores.json``."""
    per_branch = {n: read_record(TrainScores, run.train_scores(n), f"{n} training scores").scores for n in names}
    common = set.intersection(*(set(v) for v in per_branch.values()))
    if not common:
        raise CheckpointError(f"{run.path}: the training scores of {', '.join(names)} share no clip; the files were "
                              "edited or come from other runs: train the branches again")
    keys = [k for k in per_branch[names[0]] if k in common]
    groups = [k.split("/", 1)[0] for k in keys]
    domains = [parse_clip(k.split("/", 1)[1]).domain for k in keys]
    metas = {n: read_branch_record(run, n) for n in names}
    z = np.stack([normalize(np.array([per_branch[n][k] for k in keys]), groups, metas[n]) for n in names], axis=1)
    shift = DomainShift.fit(z, groups, domains)
    return Normals(keys, shift.apply(z, groups, domains, fitted=True), groups, domains, shift)


@dataclass(frozen=True)
class _Pseudo:
    """One pseudo-anomaly to render: from a training clip (perturbed or relabelled) or a synth spec."""

    group: int  # index in the run's sections, -1 for a section the run never saw
    section: str
    kind: str
    seed: int
    clip: Clip | None = None
    exclude: int = -1  # memory-bank row of the clean original
    spec: ClipSpec | None = None


def perturbed(clips: list[Clip], group: int, section: str, count: int, rng: np.random.Generator,
              rows: dict[str, int] | None = None) -> list["_Pseudo"]:
    """Up to ``count`` perturbed copies of ``clips`` (all of one section), the kinds in turn."""
    kinds = list(PERTURBATIONS)
    plan = []
    for i, j in enumerate(rng.permutation(len(clips))[:count]):
        clip = clips[j]
        exclude = -1 if rows is None else rows[clip_key(clip, section)]  # the key under the run's name
        plan.append(_Pseudo(group, section, kinds[(i + max(group, 0)) % len(kinds)], int(rng.integers(2**31)),
                            clip, exclude))
    return plan


def _plan(run: Run, clips: list[Clip], rows: dict[str, int], config: AsdConfig, stream: int) -> list[_Pseudo]:
    """Which pseudo-anomalies to make for every section (seeded, so a rerun makes the same ones;
    another ``stream`` makes other ones)."""
    cfg = config.fusion
    rng = np.random.default_rng(config.seed if stream == 0 else [config.seed, stream])
    plan: list[_Pseudo] = []
    for g, name in enumerate(run.vocab.groups):
        own = [c for c in clips if run.vocab.group_name(c) == name]
        others = [c for c in clips if run.vocab.group_name(c) != name]
        plan += perturbed(own, g, name, cfg.perturbed_per_section, rng, rows)
        for j in rng.permutation(len(others))[: cfg.outliers_per_section]:
            plan.append(_Pseudo(g, name, OUTLIER, 0, others[j]))
        if len(run.vocab.groups) == 1:
            machines = SynthConfig().machines
            for i in range(cfg.synth_outliers):
                spec = ClipSpec(machines[i % len(machines)], 90 + i, "source", "train", "normal", i)
                plan.append(_Pseudo(g, name, SYNTH, int(rng.integers(2**31)), spec=spec))
    return plan


def _wave(item: _Pseudo, config: AsdConfig) -> torch.Tensor:
    """(samples,) waveform of one pseudo-anomaly at the run's rate and length."""
    audio = config.audio
    if item.spec is not None:
        synth = SynthConfig(duration_s=audio.duration_s, sample_rate=audio.sample_rate)
        return torch.from_numpy(render_clip(item.spec, synth, item.seed)[0])
    wave = load_audio(item.clip.path, audio)
    return wave if item.kind == OUTLIER else perturb(wave, audio.sample_rate, item.kind, item.seed)


def _domain(item: _Pseudo) -> int:
    return int(item.clip is not None and item.clip.domain == "target")


def _batches(plan: list[_Pseudo], config: AsdConfig, needs_wave: bool,
             failures: list) -> Iterator[tuple[list[_Pseudo], Batch]]:
    """Render the plan in batches of clips (unreadable source clips are reported and left out)."""
    logmel = LogMel(config.audio, config.features)
    size = config.train.batch_size
    for start in range(0, len(plan), size):
        items, waves = [], []
        for item in plan[start : start + size]:
            try:
                waves.append(_wave(item, config))
                items.append(item)
            except DataError as error:
                failures.append((item.clip.path if item.clip else Path(str(item.spec)), str(error)))
        if not items:
            continue
        wave = torch.stack(waves)  # (B, samples)
        with torch.no_grad():
            feats = logmel(wave)  # (B, n_mels, frames)
        yield items, Batch.unlabelled(feats, [i.group for i in items], [_domain(i) for i in items],
                                      wave if needs_wave else None, [i.exclude for i in items])


def score_pseudo(plan: list[_Pseudo], branches: dict, upstream: dict, config: AsdConfig, device,
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[_Pseudo], dict[str, np.ndarray], list]:
    """Render and score a plan: (the items scored, raw scores (M,) per branch, unreadable clips).
    Training-clip scores leave the clean original out (``train_scores`` with its row)."""
    needs_wave = any(b.needs_wave for b in (*branches.values(), *upstream.values()))
    failures: list = []
    done, raw = [], {n: [] for n in branches}
    with torch.no_grad():
        for items, batch in _batches(plan, config, needs_wave, failures):
            batch = with_embeddings(batch.to(device), upstream)
            for name, branch in branches.items():
                raw[name].append(branch.train_scores(batch).double().cpu().numpy())
            done += items
            if progress is not None:
                progress(len(done), len(plan))
    return done, {n: np.concatenate(v) if v else np.zeros(0) for n, v in raw.items()}, failures


def trained_kinds(branches: dict, upstream: dict) -> dict[str, list[str]]:
    """Per branch, the pseudo-anomaly kinds its own or an upstream branch's training separates."""
    every = {**upstream, **branches}
    out = {}
    for name, branch in branches.items():
        kinds = set(branch.trained_kinds())
        for up in BRANCHES[name].upstream(branch.cfg):
            kinds |= set(every[canonical_name(up)].trained_kinds())
        out[name] = sorted(kinds)
    return out


def build_examples(run: Run, data: Path, names: list[str], config: AsdConfig,
                   device: torch.device | str = "cpu", progress: Callable[[int, int], None] | None = None,
                   stream: int = 0) -> Examples:
    """Score the normal training clips' stored scores plus freshly made pseudo-anomalies with every
    named branch; all standardised per section with the branches' training statistics and the
    target-domain shift of the section's training clips taken out (:class:`DomainShift`).
    ``progress(done, total)`` after each batch of pseudo-anomalies; ``stream``: which seeded set of
    pseudo-anomalies (the fusion head's is 0, the meta-learner's own is 1)."""
    normals = normal_examples(run, names)
    keys, z_normal, normal_groups = normals.keys, normals.z, normals.groups
    rows = {k: i for i, k in enumerate(keys)}
    clips = [c for c in training_clips(str(data)) if clip_key(c, run.vocab.group_name(c)) in rows]
    if not clips:
        raise DataError(f"none of the training clips under {data} were scored by the run {run.path}; "
                        "give the --data the branches were trained on")
    plan = _plan(run, clips, rows, config, stream)
    loaded = BranchSet.load(run, names, device)
    branches, upstream = loaded.branches, loaded.upstream
    metas = {n: read_branch_record(run, n) for n in names}
    done_items, raw, failures = score_pseudo(plan, branches, upstream, config, device, progress)
    groups = [i.section for i in done_items]
    z_pseudo = np.stack([normalize(raw[n], groups, metas[n]) for n in names], axis=1)
    z_pseudo = normals.shift.apply(z_pseudo, groups, [i.clip.domain if i.clip else None for i in done_items])
    group_index = {g: i for i, g in enumerate(run.vocab.groups)}
    return Examples(
        names, list(run.vocab.groups), np.concatenate([z_normal, z_pseudo]),
        np.concatenate([np.zeros(len(keys), dtype=np.int64), np.ones(len(done_items), dtype=np.int64)]),
        np.array([group_index[g] for g in normal_groups] + [i.group for i in done_items], dtype=np.int64),
        np.array([0] * len(keys) + [KINDS.index(i.kind) for i in done_items], dtype=np.int64),
        trained_kinds(branches, upstream), failures)

