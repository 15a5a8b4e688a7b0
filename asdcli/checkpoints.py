"""Writing and reading a run's files: safetensors weights with JSON metadata and the optimizer
state for resuming, each written atomically. Which files a run holds, and their names:
:class:`asdcli.services.store.runs.Run`."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import struct
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file, save_model
from torch import nn

from asdcli import __version__
from asdcli.atomic import atomic_path, write_text
from asdcli.errors import CheckpointError, OutputError
from asdcli.files import RECORD_LIMIT, TENSOR_LIMIT, check_regular, digest_regular, parse_json, read_regular

FORMAT_VERSION = 3
# older formats are read through asdcli.services.store.migrate (a new format needs its upgrade there)
READABLE_VERSIONS = (1, 2, 3)
# file names that records written into a run refer to (the other names: asdcli.services.store.runs.Run)
EXAMPLES_FILE = "examples.safetensors"
META_EXAMPLES_FILE = "meta_examples.safetensors"


def versions() -> dict[str, str]:
    """Software versions recorded in every checkpoint."""
    import transformers

    return {"asd": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def write_json(path: Path, data: dict) -> None:
    """Pretty JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


_READ: dict[str, tuple[tuple[int, int, int], object]] = {}


def _once(path: Path, kind: str, compute) -> object:
    """``compute()`` for ``path``, done once per process while the file is unchanged (same inode,
    size and modification time) and kept under ``kind``."""
    stat = os.stat(path)
    key, stamp = f"{kind}:{os.path.abspath(path)}", (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    cached = _READ.get(key)
    if cached is None or cached[0] != stamp:
        cached = (stamp, compute())
        _READ[key] = cached
    return cached[1]


def read_bytes(path: Path, what: str = "run record") -> bytes:
    """A run record's bytes (a regular file of the run folder below :data:`RECORD_LIMIT`,
    :mod:`asdcli.files`), read from the disk once while it is unchanged: one command's stages all
    consult a branch's metadata, and each reads it only once."""
    return _once(path, "bytes", lambda: read_regular(path, what, CheckpointError, RECORD_LIMIT, within=Path(path).parent))


def file_digest(path: Path, what: str = "run file") -> str:
    """SHA-1 of one file of a run, read in pieces (:func:`asdcli.files.digest_regular`) once per
    process while it is unchanged; only the digest is kept."""
    return _once(path, "sha1", lambda: digest_regular(path, what, CheckpointError, TENSOR_LIMIT, within=Path(path).parent))


def _shown(version: object) -> str:
    """A format version as read, quoted where it is not a number (a hand-edited ``"2"``)."""
    return str(version) if isinstance(version, int) else repr(version)


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON file of a run, with a clear error when it is missing or damaged (each call
    gets its own copy; the file is read once while it is unchanged, :func:`read_bytes`)."""
    try:
        data = parse_json(read_bytes(path, what), path, what, CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing ({what})") from None
    if not isinstance(data, dict) or data.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: {what} has format version {_shown(data.get('format_version')) if isinstance(data, dict) else '?'}; "
            f"this asd reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return data


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file; errors name the file and what it holds."""
    try:
        check_regular(path, what, CheckpointError, TENSOR_LIMIT, within=Path(path).parent)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing ({what})") from None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: damaged {what} ({error})") from None


