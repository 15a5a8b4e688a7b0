"""Folds of the real recordings in ``../shared/data`` for benchmarks: DCASE 2020 layouts of symlinks.

Every fold puts some normal clips into training and the rest, with every anomalous clip, into
the test split; an anomaly is never a training clip. Files are renamed to uniform 2020 names
(``normal_id_00_00000000.wav``) in a temporary folder, so clips moved from one split to another
never clash; ``manifest.csv`` in the fold maps each link to its source file.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NAME_2020 = re.compile(r"^(?P<label>normal|anomaly)_id_(?P<id>\d+)_\d+\.wav$")


@dataclass(frozen=True)
class Source:
    """A real clip: its file, machine, machine ID, label, and whether it may be a training clip."""

    path: Path
    machine: str
    mid: str
    label: str
    trainable: bool  # a normal clip that folds may put into training
    name: str | None = None  # keep this file name (a 2021+ name with its domain and attributes)
    split: str | None = None  # a fixed split ("train"/"test") that folds never change
    unit: str | None = None  # the recorded machine, where several share one section: folds train on each


@dataclass(frozen=True)
class RealSet:
    """A named set of real clips and how many of its movable normals each fold trains on.

    ``train_share``: share of the movable normals of each machine ID put into training per fold
    (one share for every ID, or one per ID)."""

    name: str
    description: str
    clips: tuple[Source, ...]
    train_share: float | dict[str, float]
    role: str = "judge"  # "judge": detection is measured on it; "coverage": too few test clips to rank anything


def _dcase2020(folder: Path, machine: str, trainable: bool) -> list[Source]:
    out = []
    for path in sorted(folder.glob("*.wav")):
        match = NAME_2020.match(path.name)
        if match:
            out.append(Source(path, machine, match["id"], match["label"], trainable and match["label"] == "normal"))
    return out


def real_sets(root: Path) -> dict[str, RealSet]:
    """The real sets present under ``root`` (``../shared/data``); absent ones are left out."""
    sets: dict[str, RealSet] = {}
    fan = root / "real-dev" / "dcase2020-fan"
    if fan.is_dir():
        # id_02 has no training clips of its own: half of its 18 normals train per fold. id_00 is a
        # second section: a quarter of its 30 normals are test clips per fold (with its 2 anomalies).
        train = _dcase2020(fan / "train", "fan", True)
        test = _dcase2020(fan / "test", "fan", True)
        share = {"00": 0.75, "02": 0.5}
        sets["dcase2020-fan"] = RealSet("dcase2020-fan", "DCASE 2020 fan, id_00 (22 of 30 normals train per fold; "
                                        "8 + 2 test) and id_02 (9 of 18 normals train per fold; 9 + 19 test)",
                                        tuple(train + test), share)
    mimii = root / "real-dev" / "mimii-fan-8ch"
    if mimii.is_dir():
        clips = [Source(p, "fan", "00", "normal", True) for p in sorted((mimii / "normal").glob("*.wav"))]
        clips += [Source(p, "fan", "00", "anomaly", False) for p in sorted((mimii / "abnormal").glob("*.wav"))]
        sets["mimii-fan-8ch"] = RealSet("mimii-fan-8ch", "MIMII fan, raw 8-channel, one machine: 5 of 10 normals "
                                        "train per fold; 10 anomalies", tuple(clips), 0.5)
    slider = root / "dcase2020-mini" / "slider"
    if slider.is_dir():
        test = _dcase2020(slider / "test", "slider", False)
        test += [s for s in _dcase2020(root / "real-dev" / "dcase2020-samples" / "slider", "slider", False)
                 if s.mid == "00"]
        train = _dcase2020(slider / "train", "slider", True)
        sets["dcase2020-slider"] = RealSet("dcase2020-slider", "DCASE 2020 slider id_00: 60 of 75 training normals "
                                           "train per fold, 15 join the 5 test normals; 4 anomalies",
                                           tuple(train + test), 0.8)
    sets.update(_machine_type_sets(root))
    mini23 = root / "dcase2023-mini"
    if mini23.is_dir():
        clips = [Source(p, p.parent.parent.name, "00", "anomaly" if "_anomaly_" in p.name else "normal", False,
                        name=p.name, split=p.parent.name) for p in sorted(mini23.glob("*/*/*.wav"))]
        sets["dcase2023-mini"] = RealSet("dcase2023-mini", "DCASE 2023, 7 machine types as 7 sections of 2 training "
                                         "clips each (fixed split, 2021+ names); 4 sections with 1 normal + 1 anomaly "
                                         "to judge: every fold is the same split, only the seed changes",
                                         tuple(clips), 0.0, role="coverage")
    return sets


# machine ID folders of the DCASE 2020 samples that other sets already use
_USED_IDS = {("slider", "00")}
_MIMII_8CH = {"pump": "pump", "slider": "slider", "valve": "valve"}


def _machine_type_sets(root: Path) -> dict[str, RealSet]:
    """One few-clip set per DCASE 2020 machine type: the normal and anomalous sample clips of every
    machine ID (``real-dev/dcase2020-samples``), the test clips of ``dcase2020-mini`` and the raw
    8-channel MIMII pair of the same machine type (``mimii-8ch``), all IDs as one section: half of
    the normals train per fold. A machine type whose clips come from several units is what a user
    with a few recordings of each of their machines has."""
    samples, mini, mimii = root / "real-dev" / "dcase2020-samples", root / "dcase2020-mini", root / "mimii-8ch"
    sets = {}
    for machine in sorted(p.name for p in samples.iterdir() if p.is_dir()) if samples.is_dir() else []:
        clips = [s for s in _dcase2020(samples / machine, machine, True) if (machine, s.mid) not in _USED_IDS]
        if machine != "slider":
            clips += _dcase2020(mini / machine / "test", machine, True)
        clips = [Source(s.path, machine, "00", s.label, s.trainable, unit=s.mid) for s in clips]
        if machine in _MIMII_8CH and mimii.is_dir():
            for label, suffix in (("normal", "normal"), ("anomaly", "abnormal")):
                path = mimii / f"{_MIMII_8CH[machine]}_{suffix}.wav"
                if path.exists():
                    clips.append(Source(path, machine, "00", label, label == "normal", unit="mimii"))
        normals = sum(s.label == "normal" for s in clips)
        anomalies = len(clips) - normals
        if normals >= 4 and anomalies >= 2:
            sets[f"dcase2020-{machine}-ids"] = RealSet(
                f"dcase2020-{machine}-ids", f"DCASE 2020 {machine}, every machine ID as one section: "
                f"{normals // 2} of {normals} normals train per fold; {anomalies} anomalies",
                tuple(clips), 0.5)
    return sets


def build_fold(real: RealSet, fold: int, out: Path) -> tuple[Path, list[tuple[str, str]]]:
    """Lay out fold ``fold`` of ``real`` under ``out`` as ``<machine>/{train,test}/`` symlinks; returns
    the data root and (link, source) pairs. The choice of training normals is seeded by the fold."""
    rng = np.random.default_rng([fold, 7])
    chosen: set[Path] = set()
    for key in sorted({(s.machine, s.mid, s.unit or "") for s in real.clips if s.trainable}):
        movable = [s for s in real.clips if s.trainable and (s.machine, s.mid, s.unit or "") == key]
        share = real.train_share if isinstance(real.train_share, float) else real.train_share[key[1]]
        count = int(round(share * len(movable)))
        chosen |= {movable[i].path for i in rng.permutation(len(movable))[:count]}
    train = [s for s in real.clips if s.path in chosen or s.split == "train"]
    test = [s for s in real.clips if s not in train]
    root = out / "data"
    pairs = []
    counters: dict[tuple, int] = {}
    for split, items in (("train", train), ("test", test)):
        for s in items:
            key = (s.machine, split, s.label, s.mid)
            index = counters[key] = counters.get(key, -1) + 1
            link = root / s.machine / split / (s.name or f"{s.label}_id_{s.mid}_{index:08d}.wav")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(s.path.resolve())
            pairs.append((str(link.relative_to(root)), str(s.path)))
    with (out / "manifest.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("link", "source"), *pairs])
    return root, pairs
