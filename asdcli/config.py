"""Typed configuration: one pydantic model per concern, loaded from YAML presets in ``asdcli/presets/`` (shipped inside the package).

Every model forbids unknown keys, so a typo fails at load time with the file, the field and the
reason. Defaults live here only; the YAML presets override them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from asdcli.config_branches import (BranchesConfig, BranchTrain, ContrastiveConfig, DiffusionConfig,
                                    EFFICIENTAT_MN04, ErrorScore, FlowConfig, Pooling, Precision, PretrainedConfig,
                                    Section, TransformerAEConfig)
from asdcli.errors import ConfigError
from asdcli.files import CONFIG_LIMIT, read_regular

__all__ = ["AsdConfig", "AudioConfig", "BranchTrain", "BranchesConfig", "ContrastiveConfig", "DebugConfig",
           "DiffusionConfig", "EFFICIENTAT_MN04", "ErrorScore", "FeatureConfig", "FlowConfig", "FusionConfig",
           "LoaderConfig", "MetaConfig", "Pooling", "Precision", "PretrainedConfig", "Section", "SynthConfig",
           "TrainConfig", "TransformerAEConfig", "dump_config", "load_config", "parse_overrides",
           "resolve_config_path", "settings_digest", "validate_config"]

CONFIG_DIR = Path(__file__).resolve().parent / "presets"


class AudioConfig(Section):
    """How a file becomes a mono waveform of fixed length."""

    sample_rate: int = Field(16000, gt=0, description="target rate in Hz; other rates are resampled")
    duration_s: float = Field(10.0, gt=0, description="clips are cropped or tiled to this length")
    min_duration_s: float = Field(0.5, gt=0, description="shorter clips are rejected as unusable")
    channel: Union[int, Literal["mean"]] = Field(
        0, description="channel to keep from multi-channel files (index) or 'mean' for a downmix"
    )

    @model_validator(mode="after")
    def _check(self) -> "AudioConfig":
        if isinstance(self.channel, int) and self.channel < 0:
            raise ValueError("channel must be >= 0 or 'mean'")
        if self.min_duration_s > self.duration_s:
            raise ValueError("min_duration_s must not exceed duration_s")
        return self

    @property
    def num_samples(self) -> int:
        """Clip length in samples at ``sample_rate``."""
        return int(round(self.duration_s * self.sample_rate))


class FeatureConfig(Section):
    """Log-mel spectrogram settings (DCASE baseline defaults)."""

    n_fft: int = Field(1024, gt=0)
    hop_length: int = Field(512, gt=0)
    n_mels: int = Field(128, gt=0)
    power: float = Field(2.0, gt=0)
    f_min: float = Field(0.0, ge=0)
    f_max: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "FeatureConfig":
        if self.hop_length > self.n_fft:
            raise ValueError("hop_length must not exceed n_fft")
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(f"n_mels must be at most n_fft // 2 + 1 = {self.n_fft // 2 + 1}")
        if self.f_max is not None and self.f_max <= self.f_min:
            raise ValueError("f_max must be greater than f_min")
        return self


class LoaderConfig(Section):
    """Parallel audio decoding, feature extraction and batch assembly (speed only: the scores are
    the same whatever these are)."""

    workers: int = Field(2, ge=1, le=64, description="threads decoding audio and assembling batches in parallel")
    prefetch: int = Field(2, ge=0, le=64, description="batches assembled ahead of the model while it computes "
                          "(0: each when it is needed)")


SynthMachine = Literal["fan", "pump", "valve", "slider", "gearbox"]
# The first five change the whole clip; knock, whine and dropout are localised: at a known time
# (and band), written to faults.csv, the ground truth for localisation (asd explain)
AnomalyKind = Literal["freq_shift", "extra_harmonic", "impulses", "modulation", "missing_events", "knock", "whine",
                      "dropout"]


class SynthConfig(Section):
    """The built-in synthetic dataset (DCASE 2021+ layout)."""

    machines: list[SynthMachine] = Field(default_factory=lambda: ["fan", "pump", "valve", "slider"], min_length=1)
    sections: int = Field(2, ge=1, le=100, description="machine instances per type")
    train_source: int = Field(60, ge=1, description="normal training clips per section, source domain")
    train_target: int = Field(6, ge=0, description="normal training clips per section, target domain")
    test_per_domain: int = Field(20, ge=2, description="test clips per section and domain, half anomalous")
    duration_s: float = Field(10.0, gt=0)
    sample_rate: int = Field(16000, gt=0)
    snr_db: float = Field(6.0, description="machine-to-background-noise ratio in dB")
    anomalies: list[AnomalyKind] = Field(
        default_factory=lambda: ["freq_shift", "extra_harmonic", "impulses", "modulation", "missing_events"],
        min_length=1,
    )
    severity: float = Field(1.0, gt=0, le=4, description="scales every anomaly's strength")

    @model_validator(mode="after")
    def _check(self) -> "SynthConfig":
        if len(set(self.machines)) != len(self.machines):
            raise ValueError("machines must not repeat")
        return self


class TrainConfig(Section):
    """Optimisation settings shared by every branch (a branch may override epochs, lr and precision)."""

    epochs: int = Field(20, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0, description="max gradient norm")
    warmup_epochs: int = Field(1, ge=0, description="linear learning-rate warm-up, then cosine decay")
    balance: bool = Field(True, description="draw every section-and-attribute class equally often (the few "
                          "target-domain clips are otherwise swamped by the source domain)")
    holdout: float = Field(0.1, ge=0, lt=0.5, description="share of each section's normal training clips that no "
                           "branch's network trains on (at least one where a section has 3 or more): scored like unseen "
                           "clips, they show whether a branch generalises from its training clips")
    heldout_max_z: float = Field(3.0, gt=0, description="a branch whose held-out clips score (median) more than this "
                                 "many standard deviations above its training clips does not generalise from them: "
                                 "train-branch says so and the fusion leaves it out")
    precision: Precision = Field("fp32", description="mixed precision of the branches' training steps: bf16 (CPU or "
                                 "GPU), fp16 (CUDA only, with loss scaling) or auto (bf16 where the device computes it "
                                 "natively: a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX; fp32 elsewhere); "
                                 "weights and optimizer stay fp32")
    heldout_min_clips: int = Field(2, ge=1, description="the fewest held-out clips on which the fusion leaves a branch "
                                   "out by train.heldout_max_z: one clip's deviate cannot tell a branch that learnt its "
                                   "clips by heart from one unusual clip, so with fewer it is reported only")


class FusionConfig(Section):
    """Attention fusion of the normalised branch scores, trained on normal vs pseudo-anomalous clips."""

    perturbed_per_section: int = Field(32, ge=1, description="perturbed training clips per section (pseudo-anomalies)")
    outliers_per_section: int = Field(32, ge=0, description="clips of other sections scored as this one "
                                      "(outlier exposure)")
    synth_outliers: int = Field(16, ge=0, description="synthetic clips of other machine types per section, used "
                                "when the data holds a single section")
    hidden: int = Field(32, ge=4)
    epochs: int = Field(300, ge=1, description="full-batch optimisation steps")
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    loss: Literal["bce", "rank"] = Field("bce", description="bce: class- and section-balanced cross-entropy; rank: "
                                         "pairwise ranking loss within each section (an AUC surrogate)")
    prior: str = Field("builtin", min_length=1, description="the prior over branches learned from labelled faults of "
                       "other machines: 'builtin' (shipped, learned from real development recordings), a file made by "
                       "asd learn-prior, or 'none' (the machine's own pseudo-anomalies alone decide)")
    prior_temperature: float = Field(0.02, gt=0, description="the pseudo-anomaly evidence is softmax((AUC_k - max AUC) / "
                                     "this) of each branch's normal-vs-pseudo-anomaly AUC (or their standard error, "
                                     "if larger); the prior's trust says how far it moves the weights")
    prior_penalty: float = Field(10.0, ge=0, description="weight of KL(attention || prior) in the loss: keeps the "
                                 "per-clip attention near the prior where pseudo-anomalies would pull it away")


class MetaConfig(Section):
    """MAML meta-learner over the fused features; tasks are machine sections."""

    hidden: int = Field(32, ge=4)
    inner_lr: float = Field(0.05, gt=0, description="step size of the inner-loop (adaptation) updates")
    inner_steps: int = Field(5, ge=1)
    support_normals: int = Field(8, ge=1, description="normal clips a section adapts from")
    support_anomalies: int = Field(8, ge=1, description="pseudo-anomalies a section adapts from")
    query: int = Field(16, ge=1, description="clips per class in a meta-training query set")
    tasks_per_step: int = Field(4, ge=1)
    min_tasks: int = Field(3, ge=1, description="with fewer sections to meta-train on, there is nothing to learn "
                           "across machines: the meta-learner keeps its start, the fused score, and does not adapt")
    iterations: int = Field(300, ge=1)
    lr: float = Field(0.003, gt=0, description="outer-loop (meta) learning rate")
    first_order: bool = Field(False, description="first-order MAML (no second derivatives)")
    proximal: float = Field(10.0, ge=0, description="weight of the squared distance of the meta-parameters from "
                            "their start (the fused score): keeps pseudo-anomalies from pulling the classifier "
                            "away from the fusion's ranking")


class DebugConfig(Section):
    """Trouble detection of ``asd freeze-debug``."""

    explode_factor: float = Field(100.0, gt=1, description="a gradient norm this many times the part's running "
                                  "median is reported as exploding")
    explode_above: float = Field(1e4, gt=0, description="a gradient norm above this is reported as exploding")
    vanish_below: float = Field(1e-7, ge=0, description="a trainable part's gradient norm below this is reported "
                                "as vanishing")


class AsdConfig(Section):
    """The whole configuration of a run."""

    audio: AudioConfig = Field(default_factory=AudioConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    loader: LoaderConfig = Field(default_factory=LoaderConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    branches: BranchesConfig = Field(default_factory=BranchesConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)
    seed: int = Field(0, ge=0)

    def with_overrides(self, **dotted: object) -> "AsdConfig":
        """Copy with fields replaced by dotted name (``{"loader.workers": 4}``; a branch may be
        named by its id or name, ``branches.b1.source``), re-validated; ``None`` values (options
        not given) are left out. An unknown name is a :class:`ConfigError` naming it."""
        return self.with_settings({k: v for k, v in dotted.items() if v is not None})

    def with_settings(self, dotted: dict[str, object]) -> "AsdConfig":
        """:meth:`with_overrides` where ``None`` is a value (``features.f_max=null``)."""
        data = self.model_dump()
        for key, value in dotted.items():
            node = data
            *parents, leaf = _field_path(key)
            for depth, part in enumerate(parents):
                if not isinstance(node.get(part), dict):
                    where = ".".join(parents[:depth]) or "the top level"
                    raise ConfigError(f"command line: '{key}': {where} has no section '{part}' "
                                      f"(it has: {', '.join(k for k, v in node.items() if isinstance(v, dict))})")
                node = node[part]
            node[leaf] = value
        return validate_config(data, source="command line")


BRANCH_FIELDS = {"b1": "pretrained", "b2": "transformer_ae", "b3": "contrastive", "b4": "diffusion", "b5": "flow"}


def _field_path(key: str) -> list[str]:
    """A dotted name as config fields: ``branches.b1.x`` and ``branches.transformer-ae.x`` name
    ``branches.pretrained.x`` and ``branches.transformer_ae.x``."""
    parts = key.split(".")
    if len(parts) > 1 and parts[0] == "branches":
        parts[1] = BRANCH_FIELDS.get(parts[1].lower(), parts[1].replace("-", "_"))
    return parts


def parse_overrides(items: list[str] | None) -> dict[str, object]:
    """Command-line ``key=value`` overrides (``train.lr=0.01 branches.b1.finetune_layers=-1``) as
    dotted names and values; a value is read as YAML (numbers, true/false, null, [lists]), else
    kept as text. A malformed item is a :class:`ConfigError` naming it."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"command line: '{item}' is not a key=value override (e.g. train.lr=0.001)")
        try:
            value = yaml.load(text, Loader=_UniqueKeyLoader) if text.strip() else ""
        except (yaml.YAMLError, RecursionError):
            value = text
        out[key.strip()] = text if isinstance(value, dict) else value
    return out


