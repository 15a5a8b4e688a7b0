"""`asd evaluate`: AUC, pAUC and the official DCASE score from score CSVs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from asdcli.atomic import write_text
from asdcli.cli.common import err, handle_errors, out
from asdcli.services.evaluate import Evaluation, evaluate as evaluate_service


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render(result: Evaluation) -> Table:
    """The evaluation as a rich table: sections, then the DCASE averages."""
    table = Table(title="DCASE evaluation (pAUC at max FPR 0.1; domain AUC as DCASE 2022-2025)")
    for column in ("machine", "section", "AUC", "AUC (source)", "AUC (target)", "pAUC"):
        table.add_column(column, justify="left" if column in ("machine", "section") else "right")
    for s in result.sections:
        table.add_row(s.machine, s.section, _fmt(s.auc), _fmt(s.auc_source), _fmt(s.auc_target), _fmt(s.pauc))
    table.add_section()
    for machine, m in result.per_machine.items():
        table.add_row(machine, "mean", _fmt(m["auc"]), "", "", _fmt(m["pauc"]))
    table.add_section()
    table.add_row("all", "harmonic mean", "", _fmt(result.harmonic_source), _fmt(result.harmonic_target), "")
    table.add_row("all", "arithmetic mean (AUCs, pAUC)", _fmt(result.arithmetic), "", "", "")
    table.add_row("[bold]all", "[bold]official score", f"[bold]{result.official:.4f}", "", "", "")
    return table


@handle_errors
def evaluate(
    scores: List[Path] = typer.Argument(..., help="Score CSVs, or folders of anomaly_score_<machine>_section_<XX>_test.csv."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures as JSON to this file."),
    as_json: bool = typer.Option(False, "--as-json", help="Print JSON to stdout instead of the table."),
) -> None:
    """AUC, pAUC, AUC per domain, per machine and section, the means and the official score."""
    result = evaluate_service(scores)
    data = json.dumps(result.to_json(), indent=2)
    if json_out is not None:
        write_text(json_out, data + "\n")
    if as_json:
        out.print(data, markup=False, highlight=False)
    else:
        out.print(render(result))
    if result.unlabeled:
        err.print(f"{result.unlabeled} clip(s) without a label in their name were left out")
