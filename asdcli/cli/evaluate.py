"""`asd evaluate`: the official DCASE evaluators' figures from score and decision CSVs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from asdcli.atomic import write_text
from asdcli.cli.common import show_notice, err, handle_errors, out
from asdcli.cli.reports import means_table, section_table




@handle_errors
def evaluate(
    scores: List[Path] = typer.Argument(..., help="Score CSVs, or folders of anomaly_score_<machine>_section_<XX>_test.csv "
                                        "(2020: anomaly_score_<machine>_id_<XX>.csv); decision_result_... files beside "
                                        "them add precision, recall and F1."),
    ground_truth: Optional[Path] = typer.Option(None, "--ground-truth", help="Folder with the organisers' "
                                                "ground_truth_data/ and ground_truth_domain/ (evaluation sets, whose "
                                                "file names carry no label)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures as JSON to this file."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Also write the results CSV in the layout of the DCASE "
                                           "evaluator (one block per machine, then the totals and the official score)."),
    as_json: bool = typer.Option(False, "--as-json", help="Print JSON to stdout instead of the tables."),
    machine: Optional[str] = typer.Option(None, "--machine", help="The machine type of clips whose paths do not say it "
                                          "(an asd score CSV of one machine's test folder)."),
) -> None:
    """The official DCASE evaluator's figures: per section AUC (all, source, target), pAUC, precision, recall and F1
    per domain; their means per machine and overall; the official score (2020 data: AUC and pAUC per ID)."""
    from asdcli.services.evaluation.evaluate import evaluate as evaluate_service, results_csv

    result = evaluate_service(scores, ground_truth, machine=machine)
    data = json.dumps(result.to_json(), indent=2)
    if json_out is not None:
        write_text(json_out, data + "\n")
    if csv_out is not None:
        write_text(csv_out, results_csv(result))
    if as_json:
        out.print(data, markup=False, highlight=False)
    else:
        out.print(section_table(result))
        out.print(means_table(result))
    for notice in result.notices:
        show_notice(notice)
    if result.unlabeled:
        err.print(f"{result.unlabeled} clip(s) without a label (in their name or the ground truth) were left out",
                  highlight=False)
