"""`asd explain`: when, where and what in a clip drove its score.

Per clip: each branch's anomaly map (:mod:`asdcli.services.scoring.maps`) standardised with the
section's training statistics as its clip score is (the same domain shift too), the fused map
(combined as the fusion combines the clip scores: that clip's weights over the asinh of each
branch's map, read back in standard deviations), the span that stands out most in the map the
span is read from (:func:`located_map`: the fused map with the frame-exact maps of b2 and b4
weighted twice; :func:`find_span`), the frequency range that drove it (the bands of b2's and b4's shares in the
span; without them, the bands whose level changed most), the branches whose own map is high in
it, and a plain-words kind from the span's length and the change in level (:func:`kind_of`).
Each section's baseline (the maps of its normal clips) is kept in the feature cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asdcli.data.features import mel_filterbank
from asdcli.data.layout import Clip
from asdcli.atomic import atomic_open
from asdcli.errors import DataError, OutputError
from asdcli.files import open_regular
from asdcli.services.inputs.dataset import ClipSet
from asdcli.services.inputs.embeddings import with_embeddings
from asdcli.services.inputs.features import make_extractor
from asdcli.services.scoring.branch_scores import normalize, section_stats
from asdcli.services.scoring.maps import native, score_map, time_map
from asdcli.services.store.runs import run_stamp

AGREE_SD = 1.0  # a branch agrees where its map averages this far above its normal clips in the span
# How much more the frame-exact maps (b2's and b4's shares) count than the windowed ones (b1, b3,
# b5: a 2 s window smears a 50 ms knock over 2 s) in the map the span is read from. Chosen on seed 0
# of bench/bench_explain.py's runs among 1 (the fused map itself), 2, 4, 8 and the frame-exact maps
# alone: flagged anomalous clips whose top span has IoU >= 0.3 with the true one 0.79, 0.87, 0.85,
# 0.83, 0.81; judged on seed 1: 0.78 with the fused map, 0.86 with 2.
EXACT_WEIGHT = 2.0
KINDS = {
    "burst": "short broadband event (a knock, an impact)",
    "tone": "sustained narrowband tone (a whine, rubbing)",
    "dropout": "dropout (the sound fell away)",
    "level": "broad level change",
    "band": "change in one frequency band",
}


@dataclass
class Explanation:
    """Why one clip scored as it did (module docstring). Times in seconds, frequencies in Hz,
    heights in standard deviations of the section's normal training clips."""

    clip: Clip
    score: float
    decision: int
    threshold: float
    fused: float
    times: np.ndarray  # (T,) frame centres
    fused_map: np.ndarray  # (T,)
    branch_maps: dict[str, np.ndarray]  # name -> (T,)
    weights: dict[str, float]
    logmel: np.ndarray  # (n_mels, T) dB
    mel_hz: np.ndarray  # (n_mels + 2,) band edges: bin i spans mel_hz[i]..mel_hz[i + 2]
    peak_sd: float
    peak_s: float
    span: tuple[float, float]
    band_hz: tuple[float, float]
    change_db: float  # the span's mean level against the rest of the clip, in the band
    kind: str
    agreeing: list[str]
    windowed: list[str] = field(default_factory=list)  # branches whose map comes from windows

    def summary(self) -> str:
        """One line for a person: what, when, where, how far above normal and who says so."""
        name = self.clip.path.name
        if not self.decision:
            return (f"{name}: normal (score {self.score:.2f}, threshold {self.threshold:.2f}); nothing stands out "
                    f"(peak {self.peak_sd:.1f} sd at {self.peak_s:.2f} s)")
        return (f"{name}: ANOMALOUS (score {self.score:.2f}, threshold {self.threshold:.2f}): {KINDS[self.kind]} at "
                f"{self.span[0]:.2f}-{self.span[1]:.2f} s, {self.band_hz[0]:,.0f}-{self.band_hz[1]:,.0f} Hz "
                f"({self.change_db:+.1f} dB), peak {self.peak_sd:.1f} sd above the section's normal clips at "
                f"{self.peak_s:.2f} s; branches that agree: {', '.join(self.agreeing) or 'none alone'}")

    def as_dict(self) -> dict:
        return {"file": str(self.clip.path), "machine": self.clip.machine, "section": self.clip.section,
                "score": self.score, "decision": self.decision, "threshold": self.threshold, "fused": self.fused,
                "peak_sd": self.peak_sd, "peak_s": self.peak_s, "span_s": list(self.span),
                "band_hz": list(self.band_hz), "change_db": self.change_db, "kind": self.kind,
                "kind_text": KINDS[self.kind], "agreeing": self.agreeing, "weights": self.weights,
                "windowed": self.windowed}


