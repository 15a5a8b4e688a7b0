"""Run folders written by an older asd, read as this one: every fallback for an older run format
lives here, applied where a record or a checkpoint of a run is read.

Format 3 (this release) writes every field of every record; its schemas (:mod:`records`) require
them, so a file that lacks one is damaged or foreign. A branch record of format 3 keeps of the
config only the seed, the training settings and its own section (the rest is the run's
``config.yaml``), the fusion record its seed and fusion settings; format 2 kept the whole config
in each, of which only those parts are read, so a format-2 record reads as it is. Format 1 files
(every asd before format 2) were written by builds that added fields over time:
:func:`upgrade_record` fills in what each field meant before it existed, and :func:`upgrade_state`
renames the tensors of a format-1 checkpoint. Nothing is written back: a run folder handed over read-only still scores, and an older
asd can still read a run this release only scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from asdcli.checkpoints import EXAMPLES_FILE, FORMAT_VERSION, file_digest, read_json
from asdcli.errors import CheckpointError
from asdcli.models.registry import BRANCHES

def _run_v1(data: dict) -> dict:
    """``run.json``: no held-out clips before they existed; DCASE 2020 machine IDs named as sections
    before they had groups of their own (``group_names`` 1: :class:`asdcli.services.inputs.dataset.Vocabulary`
    keeps scoring them so)."""
    return {"holdout": [], "group_names": 1, **data}


def _branch_v1(data: dict) -> dict:
    """``<branch>.json``: fields added during format 1, as a branch without them behaved; the
    held-out gap in normal deviates is the plain median z where only that was measured; the
    pretrained branch saved only the AST before other backbones existed."""
    out = {"embed_dims": {}, "upstream": [], "extra": None, "heldout": None, "limitation": None,
           "trained_clips": None, **data}
    if isinstance(out["heldout"], dict):  # anything else is left for the schema to refuse, naming the field
        out["heldout"] = {"median_z": None, **out["heldout"]}
        out["heldout"].setdefault("median_normal_z", out["heldout"]["median_z"])
    if out.get("branch") == "pretrained" and isinstance(out["extra"], (dict, type(None))):
        out["extra"] = {"backbone": "ast", **(out["extra"] or {})}
    return out


def _fusion_v1(data: dict) -> dict:
    """``fusion.json``: a head fused before priors, pseudo-anomaly AUCs and limitations were recorded."""
    return {"left_out": {}, "mean_weights": {}, "config": {}, "prior_temperature": None, "pseudo_auc": {},
            "fair_pseudo_auc": {}, "prior": {}, **data}


def _meta_learner_v1(data: dict) -> dict:
    """``meta.json``: the meta-learner shared the fusion head's examples before it had its own, and
    did not record which fusion head it was trained on (empty: not checked)."""
    return {"examples": EXAMPLES_FILE, "fusion_digest": "", "fusion_loss": None, "holdout": [],
            "abstained": None, **data}


_V1: dict[str, Callable[[dict], dict]] = {"RunDescription": _run_v1, "BranchRecord": _branch_v1,
                                          "FusionRecord": _fusion_v1, "MetaLearnerRecord": _meta_learner_v1}


def upgrade_record(schema: str, data: dict) -> dict:
    """``data`` read from a record of ``schema`` (a class name of :mod:`records`), as format
    :data:`FORMAT_VERSION` writes it."""
    if data.get("format_version") == 1:
        data = {**_V1.get(schema, dict)(data), "format_version": FORMAT_VERSION}
    return data


def upgrade_examples(meta: dict[str, str]) -> dict[str, str]:
    """The metadata of a fusion examples file: format-1 builds before ``trained_kinds`` did not
    record which branch saw which pseudo-anomaly kinds in its training (none then: every kind
    counts as unseen, as those heads were fitted)."""
    return {"trained_kinds": "{}", **meta} if meta.get("format_version") == "1" else meta


def upgrade_state(branch: str, state: dict[str, torch.Tensor], version: str) -> dict[str, torch.Tensor]:
    """The tensors of a branch checkpoint of format ``version``, under this release's names: the
    pretrained branch held the AST under ``ast.`` and a linear ID head (never used to score)."""
    if version != "1" or branch != "pretrained" or not any(k.startswith("ast.") for k in state):
        return state
    return {("backbone." + k if k.startswith("ast.") else k): v for k, v in state.items()
            if not k.startswith("classifier.")}


def older_digests(meta_path: Path) -> list[str]:
    """Digests a format-1 run recorded of an earlier stage, still accepted as current: its
    metadata file's alone (runs recorded it before the weights counted)."""
    return [file_digest(meta_path)]


def leftovers(name: str) -> list[str]:
    """File names in a run that format 1 wrote for branch ``name`` and no release reads now (its
    optimizer state under the old name): removed when the branch is trained again."""
    return [f"{name}.train.json"]


def config_of_v1_run(files: list[Path]) -> tuple[dict, Path] | None:
    """A format-1 run made before runs kept their ``config.yaml``: the resolved config stored with
    its first trained branch (``files``: the run's ``*.json`` paths), and that file; None if none."""
    for path in sorted(files):
        if path.stem in BRANCHES:
            config = read_json(path, "branch metadata").get("config")
            if not isinstance(config, dict):
                raise CheckpointError(f"{path}: field 'config' is missing or not a mapping; the file was edited or is "
                                      "not this stage's metadata: train the stage again")
            return config, path
    return None