def _stored_version(path: Path, what: str, version: str | None) -> str:
    """The format version in a safetensors file's metadata (a string), when this asd reads it;
    else a :class:`CheckpointError` naming the file."""
    if version not in {str(v) for v in READABLE_VERSIONS}:
        raise CheckpointError(f"{path}: {what} has format version {version}; this asd reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    return version


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys (same length, same data): the
    library writes its metadata in a random order, so identical tensors gave different bytes."""
    with open(path, "r+b") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:
            handle.seek(8)
            handle.write(text + b" " * (size - len(text)))


@contextlib.contextmanager
def _safetensors_file(path: Path) -> Iterator[str]:
    """A temporary name for a safetensors writer; the file gets a canonical header and replaces
    ``path`` atomically. A write that fails for lack of space or permission is one line."""
    with atomic_path(path) as tmp:
        try:
            yield str(tmp)
        except SafetensorError as error:  # its I/O errors are not OSError
            raise OutputError(f"cannot write {path}: {error}") from None
        _canonical_header(tmp)


def save_weights(module: nn.Module, path: Path, meta: dict[str, str]) -> None:
    """Module parameters and buffers as safetensors (``save_model``), atomically."""
    with _safetensors_file(path) as tmp:
        save_model(module, tmp, metadata={"format_version": str(FORMAT_VERSION), **meta})


def _resize_buffers(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give data-sized buffers (memory banks) the stored shape before loading into them."""
    for name, buf in list(module.named_buffers()):
        if name in shapes and tuple(buf.shape) != shapes[name]:
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner.register_buffer(leaf, torch.empty(shapes[name], dtype=buf.dtype))


def check_tensors(path: Path, state: dict[str, torch.Tensor], declared: dict[str, torch.Tensor]) -> None:
    """Every stored tensor against the one its module declares (``declared``: a state dict): the
    same dtype (a cast would shift every score), the same shape, except for data-sized buffers
    (declared with a first dimension of 0: memory banks, training profiles), whose other
    dimensions must match and whose first one is shared by the buffers of one module; and finite
    values. A mismatch is one :class:`CheckpointError` naming the file and the tensor."""
    rows: dict[str, tuple[str, int]] = {}
    for key, stored in state.items():
        want = declared.get(key)
        if want is None:
            continue  # not the module's: load_weights names it
        if stored.dtype != want.dtype:
            raise CheckpointError(f"{path}: tensor '{key}' is {str(stored.dtype)[6:]}, the branch declares "
                                  f"{str(want.dtype)[6:]}; the file was edited or is not this stage's: train it again")
        sized = want.ndim > 0 and want.shape[0] == 0
        if stored.ndim != want.ndim or stored.shape[int(sized):] != want.shape[int(sized):]:
            shape = f"(N, {', '.join(map(str, want.shape[1:]))})" if sized else str(tuple(want.shape))
            raise CheckpointError(f"{path}: weights of another configuration than its metadata says (tensor '{key}' "
                                  f"has shape {tuple(stored.shape)}, the branch declares {shape}); retrain this stage")
        if sized:
            owner = key.rpartition(".")[0]
            first = rows.setdefault(owner, (key, stored.shape[0]))
            if first[1] != stored.shape[0]:
                raise CheckpointError(f"{path}: tensor '{key}' has {stored.shape[0]} rows, '{first[0]}' {first[1]}; "
                                      "the file was edited: train this stage again")
        if stored.is_floating_point() and not bool(torch.isfinite(stored).all()):
            raise CheckpointError(f"{path}: tensor '{key}' holds NaN or infinite values; train this stage again")


def load_weights(module: nn.Module, path: Path, migrate=None) -> dict[str, str]:
    """Load weights saved by :func:`save_weights` into ``module`` after :func:`check_tensors`;
    returns the file's metadata. ``migrate(state, version)``: the tensors of a file written in an
    older format, renamed."""
    state, meta = _read_safetensors(path, "checkpoint")
    version = _stored_version(path, "checkpoint", meta.get("format_version", "1"))
    state = migrate(state, version) if migrate else state
    check_tensors(path, state, module.state_dict())
    _resize_buffers(module, {k: tuple(v.shape) for k, v in state.items()})
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of other shapes: weights of another config
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error).splitlines()[0])
        raise CheckpointError(f"{path}: weights of another configuration than its metadata says ({detail}); "
                              "retrain this stage") from None
    # save_model drops tensors that share memory with another; they come back through the tie.
    missing = [k for k in missing if not _is_tied(module, k, state)]
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match this branch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return meta


