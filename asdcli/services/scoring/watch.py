"""`asd watch`: score the recordings a recorder drops into a folder, as they arrive, once each.

A file is scored when it is complete: closed after writing or renamed into place (inotify, through
watchdog, where the system has it), or its size and modification time unchanged for
``settle_s`` (every system; also a periodic rescan catches what an event missed). A WAV whose
header promises more audio than the file holds is still being written: it waits. Each clip
gets one line in the decision log (:mod:`asdcli.services.scoring.watch_log`) after it is scored, so a
restart skips what the log holds, scores what arrived meanwhile and never logs a file twice.
The run is loaded once and again only when a retrained stage is committed in its folder.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from asdcli import memory
from asdcli.data.layout import Clip, parse_clip
from asdcli.services.scoring.arrivals import Arrivals, WatchOptions, WatchState, list_audio, relative_key
from asdcli.services.scoring.watch_log import DecisionLog, LogLine
from asdcli.services.store.runs import run_stamp


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clip_of(path: Path, options: WatchOptions) -> Clip:
    """The clip of a recording: machine and section from its path, else from the options."""
    clip = parse_clip(path)
    machine = options.machine or (clip.machine if clip.machine != "unknown" else None) or "unknown"
    section = options.section or clip.section
    return Clip(**{**clip.__dict__, "machine": machine, "section": section})


def where_text(line: LogLine) -> str:
    """``, 3.20-3.45 s, 800-1200 Hz: burst`` for a clip line that says where; else empty."""
    return f", {line.span_s} s, {line.band_hz} Hz: {line.what}" if line.span_s else ""


class Monitor:
    """Decisions over time: the K-of-N alert, the silent recorder and the drift of the normal
    sound (section by section); each yields log lines."""

    def __init__(self, state: WatchState, options: WatchOptions, on_alert: Callable[[LogLine], str | None]):
        self.state, self.options, self.on_alert = state, options, on_alert

    def clip(self, line: LogLine) -> list[LogLine]:
        """Lines that follow one scored clip (an alert, a drift notice)."""
        out, section = [], f"{line.machine}/{line.section}"
        recent = self.state.decisions.setdefault(section, deque(maxlen=self.options.alert_n))
        recent.append(line.decision)
        if line.decision == 1 and sum(recent) >= self.options.alert_k:
            recent.clear()  # one alert per run of anomalies, not one per clip
            failed = self.on_alert(line)
            message = (f"{self.options.alert_k} of the last {self.options.alert_n} clips of {section} anomalous "
                       f"(latest {line.file}, score {line.score:.2f}{where_text(line)})"
                       + (f"; the alert command failed: {failed}" if failed else ""))
            out.append(LogLine(utc_now(), line.file, line.machine, line.section, line.score, 1, "alert", message))
        if line.decision == 0 and line.score is not None:
            normals = self.state.normals.setdefault(section, deque(maxlen=self.options.drift_window))
            normals.append(line.score)
            median = float(np.median(normals))
            if len(normals) == normals.maxlen and median > self.options.drift_z and section not in self.state.drifting:
                self.state.drifting.add(section)
                out.append(LogLine(utc_now(), "", line.machine, line.section, median, None, "notice",
                                   f"the last {len(normals)} normal clips of {section} score {median:+.2f} (median) "
                                   f"above its training clips (limit {self.options.drift_z:g}): its normal sound has "
                                   "changed; retrain the run on recent recordings"))
            elif median <= self.options.drift_z:
                self.state.drifting.discard(section)
        return out

    def idle(self, now: float) -> list[LogLine]:
        """A notice when no recording arrived for ``silence_s`` (once until one arrives)."""
        limit = self.options.silence_s
        if limit is None or self.state.silent or now - self.state.last_arrival < limit:
            return []
        self.state.silent = True
        return [LogLine(utc_now(), kind="notice", message=f"no new recording for {limit:g} s: is the recorder running?")]


STALE_S = 30.0  # a WAV that stays shorter than its header says this long was cut short: reported, not awaited


def batch_sizes(count: int, largest: int) -> list[int]:
    """``count`` clips as batches of ``largest`` and then powers of two (27 of at most 32: 16, 8,
    2, 1): a few batch shapes only, so that the math library's cache of kernels prepared per input
    shape (oneDNN's, 1,024 by default) stops growing. With every size from 1 to 32, as files
    trickling in give, it grew the watcher's memory by 17 % over 10,000 clips. The scores do not
    depend on the batch."""
    sizes = []
    while count > 0:
        size = largest if count >= largest else 1 << (count.bit_length() - 1)
        sizes.append(size)
        count -= size
    return sizes


@dataclass
class WatchSummary:
    """What one ``asd watch`` did: clips scored (of which caught up on at the start), files
    skipped (unreadable), files older than ``--since`` left alone, and how often the run was reloaded."""

    scored: int = 0
    caught_up: int = 0
    skipped: int = 0
    older: int = 0
    reloads: int = 0


def alert_command(command: str | None) -> Callable[[LogLine], str | None]:
    """Run ``command`` (a shell command line) for an alert, the clip's details in ``ASD_*``
    environment variables; returns why it failed, or None."""
    import subprocess

    def run(line: LogLine) -> str | None:
        if not command:
            return None
        env = {**os.environ, "ASD_FILE": line.file, "ASD_MACHINE": line.machine, "ASD_SECTION": line.section,
               "ASD_SCORE": f"{line.score:.6f}", "ASD_DECISION": str(line.decision), "ASD_TIME": line.time,
               "ASD_SPAN_S": line.span_s, "ASD_BAND_HZ": line.band_hz, "ASD_WHAT": line.what}
        try:
            done = subprocess.run(command, shell=True, env=env, timeout=60, capture_output=True)
        except subprocess.TimeoutExpired:
            return "it ran for more than 60 s and was stopped"
        except OSError as error:
            return error.strerror or str(error)
        return None if done.returncode == 0 else f"exit status {done.returncode}"
    return run


class Watch:
    """The watch loop over ``folder`` with the run ``run_dir`` (module docstring). ``emit`` gets
    every log line as it is written; ``on_backlog(done, total)`` the progress of a backlog."""

    def __init__(self, folder: Path, run_dir: Path, log: DecisionLog, options: WatchOptions,
                 load: Callable[[Path], object], emit: Callable[[LogLine], None],
                 alert: Callable[[LogLine], str | None], on_backlog: Callable[[int, int], None] | None = None,
                 reference: list[Clip] | None = None):
        self.folder, self.run_dir, self.log, self.options = Path(folder), Path(run_dir), log, options
        self.load, self.emit, self.on_backlog = load, emit, on_backlog
        self.reference, self.baselines = reference or [], {}  # normal clips for where; their maps, once made
        self.stamp = run_stamp(self.run_dir)
        self.detector = load(self.run_dir)  # first: the log exists once the watcher can score
        self.state = WatchState(done={line.file for line in log.open() if line.kind in ("clip", "skipped")})
        self.monitor = Monitor(self.state, options, alert)
        self.summary = WatchSummary()
        self.notices: set[str] = set()
        self.backlog: set[str] = set()

    def _write(self, line: LogLine) -> None:
        self.log.append(line)
        self.emit(line)

    def _reload_if_retrained(self) -> None:
        stamp = run_stamp(self.run_dir)
        if stamp != self.stamp:
            self.detector, self.stamp, self.baselines = self.load(self.run_dir), stamp, {}
            self.summary.reloads += 1
            self._write(LogLine(utc_now(), kind="notice", message=f"{self.run_dir} changed: the run was loaded again"))

    def _score(self, paths: list[Path]) -> None:
        """Score ``paths`` and log each (a clip that cannot be read: a skipped line naming why)."""
        from asdcli.errors import DataError

        clips = [clip_of(p, self.options) for p in paths]
        try:
            result = self.detector.score(clips)
        except DataError:  # none of them could be read
            if len(paths) > 1:
                for path in paths:
                    self._score([path])
                return
            result = None
        scored = set()
        self._notices(result.notices if result is not None else [])
        if result is not None:
            own, pooled = self.detector.thresholds()
            where = self._where([c for c, d in zip(result.clips, result.decision) if d])
            for clip, score, decision in zip(result.clips, result.score, result.decision):
                key = relative_key(self.folder, clip.path)
                scored.add(key)
                threshold = own.get(self.detector.run.vocab.group_name(clip), pooled)
                line = LogLine(utc_now(), key, clip.machine, clip.section or "", float(score), int(decision),
                               threshold=float(threshold), **where.get(clip.path, {}))
                self._finish(key, line)
                for follow in self.monitor.clip(line):
                    self._write(follow)
        for path in paths:
            key = relative_key(self.folder, path)
            if key not in scored:
                why = next((m for p, m in (result.skipped if result else []) if Path(p) == path), None)
                exists = os.path.exists(path)
                message = why or (f"{path}: not a readable audio file" if exists else f"{path}: deleted before it was scored")
                self._finish(key, LogLine(utc_now(), key, kind="skipped", message=message))
                self.summary.skipped += 1

    def _notices(self, notices: list[str]) -> None:
        for notice in notices:
            if notice not in self.notices:  # each once per watch, not once per clip
                self.notices.add(notice)
                self._write(LogLine(utc_now(), kind="notice", message=notice))

    def _where(self, anomalous: list[Clip]) -> dict[Path, dict[str, str]]:
        """Where each anomalous clip sounds wrong, by path: ``asd explain``'s top span (s), its band
        (Hz) and the kind of change, read against the reference clips' maps (made once per run);
        nothing for a clip that cannot be read again (a notice says why)."""
        from asdcli.errors import DataError
        from asdcli.services.scoring.explain import explain

        if not anomalous or not self.options.where:
            return {}
        try:
            explained = explain(self.detector, anomalous, self.reference, self.baselines)
        except DataError as error:
            self._notices([f"where the anomalous clips sound wrong is not logged: {error}"])
            return {}
        self._notices(explained.notices)
        return {e.clip.path: {"span_s": f"{e.span[0]:.2f}-{e.span[1]:.2f}",
                              "band_hz": f"{e.band_hz[0]:.0f}-{e.band_hz[1]:.0f}", "what": e.kind}
                for e in explained.explanations}

    def _finish(self, key: str, line: LogLine) -> None:
        self._write(line)
        self.state.done.add(key)
        self.state.candidates.pop(key, None)
        self.summary.scored += line.kind == "clip"
        if key in self.backlog:
            self.backlog.discard(key)
            self.summary.caught_up += 1
            if not self.backlog:
                self._write(LogLine(utc_now(), kind="notice", message=f"caught up on {self.summary.caught_up} "
                                    "recording(s) that arrived while asd watch was not running"))

    def run(self, stop: threading.Event) -> WatchSummary:
        """Watch until ``stop`` is set; the clips in hand are finished first."""
        arrivals = Arrivals(self.folder, self.state, self.options)
        # for weeks at the memory it needs (bench/bench_watch.py: flat over 10,000 clips): one malloc
        # arena for every thread, freed buffers kept on the heap within a batch and returned after it
        memory.one_arena()
        memory.keep_freed_memory()
        self._catch_up()
        try:
            while not stop.is_set():
                now = time.monotonic()
                ready = arrivals.complete(now)
                for key in arrivals.vanished:
                    self._finish(key, LogLine(utc_now(), key, kind="skipped",
                                              message=f"{self.folder / key}: deleted before it was scored"))
                    self.summary.skipped += 1
                arrivals.vanished.clear()
                ready += [self.folder / k for k, (_, _, since) in list(self.state.candidates.items())
                          if now - since > STALE_S and self.folder / k not in ready]
                if ready:
                    self._score_all(ready, stop)
                    memory.release()
                    continue
                for line in self.monitor.idle(now):
                    self._write(line)
                arrivals.wait(self._idle_wait(arrivals, now))
        finally:
            arrivals.stop()
            self.log.close()
        return self.summary

    def _idle_wait(self, arrivals: Arrivals, now: float) -> float:
        """How long to sleep with nothing to score: until a file may have settled, else (events
        wake it) until the next full listing or the silence notice is due."""
        if arrivals.observer is None or self.state.candidates:
            return min(0.5, self.options.settle_s / 2)
        due = [arrivals.next_rescan - now]
        if self.options.silence_s is not None and not self.state.silent:
            due.append(self.state.last_arrival + self.options.silence_s - now)
        return max(0.05, min(due))

    def _score_all(self, ready: list[Path], stop: threading.Event) -> None:
        """Score what is ready, a batch at a time (a backlog says how far it is); a stop request
        ends it after the batch in hand."""
        self.state.last_arrival, self.state.silent = time.monotonic(), False
        self._reload_if_retrained()
        done = 0
        for size in batch_sizes(len(ready), self.options.batch):
            self._score(ready[done : done + size])
            done += size
            if self.on_backlog is not None and len(ready) > self.options.batch:
                self.on_backlog(done, len(ready))
            if stop.is_set():
                return

    def _catch_up(self) -> None:
        """At the start: the files that arrived while the watcher was down (the backlog, said when
        it is done); with ``since_s``, those older than it are left alone."""
        waiting = [p for p in list_audio(self.folder) if relative_key(self.folder, p) not in self.state.done]
        if self.options.since_s is not None:
            limit = time.time() - self.options.since_s
            older = [p for p in waiting if os.path.getmtime(p) < limit]
            self.state.done.update(relative_key(self.folder, p) for p in older)
            self.summary.older = len(older)
            waiting = [p for p in waiting if p not in older]
        self.backlog = {relative_key(self.folder, p) for p in waiting}
