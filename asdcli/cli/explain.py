"""`asd explain CLIP... --run RUN`: when, where and what in each clip drove its score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from asdcli.cli.common import (CacheOption, DeviceOption, GpuOption, MachineOption, SectionOption, err, gpu_or_cpu,
                               handle_errors, out, report_failures, run_option, show_notice, with_identity, write_out)


def png_names(clips) -> list[str]:
    """A PNG name per clip: its file name's stem, with its machine in front where another clip
    of this call has the same stem (DCASE 2020 names repeat across machine types) and a number
    after where that is not enough (the same name in two folders of one machine)."""
    stems = [c.path.stem for c in clips]
    names = [f"{c.machine}_{c.path.stem}" if stems.count(c.path.stem) > 1 else c.path.stem for c in clips]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(f"{name}.png" if names.count(name) == 1 else f"{name}_{seen[name]}.png")
    return out


@handle_errors
def explain(
    clips: List[Path] = typer.Argument(..., help="Audio files (or folders of them) to explain."),
    run: Path = run_option("Trained run folder."),
    out_dir: Path = typer.Option(Path("explain"), "--out", "-o", help="Folder for one PNG per clip."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="The run's training data (normal clips): each "
                                        "section's maps are read against up to 16 of its normal clips frame by frame "
                                        "(recommended; without it, clip edges can look anomalous)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per clip on stdout instead of a sentence."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Write no PNG."),
    machine: Optional[str] = MachineOption,
    section: Optional[int] = SectionOption,
    gpu: Optional[int] = GpuOption,
    device: Optional[str] = DeviceOption,
    cache_dir: Optional[Path] = CacheOption,
) -> None:
    """For each clip: its score and decision, the time span (s) and frequency range (Hz) that drove
    it, how far above the section's normal clips (sd), which branches agree and what kind of change
    it looks like; a PNG per clip (spectrogram, fused map, each branch's map). A clip decided
    normal gets one line with its highest point, so the headroom shows."""
    from asdcli.data.layout import discover
    from asdcli.services.evaluation.plot_explain import plot_explanation
    from asdcli.services.inputs.features import default_cache_dir
    from asdcli.services.scoring.score import Detector

    found = [c for path in clips for c in discover(path)]
    found = with_identity(found, machine, section)
    detector = Detector.load(run, gpu_or_cpu(gpu, device), cache_dir or default_cache_dir())
    reference = [c for c in discover(data) if c.split == "train"] if data is not None else None
    explained = detector.explain(found, reference)
    explanations = explained.explanations
    for notice in explained.notices:
        show_notice(notice)
    names = png_names([ex.clip for ex in explanations])
    for ex, name in zip(explanations, names):
        if as_json:
            write_out(json.dumps(ex.as_dict()) + "\n")
        else:
            write_out(ex.summary() + "\n")
        if not no_plot:
            plot_explanation(ex, out_dir / name)
    out.file.flush()
    if explanations and not no_plot:
        err.print(f"wrote {len(explanations)} PNG(s) to {out_dir}")
    windowed = sorted({n for ex in explanations for n in ex.windowed})
    if windowed:
        show_notice(f"maps of {', '.join(windowed)} are their scores of windows of the clip (2 s, a quarter of "
                    "shorter clips; an approximation; the other branches map each frame's and band's share of their score)")
    report_failures(explained.skipped)
