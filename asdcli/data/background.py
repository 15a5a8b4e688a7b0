"""A background of other machines' normal recordings, for outlier exposure.

A discriminative branch trained on one machine section alone has no other class to tell the
clips from: with perturbed copies as the only negatives it learns the perturbations, not the
machine (measured: b3 ranked real ToyCar and ToyConveyor faults below normal clips). DCASE
first-shot systems train against other machines' real recordings instead. A data root with
several machine types already gives b3 those classes; a background folder adds more:

- a folder a user points to: ``<type>/**/*.wav`` (or flac), one class per top-level folder, such
  as a DCASE download (its ``train`` normals are taken, never a test clip or an anomaly);
- ``none``, the default: on the ten real sets of ``bench/bench_b3.py`` a background of the other
  sets' machines did not lift b3 where it fails (docs/b3-background.md).

The run's own machine types are never background: their clips are the run's training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asdcli.data.layout import discover
from asdcli.errors import ConfigError, DataError

FIELD = "branches.contrastive.background"


@dataclass(frozen=True)
class BackgroundClip:
    """One background recording and its class (the machine type it records)."""

    path: Path
    kind: str


def background_folder(spec: str) -> Path | None:
    """The folder ``spec`` names, or None for ``none``."""
    if spec == "none":
        return None
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{FIELD}: {folder} is not a folder of recordings (<type>/*.wav); give a folder or 'none'")
    return folder


def background_clips(spec: str, exclude: set[str]) -> list[BackgroundClip]:
    """The normal recordings of the background ``spec`` whose machine type is not in ``exclude``
    (the run's own types, compared without case), sorted by path."""
    folder = background_folder(spec)
    if folder is None:
        return []
    try:
        clips = discover(folder)
    except DataError:
        raise ConfigError(f"{FIELD}: no .wav or .flac files under {folder}") from None
    skip = {name.lower() for name in exclude}
    out = []
    for clip in clips:
        parts = clip.path.relative_to(folder).parts
        if (len(parts) < 2 or parts[0].lower() in skip or clip.label == "anomaly"
                or clip.split == "test" or "test" in parts[1:-1]):
            continue
        kind = parts[0]
        out.append(BackgroundClip(clip.path, kind))
    return out