def settings_digest(*sections: BaseModel, version: int = 1) -> str:
    """A short stable hash of config sections, used to key caches by their settings."""
    blob = json.dumps([version] + [s.model_dump(mode="json") for s in sections], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _format_error(error: ValidationError, source: str) -> str:
    """One line per problem: ``<source>: field 'a.b': reason``."""
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            reason = "unknown field (check the spelling)"
        lines.append(f"{source}: field '{field}': {reason}")
    return "; ".join(lines)


def validate_config(data: object, source: str) -> AsdConfig:
    """Build an :class:`AsdConfig` from plain data, raising :class:`ConfigError` on problems."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        return AsdConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_error(error, source)) from None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A preset name (``tiny``) maps to the package's ``presets/tiny.yaml``; a ``.yaml``/``.yml``
    name or an existing file is a path (a folder that happens to share a preset's name is not)."""
    candidate = Path(name_or_path)
    preset = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        path = candidate
    elif preset.is_file():
        path = preset
    else:
        path = candidate if candidate.exists() else preset  # named in the error below
    if not path.is_file() and not path.exists():
        if path.is_symlink():
            raise ConfigError(f"config file {path} is a symbolic link that leads to no file (a loop or a missing target)")
        presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))) or "none found"
        raise ConfigError(f"config file not found: {path} (presets: {presets})")
    return path


MAX_DEPTH = 32  # a config nests 3 levels; deeper input is refused before it can exhaust the stack


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader for which a key given twice in one mapping is an error (plain YAML
    loaders keep the last silently), nesting is bounded (:data:`MAX_DEPTH`) and anchors and
    aliases are refused (a config has no use for them, and they can multiply a small file into
    an enormous document)."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config",
                                              self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(name_or_path: str | Path | None = None) -> AsdConfig:
    """Load and validate a YAML config; ``None`` gives the ``default`` preset."""
    path = resolve_config_path(name_or_path or "default")
    try:
        text = read_regular(path, "config file", ConfigError, CONFIG_LIMIT).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8") from None
    return validate_config(_load_yaml(text, str(path)), source=str(path))


def _load_yaml(text: str, source: str) -> object:
    """YAML text through the strict, bounded loader (:class:`_UniqueKeyLoader`)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}".replace("\n", " ")) from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None


def dump_config(config: AsdConfig) -> str:
    """The fully resolved config as YAML text (written beside every run's outputs)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
