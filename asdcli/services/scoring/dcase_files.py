"""The DCASE result files a scoring writes: ``anomaly_score_*.csv`` and ``decision_result_*.csv``
per machine section (2021+) or machine ID (2020), as the challenge's evaluator reads them."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from asdcli.atomic import write_text
from asdcli.errors import OutputError, os_error_message
from asdcli.services.store.commits import commit_stage, recover
from asdcli.services.scoring.score import ScoreResult


def csv_text(rows: list[tuple]) -> str:
    """Rows as CSV text (no header; "\\n" line ends, as the DCASE files)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def dcase_file_stem(clips: list) -> str:
    """``<machine>_section_<XX>_test``, or ``<machine>_id_<XX>`` for clips named as in DCASE 2020."""
    first = clips[0]
    if all(c.naming.endswith("2020") for c in clips):
        return f"{first.machine}_id_{first.section}"
    return f"{first.group}_test"


def write_dcase_files(result: ScoreResult, out_dir: Path) -> list[Path]:
    """``anomaly_score_<machine>_section_<XX>_test.csv`` and ``decision_result_...`` (no header);
    DCASE 2020 data: ``anomaly_score_<machine>_id_<XX>.csv`` and ``decision_result_...``. All
    are committed as one unit (as a run's stage: staged, a journal, then renamed), so an
    interruption or a full disk leaves the folder's earlier files or all the new ones, never a mix
    (the next scoring or evaluation in that folder completes a commit cut short)."""
    texts = {}
    for group in sorted({c.group for c in result.clips}):
        idx = [i for i, c in enumerate(result.clips) if c.group == group]
        stem = dcase_file_stem([result.clips[i] for i in idx])
        for kind, values in (("anomaly_score", [f"{result.score[i]:.6f}" for i in idx]),
                             ("decision_result", [str(result.decision[i]) for i in idx])):
            texts[out_dir / f"{kind}_{stem}.csv"] = csv_text([(result.clips[i].name, v) for i, v in zip(idx, values)])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(os_error_message(error)) from None
    recover(out_dir, lock=False)
    with commit_stage(out_dir, lock=False) as place:
        for path, text in texts.items():
            write_text(place(path), text)
    return list(texts)
