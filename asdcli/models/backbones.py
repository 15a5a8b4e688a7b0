"""Pretrained backbones of b1, each from a source a user names: waveform -> (B, D) embedding.

- ``efficientat``: EfficientAT MobileNetV3 (:mod:`asdcli.models.efficientat`), from the authors'
  published checkpoint (a URL, downloaded once into the model cache and converted to
  safetensors), a local ``.pt``/``.safetensors`` file, or ``random``; :mod:`asdcli.weights` finds,
  downloads and reads the file (this module never touches a path).
- ``ast``: the Audio Spectrogram Transformer of the design (``transformers.ASTModel``), from a
  Hugging Face id, a local folder (``from_pretrained``) or ``random``.

Every backbone also says how its input spectrogram maps to decibels, so that b1 can make
perturbed copies of its own input (:mod:`asdcli.models.perturb`), and which of its blocks the
top ``n`` are, for fine-tuning.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from asdcli.config import PretrainedConfig
from asdcli.errors import ConfigError
from asdcli.models.efficientat import BLOCKS, FRONTEND_VERSION, MobileNetAudio, folded_for_inference
from asdcli.weights import from_pretrained, looks_like_path, read_state_dict, resolve_source

DB_PER_NATURAL_LOG = 10.0 / math.log(10.0)


class EfficientAtBackbone(nn.Module):
    """EfficientAT MobileNetV3: 32 kHz audio -> 128-band log-mel image -> pooled last-conv features."""

    kind = "efficientat"

    def __init__(self, cfg: PretrainedConfig, saved: dict | None = None):
        super().__init__()
        width = saved["width"] if saved else cfg.width
        self.model = MobileNetAudio(width)
        if saved is None:
            path = resolve_source(cfg)
            if path is not None:
                self._load(read_state_dict(path), path)
        self.layer = _block(saved.get("layer") if saved else cfg.layer, self.model.blocks)
        self.dim = self.model.dim if self.layer is None else _channels(self.model, self.layer)
        self._inference: tuple | None = None

    def _load(self, state: dict[str, Tensor], path: Path) -> None:
        own = self.model.state_dict()
        shapes = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        missing = [k for k in own if k not in state and "frontend" not in k]
        if shapes or missing:
            raise ConfigError(f"branches.pretrained.source: {path} does not fit an EfficientAT model of width "
                              f"{self.model.dim / 960:g} (branches.pretrained.width): "
                              + (f"{shapes[0]} has another shape" if shapes else f"{missing[0]} is missing"))
        self.model.load_state_dict(state, strict=False)

    def extra_meta(self) -> dict:
        meta = {"backbone": self.kind, "width": round(self.model.dim / 960, 4)}
        return meta if self.layer is None else {**meta, "layer": self.layer}  # the last block's runs keep their keys

    def settings(self) -> dict:
        """What its embeddings depend on besides its weights (the key of cached embeddings)."""
        return {**self.extra_meta(), "frontend": FRONTEND_VERSION, "inference": "folded, channels-last"}

    def inputs(self, wave: Tensor, rate: int) -> Tensor:
        """(B, samples) -> (B, 1, 128, frames) log-mel image."""
        with torch.no_grad():
            return self.model.mel(wave, rate)

    def to_db(self, x: Tensor) -> Tensor:
        """Model input -> (B, mels, frames) decibels (for the perturbations)."""
        return (x[:, 0] * 5.0 - 4.5) * DB_PER_NATURAL_LOG

    def from_db(self, db: Tensor) -> Tensor:
        return ((db / DB_PER_NATURAL_LOG + 4.5) / 5.0)[:, None]

    def forward(self, x: Tensor) -> Tensor:
        """Model input -> (B, D) embedding. Outside a fine-tuning step (which needs gradients and
        batch norms) it runs a copy with the batch norms folded in, channels-last (about 3x faster on
        a CPU), made again whenever a weight or statistic of the model changed."""
        if self.training and torch.is_grad_enabled():
            return self._embed(self.model, x)
        tensors = [*self.model.parameters(), *self.model.buffers()]
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._inference is None or self._inference[0] != key:
            self._inference = (key, folded_for_inference(self.model))  # a tuple: not a submodule, never saved
        return self._embed(self._inference[1], x.contiguous(memory_format=torch.channels_last))

    def _embed(self, model: MobileNetAudio, x: Tensor) -> Tensor:
        """The model's own embedding, or with ``layer`` that block's output averaged over frequency and time."""
        if self.layer is None:
            return model.forward_mel(x).embedding
        return model.features[: self.layer + 1](x).mean(dim=(2, 3))

    def blocks(self) -> list[nn.Module]:
        """Its feature blocks, from the input to the output (to ``layer``: the ones after it are not used)."""
        return list(self.model.features)[: None if self.layer is None else self.layer + 1]


def _block(layer: int | None, blocks: int) -> int | None:
    """``branches.pretrained.layer`` checked against the model's blocks; the last block is None (the model's own)."""
    if layer is None or layer == blocks - 1:
        return None
    if layer >= blocks:
        raise ConfigError(f"branches.pretrained.layer: {layer} is past the last block of this EfficientAT model "
                          f"(0-{blocks - 1})")
    return layer


def _channels(model: MobileNetAudio, layer: int) -> int:
    """Channels of block ``layer``'s output (its embedding's size)."""
    block = model.features[layer]
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class AstBackbone(nn.Module):
    """Audio Spectrogram Transformer: 16 kHz audio -> Kaldi fbank (``ASTFeatureExtractor``) -> pooled output."""

    kind = "ast"

    def __init__(self, cfg: PretrainedConfig, saved: dict | None = None):
        super().__init__()
        self.ast, self.extractor = load_ast(cfg, saved)
        self.dim = self.ast.config.hidden_size

    def extra_meta(self) -> dict:
        return {"backbone": self.kind, "ast_config": self.ast.config.to_dict(),
                "feature_extractor": self.extractor.to_dict()}

    def settings(self) -> dict:
        return self.extra_meta()

    def inputs(self, wave: Tensor, rate: int) -> Tensor:
        """(B, samples) at 16 kHz -> (B, max_length, 128) normalised fbank."""
        clips = [w.detach().cpu().numpy() for w in wave]
        values = self.extractor(clips, sampling_rate=rate, return_tensors="pt")["input_values"]
        return values.to(wave.device)

    def to_db(self, x: Tensor) -> Tensor:
        e = self.extractor
        return (x * 2 * e.std + e.mean).transpose(1, 2) * DB_PER_NATURAL_LOG

    def from_db(self, db: Tensor) -> Tensor:
        e = self.extractor
        return ((db / DB_PER_NATURAL_LOG).transpose(1, 2) - e.mean) / (2 * e.std)

    def forward(self, x: Tensor) -> Tensor:
        return self.ast(input_values=x).pooler_output

    def blocks(self) -> list[nn.Module]:
        # transformers 5 names the blocks `layers`; 4.x had `encoder.layer`.
        layers = self.ast.layers if hasattr(self.ast, "layers") else self.ast.encoder.layer
        return [self.ast.embeddings, *layers, self.ast.layernorm]


BACKBONES = {cls.kind: cls for cls in (EfficientAtBackbone, AstBackbone)}


def load_ast(cfg: PretrainedConfig, saved: dict | None = None):
    """(ASTModel, ASTFeatureExtractor) from a saved architecture, 'random', a folder or a model id.

    ``saved`` (from a run's metadata) rebuilds the architecture offline; the weights then come
    from the run's checkpoint.
    """
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    if saved is not None:
        model = ASTModel(ASTConfig.from_dict(saved["ast_config"]))
        return model, ASTFeatureExtractor(**saved["feature_extractor"])
    if cfg.source == "random":
        config = ASTConfig(hidden_size=cfg.random_hidden, num_hidden_layers=cfg.random_layers,
                           num_attention_heads=cfg.random_heads, intermediate_size=4 * cfg.random_hidden,
                           max_length=cfg.max_length, num_mel_bins=128)
        return ASTModel(config), ASTFeatureExtractor(max_length=cfg.max_length)
    if looks_like_path(cfg.source) and not Path(cfg.source).expanduser().is_dir():
        raise ConfigError(f"branches.pretrained.source: folder {cfg.source} does not exist")
    location = str(Path(cfg.source).expanduser()) if looks_like_path(cfg.source) else cfg.source
    try:
        model = from_pretrained(ASTModel, location, remote=not looks_like_path(cfg.source))
    except pickle.UnpicklingError:
        raise ConfigError(f"branches.pretrained.source: {cfg.source} holds a pickled weights file that does not load "
                          "as plain tensors (torch.load weights_only refused it: it could run code); give a folder "
                          "with model.safetensors") from None
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"branches.pretrained.source: cannot load AST weights '{cfg.source}' ({str(error).splitlines()[0]}). "
            "Without network access, download them elsewhere (e.g. `hf download "
            "MIT/ast-finetuned-audioset-10-10-0.4593 --local-dir ast`), copy the folder here and set "
            "branches.pretrained.source to it; or set it to 'random' for an untrained model, or leave b1 out "
            "(asd train --skip b1)."
        ) from None
    try:
        extractor = ASTFeatureExtractor.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError):
        extractor = ASTFeatureExtractor(max_length=model.config.max_length)
    return model, extractor


def check_source(cfg: PretrainedConfig) -> None:
    """Fail at once, in one line, where the backbone's weights cannot be had (offline, no cache,
    no such file): what a pipeline checks before its first long step. Downloads what it needs."""
    if cfg.backbone == "efficientat":
        _block(cfg.layer, len(BLOCKS) + 2)  # the first conv, the inverted residuals and the last conv
        path = resolve_source(cfg)
        if path is not None:
            read_state_dict(path)
    elif cfg.source != "random":
        load_ast(cfg)
