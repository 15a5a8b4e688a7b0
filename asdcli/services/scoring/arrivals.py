"""Which files under a watched folder are new and complete (see :mod:`asdcli.services.scoring.watch`):
closed after writing or renamed into place (inotify, through watchdog, where the system has it),
or unchanged for ``settle_s`` (every system; a periodic full listing catches what an event
missed); a WAV whose header promises more audio than the file holds is still being written."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from asdcli.data.layout import AUDIO_SUFFIXES


@dataclass
class WatchOptions:
    """How ``asd watch`` decides and warns (see the command's help)."""

    settle_s: float = 1.0  # unchanged this long: complete
    rescan_s: float = 30.0  # a full listing this often (events can be missed)
    since_s: float | None = None  # older files are not caught up on
    alert_k: int = 1
    alert_n: int = 1
    silence_s: float | None = None  # no new recording this long: a notice
    drift_window: int = 50  # recent normal clips of a section whose median is watched
    drift_z: float = 1.0  # their median score above this: the machine's normal sound changed
    batch: int = 32  # clips scored together in a backlog
    poll: bool = False  # no inotify, polling only
    machine: str | None = None
    section: str | None = None
    where: bool = False  # an anomalous clip's log line says where it sounds wrong (asd explain's top span)


@dataclass
class WatchState:
    """What the watcher knows: files handled (by path relative to the folder), files seen but not
    yet complete (size, mtime, since when unchanged), and per section the recent decisions and
    normal scores."""

    done: set[str] = field(default_factory=set)
    candidates: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    decisions: dict[str, deque] = field(default_factory=dict)
    normals: dict[str, deque] = field(default_factory=dict)
    drifting: set[str] = field(default_factory=set)
    last_arrival: float = field(default_factory=time.monotonic)
    silent: bool = False


def relative_key(folder: Path, path: Path) -> str:
    text, prefix = str(path), str(folder) + os.sep
    return text[len(prefix):] if text.startswith(prefix) else str(path.relative_to(folder))


def list_audio(folder: Path) -> list[Path]:
    """Audio files under ``folder`` (hidden files and folders left out), sorted."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / n for n in names if not n.startswith(".") and Path(n).suffix.lower() in AUDIO_SUFFIXES]
    return sorted(out)


def wav_state(path: Path, size: int) -> str:
    """``complete`` for a WAV whose data chunk holds exactly the bytes its header declares,
    ``partial`` where it declares more than the file holds yet (still being written) or has no
    data chunk yet, ``unknown`` for anything else (a streaming header of unknown length, FLAC):
    only time tells."""
    from asdcli.data.audio import wav_data_chunk

    try:
        found = wav_data_chunk(path, size)
    except OSError:
        return "unknown"
    if found is None or found[0] == 0xFFFFFFFF:
        return "unknown"  # not a WAV, or a streaming header of unknown length
    declared, available = found
    if declared == 0:  # no data chunk yet, or a header its writer fills in at the end
        return "partial" if available == 0 else "unknown"
    return "partial" if declared > available else "complete"


class Arrivals:
    """New complete files under the watched folder (module docstring)."""

    def __init__(self, folder: Path, state: WatchState, options: WatchOptions):
        self.folder, self.state, self.options = folder, state, options
        self.closed: set[str] = set()  # closed after writing or moved into place (inotify)
        self.touched: set[str] = set()  # created or written to (inotify): to look at, no full listing needed
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.observer = None if options.poll else self._observe()
        self.next_rescan = 0.0
        self.vanished: list[str] = []  # files seen and deleted before they could be scored

    def _observe(self):
        """A watchdog observer feeding :attr:`closed`, or None where watchdog or inotify is missing."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return None
        arrivals = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.is_directory:
                    return
                path = str(getattr(event, "dest_path", "") or event.src_path)
                with arrivals.lock:
                    arrivals.touched.add(path)
                    if event.event_type in ("closed", "moved"):
                        arrivals.closed.add(path)
                arrivals.wake.set()

        try:
            observer = Observer()
            observer.schedule(Handler(), str(self.folder), recursive=True)
            observer.start()
            return observer
        except OSError:  # no inotify instance left, or the folder vanished: poll
            return None

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)

    def wait(self, seconds: float) -> None:
        """Sleep until an event or ``seconds``."""
        self.wake.wait(seconds)
        self.wake.clear()

    def complete(self, now: float) -> list[Path]:
        """Files that became complete since the last call, oldest first."""
        with self.lock:
            closed, self.closed = self.closed, set()
            touched, self.touched = self.touched, set()
        if self.observer is None or now >= self.next_rescan:
            paths = list_audio(self.folder)
            self.next_rescan = now + self.options.rescan_s
        else:
            paths = [Path(p) for p in touched if Path(p).suffix.lower() in AUDIO_SUFFIXES
                     and not Path(p).name.startswith(".")]
        known = set(paths)
        paths += [self.folder / k for k in self.state.candidates if self.folder / k not in known]
        ready = []
        prefix = str(self.folder) + os.sep
        for path in dict.fromkeys(paths):
            key = str(path)[len(prefix):] if str(path).startswith(prefix) else None
            if key is None or key in self.state.done:
                continue
            try:
                info = os.stat(path)
            except OSError:
                if self.state.candidates.pop(key, None) is not None:
                    self.vanished.append(key)  # seen, then gone before it was complete
                continue
            stamp = (info.st_size, info.st_mtime_ns)
            seen = self.state.candidates.get(key)
            if seen is None or seen[:2] != stamp:
                # unchanged since its modification time (a file found at start is settled already)
                age = max(0.0, time.time() - info.st_mtime_ns / 1e9)
                seen = self.state.candidates[key] = (*stamp, now - age)
            state = wav_state(path, info.st_size) if info.st_size else "partial"
            settled = now - seen[2] >= self.options.settle_s
            # closed (or renamed into place) with a consistent header: at once; otherwise once settled
            if state == "partial" or not (settled or (str(path) in closed and state == "complete")):
                continue
            ready.append((info.st_mtime_ns, key, path))
        return [p for _, _, p in sorted(ready)]