def mel_edges(config) -> np.ndarray:
    """(n_mels + 2,) the Slaney mel band edges in Hz of the run's features."""
    top = config.features.f_max if config.features.f_max is not None else config.audio.sample_rate / 2
    fbank = mel_filterbank(config.audio, config.features)  # the filters the log-mel features are made with
    freqs = np.linspace(0, config.audio.sample_rate / 2, fbank.shape[0])
    support = [np.flatnonzero(fbank[:, m].numpy() > 0) for m in range(fbank.shape[1])]
    lows = [freqs[s[0]] if s.size else config.features.f_min for s in support]
    highs = [freqs[s[-1]] if s.size else top for s in support]
    return np.array([lows[0], *[0.5 * (lo + hi) for lo, hi in zip(lows, highs)], highs[-1]])


def located_map(maps: dict[str, np.ndarray], weights: np.ndarray, names: list[str], exact: set[str]) -> np.ndarray:
    """(T,) the map the span is read from: the fused map's combination (``weights`` over the asinh
    of each branch's map) with the frame-exact maps' weights (``exact``) multiplied by
    :data:`EXACT_WEIGHT` and all of them scaled to sum to one again. The fused map itself (what
    pools to the fused score, and what the PNG draws) is this with ``exact`` empty."""
    boost = np.array([EXACT_WEIGHT if n in exact else 1.0 for n in names]) * np.asarray(weights, dtype=float)
    boost = boost / max(boost.sum(), 1e-12)
    return np.sinh(sum(w * np.arcsinh(maps[n]) for w, n in zip(boost, names)))


def find_span(curve: np.ndarray) -> tuple[int, int]:
    """[first, last] frames of the stretch that stands out most: the one whose excess over the
    curve's median, summed and divided by the square root of its length, is largest (the scan
    statistic: a short stretch far above the rest, a knock, and a long one a little above it, a
    tone, both win over their surroundings). Chosen on seed 0 of bench/bench_explain.py against
    the stretch around the peak above 10-50 % of its height and the largest summed excess over
    such a level (docs/benchmarks.md)."""
    excess = np.r_[0.0, np.cumsum(curve - np.median(curve))]
    best, span = -np.inf, (0, 0)
    lengths = np.sqrt(np.arange(1, curve.size + 1))
    for first in range(curve.size):  # O(T^2) in vectors: 313 frames of a 10 s clip take about 1 ms
        values = (excess[first + 1 :] - excess[first]) / lengths[: curve.size - first]
        last = int(np.argmax(values))
        if values[last] > best:
            best, span = float(values[last]), (first, first + last)
    return span


def span_change(logmel: np.ndarray, first: int, last: int) -> np.ndarray:
    """(n_mels,) each bin's mean level in frames [first, last] against the other frames, in dB."""
    inside = logmel[:, first : last + 1].mean(axis=1)
    outside_frames = np.r_[0:first, last + 1 : logmel.shape[1]]
    outside = logmel[:, outside_frames].mean(axis=1) if outside_frames.size else logmel.mean(axis=1)
    return inside - outside


def _around(values: np.ndarray, top: int) -> tuple[int, int]:
    """The contiguous bins around ``top`` whose value is at least half of its."""
    lo = hi = top
    while lo > 0 and values[lo - 1] >= 0.5 * values[top]:
        lo -= 1
    while hi < values.size - 1 and values[hi + 1] >= 0.5 * values[top]:
        hi += 1
    return lo, hi


def _strongest(change: np.ndarray) -> tuple[int, int, float]:
    """The bins around the largest change (of its sign, within half of it) and their mean change."""
    top = int(np.argmax(np.abs(change)))
    lo, hi = _around((np.sign(change[top]) or 1.0) * change, top)
    return lo, hi, float(change[lo : hi + 1].mean())


