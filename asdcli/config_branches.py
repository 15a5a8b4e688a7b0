"""Config sections of the five branches (re-exported by :mod:`asdcli.config`, where the whole
config, its loading and its overrides live). Every model forbids unknown keys and wrong types."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable, and a value
    of the wrong type is an error, not converted (``epochs: true`` is not 1, ``lr: "0.01"`` not
    0.01; a whole number is still a valid float). Numbers are finite and whole numbers fit in 32
    bits (seeds in 32 bits unsigned, as numpy takes them), so that no out-of-range value reaches a
    library that would fail on it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            top = 2**32 - 1 if info.field_name == "seed" else 2**31 - 1
            if abs(value) > top:
                raise ValueError(f"{value} is out of range (at most {top})")
        return value


Precision = Literal["fp32", "bf16", "fp16", "auto"]


class BranchTrain(Section):
    """Per-branch overrides of :class:`TrainConfig` (``None``: use the shared value)."""

    epochs: int | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)
    precision: Precision | None = None


Pooling = Literal["mean", "max", "top10", "gwrp"]
# mse: pooled squared error; mahalanobis: distance of the per-bin error profile from the
# section's training profiles (as the DCASE 2023 baseline's MAHALA mode)
ErrorScore = Literal["mahalanobis", "mse"]


# The authors' published mn04 AudioSet checkpoint (EfficientAT release v0.0.1, MIT license)
EFFICIENTAT_MN04 = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/mn04_as_mAP_432.pt"


class PretrainedConfig(BranchTrain):
    """b1: a pretrained audio model's embeddings (fine-tuned or frozen) scored by k-nearest-neighbour distance."""

    backbone: Literal["efficientat", "ast"] = Field("efficientat", description="efficientat: EfficientAT MobileNetV3 "
                                                    "(AudioSet, ~1 M parameters at width 0.4; a CPU fine-tunes it in "
                                                    "minutes); ast: the Audio Spectrogram Transformer (86 M, for GPUs)")
    source: str = Field(EFFICIENTAT_MN04, description="efficientat: a .pt/.safetensors file, a URL of one (downloaded "
                        "once into the model cache) or 'random'; ast: a Hugging Face model id, a local folder or 'random'")
    width: float = Field(0.4, gt=0, le=4, description="EfficientAT width multiplier; must match the weights (mn04: 0.4)")
    random_hidden: int = Field(64, ge=8, description="hidden size of the 'random' AST")
    random_layers: int = Field(2, ge=1)
    random_heads: int = Field(2, ge=1)
    max_length: int = Field(1024, ge=16, description="AST input frames (10 ms hop)")
    finetune_layers: int = Field(0, ge=-1, description="top blocks of the backbone trained on the section-and-attribute "
                                 "classes with a margin loss (-1: all of it; 0: frozen, embeddings cached on disk)")
    margin: float = Field(0.2, ge=0, lt=1.5, description="ArcFace additive angular margin (radians)")
    scale: float = Field(16.0, gt=0, description="ArcFace logit scale")
    perturbations: int = Field(3, ge=0, le=3, description="kinds of perturbed copies that are extra classes where the "
                               "data hold a single section-and-attribute class")
    k: int = Field(1, ge=1, description="neighbours averaged by the kNN score")
    layer: int | None = Field(None, ge=0, description="efficientat: the block (0: the first) whose output, averaged "
                              "over frequency and time, is the embedding; None: the last, the model's own. On the "
                              "real sets an earlier block was far better for some machines and worse for others, "
                              "and none chosen without a set beat the last on it (docs/pooling.md)")

    @model_validator(mode="after")
    def _check(self) -> "PretrainedConfig":
        if self.random_hidden % self.random_heads:
            raise ValueError("random_hidden must be divisible by random_heads")
        if self.layer is not None and self.backbone != "efficientat":
            raise ValueError("layer applies to backbone efficientat only")
        return self


