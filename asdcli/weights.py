"""Where b1's pretrained weights come from: a local file or folder, a URL (downloaded once into the
model cache and converted to safetensors), or a Hugging Face model id (``from_pretrained``, the
local cache first). A ``.pt`` file is read with ``torch.load(weights_only=True)``: tensors only,
never code. The models (:mod:`asdcli.models.backbones`) take what this module hands them."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch
from torch import Tensor

from asdcli.config import PretrainedConfig
from asdcli.errors import ConfigError
from asdcli.files import TENSOR_LIMIT, check_regular


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


def read_state_dict(path: Path) -> dict[str, Tensor]:
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
            state = read_state_dict(Path(tmp.name))
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


def from_pretrained(cls, location: str, remote: bool):
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


def looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).exists()
