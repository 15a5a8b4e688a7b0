"""What the training and evaluation commands print about a result (shared by each stage's own
command and `asd train`, which runs them all)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from asdcli.cli.common import err, out, report_failures, show_notice

if TYPE_CHECKING:
    from asdcli.services.evaluation.evaluate import Evaluation

SHORT = {"arithmetic mean": "a-mean", "harmonic mean": "h-mean", "source harmonic mean": "h-mean (source)",
         "target harmonic mean": "h-mean (target)"}


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


def report_branch(result, cfg) -> None:
    """A trained branch's statistics per section, what it cannot learn and how its held-out clips scored."""
    if result.rank != 0:  # under torchrun, the first process reports for all
        return
    report_failures(result.skipped)
    table = Table(title=f"{result.branch}: {result.clips} training clips, {result.epochs} epochs -> {result.run}")
    for column in ("section", "clips", "train score mean", "std", "decision threshold"):
        table.add_column(column, justify="right" if column != "section" else "left")
    for group, st in result.score_stats.items():
        table.add_row(group, str(st["count"]), f"{st['mean']:.4f}", f"{st['std']:.4f}", f"{st['threshold']:.4f}")
    out.print(table)
    _report_reliability(result, cfg.train.heldout_max_z, cfg.train.heldout_min_clips)
    if result.final_loss is not None:
        err.print(f"final training loss {result.final_loss:.5f}; log: {result.log}")
    if result.world_size > 1:
        err.print(f"{result.world_size} processes; replicas identical: {result.replicas_identical}")


def _report_reliability(result, max_z: float, min_clips: int) -> None:
    """What the branch says it cannot learn, and how its held-out clips scored."""
    from asdcli.services.scoring.reliability import heldout_gap, heldout_summary
    from asdcli.services.store.records import HeldOut

    if result.limitation:
        show_notice(f"{result.branch}: {result.limitation}; the fusion leaves it out")
    z, clips = result.heldout.get("median_z"), result.heldout.get("clips", 0)
    held = HeldOut.model_validate(result.heldout) if result.heldout else None
    gap = heldout_gap(held)
    if z is None:
        err.print("no held-out clips (train.holdout is 0 or every section has fewer than 3 clips): whether the branch "
                  "generalises from its training clips is not checked", highlight=False)
    elif gap > max_z and clips < min_clips:
        show_notice(f"{result.branch}: {heldout_summary(held)}; too few held-out clips "
                    f"(fewer than train.heldout_min_clips={min_clips}) to leave it out of the fusion")
    elif gap > max_z:
        show_notice(f"{result.branch}: {heldout_summary(held)}: it does not generalise "
                    "from them; the fusion leaves it out")
    else:
        err.print(f"held-out normal clips: {clips}, median {z:+.2f} standard deviations from the training clips "
                  f"({gap:+.2f} as a normal deviate given how few they are; limit {max_z:g})", highlight=False)


def report_fusion(result, run: Path) -> None:
    """The fusion head's branches, prior, pseudo-anomaly evidence and weights."""
    from asdcli.services.evaluation.info import prior_summary

    report_failures(result.skipped)
    if result.missing:
        show_notice(f"not fused (not trained): {', '.join(result.missing)}")
    for name, reason in result.left_out.items():
        show_notice(f"{name} left out: {reason}")
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    prior = result.prior
    table = Table(title=f"fusion of {len(result.branches)} branches -> {run}",
                  caption=f"examples: {counts}; {prior_summary(prior)}. Fair AUC: normal vs the pseudo-anomaly kinds "
                          f"the branch's own training did not already separate (temperature "
                          f"{result.prior_temperature:.3f}); it moves the weights as far as the prior trusts it.")
    for column in ("branch", "prior", "pseudo-anomaly AUC (mean over sections)", "fair AUC", "mean attention weight"):
        table.add_column(column, justify="left" if column == "branch" else "right")
    for name in result.branches:
        table.add_row(name, f"{prior['prior_weights'][name]:.3f}", f"{result.pseudo_auc[name]:.3f}",
                      f"{result.fair_pseudo_auc[name]:.3f}", f"{result.mean_weights[name]:.3f}")
    table.add_row("fused", "", f"{result.pseudo_auc['fused']:.3f}", "")
    out.print(table)


def report_meta(result, run: Path, cfg) -> None:
    """The meta-learner's tasks and query losses, or why it keeps the fused score."""
    report_failures(result.skipped)
    if result.abstained:
        show_notice(f"meta-learner: {result.abstained}")
        return
    table = Table(title=f"MAML over {len(result.tasks)} sections -> {run}",
                  caption=f"tasks from {result.examples}; query loss: mean over the tasks of a fresh support/query "
                          "split (lower is better)")
    table.add_column("tasks")
    table.add_column("held out")
    table.add_column("query loss, unadapted", justify="right")
    table.add_column(f"after {cfg.meta.inner_steps} adaptation steps", justify="right")
    table.add_row(", ".join(result.tasks), ", ".join(result.holdout) or "-", f"{result.query_loss_unadapted:.4f}",
                  f"{result.query_loss_adapted:.4f}")
    out.print(table)
