"""`asd evaluate`: the DCASE evaluators' figures from score and decision CSVs, with labels and
domains from the clips' names or from the organisers' ground-truth files.

DCASE 2021+ (``anomaly_score_<machine>_section_<XX>_test.csv``): per section AUC (all), AUC
(source), AUC (target), pAUC and precision, recall and F1 per domain; per machine and over all
machines the arithmetic and harmonic means of the official evaluator; the official score and its
jackknife confidence interval. DCASE 2020 (``anomaly_score_<machine>_id_<XX>.csv``, no domains):
AUC and pAUC per machine ID, their means per machine and over all machines, and the 2020 score
(the mean of the two).
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from asdcli.data.layout import Clip, parse_clip
from asdcli.errors import DataError
from asdcli.files import CSV_LIMIT, open_regular
from asdcli.services.store.commits import recover
from asdcli.metrics import (MAX_FPR, Means, SectionScores, arithmetic_score, jackknife_ci95, official_score,
                            section_means, section_scores)

DCASE_SCORE_FILE = re.compile(r"^anomaly_score_(?P<machine>.+)_(?P<unit>section|id)_(?P<section>\d+)(?:_test)?\.csv$")
GROUND_TRUTH_FILE = re.compile(r"^ground_truth_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$")


@dataclass(slots=True)
class ScoreRow:
    """One scored clip: machine, section (machine ID in 2020), domain and label as its name, the
    ground truth or its CSV say; ``decision`` 0/1 where a decision was given; ``dcase2020``: named
    as in DCASE 2020 (``<label>_id_<XX>_<n>.wav`` or an ``..._id_<XX>.csv`` file)."""

    machine: str
    section: str
    domain: str | None
    label: int | None
    score: float
    name: str = ""
    decision: int | None = None
    dcase2020: bool = False


@dataclass
class Evaluation:
    """The figures of one evaluation. ``machines``: per machine, the averaged rows
    (:func:`~asdcli.metrics.section_means`; 2020: "arithmetic mean" only); ``overall``: the same
    over all machines; ``official``: the DCASE 2021+ official score, or for 2020 data the mean of
    the overall AUC and pAUC; ``notices``: what was left out and why."""

    sections: list[SectionScores]
    machines: dict[str, dict[str, Means]]
    overall: dict[str, Means]
    official: float
    official_ci95: float | None
    dcase2020: bool
    unlabeled: int = 0
    notices: list[str] = field(default_factory=list)

    @property
    def arithmetic(self) -> float:
        """Arithmetic mean of the official score's terms (every AUC (source), AUC (target), pAUC)."""
        return arithmetic_score(self.sections)

    @property
    def harmonic_source(self) -> float | None:
        row = self.overall.get("source harmonic mean")
        return None if row is None else row.auc

    @property
    def harmonic_target(self) -> float | None:
        row = self.overall.get("target harmonic mean")
        return None if row is None else row.auc

    def to_json(self) -> dict:
        """Plain data for ``--json``."""
        return {"dcase2020": self.dcase2020, "official_score": self.official, "official_score_ci95": self.official_ci95,
                "overall": {k: asdict(v) for k, v in self.overall.items()},
                "per_machine": {m: {k: asdict(v) for k, v in rows.items()} for m, rows in self.machines.items()},
                "sections": [asdict(s) for s in self.sections], "unlabeled_clips": self.unlabeled,
                "notices": self.notices}


MAX_ROWS = 1_000_000  # clips in one evaluation (a DCASE set has a few thousand): memory stays bounded


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """The non-empty rows of a CSV with their line numbers, read as a stream from a regular file
    (:mod:`asdcli.files`); a name that is not valid UTF-8 is kept as the bytes its file has."""
    try:
        with open_regular(path, "CSV file", DataError, CSV_LIMIT) as (handle, _):
            text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
            for number, row in enumerate(csv.reader(text), start=1):
                if number > MAX_ROWS:
                    raise DataError(f"{path}: more than {MAX_ROWS:,} rows; a DCASE section has a few hundred clips: "
                                    "refusing it")
                if row:
                    yield number, row
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, csv.Error) as error:
        raise DataError(f"{path}: cannot read CSV ({error})") from None


def decision_path(score_path: Path) -> Path:
    """The ``decision_result_...`` file beside an ``anomaly_score_...`` file."""
    return score_path.with_name("decision_result_" + score_path.name[len("anomaly_score_"):])


