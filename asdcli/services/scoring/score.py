"""`asd score`: branch scores -> per-section normalisation -> attention fusion -> meta-learner
(adapted per section) -> final score and decision, for any clips."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from asdcli.config import AsdConfig
from asdcli.data.audio import prepare_wave, select_channel
from asdcli.data.features import LogMel
from asdcli.data.layout import Clip, parse_clip
from asdcli.errors import CheckpointError, DataError
from asdcli.metrics import fpr_threshold, gamma_threshold
from asdcli.models.base import Batch
from asdcli.models.registry import BRANCHES, canonical_name
from asdcli.services.scoring.branch_scores import (normalize, score_branches, thin_sections, trained_branches,
                                          unfinished_branches)
from asdcli.services.scoring.examples import Examples, Normals, normal_examples
from asdcli.services.scoring.stages import (MetaLearner, fused_features, load_fusion, load_meta,
                                    meta_examples, support_rows, usable_branches)
from asdcli.services.scoring.adapt import Support, section_support
from asdcli.services.scoring.branch_setup import BranchSet
from asdcli.services.store.records import BranchRecord
from asdcli.services.store.commits import reading
from asdcli.services.inputs.embeddings import with_embeddings
from asdcli.services.store.runs import Run, open_run, read_branch_record, run_config

METHODS = {
    "meta": "meta-learner adapted per section over the attention-fused scores",
    "fusion": "attention fusion of the per-section standardised branch scores (no meta-learner: asd train trains it)",
    "kept": "attention fusion of the per-section standardised branch scores (the meta-learner keeps it: too few "
            "sections to adapt)",
    "average": "average of the per-section standardised branch scores (no fusion head: asd train trains it)",
}


@dataclass
class ScoreResult:
    """Final scores (N,) and decisions (N,) of ``clips``, with how they were made: the
    standardised score of each branch, the fused score and attention weights (N, K) when a
    fusion head exists, the per-section thresholds and the method (a key of :data:`METHODS`)."""

    clips: list[Clip]
    score: np.ndarray
    decision: np.ndarray
    normalized: dict[str, np.ndarray]
    fused: np.ndarray | None
    weights: np.ndarray | None
    thresholds: dict[str, float]
    branches: list[str]
    method: str
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """One dict per scored clip: file, machine, section, domain, score, decision, and each
        branch's standardised score (``z_<id>``); for a DataFrame or a CSV writer."""
        ids = {n: BRANCHES[n].bid for n in self.branches}
        return [{"file": str(c.path), "machine": c.machine, "section": c.section, "domain": c.domain,
                 "score": float(self.score[i]), "decision": int(self.decision[i]),
                 **{f"z_{ids[n]}": float(self.normalized[n][i]) for n in self.branches}}
                for i, c in enumerate(self.clips)]


