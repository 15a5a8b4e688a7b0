"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename.

An interrupted write leaves either the previous file or nothing, never half a file. The file
gets the permissions a plain ``open`` would give it (0666 less the user's umask), not the 0600 of
the temporary file, so colleagues on a shared server can read results where the umask allows.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from asdcli.errors import OutputError, os_error_message


def file_mode() -> int:
    """0666 less the process's umask: the mode ``open`` gives a new file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _removed_on_failure(tmp: str, path: Path) -> Iterator[None]:
    """Remove the temporary file ``tmp`` when the block fails; an OS error writing ``path`` is one line."""
    try:
        yield
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise OutputError(_cannot_write(path, error)) from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", fsync: bool = True, **kwargs) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    ``fsync=False`` skips flushing to the disk: for caches whose readers validate entries, where
    a power cut may cost an entry but never yields a wrong one.
    """
    path = Path(path)
    fd, tmp = _temporary(path, f".{path.name}.", ".tmp")
    with _removed_on_failure(tmp, path):
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path for a writer that takes a file name (soundfile, safetensors).

    The file is flushed to the disk (``fsync``), given the umask's mode and renamed to ``path``
    when the block succeeds, and removed when it fails.
    """
    path = Path(path)
    fd, tmp = _temporary(path, f".{path.stem}.", f".tmp{path.suffix}")
    os.close(fd)
    with _removed_on_failure(tmp, path):
        yield Path(tmp)
        if fsync:
            _fsync_file(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)


def _cannot_write(path: Path, error: OSError) -> str:
    return f"cannot write {path}: {error.strerror or error}"


def _temporary(path: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """Create ``path``'s folder and a temporary file in it; an :class:`OutputError` naming the
    place when that is impossible (unwritable, read-only, full, or under a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as error:
        if error.filename and Path(error.filename).parent == path.parent and Path(error.filename).name.startswith(prefix):
            raise OutputError(_cannot_write(path, error)) from None  # the temporary file: name the target
        raise OutputError(os_error_message(error)) from None


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8; a file name that is not valid UTF-8 is written
    as the bytes the system holds, so that it still names its file)."""
    with atomic_open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        handle.write(text)
