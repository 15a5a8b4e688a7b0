"""`asd info RUN`: the stages of a run, whether each is finished, unfinished or stale, and their settings."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from asdcli.cli.common import handle_errors, out, run_option

STYLE = {"finished": "green", "unfinished": "yellow", "stale": "yellow", "damaged": "red", "missing": "dim"}


@handle_errors
def info(
    run: Optional[Path] = typer.Argument(None, help="A run folder."),
    run_opt: Optional[Path] = run_option("The run folder, as the other commands take it (instead of RUN).", None),
    as_json: bool = typer.Option(False, "--as-json", help="Print JSON instead of the tables."),
) -> None:
    """What a run holds: sections and their training clips, each stage (finished, unfinished, stale, damaged or
    missing) and the settings it was made with."""
    from asdcli.errors import ConfigError
    from asdcli.services.evaluation.info import run_info

    if run is not None and run_opt is not None and run != run_opt:
        raise ConfigError(f"two run folders given ({run} and --run {run_opt}): name one")
    if run is None and run_opt is None:
        raise ConfigError("name the run folder: asd info RUN (or --run RUN)")
    result = run_info(run or run_opt)
    if as_json:
        out.print(json.dumps(asdict(result), indent=2, default=str), markup=False, highlight=False)
        return
    out.print(f"run {result.path}: {len(result.sections)} section(s), {result.classes} section-and-attribute "
              f"class(es), {result.holdout} held-out normal clip(s); config: {result.config}", highlight=False)
    sections = Table(title="sections")
    sections.add_column("section")
    sections.add_column("normal training clips (held-out ones included)", justify="right")
    for name, count in result.sections.items():
        sections.add_row(name, str(count))
    out.print(sections)
    stages = Table(title="stages")
    for column in ("stage", "state", "settings", "notes"):
        stages.add_column(column)
    for stage in result.stages:
        settings = ", ".join(f"{k} {v}" for k, v in stage.settings.items())
        stages.add_row(stage.name, f"[{STYLE[stage.state]}]{stage.state}", settings, stage.detail)
    out.print(stages)
