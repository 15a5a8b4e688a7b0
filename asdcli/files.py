"""Opening files that someone else may have made (a run folder, a prior, a config, score files):
each is checked before a byte is read to be a regular file below a stated size and, where it
belongs to a folder, not a link leading out of it (docs/threat-model.md). A FIFO, a device, a
socket or a folder under a file's name is refused in one line, never opened for reading (opening a
FIFO would wait for a writer forever; ``/dev/zero`` never ends)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from asdcli.errors import AsdError

MiB = 1 << 20
GiB = 1 << 30

# The largest file asd reads of each kind (a stated limit, docs/threat-model.md): far above what
# asd writes (a DCASE development set's records are a few MB, AST-base weights 350 MB).
RECORD_LIMIT = 256 * MiB  # JSON records, stage journals, training scores of a run
CONFIG_LIMIT = 4 * MiB  # a YAML config or a fusion prior
TENSOR_LIMIT = 16 * GiB  # safetensors weights and arrays
LOG_LIMIT = 256 * MiB  # a training log CSV
CSV_LIMIT = 64 * GiB  # a score, decision or ground-truth CSV: read as a stream, its rows are bounded instead

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_within(path: Path, within: Path, what: str, error: type[AsdError]) -> None:
    """Refuse ``path`` where it (through links) leads out of the folder ``within``."""
    target, folder = Path(os.path.realpath(path)), Path(os.path.realpath(within))
    if target != folder and folder not in target.parents:
        raise error(f"{path}: a link to {target}, outside {within}; refusing to read it ({what})")


@contextlib.contextmanager
def open_regular(path: Path, what: str, error: type[AsdError], limit: int,
                 within: Path | None = None) -> Iterator[tuple[BinaryIO, int]]:
    """Open ``path`` for reading after checking it (module docstring): yields the binary handle
    and the file's size. ``within``: the folder it must stay inside. A missing file is
    ``FileNotFoundError`` (callers say what is missing); everything else is ``error`` naming the
    file and ``what`` it holds."""
    path = Path(path)
    if within is not None:
        check_within(path, within, what, error)
    try:
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; fstat then refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as problem:
        raise error(f"{path}: cannot read {what} ({problem.strerror or problem})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: {_kind(info.st_mode)}, not a regular file; refusing to read it ({what})")
        if info.st_size > limit:
            raise error(f"{path}: {_size(info.st_size)}, more than the {_size(limit)} a {what} may have; "
                        "refusing to read it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        yield handle, info.st_size


def read_regular(path: Path, what: str, error: type[AsdError], limit: int, within: Path | None = None) -> bytes:
    """The bytes of a checked file (:func:`open_regular`), never more than ``limit`` even where it
    grows while it is read."""
    with open_regular(path, what, error, limit, within) as (handle, _):
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: grew past the {_size(limit)} a {what} may have while it was read; refusing it")
    return data


def check_regular(path: Path, what: str, error: type[AsdError], limit: int, within: Path | None = None) -> int:
    """Check ``path`` as :func:`open_regular` does, for a reader that opens it by name itself
    (safetensors maps the file); returns its size."""
    with open_regular(path, what, error, limit, within) as (_, size):
        return size


def digest_regular(path: Path, what: str, error: type[AsdError], limit: int, within: Path | None = None) -> str:
    """SHA-1 of a checked file, read in 1 MiB pieces (memory stays flat whatever its size)."""
    sha = hashlib.sha1()
    with open_regular(path, what, error, limit, within) as (handle, _):
        read = 0
        while piece := handle.read(MiB):
            read += len(piece)
            if read > limit:
                raise error(f"{path}: grew past the {_size(limit)} a {what} may have while it was read; refusing it")
            sha.update(piece)
    return sha.hexdigest()


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key '{key}' is given twice")
        seen[key] = value
    return seen


def parse_json(data: bytes, path: Path, what: str, error: type[AsdError]) -> object:
    """JSON text of a file, strictly: UTF-8, a key given twice in one object refused (plain JSON
    readers keep the last silently), nesting bounded by the interpreter's recursion limit; every
    problem one ``error`` naming the file."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as problem:
        raise error(f"{path}: damaged {what} (not UTF-8 text at byte {problem.start})") from None
    except RecursionError:
        raise error(f"{path}: damaged {what} (nested too deeply)") from None
    except ValueError as problem:  # JSONDecodeError is one
        raise error(f"{path}: damaged {what} ({problem})") from None