@dataclass
class _Pipeline:
    """The run's scoring stages after the branches: (N, K) standardised scores -> (N,) scores."""

    run: Run
    fusion: torch.nn.Module | None = None
    meta: MetaLearner | None = None
    examples: Examples | None = None
    support: Support | None = None
    learners: dict[str, torch.nn.Module] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    abstained: str | None = None  # why the meta-learner keeps the fused score

    @property
    def method(self) -> str:
        if self.meta is not None:
            return "meta"
        return ("kept" if self.abstained else "fusion") if self.fusion is not None else "average"

    def fused(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.fusion is None:
            return z.mean(axis=1), None
        with torch.no_grad():
            out = self.fusion(torch.from_numpy(z).float())
        return out.fused.double().numpy(), out.weights.double().numpy()

    def final(self, z: np.ndarray, groups: list[str]) -> np.ndarray:
        """Final scores of clips with (N, K) scores ``z`` in sections ``groups``."""
        if self.meta is None:
            return self.fused(z)[0]
        x = fused_features(self.fusion, z)
        out = np.empty(len(groups))
        for name in sorted(set(groups)):
            rows = [i for i, g in enumerate(groups) if g == name]
            learner = self._learner(name)  # adapting needs gradients: outside no_grad
            with torch.no_grad():
                out[rows] = learner(x[rows]).double().numpy()
        return out

    @cached_property
    def _example_features(self) -> torch.Tensor:
        """(M, F) meta-learner inputs of the run's stored examples."""
        return fused_features(self.fusion, self.examples.z)

    def _learner(self, section: str) -> torch.nn.Module:
        """The meta-learner adapted to ``section`` (once per section: the test clips and the
        training clips of a section are scored by the same adapted classifier)."""
        if section not in self.learners:
            ex = self.examples
            if section in ex.groups:
                sup = support_rows(ex, ex.groups.index(section), self.meta.cfg, self.meta.seed)
                sx, sy = self._example_features[sup], torch.from_numpy(ex.label[sup]).float()
            elif self.support is not None and section in self.support.z:
                sx = fused_features(self.fusion, self.support.z[section])
                sy = torch.from_numpy(self.support.label[section]).float()
            else:  # no clip of this section to adapt from: the meta-learned initialisation
                sx = sy = None
            self.learners[section] = self.meta.adapt(sx, sy)
        return self.learners[section]


def _pipeline(run: Run, names: list[str] | None) -> tuple[_Pipeline, list[str]]:
    """The stages the run has: fusion and meta-learner when trained (and not narrowed by ``names``)."""
    pipe = _Pipeline(run)
    if run.fusion_record.exists():
        fusion, meta = load_fusion(run)
        if names is None or names == meta.branches:
            pipe.fusion, names = fusion, meta.branches
            if run.meta_learner_record.exists():
                meta_learner = load_meta(run)
                if meta_learner.meta.abstained:  # it keeps the fused score: say so, and score with the fusion
                    pipe.abstained = meta_learner.meta.abstained
                else:
                    pipe.meta = meta_learner
                    pipe.examples = meta_examples(run, meta_learner.meta)
    if names is None:
        names = trained_branches(run)
        if names:  # no fusion head: average the branches the fusion would use
            names, pipe.left_out = usable_branches(run, names, run_config(run))
    if not names:
        raise CheckpointError(f"no trained branch in {run.path}; train it first: asd train DATA --run {run.path}")
    return pipe, names


def _train_finals(pipe: _Pipeline, normals: Normals) -> dict[str, np.ndarray]:
    """Final scores of each section's normal training clips (and given support clips)."""
    train_groups = normals.groups
    final = pipe.final(normals.z, train_groups)
    out = {g: final[[i for i, x in enumerate(train_groups) if x == g]] for g in sorted(set(train_groups))}
    if pipe.support is not None:
        for section in pipe.support.z:
            normals = pipe.support.normals(section)
            out[section] = pipe.final(normals, [section] * len(normals))
    return out


def _notices(pipe: _Pipeline, groups: list[str], metas: dict[str, BranchRecord]) -> list[str]:
    run = pipe.run
    known = set(pipe.run.vocab.groups) | set(pipe.support.z if pipe.support else ())
    adapted = sorted(set(groups) & set(pipe.support.z)) if pipe.support else []
    notices = [f"section {g} was not in the training data of {run.path}: scored against all sections' statistics"
               + (" with the unadapted meta-learner" if pipe.meta is not None else "")
               + "; give normal clips of it with --support to adapt" for g in sorted(set(groups) - known)]
    notices += [f"section {g}: statistics from the --support clips" + (", meta-learner adapted to them"
                if pipe.meta is not None else "") for g in adapted]
    notices += [f"{name} left out of the average: {reason}" for name, reason in pipe.left_out.items()]
    for name, meta in metas.items():
        thin = sorted(set(thin_sections(meta)) & set(groups))
        if thin:
            notices.append(f"{name}: section(s) {', '.join(thin)} had fewer than two usable training clips (or "
                           "identical scores): their scores are standardised with the other sections' spread")
    if pipe.abstained:
        notices.append(f"meta-learner: {pipe.abstained}")
    notices += list(unfinished_branches(run).values())
    return notices


@dataclass
class ClipScore:
    """One scored waveform: the final score and decision, the fused score, and per branch its
    standardised score and attention weight (weights None without a fusion head)."""

    score: float
    decision: int
    fused: float
    normalized: dict[str, float]
    weights: dict[str, float] | None
    threshold: float
    method: str
    notices: list[str] = field(default_factory=list)


def as_clips(clips: object) -> list[Clip]:
    """What :meth:`Detector.score` accepts, as clips: a list of clips or audio file paths, or one
    path; anything else, an empty list or a folder is a :class:`DataError`."""
    if isinstance(clips, (str, Path, Clip)):
        clips = [clips]
    if not isinstance(clips, (list, tuple)):
        raise DataError(f"expected a list of audio file paths or clips, got {type(clips).__name__}")
    if not clips:
        raise DataError("no clips were given to score")
    out = []
    for item in clips:
        if not isinstance(item, (str, Path, Clip)):
            raise DataError(f"expected audio file paths or clips, got {type(item).__name__} ({item!r:.40})")
        clip = item if isinstance(item, Clip) else parse_clip(Path(item))
        if os.path.isdir(clip.path):  # False where the path cannot be examined: its loading names it
            raise DataError(f"{clip.path}: a folder, not an audio file (discover its clips with "
                            "asdcli.data.layout.discover, or give the files)")
        out.append(clip)
    return out


def waveform_array(wave: object, what: str) -> np.ndarray:
    """(samples, channels) float32 of an in-memory waveform: floats as they are, integer PCM
    scaled to [-1, 1) as a WAV reader does (int16 / 32768); anything else is a :class:`DataError`."""
    data = np.asarray(wave)
    if data.dtype.kind in "iu":
        bits = 8 * data.dtype.itemsize
        offset = 2.0 ** (bits - 1) if data.dtype.kind == "u" else 0.0  # unsigned PCM (8-bit WAV) is offset
        data = (data.astype(np.float64) - offset) / 2.0 ** (bits - 1)
    elif data.dtype.kind != "f":
        raise DataError(f"{what}: expected numeric audio samples, got an array of {data.dtype} values")
    data = data.astype(np.float32)
    data = data[:, None] if data.ndim == 1 else data
    if data.ndim != 2 or data.shape[0] == 0:
        raise DataError(f"{what}: expected (samples,) or (samples, channels) audio, got shape {np.shape(wave)}")
    return data


class Detector:
    """A run loaded once for scoring: its branches, fusion head, meta-learner and the statistics
    of its training clips. ``Detector.load(run)``, then :meth:`score` (files) or
    :meth:`score_waveform` (audio already in memory) as often as needed."""

    def __init__(self, run: Run, config: AsdConfig, pipe: _Pipeline, names: list[str], metas: dict[str, BranchRecord],
                 loaded, normals: Normals, device: torch.device | str, cache_dir: Path | None):
        self.run, self.config, self.pipe, self.names, self.metas, self.loaded = run, config, pipe, names, metas, loaded
        self.normals, self.device, self.cache_dir = normals, device, cache_dir
        self.shift = normals.shift
        if pipe.support is not None:
            self.shift.update(pipe.support.shift)
        self._thresholds: dict[float | None, tuple[dict[str, float], float]] = {}

    @classmethod
    def load(cls, run_dir: str | Path | Run, device: torch.device | str = "cpu", cache_dir: Path | None = None,
             names: list[str] | None = None, support: list[Clip] | None = None) -> "Detector":
        """Load every stage of the run (``names``: only these branches, averaged); ``support``:
        normal clips of sections the run never saw, which those sections are standardised by and
        adapted to."""
        run = open_run(run_dir)
        with reading(run.path):  # every file of the run as one snapshot: never half a commit
            pipe, names = _pipeline(run, [canonical_name(n) for n in names] if names else None)
            metas = {n: read_branch_record(run, n) for n in names}
            loaded = BranchSet.load(run, names, device)
            normals = normal_examples(run, names)
            config = run_config(run)
        if support:
            pipe.support = section_support(run, support, names, metas, config, cache_dir, device, loaded)
            metas = pipe.support.metas
        return cls(run, config, pipe, names, metas, loaded, normals, device, cache_dir)

    @property
    def method(self) -> str:
        return self.pipe.method

    def thresholds(self, fpr: float | None = None) -> tuple[dict[str, float], float]:
        """Per-section decision thresholds and the pooled one (for sections without their own):
        a gamma fit (90th percentile, as the DCASE baselines) or false-positive rate ``fpr``, on
        the final scores of the sections' normal training clips."""
        if fpr not in self._thresholds:
            rule: Callable[[np.ndarray], float] = (lambda v: fpr_threshold(v, fpr)) if fpr is not None else gamma_threshold
            by_group = _train_finals(self.pipe, self.normals)
            own = {g: rule(v) for g, v in by_group.items() if v.size >= 2}
            pooled = rule(np.concatenate([v for g, v in by_group.items() if g in self.run.vocab.groups]))
            self._thresholds[fpr] = (own, pooled)
        return self._thresholds[fpr]

    def _stages(self, raw: dict[str, np.ndarray], groups: list[str], domains: list[str | None]):
        z = np.stack([normalize(raw[n], groups, self.metas[n]) for n in self.names], axis=1)  # (N, K)
        z = self.shift.apply(z, groups, domains)
        fused, weights = self.pipe.fused(z)
        return z, fused, weights, self.pipe.final(z, groups)

    def score(self, clips: list[Clip] | list[str | Path] | str | Path, fpr: float | None = None,
              progress: Callable[[int], None] | None = None) -> ScoreResult:
        """Score clips (or paths of audio files; one path alone is one clip) with every stage the
        run has (see :data:`METHODS`)."""
        clips = as_clips(clips)
        raw = score_branches(self.run, self.names, clips, self.cache_dir, self.device, loaded=self.loaded,
                             progress=progress)
        groups = [self.run.vocab.group_name(c) for c in raw.clips]
        z, fused, weights, final = self._stages(raw.scores, groups, [c.domain for c in raw.clips])
        clips, skipped = raw.clips, raw.skipped + (self.pipe.support.skipped if self.pipe.support else [])
        finite = np.isfinite(final) & np.isfinite(z).all(axis=1)
        if not finite.all():  # never decided normal: reported with the skipped clips instead
            for i in np.flatnonzero(~finite):
                bad = [n for k, n in enumerate(self.names) if not np.isfinite(z[i, k])] or ["the final stage"]
                skipped.append((clips[i].path, f"{clips[i].path}: its anomaly score is not finite ({', '.join(bad)}); "
                                               "left out rather than decided normal"))
            clips, groups = [c for c, ok in zip(clips, finite) if ok], [g for g, ok in zip(groups, finite) if ok]
            z, final = z[finite], final[finite]
            fused = None if fused is None else fused[finite]
            weights = None if weights is None else weights[finite]
        own, pooled = self.thresholds(fpr)
        decision = np.array([int(s > own.get(g, pooled)) for s, g in zip(final, groups)], dtype=int)
        return ScoreResult(clips, final, decision, {n: z[:, k] for k, n in enumerate(self.names)},
                           fused if self.pipe.fusion is not None else None, weights, own, self.names, self.method,
                           skipped, raw.notices + _notices(self.pipe, groups, self.metas))

    def explain(self, clips: list[Clip] | list[str | Path] | str | Path, reference: list[Clip] | None = None):
        """When, where and what drove each clip's score: an
        :class:`~asdcli.services.scoring.explain.Explained` (an ``Explanation`` per readable clip);
        ``reference``: normal training clips, each section's frame-by-frame baseline."""
        from asdcli.services.scoring.explain import explain

        return explain(self, as_clips(clips), reference)

    def score_waveform(self, wave: np.ndarray, sample_rate: int, machine: str, section: str | int,
                       domain: str | None = None, fpr: float | None = None) -> ClipScore:
        """Score one clip already in memory: ``wave`` (samples,) or (samples, channels) audio at
        ``sample_rate`` (float in about [-1, 1], or integer PCM, scaled as a WAV reader would), of
        ``machine`` section ``section`` (``domain`` "source" or "target" where known). It is
        prepared as a file would be (channel, resampling, length)."""
        config = self.config
        what = f"waveform of {machine} section {section}"
        if domain not in (None, "source", "target"):
            raise DataError(f"{what}: domain {domain!r} is not 'source', 'target' or None")
        try:
            number = int(section)
        except (TypeError, ValueError):
            raise DataError(f"{what}: section {section!r} is not a section number") from None
        data = waveform_array(wave, what)
        audio = prepare_wave(select_channel(data, config.audio.channel, Path(what)), sample_rate, config.audio, what)
        feats = LogMel(config.audio, config.features)(audio)
        if not torch.isfinite(feats).all():
            raise DataError(f"{what}: gives non-finite log-mel features (samples are expected within about [-1, 1])")
        clip = Clip(path=Path(what), machine=machine, section=f"{number:02d}", domain=domain)
        branches, upstream = self.loaded.branches, self.loaded.upstream
        needs_wave = bool(self.loaded.wave_users())
        batch = Batch.unlabelled(feats[None], [self.run.vocab.group_index(clip)], [int(domain == "target")],
                                 audio[None] if needs_wave else None)
        with torch.no_grad():
            batch = with_embeddings(batch.to(self.device), upstream)
            raw = {n: branch.score(batch).double().cpu().numpy() for n, branch in branches.items()}
        group = self.run.vocab.group_name(clip)
        z, fused, weights, final = self._stages(raw, [group], [domain])
        if not np.isfinite(final[0]):
            raise DataError(f"{what}: its anomaly score is not finite")
        own, pooled = self.thresholds(fpr)
        threshold = own.get(group, pooled)
        return ClipScore(float(final[0]), int(final[0] > threshold), float(fused[0]),
                         {n: float(z[0, k]) for k, n in enumerate(self.names)},
                         None if weights is None else {n: float(weights[0, k]) for k, n in enumerate(self.names)},
                         float(threshold), self.method, _notices(self.pipe, [group], self.metas))


def score_clips(run_dir: Path | Run, clips: list[Clip], cache_dir: Path | None, names: list[str] | None = None,
                fpr: float | None = None, device: torch.device | str = "cpu",
                support: list[Clip] | None = None, progress: Callable[[int], None] | None = None) -> ScoreResult:
    """Load the run (:class:`Detector`) and score clips with every stage it has."""
    return Detector.load(run_dir, device, cache_dir, names, support).score(clips, fpr, progress)
