"""DCASE dataset layouts: discover audio files and parse what their names say.

Supported names (``<machine>/<split>/<file>``, machine and split also from the folders):

- 2020 development: ``normal_id_00_00000000.wav``, ``anomaly_id_00_00000000.wav``
- 2020 evaluation:  ``id_05_00000000.wav``
- 2021+ development: ``section_00_source_train_normal_0000_<attr>_<value>....wav``
- 2021 evaluation:  ``section_03_source_test_0000.wav``
- 2022+ evaluation: ``section_00_0000.wav``

Any other name is still a clip (for scoring), just without labels.
"""

from __future__ import annotations

import os

import re
from dataclasses import dataclass, field
from pathlib import Path

from asdcli.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac")
SPLIT_DIRS = {"train": "train", "test": "test", "source_test": "test", "target_test": "test", "supplemental": "train"}

_PATTERNS = (
    ("dcase2021", re.compile(
        r"^section_(?P<section>\d+)_(?P<domain>source|target)_(?P<split>train|test)_"
        r"(?P<label>normal|anomaly)_(?P<index>\d+)(?:_(?P<attrs>.*))?$")),
    ("eval2021", re.compile(
        r"^section_(?P<section>\d+)_(?P<domain>source|target)_(?P<split>train|test)_(?P<index>\d+)(?:_(?P<attrs>.*))?$")),
    ("eval2022", re.compile(r"^section_(?P<section>\d+)_(?P<index>\d+)(?:_(?P<attrs>.*))?$")),
    ("dcase2020", re.compile(r"^(?P<label>normal|anomaly)_id_(?P<section>\d+)_(?P<index>\d+)$")),
    ("eval2020", re.compile(r"^id_(?P<section>\d+)_(?P<index>\d+)$")),
)


@dataclass(frozen=True)
class Clip:
    """One audio file and what its path says about it.

    ``section`` is the two-digit section (2021+) or machine ID (2020); ``None`` fields are unknown.
    """

    path: Path
    machine: str
    section: str | None = None
    domain: str | None = None
    split: str | None = None
    label: str | None = None
    index: str | None = None
    attributes: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    attributes_raw: str = ""
    naming: str = "unknown"

    @property
    def name(self) -> str:
        """File name with extension, as written in DCASE score CSVs."""
        return self.path.name

    @property
    def is_anomaly(self) -> int | None:
        """1 for anomalous, 0 for normal, ``None`` when the name carries no label."""
        return None if self.label is None else int(self.label == "anomaly")

    @property
    def group(self) -> str:
        """``<machine>_section_<XX>``, or ``<machine>_id_<XX>`` for a clip named as in DCASE 2020:
        the unit DCASE scores, trains statistics and writes CSVs for. A 2020 machine ID and a
        2021+ section of the same number are different machines and never share a group."""
        return f"{self.machine}_{'id' if self.naming in NAMINGS_2020 else 'section'}_{self.section or '00'}"


NAMINGS_2020 = ("dcase2020", "eval2020")


def parse_attributes(raw: str) -> tuple[tuple[str, str], ...]:
    """``car_A1_spd_28V_mic_1`` -> ``(("car", "A1"), ("spd", "28V"), ("mic", "1"))``.

    An odd trailing token (as in 2021's ``..._strength_1_ambient``) becomes a key with value "".
    """
    if not raw:
        return ()
    tokens = raw.split("_")
    pairs = [(tokens[i], tokens[i + 1] if i + 1 < len(tokens) else "") for i in range(0, len(tokens), 2)]
    return tuple(pairs)


def parse_clip(path: str | Path, machine: str | None = None) -> Clip:
    """Parse one file path; the machine and split come from the folders when the name lacks them."""
    path = Path(path)
    parent = path.parent.name
    folder_split = SPLIT_DIRS.get(parent)
    if machine is None:
        machine = path.parent.parent.name if folder_split else parent
    stem = path.stem
    for naming, pattern in _PATTERNS:
        match = pattern.match(stem)
        if match is None:
            continue
        groups = match.groupdict()
        raw = groups.get("attrs") or ""
        return Clip(
            path=path,
            machine=machine or "unknown",
            section=f"{int(groups['section']):02d}",
            domain=groups.get("domain"),  # DCASE 2020 has no domains
            split=groups.get("split") or folder_split,
            label=groups.get("label"),
            index=groups["index"],
            attributes=parse_attributes(raw),
            attributes_raw=raw,
            naming=naming,
        )
    return Clip(path=path, machine=machine or "unknown", split=folder_split)


def discover(root: str | Path, split: str | None = None) -> list[Clip]:
    """All audio clips under ``root``, sorted by path.

    ``root`` may be a dataset root of machine folders, one machine folder, a ``train``/``test``
    folder, any folder of audio files, or a single file. ``split`` keeps only that split.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path does not exist: {root}")
    if root.is_file():
        if root.suffix.lower() not in AUDIO_SUFFIXES:
            raise DataError(f"{root}: not an audio file (expected {', '.join(AUDIO_SUFFIXES)})")
        files = [root]
    else:
        files, unreadable = _audio_files(root)
    clips = [parse_clip(p) for p in files]
    if not root.is_file():
        clips += [_unreadable_folder(folder) for folder in unreadable]
    if split is not None:
        clips = [c for c in clips if c.split == split]
    if not clips:
        where = f" with split '{split}'" if split else ""
        raise DataError(
            f"no .wav or .flac files{where} under {root}; expected <machine>/train/*.wav and <machine>/test/*.wav"
        )
    return clips


def _audio_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Audio files under ``root`` (hidden ones left out; a link whose target is gone is kept, so
    that loading it names it) and the folders that could not be listed."""
    files, unreadable = [], []

    def failed(error: OSError) -> None:
        unreadable.append(Path(error.filename))

    seen: set[str] = set()
    for folder, dirs, names in os.walk(root, onerror=failed, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back to a folder already listed
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(folder)
        for name in names:
            path = base / name
            if path.suffix.lower() in AUDIO_SUFFIXES and not name.startswith(".") and (path.is_file() or path.is_symlink()):
                files.append(path)
    return sorted(files), sorted(u for u in unreadable if u != root)


def _unreadable_folder(folder: Path) -> Clip:
    """A folder that could not be listed, as an entry that fails to load (and is reported with
    the skipped clips) under the split its path names."""
    split = next((SPLIT_DIRS[part] for part in reversed(folder.parts) if part in SPLIT_DIRS), None)
    machine = folder.parent.name if folder.name in SPLIT_DIRS else folder.name
    return Clip(path=folder, machine=machine, split=split)


def group_clips(clips: list[Clip]) -> dict[str, list[Clip]]:
    """Clips by ``<machine>_section_<XX>``, in first-seen order."""
    groups: dict[str, list[Clip]] = {}
    for clip in clips:
        groups.setdefault(clip.group, []).append(clip)
    return groups