def read_scores(path: Path, machine: str | None = None) -> list[ScoreRow]:
    """Rows of one CSV: a DCASE ``anomaly_score_<machine>_section_<XX>_test.csv`` or 2020
    ``anomaly_score_<machine>_id_<XX>.csv`` (file names only; decisions from the
    ``decision_result_...`` file beside it, where there is one) or an ``asd score`` CSV
    (``filename,score[,decision]``, paths relative to the scored folder, so the machine comes from
    the path, else ``machine``; a third column of 0/1 is the decision; the header of ``--explain``
    output is skipped)."""
    match = DCASE_SCORE_FILE.match(path.name)
    decisions = decision_path(path) if match and os.path.lexists(decision_path(path)) else None
    decided = _binary(decisions, "decision") if decisions else {}
    out, lines, has_decision = [], {}, True
    for number, row in _rows(path):
        if number == 1 and row[:2] == ["filename", "score"]:  # the header of `asd score`
            has_decision = row[2:3] == ["decision"]
            continue
        out.append(_score_row(path, number, row, match, machine, decided if decisions else None, has_decision, lines))
    extra = sorted(set(decided) - {Path(name).name for name in lines})
    if extra:
        raise DataError(f"{decisions}: a decision for {extra[0]}, which {path.name} does not score; the two files "
                        "must name the same clips")
    return out


def _score_row(path: Path, number: int, row: list[str], match: re.Match | None, machine: str | None,
               decided: dict[str, int] | None, has_decision: bool, lines: dict[str, int]) -> ScoreRow:
    """One row of a score CSV (:func:`read_scores`); ``lines``: the clips read so far, by line."""
    if len(row) < 2:
        raise DataError(f"{path}, line {number}: expected filename,score")
    try:
        score = float(row[1])
    except ValueError:
        raise DataError(f"{path}, line {number}: score '{row[1]}' is not a number") from None
    clip = parse_clip(Path(row[0]), machine=match["machine"] if match else None)
    if clip.machine in ("unknown", "") and machine:
        clip = parse_clip(Path(row[0]), machine=machine)
    if row[0] in lines:
        raise DataError(f"{path}, line {number}: {row[0]} was scored already on line {lines[row[0]]}; each clip "
                        "must appear once")
    lines[row[0]] = number
    named = f"{int(match['section']):02d}" if match else None
    if named is not None and clip.section is not None and clip.section != named:
        raise DataError(f"{path}, line {number}: {row[0]} is a clip of section {clip.section}, the file is for "
                        f"{match['unit']} {named}")
    if decided is not None and clip.name not in decided:
        raise DataError(f"{decision_path(path)}: no decision for {row[0]} (line {number} of {path.name}); the two "
                        "files must name the same clips")
    decision = None if decided is None else decided[clip.name]
    if has_decision and len(row) > 2 and row[2] in ("0", "1"):
        decision = int(row[2])
    dcase2020 = clip.naming.endswith("2020") or bool(match and match["unit"] == "id")
    return ScoreRow(clip.machine, clip.section or named or "00", clip.domain, clip.is_anomaly, score, clip.name,
                    decision, dcase2020)


def score_files(paths: list[Path]) -> list[Path]:
    """The score CSVs named, with every ``anomaly_score_*.csv`` of a named folder."""
    files = []
    for path in paths:
        if path.is_dir():
            recover(path, lock=False)  # a scoring's DCASE files committed but not all renamed yet
            found = sorted(p for p in path.glob("anomaly_score_*.csv") if DCASE_SCORE_FILE.match(p.name))
            if not found:
                raise DataError(f"no anomaly_score_<machine>_section_<XX>_test.csv (or 2020: anomaly_score_<machine>_id_<XX>.csv) "
                                f"files in {path}")
            files.extend(found)
        elif os.path.lexists(path) and not path.is_dir():
            files.append(path)  # a special file or a dangling link: reading it names it
        else:
            raise DataError(f"score file or folder not found: {path}")
    return files


def read_ground_truth(root: Path) -> dict[tuple[str, str], dict[str, tuple[int, str | None]]]:
    """The organisers' ground truth: ``root/ground_truth_data/ground_truth_<machine>_section_<XX>_test.csv``
    (filename,label with 0 normal, 1 anomaly) and, where present, ``root/ground_truth_domain/`` with
    the same names (filename,domain with 0 source, 1 target) -> per (machine, section), per file name,
    (label, domain)."""
    data_dir = root / "ground_truth_data"
    files = sorted(p for p in data_dir.glob("ground_truth_*.csv") if GROUND_TRUTH_FILE.match(p.name)) if data_dir.is_dir() else []
    if not files:
        raise DataError(f"--ground-truth {root}: no ground_truth_data/ground_truth_<machine>_section_<XX>_test.csv files")
    truth = {}
    for path in files:
        match = GROUND_TRUTH_FILE.match(path.name)
        labels = _binary(path, "label")
        domain_path = root / "ground_truth_domain" / path.name
        domains = _binary(domain_path, "domain") if os.path.lexists(domain_path) else {}
        unknown = sorted(set(domains) - set(labels))
        if unknown:
            raise DataError(f"{domain_path}: {unknown[0]} is not in {path}")
        truth[(match["machine"], f"{int(match['section']):02d}")] = {
            name: (label, None if name not in domains else ("source", "target")[domains[name]])
            for name, label in labels.items()}
    return truth


