"""`asd evaluate`: DCASE metrics from score CSVs and the labels in the clips' file names."""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from asdcli.data.layout import Clip, parse_clip
from asdcli.errors import DataError
from asdcli.metrics import SectionScores, arithmetic_score, harmonic_mean, official_score, section_scores

DCASE_SCORE_FILE = re.compile(r"^anomaly_score_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$")


@dataclass
class ScoreRow:
    """One scored clip: machine, section, domain and label as its name and CSV say."""

    machine: str
    section: str
    domain: str | None
    label: int | None
    score: float


@dataclass
class Evaluation:
    """Per-section metrics and the averages DCASE reports."""

    sections: list[SectionScores]
    official: float
    arithmetic: float
    harmonic_source: float | None
    harmonic_target: float | None
    unlabeled: int = 0
    per_machine: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        """Plain data for ``--json``."""
        return {"official_score": self.official, "arithmetic_mean": self.arithmetic,
                "harmonic_mean_source": self.harmonic_source, "harmonic_mean_target": self.harmonic_target,
                "unlabeled_clips": self.unlabeled, "per_machine": self.per_machine,
                "sections": [asdict(s) for s in self.sections]}


def _read_rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.reader(handle) if r]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read score CSV ({error})") from None
    if rows and rows[0][:2] == ["filename", "score"]:
        rows = rows[1:]
    return rows


def read_scores(path: Path) -> list[ScoreRow]:
    """Rows of one CSV: a DCASE ``anomaly_score_<machine>_section_<XX>_test.csv`` (file names
    only) or an ``asd score`` CSV (``filename,score[,decision]``, paths relative to the scored
    folder, so the machine comes from the path; the header of ``--explain`` output is skipped)."""
    match = DCASE_SCORE_FILE.match(path.name)
    out = []
    for number, row in enumerate(_read_rows(path), start=1):
        if len(row) < 2:
            raise DataError(f"{path}, line {number}: expected filename,score")
        if number == 1 and row[:2] == ["filename", "score"]:  # the header of `asd score --explain`
            continue
        try:
            score = float(row[1])
        except ValueError:
            raise DataError(f"{path}, line {number}: score '{row[1]}' is not a number") from None
        clip = parse_clip(Path(row[0]), machine=match["machine"] if match else None)
        section = clip.section or (f"{int(match['section']):02d}" if match else "00")
        out.append(ScoreRow(clip.machine, section, clip.domain, clip.is_anomaly, score))
    return out


def score_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("anomaly_score_*_section_*_test.csv"))
            if not found:
                raise DataError(f"no anomaly_score_<machine>_section_<XX>_test.csv files in {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"score file or folder not found: {path}")
    return files


def evaluate(paths: list[Path]) -> Evaluation:
    """Metrics of every labelled section in the given CSV files or folders of DCASE CSVs."""
    return evaluate_rows([r for f in score_files(paths) for r in read_scores(f)])


def clip_rows(clips: list[Clip], scores: Sequence[float]) -> list[ScoreRow]:
    """Scored clips as rows for :func:`evaluate_rows`."""
    return [ScoreRow(c.machine, c.section or "00", c.domain, c.is_anomaly, float(s)) for c, s in zip(clips, scores)]


def evaluate_rows(rows: list[ScoreRow]) -> Evaluation:
    """Metrics of every labelled section among scored rows."""
    labelled = [r for r in rows if r.label is not None]
    if not labelled:
        raise DataError("no clip with a label in its name (normal_/anomaly_): nothing to evaluate")
    sections = []
    keys = sorted({(r.machine, r.section) for r in labelled})
    for machine, section in keys:
        members = [r for r in labelled if (r.machine, r.section) == (machine, section)]
        if len({r.label for r in members}) < 2:
            continue
        sections.append(section_scores(machine, section, [r.label for r in members], [r.score for r in members],
                                       [r.domain for r in members]))
    if not sections:
        raise DataError("no section has both normal and anomalous clips")
    per_machine = {}
    for machine in sorted({s.machine for s in sections}):
        own = [s for s in sections if s.machine == machine]
        per_machine[machine] = {"auc": float(np.mean([s.auc for s in own])),
                                "pauc": float(np.mean([s.pauc for s in own])),
                                "official": official_score(own)}
    source = [s.auc_source for s in sections if s.auc_source is not None]
    target = [s.auc_target for s in sections if s.auc_target is not None]
    return Evaluation(sections, official_score(sections), arithmetic_score(sections),
                      harmonic_mean(source) if source else None, harmonic_mean(target) if target else None,
                      unlabeled=len(rows) - len(labelled), per_machine=per_machine)
