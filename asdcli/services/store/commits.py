"""Stage commits and locks of a folder asd writes (a run, a folder of DCASE results).

A stage's files are written to a staging folder, a journal naming them is the commit point, then
they are renamed into place (:func:`commit_stage`); a commit cut short after its journal is
completed by the next writer (:func:`recover`), while readers take its staged files instead of the
run's own (:func:`pending_files`) and change nothing. Readers take a shared lock and committers an
exclusive one (:func:`reading`), so a reader sees each stage before or after a commit; a command
writing one stage holds that stage's lock (:func:`writing`). Every name read from a journal or a
record is confined to the folder (:func:`run_file`): a folder from someone else cannot make asd
touch anything outside it (docs/threat-model.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import uuid
from pathlib import Path
from typing import Callable, Iterator

from asdcli.atomic import file_mode
from asdcli.checkpoints import FORMAT_VERSION, read_json, write_json
from asdcli.errors import CheckpointError

STAGING_PREFIX, JOURNAL_PREFIX, LOCK_FILE = ".staging-", ".commit-", ".lock"


def plain_name(name: object, record: Path, field: str) -> str:
    """A file name read from a run's own records (a journal, metadata): it must be a plain name
    of a file in the run folder, so that a run folder from someone else cannot make asd read,
    overwrite or delete anything outside it (docs/threat-model.md)."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise CheckpointError(f"{record}: field '{field}' is {name!r}, not a plain file name inside the run folder; "
                              "refusing to use this run folder (nothing was changed)")
    return name


def run_file(run_dir: Path, name: object, record: Path, field: str) -> Path:
    """The run file a record names (:func:`plain_name`), refusing a symbolic link that leads out
    of the run folder."""
    path = Path(run_dir) / plain_name(name, record, field)
    if path.is_symlink() and path.resolve().parent != Path(run_dir).resolve():
        raise CheckpointError(f"{record}: field '{field}' names {name!r}, a link to {path.resolve()} outside the run "
                              "folder; refusing to use this run folder (nothing was changed)")
    return path


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[bool]:
    """Hold ``flock(mode)`` on ``path`` (created with the umask's mode, never through a link);
    yields False without locking where the folder is read-only (nobody can commit there)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, file_mode())
    except OSError as error:
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            yield False
            return
        raise CheckpointError(f"{path}: cannot open the run's lock file ({error.strerror}); "
                              "remove it if it is not a plain file") from None
    try:
        fcntl.flock(fd, mode)
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def reading(run_dir: Path) -> Iterator[None]:
    """Read a run's files as one snapshot: a shared lock that every commit (an exclusive one)
    waits for, so that a reader sees each stage before or after a commit, never a mix. A commit
    interrupted after its commit point is read from its staged files (:func:`pending_files`), not
    completed: reading writes nothing."""
    with _flock(Path(run_dir) / LOCK_FILE, fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def writing(run_dir: Path, stage: str) -> Iterator[None]:
    """Hold the run's lock for writing ``stage`` for a whole command: a second command writing the
    same stage of the same run stops at once with one line instead of racing it. A commit left
    pending by an interrupted command is completed first (readers never complete one)."""
    path = Path(run_dir) / f"{LOCK_FILE}-{stage}"
    with contextlib.suppress(OSError):  # a first training makes the run folder; unwritable: said by its writes
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _flock(path, fcntl.LOCK_EX | fcntl.LOCK_NB):
            recover(Path(run_dir))  # a commit an interrupted command left pending: a writer completes it
            yield
    except BlockingIOError:
        raise CheckpointError(f"{run_dir}: another asd command is writing its {stage} now; wait for it to finish "
                              "or use another --run folder") from None


@contextlib.contextmanager
def commit_stage(run_dir: Path, lock: bool = True) -> Iterator[Callable[[Path], Path]]:
    """Write a stage's files (weights, metadata, examples, training scores) as one unit: the block
    writes each to the path ``place(target)`` gives, in a staging folder of the run; when it ends,
    a journal naming them is written (the commit point) and they are renamed over their targets,
    under the run's exclusive lock (:func:`reading`). An interruption before the journal leaves
    the run as it was (the staging folder is ignored); after it, readers take the staged files
    and the next commit completes the renames. So the run scores as before the command or as after it, never a mix.
    ``lock=False``: a folder of results that asd does not read as a run (``score --out-dir``)."""
    token = f"{os.getpid()}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    staging = run_dir / f"{STAGING_PREFIX}{token}"
    placed: list[str] = []

    def place(target: Path) -> Path:
        if Path(target).parent.resolve() != run_dir.resolve():
            raise ValueError(f"{target} is not a file of the run {run_dir}")
        placed.append(Path(target).name)
        return staging / Path(target).name

    _forget_abandoned(run_dir)
    try:
        yield place
    except BaseException:
        _remove_tree(staging)
        raise
    journal = run_dir / f"{JOURNAL_PREFIX}{token}.json"
    with _flock(run_dir / LOCK_FILE, fcntl.LOCK_EX) if lock else contextlib.nullcontext():
        recover(run_dir, lock=False)  # an earlier command's commit first: this one's files land over it
        write_json(journal, {"format_version": FORMAT_VERSION, "staging": staging.name, "files": sorted(placed)})
        _complete(run_dir, journal)


def _move(source: Path, target: Path) -> None:
    os.replace(source, target)


def _journal_plan(run_dir: Path, journal: Path, record: dict) -> tuple[Path, list[str]]:
    """The staging folder and file names of a journal, each checked to be a plain name of the run
    (a journal is a run file like any other: it may come from someone else)."""
    staging = run_file(run_dir, record.get("staging"), journal, "staging")
    if not staging.name.startswith(STAGING_PREFIX) or staging.is_symlink():
        raise CheckpointError(f"{journal}: field 'staging' is {staging.name!r}, not a staging folder of this run; "
                              "refusing to use this run folder (nothing was changed)")
    files = record.get("files")
    if not isinstance(files, list):
        raise CheckpointError(f"{journal}: field 'files' is not a list of file names; refusing to use this run "
                              "folder (nothing was changed)")
    names = [plain_name(name, journal, "files") for name in files]
    for name in names:
        if name.startswith((STAGING_PREFIX, JOURNAL_PREFIX, LOCK_FILE)):
            raise CheckpointError(f"{journal}: field 'files' names {name!r}, a file asd keeps for itself; refusing to "
                                  "use this run folder (nothing was changed)")
        run_file(run_dir, name, journal, "files")
    return staging, names


def _read_plan(run_dir: Path, journal: Path) -> tuple[Path, list[str]] | None:
    """A journal's staging folder and names (None: another process completed it meanwhile)."""
    try:
        record = read_json(journal, "stage commit journal")
    except CheckpointError:
        if not journal.exists():
            return None
        raise
    return _journal_plan(run_dir, journal, record)