def _binary(path: Path, what: str) -> dict[str, int]:
    out, lines = {}, {}
    for number, row in _rows(path):
        if len(row) < 2 or row[1].strip() not in ("0", "1"):
            raise DataError(f"{path}, line {number}: expected filename,{what} with {what} 0 or 1")
        if row[0] in out:
            raise DataError(f"{path}, line {number}: {row[0]} is given already on line {lines[row[0]]}; each clip "
                            "must appear once")
        out[row[0]], lines[row[0]] = int(row[1]), number
    return out


def apply_ground_truth(rows: list[ScoreRow], truth: dict) -> tuple[list[ScoreRow], list[str]]:
    """Rows with the label and domain of the ground truth (rows of a section it does not cover
    keep their own), and notices: scored clips it lacks, and clips of it that have no score."""
    out, unknown, scored = [], 0, set()
    for row in rows:
        known = truth.get((row.machine, row.section))
        if known is None:
            out.append(row)
            continue
        label, domain = known.get(row.name, (None, None))
        unknown += label is None
        scored.add((row.machine, row.section, row.name))
        out.append(ScoreRow(row.machine, row.section, domain, label, row.score, row.name, row.decision, row.dcase2020))
    notices = []
    if unknown:
        notices.append(f"{unknown} scored clip(s) are not in the ground truth of their section; left out")
    missing = [(m, s, n) for (m, s), names in truth.items() for n in names if (m, s, n) not in scored]
    sections = {(m, s) for m, s, _ in scored}
    missing = [k for k in missing if k[:2] in sections]
    if missing:
        notices.append(f"{len(missing)} clip(s) of the ground truth have no score (first: {missing[0][0]} section "
                       f"{missing[0][1]} {missing[0][2]}); the figures of their sections leave them out")
    return out, notices


def evaluate(paths: list[Path], ground_truth: Path | None = None, confidence: bool = True,
             machine: str | None = None) -> Evaluation:
    """Metrics of every labelled section in the given CSV files or folders of DCASE CSVs; labels
    and domains from ``ground_truth`` (the official layout) where given, else from the names;
    ``machine`` for clips whose paths do not say it."""
    rows, notices = [], []
    for path in score_files(paths):
        found = read_scores(path, machine)
        if not found:
            notices.append(_empty_file_notice(path))
        rows += found
        if len(rows) > MAX_ROWS:
            raise DataError(f"more than {MAX_ROWS:,} scored clips in {', '.join(map(str, paths))}; refusing them")
    unknown = sum(r.machine == "unknown" for r in rows)
    if unknown:
        notices.append(f"{unknown} clip(s) name no machine in their path: evaluated as machine 'unknown' (give "
                       "--machine NAME)")
    if ground_truth is not None:
        rows, found = apply_ground_truth(rows, read_ground_truth(ground_truth))
        notices += found
    return evaluate_rows(rows, confidence, notices)


def _empty_file_notice(path: Path) -> str:
    """What a score file without a row costs (an interrupted copy leaves such files)."""
    match = DCASE_SCORE_FILE.match(path.name)
    what = f"{match['machine']} {match['unit']} {int(match['section']):02d}" if match else "its clips"
    return f"{path} holds no scores (empty, or a header only): {what} is left out of every figure"


def clip_rows(clips: list[Clip], scores: Sequence[float], decisions: Sequence[int] | None = None) -> list[ScoreRow]:
    """Scored clips as rows for :func:`evaluate_rows`."""
    return [ScoreRow(c.machine, c.section or "00", c.domain, c.is_anomaly, float(s), c.name,
                     None if decisions is None else int(decisions[i]), c.naming.endswith("2020"))
            for i, (c, s) in enumerate(zip(clips, scores))]


