"""Records: the typed schemas of the metadata (JSON) a run's stages write: the run description, a
branch's, the fusion head's and the meta-learner's. Every record is validated when it is written
and when it is read, so that a hand-edited or foreign file is one error naming the file and the
field, not a failure deep in scoring."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from asdcli.checkpoints import FORMAT_VERSION, read_json, write_json
from asdcli.errors import CheckpointError
from asdcli.models.registry import BRANCHES
from asdcli.services.store.migrate import upgrade_record


def _branch_name(name: str) -> str:
    """A branch name read from a record must be one of the registry's: records name files by it."""
    if name not in BRANCHES:
        raise ValueError(f"{name!r} is not a branch (choose from {', '.join(BRANCHES)})")
    return name


BranchName = Annotated[str, AfterValidator(_branch_name)]
# a figure that may be NaN where it could not be measured (a record's other numbers must be finite)
MaybeNaN = Annotated[float, Field(allow_inf_nan=True)]


class _Record(BaseModel):
    # fields added by later versions are kept; NaN or infinity in a number is refused where it is read
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class RunDescription(_Record):
    """``run.json``: the run's sections (groups) and classes, its held-out clips and the audio and
    feature settings every branch shares. ``group_names`` 2: DCASE 2020 machine IDs have groups of
    their own (``<machine>_id_<XX>``); absent in runs made before, which name them as sections."""

    groups: list[str]
    labels: list[str]
    audio: dict
    features: dict
    holdout: list[str]
    group_names: int


class ScoreStats(_Record):
    count: int = Field(ge=0)
    mean: float
    std: float = Field(ge=0)
    threshold: float | None = None


class HeldOut(_Record):
    """How a branch's held-out normal clips scored against its training clips
    (:func:`asdcli.services.scoring.reliability.heldout_check`)."""

    clips: int
    median_z: float | None
    median_normal_z: float | None


class BranchRecord(_Record):
    """``<branch>.json``."""

    branch: str
    status: str
    epochs_done: int
    epochs: int
    seed: int
    config: dict
    groups: list[str]
    score_stats: dict[str, ScoreStats]
    embed_dims: dict[str, int]
    upstream: list[BranchName]
    extra: dict | None
    heldout: HeldOut | None
    limitation: str | None
    trained_clips: int | None


class FusionRecord(_Record):
    """``fusion.json``."""

    branches: list[BranchName]
    branch_digests: dict[BranchName, str]
    hidden: int
    loss: MaybeNaN  # NaN: the head was not trained (its prior's trust is 0)
    left_out: dict[str, str]
    mean_weights: dict[str, Annotated[float, Field(ge=0, le=1)]]
    config: dict
    prior_temperature: float | None
    pseudo_auc: dict[str, MaybeNaN]  # NaN where a branch's AUC could not be measured
    fair_pseudo_auc: dict[str, MaybeNaN]
    prior: dict  # :func:`asdcli.services.training.fuse.prior_record`


class TrainScores(_Record):
    """``<branch>.train_scores.json``: every normal training clip's score (clip key -> score)."""

    branch: BranchName
    scores: dict[str, float]

    @field_validator("scores")
    @classmethod
    def _some(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("holds no clip")
        return value


class MetaLearnerRecord(_Record):
    """``meta.json``."""

    tasks: list[str]
    in_dim: int
    meta: dict
    seed: int
    examples: str
    fusion_digest: str
    fusion_loss: MaybeNaN | None  # NaN: the fusion head was not trained (its prior's trust is 0)
    holdout: list[str]
    abstained: str | None  # why it keeps the fused score (too few sections), or None


Model = TypeVar("Model", bound=_Record)


def write_record(path: Path, schema: type[Model], **fields: object) -> None:
    """Write a record through its schema: ``fields`` (with the format version) validated as every
    reader will read them, so that a stage cannot commit a record its readers would refuse (a
    failure here is a bug), then written as JSON (atomically)."""
    record = schema.model_validate({"format_version": FORMAT_VERSION, **fields})
    write_json(path, record.model_dump(mode="json"))


def read_record(schema: type[Model], path: Path, what: str) -> Model:
    """The record at ``path`` as a ``schema`` object, a file of an older format upgraded first
    (:func:`asdcli.services.store.migrate.upgrade_record`); a :class:`CheckpointError` naming the file
    and the first bad field where it does not fit the schema."""
    data = upgrade_record(schema.__name__, read_json(path, what))
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        reason = "is missing" if first["type"] == "missing" else f"is not valid ({first['msg']})"
        raise CheckpointError(f"{path}: field '{field}' {reason}; the file was edited or is not this stage's "
                              "metadata: train the stage again") from None
