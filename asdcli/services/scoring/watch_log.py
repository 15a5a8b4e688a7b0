"""The decision log of ``asd watch``: one line per scored clip (or per notice), appended so that a
crash never leaves half a line and a restart knows exactly which files it already holds.

Each line is written with one ``write`` on a file opened for appending, then flushed to the
disk. A crash can still cut the last line short (the disk may hold part of one write): such a
line has no newline, so :meth:`DecisionLog.open` cuts it off; its clip is not in the log and is
scored again. So every file is in the log once, whatever moment the process was killed at.

CSV (``time,file,machine,section,score,threshold,decision,kind,message,span_s,band_hz,what``, a
header first) or JSON lines; ``threshold`` is the section's decision threshold the score was decided
by; ``span_s``, ``band_hz`` and ``what``, for an anomalous clip, where it sounds wrong (``asd
explain``'s top span in seconds, its band in Hz and the kind of change). A CSV log begun by an
earlier asd, without the last three columns, is continued without them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from asdcli.errors import DataError, OutputError
from asdcli.files import CSV_LIMIT, open_regular

COLUMNS = ["time", "file", "machine", "section", "score", "threshold", "decision", "kind", "message", "span_s",
           "band_hz", "what"]
FIRST_COLUMNS = COLUMNS[:9]  # the CSV logs of asd before the span columns
KINDS = ("clip", "skipped", "notice", "alert")


@dataclass
class LogLine:
    """One event: a scored ``clip`` (score, decision), a ``skipped`` file (why), a ``notice`` (the
    recorder went silent, the normal sound drifted, the run was reloaded) or an ``alert``.
    ``time``: ISO 8601 UTC; ``file``: relative to the watched folder."""

    time: str
    file: str = ""
    machine: str = ""
    section: str = ""
    score: float | None = None
    decision: int | None = None
    kind: str = "clip"
    message: str = ""
    threshold: float | None = None
    span_s: str = ""  # "3.20-3.45"
    band_hz: str = ""  # "800-1200"
    what: str = ""  # a key of asdcli.services.scoring.explain.KINDS

    def text(self, as_json: bool, columns: list[str] = COLUMNS) -> str:
        if as_json:
            return json.dumps(asdict(self), ensure_ascii=False) + "\n"
        buffer = io.StringIO()
        row = asdict(self)
        row["score"] = "" if self.score is None else f"{self.score:.6f}"
        row["threshold"] = "" if self.threshold is None else f"{self.threshold:.6f}"
        row["decision"] = "" if self.decision is None else str(self.decision)
        csv.writer(buffer, lineterminator="\n").writerow([row[c] for c in columns])
        return buffer.getvalue()


def parse_line(text: str, as_json: bool) -> LogLine | None:
    """A line of the log as written by :meth:`LogLine.text`; None for the CSV header."""
    if as_json:
        data = json.loads(text)
        return LogLine(**{k: data.get(k) for k in COLUMNS if k in data})
    row = next(csv.reader([text]))
    if row in (COLUMNS, FIRST_COLUMNS):
        return None
    if len(row) not in (len(COLUMNS), len(FIRST_COLUMNS)):
        raise ValueError(f"{len(row)} columns, expected {len(COLUMNS)}")
    values = dict(zip(COLUMNS, row))
    number = {k: float(values[k]) if values[k] else None for k in ("score", "threshold")}
    return LogLine(values["time"], values["file"], values["machine"], values["section"], number["score"],
                   int(values["decision"]) if values["decision"] else None, values["kind"], values["message"],
                   number["threshold"], values.get("span_s", ""), values.get("band_hz", ""), values.get("what", ""))


class DecisionLog:
    """An append-only decision log (module docstring)."""

    def __init__(self, path: Path, as_json: bool = False):
        self.path, self.as_json = Path(path), as_json
        self.fd: int | None = None
        self.columns = COLUMNS  # a CSV log begun by an earlier asd keeps its columns

    def open(self) -> list[LogLine]:
        """Open the log for appending (made with a header where new) after cutting off a line a
        crash left unfinished; returns the lines it holds."""
        lines = self.read() if self.path.exists() else []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as error:
            raise OutputError(f"cannot write the log {self.path}: {error.strerror or error}") from None
        if os.fstat(self.fd).st_size == 0 and not self.as_json:
            self._write(",".join(COLUMNS) + "\n")
        return lines

    def read(self) -> list[LogLine]:
        """Every complete line; an unfinished last line (a crash) is cut off the file first."""
        with open_regular(self.path, "decision log", DataError, CSV_LIMIT) as (handle, size):
            data = handle.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            try:
                os.truncate(self.path, end)
            except OSError as error:
                raise OutputError(f"cannot repair the log {self.path}: {error.strerror or error}") from None
        out = []
        self.columns = FIRST_COLUMNS if data.startswith((",".join(FIRST_COLUMNS) + "\n").encode()) else COLUMNS
        for number, raw in enumerate(data[:end].decode("utf-8", errors="surrogateescape").splitlines(), start=1):
            try:
                line = parse_line(raw, self.as_json)
            except (ValueError, TypeError, json.JSONDecodeError) as error:
                what = "JSON lines (--json)" if self.as_json else "CSV (without --json)"
                raise DataError(f"{self.path}, line {number}: not a line of an asd watch log in {what} ({error})") from None
            if line is not None:
                out.append(line)
        return out

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", errors="surrogateescape")
        try:
            written = os.write(self.fd, data)
            if written != len(data):  # a full disk: the next open cuts the unfinished line
                raise OSError(28, "no space left for a whole line")
            os.fsync(self.fd)
        except OSError as error:
            raise OutputError(f"cannot write the log {self.path}: {error.strerror or error}") from None

    def append(self, line: LogLine) -> None:
        """Append one line, flushed to the disk before this returns."""
        self._write(line.text(self.as_json, self.columns))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