def evaluate_rows(rows: list[ScoreRow], confidence: bool = False, notices: list[str] | None = None) -> Evaluation:
    """Metrics of every labelled section among scored rows; ``confidence``: also the jackknife
    interval of the official score (one AUC and pAUC per clip left out)."""
    notices = list(notices or [])
    labelled = [r for r in rows if r.label is not None]
    if not labelled:
        raise DataError("no clip with a label in its name (normal_/anomaly_): nothing to evaluate; "
                        "for an evaluation set give its ground truth with --ground-truth DIR")
    sections, used = [], []
    for machine, section in sorted({(r.machine, r.section) for r in labelled}):
        members = [r for r in labelled if (r.machine, r.section) == (machine, section)]
        classes = {r.label for r in members}
        if len(classes) < 2:
            kind = "normal" if classes == {0} else "anomalous"
            notices.append(f"{machine} section {section}: only {kind} clips ({len(members)}); AUC and pAUC need both, "
                           "so it is left out of every figure")
            continue
        decided = [r.decision for r in members]
        if any(d is None for d in decided):
            decided = None
        sections.append(section_scores(machine, section, [r.label for r in members], [r.score for r in members],
                                       [r.domain for r in members], decided))
        used += members
    if not sections:
        raise DataError("no section has both normal and anomalous clips; " + "; ".join(notices))
    dcase2020 = all(r.dcase2020 for r in used) and not any(s.has_domains for s in sections)
    machines = {m: section_means([s for s in sections if s.machine == m]) for m in sorted({s.machine for s in sections})}
    if dcase2020:
        machines = {m: {"arithmetic mean": rows_["arithmetic mean"]} for m, rows_ in machines.items()}
        overall = {"arithmetic mean": _mean_of_machines(list(machines.values()))}
        official = (overall["arithmetic mean"].auc + overall["arithmetic mean"].pauc) / 2
    else:
        overall = section_means(sections)
        official = official_score(sections)
    ci95 = None
    labels, scores = np.array([r.label for r in used]), np.array([r.score for r in used])
    if confidence and min(int(labels.sum()), int((1 - labels).sum())) >= 2:
        ci95 = float(np.mean(jackknife_ci95(labels, scores, MAX_FPR)))
    missing_decisions = [f"{s.machine} {s.section}" for s in sections if s.decisions is None]
    if missing_decisions and len(missing_decisions) < len(sections):
        notices.append(f"no decisions for {', '.join(missing_decisions)}: precision, recall and F1 are left blank")
    return Evaluation(sections, machines, overall, official, ci95, dcase2020,
                      unlabeled=len(rows) - len(labelled), notices=notices)


def _mean_of_machines(rows: list[dict[str, Means]]) -> Means:
    """DCASE 2020's overall "Average": the mean of the machines' averages."""
    means = [r["arithmetic mean"] for r in rows]

    def avg(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else float(np.mean(values))

    return Means(float(np.mean([m.auc for m in means])), float(np.mean([m.pauc for m in means])),
                 avg([m.precision for m in means]), avg([m.recall for m in means]), avg([m.f1 for m in means]))


RESULT_COLUMNS = ["AUC (all)", "AUC (source)", "AUC (target)", "pAUC", "precision (source)", "precision (target)",
                  "recall (source)", "recall (target)", "F1 score (source)", "F1 score (target)"]


def _cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def results_csv(result: Evaluation) -> str:
    """The results CSV in the layout of the DCASE baselines and evaluators: one block per machine
    (its sections, then its means), then the means over all machines and the official score.
    DCASE 2020: ``id,AUC,pAUC`` per machine ID and an ``Average`` row per machine and overall."""
    lines: list[list[str]] = []
    if result.dcase2020:
        for machine, rows in result.machines.items():
            lines += [[machine], ["id", "AUC", "pAUC"]]
            lines += [[s.section, _cell(s.auc), _cell(s.pauc)] for s in result.sections if s.machine == machine]
            lines += [["Average", _cell(rows["arithmetic mean"].auc), _cell(rows["arithmetic mean"].pauc)], []]
        mean = result.overall["arithmetic mean"]
        lines += [["Average", _cell(mean.auc), _cell(mean.pauc)], ["score (mean of AUC and pAUC)", _cell(result.official)]]
    else:
        header = ["", "", "AUC", "pAUC", "precision", "recall", "F1 score"]
        for machine, rows in result.machines.items():
            lines += [[machine], ["section", *RESULT_COLUMNS]]
            for s in (s for s in result.sections if s.machine == machine):
                d = s.decisions or {}
                lines.append([s.section, _cell(s.auc), _cell(s.auc_source), _cell(s.auc_target), _cell(s.pauc)]
                             + [_cell(getattr(d.get(dom), key, None)) for key in ("precision", "recall", "f1")
                                for dom in ("source", "target")])
            lines.append(header)
            lines += [[name, "", *_means_cells(m)] for name, m in rows.items()]
            lines.append([])
        lines.append(header)
        lines += [[f"{name} over all machine types, sections, and domains", "", *_means_cells(m)]
                  for name, m in result.overall.items()]
        lines += [[], ["official score", "", _cell(result.official)]]
        if result.official_ci95 is not None:
            lines.append(["official score ci95", "", _cell(result.official_ci95)])
        lines.append([])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    return buffer.getvalue()


def _means_cells(m: Means) -> list[str]:
    return [_cell(m.auc), _cell(m.pauc), _cell(m.precision), _cell(m.recall), _cell(m.f1)]

