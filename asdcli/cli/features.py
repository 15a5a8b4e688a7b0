"""`asd features DATA`: log-mel features for every clip, cached on disk."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from asdcli.cli.common import show_notice, OverridesArgument, CacheOption, ConfigOption, WorkersOption, err, handle_errors, progress_bar, report_failures, resolve_config
from asdcli.errors import DataError


@handle_errors
def features(
    data: Path = typer.Argument(..., help="Dataset root, machine folder, folder of audio or one file."),
    config: Optional[str] = ConfigOption,
    overrides: Optional[List[str]] = OverridesArgument,
    cache_dir: Optional[Path] = CacheOption,
    workers: Optional[int] = WorkersOption,
) -> None:
    """Compute log-mel features of every clip under DATA and cache them for later commands."""
    from asdcli.data.audio import length_notice
    from asdcli.data.layout import discover
    from asdcli.services.inputs.features import default_cache_dir, extract_features

    cfg = resolve_config(config, overrides, **{"loader.workers": workers})
    cache = cache_dir or default_cache_dir()
    clips = discover(data)
    with progress_bar() as bar:
        task = bar.add_task("features", total=len(clips))
        report = extract_features(clips, cfg, cache, on_item=lambda _: bar.advance(task))
    err.print(
        f"{report.total} clips: {report.computed} computed, {report.cached} from cache, "
        f"{len(report.failures)} skipped; cache {cache}"
    )
    report_failures(report.failures)
    failed = {path for path, _ in report.failures}
    notice = length_notice([c.path for c in clips if c.path not in failed], cfg.audio)
    if notice:
        show_notice(notice)
    if report.failures and len(report.failures) == report.total:
        raise DataError(f"no clip under {data} could be read")