def _staged(journal: Path, staging: Path, name: str) -> Path:
    source = staging / name
    if source.is_symlink():  # never moved in nor read: it could lead anywhere
        raise CheckpointError(f"{journal}: staged file {name!r} is a symbolic link; refusing to use this run "
                              "folder (nothing more was changed)")
    return source


def pending_files(run_dir: Path) -> dict[str, Path]:
    """The files of stages committed but not yet all renamed into place (a command interrupted
    after its commit point): file name -> its staged copy, which a reader takes instead of the
    run's own, so that it sees the run as after the commit while writing nothing (the next writer
    completes the commit: :func:`recover`). Empty for a run with no pending commit."""
    out: dict[str, Path] = {}
    for journal in sorted(Path(run_dir).glob(f"{JOURNAL_PREFIX}*.json")):
        plan = _read_plan(Path(run_dir), journal)
        for name in plan[1] if plan else ():
            source = _staged(journal, plan[0], name)
            if source.exists():  # else renamed into place already
                out[name] = source
    return out


def _complete(run_dir: Path, journal: Path) -> None:
    """Rename a committed stage's staged files over their targets (again, where some already
    were), then drop the journal and the staging folder."""
    plan = _read_plan(run_dir, journal)
    if plan is None:  # another process completed it meanwhile
        return
    staging, names = plan
    for name in names:
        source = _staged(journal, staging, name)
        with contextlib.suppress(FileNotFoundError):  # moved already (an earlier try, or another process)
            _move(source, run_dir / name)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    journal.unlink(missing_ok=True)
    _remove_tree(staging)


def _remove_tree(folder: Path) -> None:
    """Remove a staging folder and the files in it; a link is removed, never followed."""
    if folder.is_symlink():
        folder.unlink()
        return
    with contextlib.suppress(FileNotFoundError):
        for item in os.scandir(folder):
            if item.is_symlink() or not item.is_dir(follow_symlinks=False):
                Path(item.path).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something asd did not put there stays
            folder.rmdir()


def _forget_abandoned(run_dir: Path) -> None:
    """Staging folders of commands of this machine that died before their commit point (their
    process is gone); another machine's (a run folder on a shared disk) are left to it, and so is
    anything that is not a plain folder."""
    for folder in run_dir.glob(f"{STAGING_PREFIX}*"):
        if folder.is_symlink() or not folder.is_dir():
            continue
        pid, _, rest = folder.name[len(STAGING_PREFIX):].partition("-")
        host = rest.rpartition("-")[0]
        if (run_dir / f"{JOURNAL_PREFIX}{folder.name[len(STAGING_PREFIX):]}.json").exists() or not pid.isdigit() \
                or host != socket.gethostname():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove_tree(folder)
        except (PermissionError, OverflowError):  # alive, another user's; or not a pid at all
            continue


def recover(run_dir: Path, lock: bool = True) -> None:
    """Complete every stage committed but not yet in place (a command interrupted after its
    commit point), under the run's exclusive lock (``lock=False``: see :func:`commit_stage`)."""
    journals = sorted(run_dir.glob(f"{JOURNAL_PREFIX}*.json"))
    if not journals:
        return
    with _flock(run_dir / LOCK_FILE, fcntl.LOCK_EX) if lock else contextlib.nullcontext():
        for journal in sorted(run_dir.glob(f"{JOURNAL_PREFIX}*.json")):
            _complete(run_dir, journal)