def find_band(logmel: np.ndarray, first: int, last: int) -> tuple[int, int, float]:
    """The mel bins [lo, hi] that changed most in frames [first, last] against the other frames
    (contiguous bins around the largest change, within half of it), and their mean change in dB."""
    return _strongest(span_change(logmel, first, last))


def band_of(per_bin: np.ndarray, change: np.ndarray) -> tuple[int, int, float]:
    """The mel bins [lo, hi] that drove the reconstruction branches' score in the span (contiguous
    bins around the largest share, within half of it; their fused shares ``per_bin``) and their
    level change in dB in the span against the other frames (``change``, :func:`span_change`).
    Chosen on seed 0 of bench/bench_explain.py against :func:`find_band` (the bins whose level
    changed most)."""
    lo, hi = _around(per_bin, int(np.argmax(per_bin)))
    return lo, hi, float(change[lo : hi + 1].mean())


def _level_change(change: np.ndarray, edges: np.ndarray) -> tuple[float, tuple, float]:
    """What the kind is read from: the share of the bands, the band (Hz) and the change (dB) of the
    bins whose level changed most in the span (:func:`find_band`; the reported band, from the
    branches' shares, says where the score came from, not how wide the change in level is: a
    dropout's shares sit in a few bands while its level falls in all of them)."""
    lo, hi, mean = _strongest(change)
    return (hi - lo + 1) / change.size, (float(edges[lo]), float(edges[hi + 2])), mean


TONE_SHARE = 0.1  # chosen on seed 0 of bench_explain's runs among 0.05/0.1/0.15 (kinds right: 0.43 -> 0.66)


def kind_of(span_s: float, band_fraction: float, band_hz: tuple[float, float], change_db: float,
            share: tuple[float, float] | None = None) -> str:
    """A plain-words kind from the span's length, the part of the spectrum whose level changed and
    how: a fall over a third of the mel bands or more is a dropout; a short rise over 1.5 kHz or
    more a burst; a rise in a twentieth of the bands or less, held 0.4 s or more, a tone; so is a
    rise held as long in the band the branches' shares point at (``share``: its share of the
    bands and its change in dB) where that covers a tenth of the bands or less."""
    if change_db <= -3.0 and band_fraction >= 1 / 3:
        return "dropout"
    if span_s <= 0.3 and change_db > 0 and band_hz[1] - band_hz[0] >= 1500:
        return "burst"
    if band_fraction <= 0.05 and span_s >= 0.4 and change_db > 0:
        return "tone"
    if share is not None and share[0] <= TONE_SHARE and span_s >= 0.4 and share[1] > 0:
        return "tone"
    return "level" if band_fraction >= 0.5 else "band"


@dataclass
class Explained:
    """The explanations of the clips that could be scored, the others with why, and notices."""

    explanations: list[Explanation]
    skipped: list[tuple]
    notices: list[str]


REFERENCE_CLIPS = 16  # normal training clips per section whose maps are the frame-by-frame baseline


def _maps(detector, clips: list[Clip]) -> tuple:
    """(score result, clip set, {clip index: {branch: (T,) map standardised as its clip score}})."""
    result = detector.score(clips)
    loaded, run = detector.loaded, detector.run
    config = detector.config
    clipset = ClipSet(result.clips, config, make_extractor(config, detector.cache_dir), run.vocab,
                      with_wave=bool(loaded.wave_users()), keep_features=True, require_any=False)
    if [c.path for c in clipset.clips] != [c.path for c in result.clips]:  # a file changed since it was scored
        raise DataError("a clip could not be read again after scoring (changed or removed meanwhile): "
                        + "; ".join(m for _, m in clipset.report.failures[:3]))
    maps, bands = {}, {}
    for i, clip in enumerate(result.clips):
        batch = clipset.batch([i]).to(detector.device)
        group = run.vocab.group_name(clip)
        maps[i], bands[i] = {}, {}
        for name in detector.names:
            branch, tf = loaded.branches[name], None
            embedded = with_embeddings(batch, loaded.upstream)
            if native(branch):  # its score and its map over bins and frames from one reconstruction
                raw, tf = score_map(branch, embedded)
                # in the clip score's standard deviations, as the time map
                bands[i][name] = tf[0].cpu().numpy().astype(float) / section_stats(detector.metas[name], group)[1]
            else:
                with torch.no_grad():
                    raw = branch.score(embedded)
            raw = raw.float().cpu()
            curve = time_map(branch, batch, loaded.upstream, raw, tf)[0].numpy().astype(float)
            z = normalize(curve, [group] * curve.size, detector.metas[name])
            offset = result.normalized[name][i] - normalize(raw.numpy().astype(float), [group], detector.metas[name])[0]
            maps[i][name] = z + offset  # the domain shift of the clip's section, as its clip score has it
    return result, clipset, config, maps, bands