class TransformerAEConfig(BranchTrain):
    """b2: masked-frame Transformer autoencoder scored by reconstruction error."""

    patch_frames: int = Field(4, ge=1, description="frames per token")
    d_model: int = Field(128, ge=8)
    heads: int = Field(4, ge=1)
    layers: int = Field(3, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    mask_ratio: float = Field(0.5, gt=0, lt=1)
    score_masks: int = Field(4, ge=1, description="interleaved masks at scoring; each token hidden once")
    score: ErrorScore = "mahalanobis"
    pooling: Pooling = Field("mean", description="pooling of per-token errors for score: mse")
    gwrp_decay: float = Field(0.9, gt=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> "TransformerAEConfig":
        if self.d_model % self.heads:
            raise ValueError("d_model must be divisible by heads")
        return self


class ContrastiveConfig(BranchTrain):
    """b3: machine-ID contrastive embedding (SupCon pretraining, then ID classification)."""

    embed_dim: int = Field(128, ge=4)
    channels: int = Field(16, ge=4, description="width of the first convolution block")
    temperature: float = Field(0.1, gt=0)
    pretrain_fraction: float = Field(0.5, ge=0, le=1, description="share of epochs with the contrastive loss only")
    perturbations: int = Field(3, ge=0, le=3, description="kinds of perturbed copies used as extra classes (outlier "
                               "exposure)")
    copies_per_clip: int = Field(1, ge=1, le=3, description="perturbed copies of each clip per training step, their "
                                 "kinds drawn at random among the perturbations (3: every kind of every clip in every "
                                 "step, as before; 1 halves the images a step embeds)")
    precision: Precision | None = Field("auto", description="its training steps' precision (see train.precision; "
                                        "None: train.precision)")
    crop_frames: int = Field(0, ge=0, description="trains on a random window of this many frames of each clip "
                             "(0: whole clips); scoring embeds whole clips. 64 trains b3 5x faster and lifts it on "
                             "synthetic data, but the fused score on the real folds fell by 0.015 AUC with it")
    score: Literal["knn", "prototype"] = "knn"
    k: int = Field(1, ge=1)
    background: str = Field("none", min_length=1, description="other machines' normal recordings it learns to tell "
                            "the run's clips from (outlier exposure): a folder of <type>/*.wav (a DCASE download: "
                            "its train normals), or 'none'; the run's own machine types are left out of it")
    background_per_step: int = Field(16, ge=1, description="background clips drawn into each training step")
    min_classes: int = Field(2, ge=1, description="with fewer classes to tell apart (the run's section-and-attribute "
                             "classes and the background's machine types) its only negatives are perturbed copies of "
                             "its own clips: the fusion leaves it out (chosen on the ten real sets of bench_real.py, "
                             "each judged with the rule chosen on the other nine; 1: always fused)")


class DiffusionConfig(BranchTrain):
    """b4: DDPM denoiser on log-mel patches; DDIM reconstruction error as the score."""

    steps: int = Field(200, ge=10, description="diffusion steps T of the DDPM schedule")
    beta_start: float = Field(1e-4, gt=0)
    beta_end: float = Field(0.02, gt=0, lt=1)
    channels: int = Field(16, ge=4)
    crop_frames: int = Field(64, ge=8, description="training patch length in frames")
    noise_level: float = Field(0.3, gt=0, lt=1, description="fraction of T the clip is noised to at scoring")
    ddim_steps: int = Field(1, ge=1, description="DDIM steps from the noised clip back to a clean estimate at "
                            "scoring (1: its one-step estimate; 4 measured no better on real or synthetic sets)")
    repeats: int = Field(1, ge=1, description="noise draws averaged per clip at scoring")
    score: ErrorScore = "mahalanobis"
    pooling: Pooling = Field("mean", description="pooling of per-frame errors for score: mse")
    gwrp_decay: float = Field(0.9, gt=0, le=1)


class FlowConfig(BranchTrain):
    """b5: RealNVP on the embeddings of trained branches; negative log-likelihood as the score."""

    inputs: list[str] = Field(default_factory=lambda: ["contrastive"], min_length=1,
                              description="branches whose embeddings the flow models")
    couplings: int = Field(6, ge=2)
    hidden: int = Field(128, ge=8)
    max_dims: int = Field(32, ge=2, description="embeddings are projected (PCA) to at most this many dims")
    min_clips: int = Field(20, ge=0, description="a section (median over the run's) with fewer training clips is "
                           "too few for a density: the flow says so and the fusion leaves it out (0: never)")


# The config sections of branches registered besides the five (asdcli.models.registry.register_branch):
# section name -> its config class (a BranchTrain). Filled and emptied by the registry only.
REGISTERED: dict[str, type[BranchTrain]] = {}


class BranchesConfig(Section):
    """Settings of the five branches, and of any branch registered besides them (a section of its
    own config class, its defaults where the config does not name it)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True, allow_inf_nan=False)

    pretrained: PretrainedConfig = Field(default_factory=PretrainedConfig)
    transformer_ae: TransformerAEConfig = Field(default_factory=TransformerAEConfig)
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)

    @model_validator(mode="after")
    def _registered_sections(self) -> "BranchesConfig":
        """Sections beyond the five must belong to a registered branch; each is validated by its
        config class (unknown keys in it are errors too), and a registered branch the config does
        not name gets its defaults."""
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for key, value in list(extra.items()):
            cls = REGISTERED.get(key)
            if cls is None:
                raise ValueError(f"'{key}' is no branch (unknown field: check the spelling; the branches are "
                                 f"{', '.join([*type(self).model_fields, *REGISTERED])})")
            if not isinstance(value, cls):
                try:
                    extra[key] = cls.model_validate(value)
                except ValidationError as error:
                    problem = error.errors()[0]
                    where = ".".join(str(p) for p in (key, *problem["loc"]))
                    reason = ("unknown field (check the spelling)" if problem["type"] == "extra_forbidden"
                              else problem["msg"].removeprefix("Value error, "))
                    raise ValueError(f"'{where}': {reason}") from None
        for key, cls in REGISTERED.items():
            extra.setdefault(key, cls())
        if self.__pydantic_extra__ is None:
            object.__setattr__(self, "__pydantic_extra__", extra)
        return self
