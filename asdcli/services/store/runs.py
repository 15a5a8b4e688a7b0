"""Run folders as services see them: the run's vocabulary and feature settings, and trained
branches loaded back from their checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asdcli.checkpoints import (EXAMPLES_FILE, FORMAT_VERSION, META_EXAMPLES_FILE, load_weights,
                                 training_progress, write_json)
from asdcli.atomic import write_text
from asdcli.config import AsdConfig, AudioConfig, dump_config, load_config, validate_config
from asdcli.data.features import num_frames
from asdcli.errors import CheckpointError, ConfigError
from asdcli.models.base import Branch, BranchContext
from asdcli.models.registry import BRANCHES, branch_config, build_branch, canonical_name
from asdcli.services.inputs.dataset import Vocabulary
from asdcli.services.store.commits import JOURNAL_PREFIX, pending_files
from asdcli.services.store.migrate import config_of_v1_run, upgrade_state
from asdcli.services.store.records import BranchRecord, RunDescription, read_record


RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
GROUP_NAMES = 2  # run.json "group_names": DCASE 2020 IDs are groups <machine>_id_<XX> (RunDescription)


def _run_file(path: Path, name: str) -> Path:
    if not any(Path(path).glob(f"{JOURNAL_PREFIX}*.json")):
        return Path(path) / name
    return pending_files(path).get(name, Path(path) / name)


def is_run(path: Path) -> bool:
    """Whether ``path`` is a run folder (it holds a run description)."""
    return (Path(path) / RUN_FILE).is_file()


@dataclass
class Run:
    """A run folder: its sections and classes, the feature settings all its branches share, and
    the keys of the normal training clips its branches' networks never train on (held out).
    Every file of a run is named here:

    ```
    <run>/run.json                 format version, machine sections (groups) and classes of the run
    <run>/config.yaml              the fully resolved config of the first command that made the run
    <run>/<branch>.safetensors     weights and buffers (memory banks, statistics) of a finished branch
    <run>/<branch>.json            its metadata: epochs, seed, its training settings and config section,
                                   versions, score statistics, held-out check
    <run>/<branch>.train_scores.json   its score of every training clip (the fusion's normal examples)
    <run>/<branch>.train.safetensors   an unfinished training (weights, optimizer state, progress in
                                   one file), for --resume; removed when the training completes
    <run>/logs/<branch>_train.csv  one row per epoch
    <run>/examples.safetensors     normalised branch scores of training clips and pseudo-anomalies
    <run>/fusion.safetensors + fusion.json   attention fusion head
    <run>/meta_examples.safetensors   the meta-learner's own pseudo-anomaly examples
    <run>/meta.safetensors + meta.json       MAML meta-learner
    ```
    """

    path: Path
    vocab: Vocabulary
    features: dict
    holdout: frozenset[str] = frozenset()
    # config.yaml as read once (run_config): written when the run is made, never after
    read_config: AsdConfig | None = field(default=None, repr=False, compare=False)

    def file(self, name: str) -> Path:
        """The run's file ``name`` as a reader takes it: the staged copy where a commit that names it
        is pending (:func:`~asdcli.services.store.commits.pending_files`), else the run's own."""
        return _run_file(self.path, name)

    @property
    def info_path(self) -> Path:
        """``run.json``: sections, classes, held-out clips, feature settings."""
        return self.file(RUN_FILE)

    @property
    def fusion_weights(self) -> Path:
        return self.file("fusion.safetensors")

    @property
    def fusion_record(self) -> Path:
        return self.file("fusion.json")

    @property
    def examples(self) -> Path:
        """The fusion head's training examples (normal clips and pseudo-anomalies)."""
        return self.file(EXAMPLES_FILE)

    @property
    def meta_learner_weights(self) -> Path:
        return self.file("meta.safetensors")

    @property
    def meta_learner_record(self) -> Path:
        return self.file("meta.json")

    @property
    def meta_examples(self) -> Path:
        """The meta-learner's own examples (``meta-train --data``)."""
        return self.file(META_EXAMPLES_FILE)

    @property
    def logs(self) -> Path:
        """Per-epoch training logs (``<branch>_train.csv``) and the loss plot."""
        return self.file("logs")

    def weights(self, name: str) -> Path:
        return self.file(f"{name}.safetensors")

    def record(self, name: str) -> Path:
        """A branch's record: ``<branch>.json``, its metadata (:class:`~asdcli.services.store.records.BranchRecord`)."""
        return self.file(f"{name}.json")

    def train_state(self, name: str) -> Path:
        """An unfinished training of ``name`` (weights, optimizer state, progress), for --resume."""
        return self.file(f"{name}.train.safetensors")

    def train_scores(self, name: str) -> Path:
        return self.file(f"{name}.train_scores.json")

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}_train.csv"

    def train_logs(self) -> list[Path]:
        """Every branch's per-epoch log that the run holds (:meth:`log_path`), by name."""
        return sorted(self.logs.glob("*_train.csv"))

    @property
    def loss_plot(self) -> Path:
        """Where ``asd plot RUN`` puts the training-loss curves by default."""
        return self.logs / "training_loss.png"

    @property
    def audio(self) -> AudioConfig:
        """The audio settings every branch of the run shares (its clips are read with them)."""
        return AudioConfig.model_validate(self.features["audio"])

    @property
    def config_path(self) -> Path:
        """The resolved config the run was started with; later stages use it."""
        return self.file(CONFIG_FILE)


