"""`asd evaluate`: the official DCASE evaluators' figures from score and decision CSVs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from rich.table import Table

from asdcli.atomic import write_text
from asdcli.cli.common import show_notice, err, handle_errors, out

if TYPE_CHECKING:
    from asdcli.services.evaluation.evaluate import Evaluation


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _decision(s, domain: str) -> str:
    decided = (s.decisions or {}).get(domain)
    return "-" if decided is None else f"{decided.f1:.4f}"


def section_table(result: Evaluation) -> Table:
    """One row per section (machine ID in 2020) with the figures its header names."""
    if result.dcase2020:
        table = Table(title="DCASE 2020 evaluation (pAUC at max FPR 0.1)")
        for column in ("machine", "id", "AUC", "pAUC"):
            table.add_column(column, justify="left" if column in ("machine", "id") else "right")
        for s in result.sections:
            table.add_row(s.machine, s.section, _fmt(s.auc), _fmt(s.pauc))
        return table
    table = Table(title="DCASE evaluation per section (pAUC at max FPR 0.1; domain AUC: that domain's normal clips "
                        "against all anomalous clips of the section)")
    columns = ("machine", "section", "AUC (all)", "AUC (source)", "AUC (target)", "pAUC", "F1 (source)", "F1 (target)")
    for column in columns:
        table.add_column(column, justify="left" if column in ("machine", "section") else "right")
    for s in result.sections:
        table.add_row(s.machine, s.section, _fmt(s.auc), _fmt(s.auc_source), _fmt(s.auc_target), _fmt(s.pauc),
                      _decision(s, "source"), _decision(s, "target"))
    return table


SHORT = {"arithmetic mean": "a-mean", "harmonic mean": "h-mean", "source harmonic mean": "h-mean (source)",
         "target harmonic mean": "h-mean (target)"}


def means_table(result: Evaluation) -> Table:
    """Per machine and over all machines, the means the official evaluator prints, then the score."""
    table = Table(title="means (AUC: of the sections' AUC (source) and AUC (target); h-mean: harmonic)"
                  if not result.dcase2020 else "means over machine IDs")
    for column in ("machine", "mean", "AUC", "pAUC", "precision", "recall", "F1"):
        table.add_column(column, justify="left" if column in ("machine", "mean") else "right")
    for machine, rows in [*result.machines.items(), ("all", result.overall)]:
        for name, m in rows.items():
            table.add_row(machine, "mean" if result.dcase2020 else SHORT[name], _fmt(m.auc), _fmt(m.pauc), _fmt(m.precision), _fmt(m.recall), _fmt(m.f1))
        table.add_section()
    if result.dcase2020:
        table.add_row("[bold]all", "[bold]score (AUC+pAUC)/2", f"[bold]{result.official:.4f}", "", "", "", "")
    else:
        table.add_row("[bold]all", "[bold]official score", f"[bold]{result.official:.4f}", "", "", "", "")
        if result.official_ci95 is not None:
            table.add_row("all", "score ci95 (±)", f"{result.official_ci95:.2g}", "", "", "", "")
    return table


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
