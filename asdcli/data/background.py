"""A background of other machines' normal recordings, for outlier exposure.

A discriminative branch trained on one machine section alone has no other class to tell the
clips from: with perturbed copies as the only negatives it learns the perturbations, not the
machine (measured: b3 ranked real ToyCar and ToyConveyor faults below normal clips). DCASE
first-shot systems train against other machines' real recordings instead; this is where asd
finds them without network:

- ``builtin``: a compact library shipped in the package (``asdcli/background/``, its
  ``SOURCES.md`` names every recording's data set and licence);
- a folder a user points to: ``<type>/**/*.wav`` (or flac), one class per top-level folder, such
  as a DCASE download (its ``train`` normals are taken, never a test clip or an anomaly);
- ``none``.

The run's own machine types are never background: their clips are the run's training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asdcli.data.layout import discover
from asdcli.errors import ConfigError, DataError

BUILTIN = Path(__file__).resolve().parents[1] / "background"


@dataclass(frozen=True)
class BackgroundClip:
    """One background recording and its class (the machine type it records)."""

    path: Path
    kind: str


def background_folder(spec: str) -> Path | None:
    """The folder ``spec`` names: ``builtin``, a path, or None for ``none``."""
    if spec == "none":
        return None
    folder = BUILTIN if spec == "builtin" else Path(spec).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"background: {folder} is not a folder of recordings (<type>/*.wav); give a folder, "
                          "'builtin' or 'none'")
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
        raise ConfigError(f"background: no .wav or .flac files under {folder}") from None
    skip = {name.lower() for name in exclude}
    out = []
    for clip in clips:
        kind = clip.path.relative_to(folder).parts[0]
        if clip.split == "test" or clip.label == "anomaly" or kind.lower() in skip or clip.path.parent == folder:
            continue
        out.append(BackgroundClip(clip.path, kind))
    return out
