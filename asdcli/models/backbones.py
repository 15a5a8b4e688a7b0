"""Pretrained backbones of b1, each from a source a user names: waveform -> (B, D) embedding.

- ``efficientat``: EfficientAT MobileNetV3 (:mod:`asdcli.models.efficientat`), from the authors'
  published checkpoint (a URL, downloaded once into the model cache and converted to
  safetensors), a local ``.pt``/``.safetensors`` file, or ``random``. A ``.pt`` file is read with
  ``torch.load(weights_only=True)``: tensors only, never code.
- ``ast``: the Audio Spectrogram Transformer of the design (``transformers.ASTModel``), from a
  Hugging Face id, a local folder (``from_pretrained``) or ``random``.

Every backbone also says how its input spectrogram maps to decibels, so that b1 can make
perturbed copies of its own input (:mod:`asdcli.models.perturb`), and which of its blocks the
top ``n`` are, for fine-tuning.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch
from torch import Tensor, nn

from asdcli.config import PretrainedConfig
from asdcli.errors import ConfigError
from asdcli.files import TENSOR_LIMIT, check_regular
from asdcli.models.efficientat import FRONTEND_VERSION, MobileNetAudio, folded_for_inference

DB_PER_NATURAL_LOG = 10.0 / math.log(10.0)


def models_cache_dir() -> Path:
    """Where downloaded weights are kept: ``$ASD_CACHE_DIR/models``, else ``$XDG_CACHE_HOME/asd/models``,
    else ``~/.cache/asd/models``."""
    if os.environ.get("ASD_CACHE_DIR"):
        return Path(os.environ["ASD_CACHE_DIR"]) / "models"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asd" / "models"


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://", "file://"))


def _is_safetensors(path: Path) -> bool:
    """Whether the file is safetensors by its content (an 8-byte header length, then a JSON
    object), whatever its name: a converted file saved under the ``.pt`` name is no pickle."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file (by content, :func:`_is_safetensors`), or of a ``.pt`` file
    read with ``weights_only``."""
    from safetensors.torch import load_file

    where = f"branches.pretrained.source: {path}"
    try:
        if _is_safetensors(path):
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"{where}: a pickle that does not load as plain tensors (torch.load weights_only refused "
                          "it: it could run code); give the authors' weights file or a .safetensors file") from None
    except Exception as error:  # a damaged or foreign file; safetensors and torch raise their own types
        raise ConfigError(f"{where}: not a weights file ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{where}: holds no state dict of tensors")
    return state


def download(url: str, timeout: float = 30.0) -> Path:
    """The weights at ``url`` as a safetensors file in :func:`models_cache_dir` (downloaded and
    converted once; later calls find it there, also offline)."""
    from safetensors.torch import save_file

    from asdcli.atomic import atomic_path

    name = Path(urllib.request.url2pathname(url.rsplit("/", 1)[-1])).stem or "weights"
    target = models_cache_dir() / f"{name}.safetensors"
    if target.is_file():
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
            shutil.copyfileobj(response, tmp)
            tmp.flush()
            state = _state_dict(Path(tmp.name))
    except (urllib.error.URLError, OSError, socket.timeout) as error:
        reason = getattr(error, "reason", None) or error
        raise ConfigError(f"branches.pretrained.source: cannot download {url} ({reason}). Without network: download "
                          "it elsewhere, copy the file here and set branches.pretrained.source to its path; or set "
                          "it to 'random', or leave b1 out (asd train --skip b1)") from None
    with atomic_path(target) as tmp_path:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path), metadata={"source": url})
    return target


def resolve_source(cfg: PretrainedConfig) -> Path | None:
    """The local weights file of an EfficientAT source (None for ``random``); downloads a URL
    once. Raises a one-line :class:`ConfigError` naming the source and what to do."""
    if cfg.source == "random":
        return None
    if _is_url(cfg.source):
        return download(cfg.source)
    path = Path(cfg.source).expanduser()
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"  # a folder as Hugging Face keeps weights
    if not path.exists():
        raise ConfigError(f"branches.pretrained.source: no weights file {path} (relative to the folder asd runs in: "
                          f"{Path.cwd()}; backbone efficientat takes a .pt or .safetensors file, a folder holding "
                          "model.safetensors, a URL of one, or 'random')")
    check_regular(path, "weights file", ConfigError, TENSOR_LIMIT)
    return path


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
                self._load(_state_dict(path), path)
        self.dim = self.model.dim
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
        return {"backbone": self.kind, "width": round(self.model.dim / 960, 4)}

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
            return self.model.forward_mel(x).embedding
        tensors = [*self.model.parameters(), *self.model.buffers()]
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._inference is None or self._inference[0] != key:
            self._inference = (key, folded_for_inference(self.model))  # a tuple: not a submodule, never saved
        return self._inference[1].forward_mel(x.contiguous(memory_format=torch.channels_last)).embedding

    def blocks(self) -> list[nn.Module]:
        """Its feature blocks, from the input to the output."""
        return list(self.model.features)


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


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection within ``timeout`` seconds (one try,
    instead of the hub client's minute of retries on a machine without network)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(cls, location: str, remote: bool):
    """``cls.from_pretrained(location)``: for a model id, the local Hugging Face cache first, then
    the Hub only when it can be reached (an ``OSError`` at once when it cannot)."""
    if not remote:
        return cls.from_pretrained(location)
    try:
        return cls.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError):
        if not hub_reachable():
            raise OSError("not in the local Hugging Face cache, and the Hub cannot be reached") from None
        return cls.from_pretrained(location)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).exists()


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
    if _looks_like_path(cfg.source) and not Path(cfg.source).expanduser().is_dir():
        raise ConfigError(f"branches.pretrained.source: folder {cfg.source} does not exist")
    location = str(Path(cfg.source).expanduser()) if _looks_like_path(cfg.source) else cfg.source
    try:
        model = _from_pretrained(ASTModel, location, remote=not _looks_like_path(cfg.source))
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
        path = resolve_source(cfg)
        if path is not None:
            _state_dict(path)
    elif cfg.source != "random":
        load_ast(cfg)