def run_stamp(run_dir: Path) -> tuple:
    """Sizes and modification times of a run's records and weights: a commit changes them."""
    entries = []
    with os.scandir(run_dir) as found:
        for entry in found:
            if entry.name.endswith((".json", ".safetensors")) and not entry.name.startswith("."):
                info = entry.stat()
                entries.append((entry.name, info.st_size, info.st_mtime_ns))
    return tuple(sorted(entries))


def saved_config(run_dir: Path | None) -> str | None:
    """The ``config.yaml`` of the run folder ``run_dir`` as a config argument, or None (no run
    folder yet, or one made before runs kept their config)."""
    path = None if run_dir is None else Path(run_dir) / CONFIG_FILE
    return str(path) if path is not None and path.is_file() else None


def has_finished(run_dir: Path, name: str) -> bool:
    """Whether the run folder holds a finished training of branch ``name``."""
    return (Path(run_dir) / f"{canonical_name(name)}.json").is_file()


def _feature_settings(config: AsdConfig) -> dict:
    return {"audio": config.audio.model_dump(mode="json"), "features": config.features.model_dump(mode="json")}


def open_or_create_run(path: Path, vocab: Vocabulary, config: AsdConfig, holdout: list[str]) -> Run:
    """Create ``path/run.json`` for a new run (with its held-out clips), or check that the data and
    features match an existing one (whose held-out clips stay as recorded)."""
    info_path = path / RUN_FILE
    settings = _feature_settings(config)
    if not info_path.exists():
        write_text(path / CONFIG_FILE, dump_config(config))
        write_json(info_path, {"format_version": FORMAT_VERSION, "groups": vocab.groups, "labels": vocab.labels,
                               "holdout": holdout, "group_names": GROUP_NAMES, **settings})
        return Run(path, vocab, settings, frozenset(holdout))
    run = open_run(path)
    if run.features != settings:
        raise CheckpointError(f"{path}: the run was made with other audio/feature settings than this config; "
                              "use the run's config or a new --run folder")
    missing = sorted(set(vocab.groups) - set(run.vocab.groups))
    if missing and run.vocab.legacy_2020 and any("_id_" in g for g in missing):
        raise CheckpointError(f"{path}: the run was made before DCASE 2020 machine IDs had groups of their own "
                              f"(it names them {run.vocab.groups}); it still scores, but train in a new --run folder")
    if missing:
        raise CheckpointError(f"{path}: the run was made for sections {run.vocab.groups}; the data adds {missing}. "
                              "Use a new --run folder")
    return run


def open_run(path: Path | Run) -> Run:
    """An existing run folder, read as after any stage committed by an interrupted command (its
    staged files; nothing is written: the next command that commits completes it);
    a :class:`Run` already opened is handed back as it is, so that a command opens its run once
    and passes it to every service it calls."""
    if isinstance(path, Run):
        return path
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"run folder {path} does not exist; train it first: asd train DATA --run {path}")
    info_path = _run_file(path, RUN_FILE)
    info = read_record(RunDescription, info_path, "run description")
    return Run(path, Vocabulary(info.groups, info.labels, legacy_2020=info.group_names < GROUP_NAMES),
               {"audio": info.audio, "features": info.features}, frozenset(info.holdout))


