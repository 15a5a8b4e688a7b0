"""The background of other machines' recordings (:mod:`asdcli.data.background`) as a branch
trains on it: log-mel features computed with the run's settings (and cached as every clip's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from asdcli.config import AsdConfig
from asdcli.data.background import background_clips
from asdcli.data.layout import parse_clip
from asdcli.services.inputs.features import iter_features, make_extractor


def background_features(spec: str, own_machines: set[str], config: AsdConfig,
                        cache_dir: Path | None) -> tuple[Tensor, Tensor, list[str]]:
    """(N, n_mels, frames) log-mel of the background ``spec`` without the run's ``own_machines``,
    (N,) the index of each clip's machine type and the types' names; a clip that cannot be read is
    left out (the background only has to hold enough other machines)."""
    clips = background_clips(spec, own_machines)
    kinds = sorted({c.kind for c in clips})
    feats, labels = [], []
    extractor = make_extractor(config, cache_dir)
    items = iter_features([parse_clip(c.path) for c in clips], extractor, config.loader.workers)
    for clip, item in zip(clips, items):
        if item.features is not None:
            feats.append(item.features)
            labels.append(kinds.index(clip.kind))
    if not feats:
        return torch.zeros(0, config.features.n_mels, 0), torch.zeros(0, dtype=torch.long), []
    return torch.from_numpy(np.stack(feats)), torch.tensor(labels, dtype=torch.long), kinds
