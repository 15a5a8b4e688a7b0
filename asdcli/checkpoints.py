"""Run folders: resolved config, per-branch safetensors weights with JSON metadata, and the
optimizer state for resuming, each written atomically.

```
<run>/run.json                 format version, machine sections (groups) and classes of the run
<run>/config.yaml              the fully resolved config of the first command that made the run
<run>/<branch>.safetensors     weights and buffers (memory banks, statistics)
<run>/<branch>.json            metadata: status, epochs, seed, config, versions, score statistics
<run>/<branch>.train.safetensors + .train.json   optimizer state and progress, for --resume
<run>/logs/<branch>_train.csv  one row per epoch
<run>/examples.safetensors     normalised branch scores of training clips and pseudo-anomalies
<run>/fusion.safetensors + fusion.json   attention fusion head
<run>/meta.safetensors + meta.json       MAML meta-learner
```
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file, save_model
from torch import nn

from asdcli import __version__
from asdcli.atomic import atomic_path, write_text
from asdcli.errors import CheckpointError

FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Software versions recorded in every checkpoint."""
    import transformers

    return {"asd": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def write_json(path: Path, data: dict) -> None:
    """Pretty JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON file of a run, with a clear error when it is missing or damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: damaged {what} ({error})") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: {what} has format version {data.get('format_version') if isinstance(data, dict) else '?'}; "
            f"this asd reads version {FORMAT_VERSION}"
        )
    return data


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file; errors name the file and what it holds."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({what})")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: damaged {what} ({error})") from None


def save_weights(module: nn.Module, path: Path, meta: dict[str, str]) -> None:
    """Module parameters and buffers as safetensors (``save_model``), atomically."""
    with atomic_path(path) as tmp:
        save_model(module, str(tmp), metadata={"format_version": str(FORMAT_VERSION), **meta})


def _resize_buffers(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give data-sized buffers (memory banks) the stored shape before loading into them."""
    for name, buf in list(module.named_buffers()):
        if name in shapes and tuple(buf.shape) != shapes[name]:
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner.register_buffer(leaf, torch.empty(shapes[name], dtype=buf.dtype))


def load_weights(module: nn.Module, path: Path) -> dict[str, str]:
    """Load weights saved by :func:`save_weights` into ``module``; returns the file's metadata."""
    state, meta = _read_safetensors(path, "checkpoint")
    _resize_buffers(module, {k: tuple(v.shape) for k, v in state.items()})
    missing, unexpected = module.load_state_dict(state, strict=False)
    # save_model drops tensors that share memory with another; they come back through the tie.
    missing = [k for k in missing if not _is_tied(module, k, state)]
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match this branch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return meta


def _is_tied(module: nn.Module, key: str, state: dict) -> bool:
    target = module.state_dict()[key]
    return any(module.state_dict()[k].data_ptr() == target.data_ptr() for k in state if k in module.state_dict())


def _with_ext(path: Path, ext: str) -> Path:
    """``run/contrastive.train`` -> ``run/contrastive.train.safetensors`` (suffix appended, not replaced)."""
    return path.with_name(path.name + ext)


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path, progress: dict) -> None:
    """Optimizer state as safetensors tensors + its JSON structure, for ``--resume``."""
    state = optimizer.state_dict()
    tensors = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"state.{idx}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
    with atomic_path(_with_ext(path, ".safetensors")) as tmp:
        save_file(tensors, str(tmp), metadata={"format_version": str(FORMAT_VERSION)})
    write_json(_with_ext(path, ".json"), {"format_version": FORMAT_VERSION, "param_groups": state["param_groups"],
                                           **progress})


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> dict:
    """Restore what :func:`save_optimizer` wrote; returns the saved progress fields."""
    info = read_json(_with_ext(path, ".json"), "optimizer state")
    tensors, _ = _read_safetensors(_with_ext(path, ".safetensors"), "optimizer state")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info.pop("param_groups")})
    info.pop("format_version")
    return info


def save_arrays(path: Path, arrays: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Named tensors as safetensors with string metadata, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in arrays.items()}, str(tmp),
                  metadata={"format_version": str(FORMAT_VERSION), **meta})


def load_arrays(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata written by :func:`save_arrays`, with a clear error when missing or damaged."""
    arrays, meta = _read_safetensors(path, what)
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: {what} has format version {meta.get('format_version')}; "
                              f"this asd reads version {FORMAT_VERSION}")
    return arrays, meta