def section_baselines(detector, reference: list[Clip]) -> dict[str, dict[str, tuple[np.ndarray, float]]]:
    """Per section and branch: the mean map of up to :data:`REFERENCE_CLIPS` of its normal training
    clips frame by frame (T,) and their spread (the median over the frames of the spread across
    clips): what a normal clip's map looks like at each moment (clip edges included)."""
    chosen: dict[str, list[Clip]] = {}
    for clip in reference:
        group = detector.run.vocab.group_name(clip)
        if clip.is_anomaly != 1 and len(chosen.setdefault(group, [])) < REFERENCE_CLIPS:
            chosen[group].append(clip)
    files = {group: baseline_file(detector, group, clips) for group, clips in chosen.items()}
    out = {group: kept for group in chosen if (kept := read_baseline(files[group], detector.names)) is not None}
    picked = [c for group, clips in chosen.items() if group not in out for c in clips]
    if not picked:
        return out
    result, _, _, maps, _ = _maps(detector, picked)
    for group in set(chosen) - set(out):
        rows = [i for i, c in enumerate(result.clips) if detector.run.vocab.group_name(c) == group]
        if len(rows) < 2:
            continue
        out[group] = {}
        for name in detector.names:
            stack = np.stack([maps[i][name] for i in rows])  # (n, T)
            out[group][name] = (stack.mean(axis=0), float(max(np.median(stack.std(axis=0, ddof=1)), 1e-3)))
        write_baseline(files[group], out[group], detector.names)
    return out