def branch_context(run: Run, config: AsdConfig, embed_dims: dict[str, int] | None = None) -> BranchContext:
    """The facts a branch is built from."""
    return BranchContext(n_mels=config.features.n_mels, frames=num_frames(config.audio, config.features),
                         sample_rate=config.audio.sample_rate, n_groups=len(run.vocab.groups),
                         n_labels=len(run.vocab.labels), embed_dims=embed_dims or {})


def read_branch_record(run: Run, name: str) -> BranchRecord:
    """A trained branch's metadata; errors say what to run when it is missing or unfinished."""
    name = canonical_name(name)
    if not run.record(name).exists():
        progress = training_progress(run.train_state(name))
        if progress is not None:
            raise CheckpointError(f"branch '{name}' in {run.path} stopped at epoch {progress.get('epochs_done')}/"
                                  f"{progress.get('epochs')}; finish it: asd train DATA --run {run.path} (continues "
                                  "where it stopped)")
        raise CheckpointError(f"branch '{name}' is not trained in {run.path}; train it: asd train DATA --run {run.path} "
                              f"(or this branch alone: asd train-branch {name} --data DATA --run {run.path})")
    meta = read_record(BranchRecord, run.record(name), f"{name} metadata")
    if meta.status != "complete":
        raise CheckpointError(f"branch '{name}' in {run.path} stopped at epoch {meta.epochs_done}/{meta.epochs}; "
                              f"finish it: asd train DATA --run {run.path} (continues where it stopped)")
    return meta


def branch_settings(config: AsdConfig, name: str) -> dict:
    """All a branch record keeps of the config it was trained with: what its weights depend on
    beyond the run's audio and feature settings (``run.json``): the seed, the training settings and
    the branch's own section. The rest is the run's (:func:`run_config`)."""
    field = BRANCHES[canonical_name(name)].config_field
    return {"seed": config.seed, "train": config.train.model_dump(mode="json"),
            "branches": {field: branch_config(config, name).model_dump(mode="json")}}


def trained_config(run: Run, name: str, meta: BranchRecord | None = None) -> AsdConfig:
    """The config branch ``name`` was trained with: the run's (:func:`run_config`) with the seed,
    training settings and branch section its record keeps (``meta``, read when not given)."""
    name = canonical_name(name)
    meta = meta or read_branch_record(run, name)
    data = run_config(run).model_dump(mode="json")
    data.update({k: meta.config[k] for k in ("seed", "train") if k in meta.config})
    section, kept = BRANCHES[name].config_field, meta.config.get("branches", {})
    if not isinstance(kept, dict):
        raise CheckpointError(f"{run.record(name)}: field 'config.branches' is not a mapping; the file was edited or "
                              "is not this stage's metadata: train the stage again")
    if section in kept:
        data["branches"][section] = kept[section]
    return validate_config(data, source=str(run.record(name)))


def load_branch(run: Run, name: str, device: torch.device | str = "cpu") -> Branch:
    """A complete trained branch in eval mode, rebuilt from its own resolved config."""
    name = canonical_name(name)
    meta = read_branch_record(run, name)
    config = trained_config(run, name, meta)
    branch = build_branch(name, config, branch_context(run, config, meta.embed_dims), meta.extra or None)
    load_weights(branch, run.weights(name), lambda state, version: upgrade_state(name, state, version))
    return branch.to(device).eval()


def run_config(run: Run, given: AsdConfig | None = None) -> AsdConfig:
    """The run's config: ``given`` after checking that it has the run's audio and feature
    settings, else the ``config.yaml`` the run was started with (every stage's settings, the
    preset's fusion and meta-learner ones included), else, for runs made before it existed, the
    config stored with its first trained branch."""
    if given is not None:
        if _feature_settings(given) != run.features:
            raise ConfigError(f"{run.path}: the run was made with other audio/feature settings than this config; "
                              "leave --config out to use the run's own")
        return given
    if run.read_config is not None:
        return run.read_config
    if run.config_path.is_file():
        run.read_config = load_config(run.config_path)
        return run.read_config
    found = config_of_v1_run(list(run.path.glob("*.json")))
    if found is not None:
        return validate_config(found[0], source=str(found[1]))
    raise CheckpointError(f"no trained branch in {run.path}; train it first: asd train DATA --run {run.path}")