def _is_tied(module: nn.Module, key: str, state: dict) -> bool:
    target = module.state_dict()[key]
    return any(module.state_dict()[k].data_ptr() == target.data_ptr() for k in state if k in module.state_dict())


def save_training_state(module: nn.Module, optimizer: torch.optim.Optimizer, path: Path, progress: dict) -> None:
    """An unfinished training in one safetensors file, written atomically: the module's weights
    (``model.*``), the optimizer state (``optim.*``) and ``progress`` (JSON in the metadata). One
    file, so an interruption leaves the previous checkpoint or this one, never a mix."""
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    state = optimizer.state_dict()
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
    meta = {"format_version": str(FORMAT_VERSION),
            "progress": json.dumps({**progress, "param_groups": state["param_groups"]})}
    with _safetensors_file(path) as tmp:
        save_file({k: v.cpu() for k, v in tensors.items()}, tmp, metadata=meta)


def training_progress(path: Path) -> dict | None:
    """The progress stored with an unfinished training (:func:`save_training_state`), read from
    the file's header only; None where there is no such file or it is not one. A special file or a
    link out of the run under its name is a :class:`CheckpointError`."""
    try:
        check_regular(path, "interrupted training", CheckpointError, TENSOR_LIMIT, within=Path(path).parent)
    except FileNotFoundError:
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            progress = (handle.metadata() or {}).get("progress")
        return json.loads(progress) if progress else None
    except Exception:  # damaged or another format: reported when it is loaded
        return None


def load_training_state(module: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> dict:
    """Restore what :func:`save_training_state` wrote; returns its progress."""
    tensors, meta = _read_safetensors(path, "interrupted training")
    if "progress" not in meta:
        raise CheckpointError(f"{path}: an interrupted training in an older format; start again without --resume")
    progress = json.loads(meta["progress"])
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_tensors(path, model, module.state_dict())
    _resize_buffers(module, {k: tuple(v.shape) for k, v in model.items()})
    try:
        module.load_state_dict(model)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: does not match this branch ({str(error).splitlines()[0]})") from None
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": progress.pop("param_groups")})
    return progress


def save_arrays(path: Path, arrays: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Named tensors as safetensors with string metadata, atomically."""
    with _safetensors_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in arrays.items()}, tmp,
                  metadata={"format_version": str(FORMAT_VERSION), **meta})


def load_arrays(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata written by :func:`save_arrays`, with a clear error when missing or damaged."""
    arrays, meta = _read_safetensors(path, what)
    _stored_version(path, what, meta.get("format_version"))
    return arrays, meta


def check_arrays(path: Path, what: str, arrays: dict[str, torch.Tensor],
                 spec: dict[str, tuple[torch.dtype, tuple[int | str, ...]]]) -> None:
    """Tensors read by :func:`load_arrays` against ``spec``: each one's dtype and shape, a
    dimension given by a name where it is the same for every tensor that names it
    (``{"z": (torch.float32, ("N", 3))}``); a tensor missing, of another dtype or shape, or with
    NaN or infinity is a :class:`CheckpointError` naming it."""
    sizes: dict[str, int] = {}
    for key, (dtype, dims) in spec.items():
        stored = arrays.get(key)
        if stored is None:
            raise CheckpointError(f"{path}: tensor '{key}' is missing ({what}); write it again")
        named = [sizes.setdefault(d, n) if isinstance(d, str) else d for d, n in zip(dims, stored.shape)]
        if stored.dtype != dtype or tuple(stored.shape) != tuple(named) or len(dims) != stored.ndim:
            raise CheckpointError(f"{path}: tensor '{key}' is {str(stored.dtype)[6:]} {tuple(stored.shape)}, expected "
                                  f"{str(dtype)[6:]} ({', '.join(map(str, dims))}) with N the same for every tensor "
                                  f"({what}); write it again")
        if stored.is_floating_point() and not bool(torch.isfinite(stored).all()):
            raise CheckpointError(f"{path}: tensor '{key}' holds NaN or infinite values ({what}); write it again")