def explain(detector, clips: list[Clip], reference: list[Clip] | None = None,
            baselines: dict[str, dict[str, tuple[np.ndarray, float]]] | None = None) -> Explained:
    """Explain ``clips`` with a loaded :class:`~asdcli.services.scoring.score.Detector`;
    ``reference``: normal training clips of their sections (the run's training data), whose maps
    are each section's frame-by-frame baseline: heights are then in standard deviations of normal
    clips at that moment. Without them, heights are those of the clip-level statistics (a notice
    says so), and clip edges and other spots where every clip's map is high can look anomalous.
    Baselines are made for the explained clips' sections only, and kept in ``baselines`` where a
    caller that explains clip after clip hands the same dict every time (:func:`section_baselines`)."""
    result, clipset, config, maps, bands = _maps(detector, clips)
    baselines = {} if baselines is None else baselines
    wanted = {detector.run.vocab.group_name(c) for c in result.clips} - set(baselines)
    baselines.update(section_baselines(detector, [c for c in reference or []
                                                  if detector.run.vocab.group_name(c) in wanted]))
    edges = mel_edges(config)
    seconds_per_frame = config.features.hop_length / config.audio.sample_rate
    duration = config.audio.num_samples / config.audio.sample_rate
    own, pooled = detector.thresholds()
    out, notices = [], list(result.notices)
    missing = sorted({detector.run.vocab.group_name(c) for c in result.clips} - set(baselines))
    if missing:
        notices.append(f"section(s) {', '.join(missing)}: no normal training clips given (--data), so their maps "
                       "are read against the clip-level statistics, not frame by frame")
    for i, clip in enumerate(result.clips):
        batch = clipset.batch([i])
        group = detector.run.vocab.group_name(clip)
        if group in baselines:
            maps[i] = {n: (m - baselines[group][n][0]) / baselines[group][n][1] for n, m in maps[i].items()}
        weights = (result.weights[i] if result.weights is not None
                   else np.full(len(detector.names), 1.0 / len(detector.names)))
        # the fusion's own combination (weights of this clip over asinh of the standardised scores),
        # read back in standard deviations: where every branch says z, the fused map says z
        fused_map = located_map(maps[i], weights, detector.names, set())
        first, last = find_span(located_map(maps[i], weights, detector.names, set(bands[i])))
        logmel = batch.feats[0].cpu().numpy()
        changes = span_change(logmel, first, last)
        if bands[i]:  # the bands the reconstruction branches' shares put it in
            per_bin = sum(w * bands[i][n][:, first : last + 1].mean(axis=1)
                          for w, n in zip(weights, detector.names) if n in bands[i])
            lo, hi, change = band_of(per_bin, changes)
        else:
            lo, hi, change = _strongest(changes)
        span = (first * seconds_per_frame, min((last + 1) * seconds_per_frame, duration))  # frames end past the clip
        agreeing = [n for n in detector.names if maps[i][n][first : last + 1].mean() >= AGREE_SD]
        peak = int(np.argmax(fused_map))
        out.append(Explanation(
            clip, float(result.score[i]), int(result.decision[i]), float(own.get(group, pooled)),
            float(result.fused[i]) if result.fused is not None else float(np.mean(fused_map)),
            np.arange(fused_map.size) * seconds_per_frame, fused_map, maps[i],
            {n: float(w) for n, w in zip(detector.names, weights)}, logmel, edges, float(fused_map[peak]),
            peak * seconds_per_frame, span, (float(edges[lo]), float(edges[hi + 2])), change,
            kind_of(span[1] - span[0], *_level_change(changes, edges),
                    ((hi - lo + 1) / logmel.shape[0], change) if bands[i] else None), agreeing,
            [n for n in detector.names if not native(detector.loaded.branches[n])]))
    return Explained(out, result.skipped, notices)


BASELINE_FORMAT = 1  # made again when the maps change: a kept baseline of other maps is never read
BASELINE_LIMIT = 64 << 20


def baseline_file(detector, group: str, clips: list[Clip]) -> Path | None:
    """Where the baseline of ``group`` made from ``clips`` is kept in the feature cache folder
    (keyed by the run's files, the branches and the clips' paths, sizes and times); None without
    a cache folder or where a clip cannot be looked at."""
    if detector.cache_dir is None:
        return None
    try:
        stats = [(str(Path(c.path).resolve()), info.st_size, info.st_mtime_ns)
                 for c, info in ((c, os.stat(c.path)) for c in clips)]
        key = [BASELINE_FORMAT, group, detector.names, [list(e) for e in run_stamp(detector.run.path)], stats]
    except OSError:
        return None
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:24]
    return Path(detector.cache_dir) / "explain-baselines" / f"{digest}.npz"


def read_baseline(path: Path | None, names: list[str]) -> dict[str, tuple[np.ndarray, float]] | None:
    """A baseline kept by :func:`write_baseline`; None where there is none or it does not read
    as one (it is then made again)."""
    if path is None:
        return None
    try:
        with open_regular(path, "explain baseline", DataError, BASELINE_LIMIT) as (handle, _):
            with np.load(handle, allow_pickle=False) as data:
                means, spreads = data["means"], data["spreads"]
    except (FileNotFoundError, DataError, OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if means.ndim != 2 or means.shape[0] != len(names) or spreads.shape != (len(names),) \
            or not (np.isfinite(means).all() and np.isfinite(spreads).all() and (spreads > 0).all()):
        return None
    return {name: (means[k].astype(float), float(spreads[k])) for k, name in enumerate(names)}


def write_baseline(path: Path | None, baseline: dict[str, tuple[np.ndarray, float]], names: list[str]) -> None:
    """Keep a section's baseline for the next call (atomically; a cache that cannot be written is
    left alone: it only saves time)."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb", fsync=False) as handle:
            np.savez(handle, means=np.stack([baseline[n][0] for n in names]),
                     spreads=np.array([baseline[n][1] for n in names]))
    except (OutputError, OSError):
        pass
