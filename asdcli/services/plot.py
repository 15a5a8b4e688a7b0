"""`asd plot`: PNG figures of freeze-debug logs, of score CSVs and of a run's training logs."""

from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from asdcli.atomic import atomic_path  # noqa: E402
from asdcli.errors import AsdError, DataError  # noqa: E402
from asdcli.metrics import MAX_FPR, auc, pauc  # noqa: E402
from asdcli.models.registry import BRANCHES  # noqa: E402
from asdcli.services.runs import is_run, open_run, read_branch_record  # noqa: E402
from asdcli.services.evaluate import ScoreRow, read_scores, score_files  # noqa: E402

DPI = 100
PART_NAMES = {"b1": "b1 pretrained", "b2": "b2 transformer-ae", "b3": "b3 contrastive", "b4": "b4 diffusion",
              "b5": "b5 flow", "fusion": "fusion head", "meta": "meta-learner"}


def read_table(path: Path, required: list[str]) -> list[dict[str, str]]:
    """Rows of a CSV with a header that has the ``required`` columns; errors name the file and line."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: not a log this command can plot (missing column(s) {', '.join(missing)})")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read ({error})") from None


def _floats(path: Path, rows: list[dict], column: str) -> np.ndarray:
    values = []
    for line, row in enumerate(rows, start=2):
        try:
            values.append(float(row[column]))
        except (TypeError, ValueError):
            raise DataError(f"{path}, line {line}: column {column} holds '{row[column]}', not a number") from None
    return np.array(values)


def _save(fig, out: Path) -> Path:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return out


def run_logs(path: Path) -> tuple[list[Path], Path]:
    """A run folder's per-epoch training logs and where its loss plot goes by default."""
    run = open_run(path)
    logs = run.train_logs()
    if not logs:
        raise DataError(f"{path}: no training logs (logs/<branch>_train.csv) in this run")
    return logs, run.loss_plot


def log_kind(path: Path) -> str:
    """``debug`` (freeze-debug CSV), ``epochs`` (a run's per-epoch log) or ``scores``."""
    if path.is_dir():
        return "run" if is_run(path) else "scores"
    with path.open(encoding="utf-8", errors="replace") as handle:
        header = handle.readline().strip().split(",")
    if header[:1] == ["kind"] and "loss_total" in header:
        return "debug"
    if header[:2] == ["epoch", "loss"]:
        return "epochs"
    return "scores"


def _debug_label(path: Path) -> str:
    return "frozen " + path.stem.removeprefix("debug_freeze_").replace("_", "+")


def _loss_name(part: str) -> str:
    """What a part's loss in a freeze-debug log measures."""
    by_id = {cls.bid: cls for cls in BRANCHES.values()}
    if part in by_id:
        return by_id[part].loss_name
    return {"fusion": "fusion head loss (fusion.loss: pairwise rank or balanced BCE)",
            "meta": "meta-learner loss on its query clips"}.get(part, "loss")


def plot_debug(paths: list[Path], out: Path, size: tuple[int, int] = (16, 8)) -> Path:
    """One loss panel per part and one panel of every part's gradient norm (log scale); several
    logs overlay (solid, dashed, dotted, ...) for comparison."""
    logs = []
    for path in paths:
        rows = [r for r in read_table(path, ["kind", "global_step", "loss_total"]) if r["kind"] == "step"]
        if not rows:
            raise DataError(f"{path}: no step rows to plot")
        parts = [c.removeprefix("loss_") for c in rows[0] if c.startswith("loss_") and c != "loss_total"]
        logs.append((path, rows, parts))
    order = list(PART_NAMES)
    parts = sorted(dict.fromkeys(p for _, _, ps in logs for p in ps), key=lambda p: (order.index(p) if p in order else len(order), p))
    cols = math.ceil((len(parts) + 1) / 2)
    fig, axes = plt.subplots(2, cols, figsize=(size[0], size[1]), squeeze=False)
    styles, colors = ["-", "--", ":", "-."], plt.get_cmap("tab10")
    grad_ax = axes.flat[len(parts)]
    for f, (path, rows, own) in enumerate(logs):
        step = _floats(path, rows, "global_step")
        for k, part in enumerate(parts):
            if part not in own:
                continue
            label = f"{PART_NAMES.get(part, part)}, {_debug_label(path)}"
            axes.flat[k].plot(step, _floats(path, rows, f"loss_{part}"), styles[f % 4], color=colors(k), label=_debug_label(path))
            grad = _floats(path, rows, f"grad_norm_{part}")
            if (grad > 0).any():  # a frozen part's norm is 0: nothing to draw on a log scale
                grad_ax.semilogy(step[grad > 0], grad[grad > 0], styles[f % 4], color=colors(k), label=label)
    frozen_everywhere = set.intersection(*(set(path.stem.removeprefix("debug_freeze_").split("_")) for path, _, _ in logs))
    for k, part in enumerate(parts):
        state = " (frozen: evaluated, not trained)" if part in frozen_everywhere else ""
        axes.flat[k].set(title=f"{PART_NAMES.get(part, part)}: loss{state}", xlabel="training step",
                         ylabel=textwrap.fill(_loss_name(part), 34))
        axes.flat[k].legend(fontsize=8)
        axes.flat[k].grid(alpha=0.3)
    grad_ax.set(title="gradient norms (frozen: 0, not drawn)", xlabel="training step",
                ylabel="gradient L2 norm (log scale)")
    grad_ax.legend(fontsize=8)
    grad_ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(parts) + 1 :]:
        ax.axis("off")
    fig.suptitle("freeze-debug: " + " vs ".join(f"{_debug_label(p)} ({_where(p)})" for p in paths))
    fig.tight_layout()
    return _save(fig, out)


def _branch_of_log(path: Path) -> str:
    return path.stem.removesuffix("_train")


def _objective_switch(log: Path) -> float | None:
    """The epoch boundary where a branch's second objective joins its loss (the loss then jumps by
    design; :attr:`Branch.switch_field`), from the finished branch's metadata beside the log;
    None when the branch has none or it is unknown."""
    name = _branch_of_log(log)
    field = getattr(BRANCHES.get(name), "switch_field", None)
    if field is None:
        return None
    try:  # the log of a run: <run>/logs/<branch>_train.csv beside the branch's record
        meta = read_branch_record(open_run(log.parent.parent), name)
        fraction = float(meta.config["branches"][BRANCHES[name].config_field][field])
        epochs = meta.epochs
    except (AsdError, OSError, ValueError, KeyError, TypeError):
        return None
    first = math.ceil(fraction * epochs)  # the first epoch (0-based) trained with the classifier
    return first + 0.5 if 0 < first < epochs else None


def plot_epochs(paths: list[Path], out: Path, size: tuple[int, int] = (13, 7)) -> Path:
    """Training loss per epoch of a run's branches (``<run>/logs/<branch>_train.csv``), one panel
    each in the order b1..b5, the loss named on its axis; where a branch's second objective
    joins (the contrastive branch's classifier) is marked."""
    order = {name: i for i, name in enumerate(BRANCHES)}
    paths = sorted(paths, key=lambda p: (order.get(_branch_of_log(p), len(order)), p.name))
    cols = min(3, len(paths))
    rows_n = math.ceil(len(paths) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=size, squeeze=False)
    for ax, path in zip(axes.flat, paths):
        rows = read_table(path, ["epoch", "loss"])
        name = _branch_of_log(path)
        cls = BRANCHES.get(name)
        ax.plot(_floats(path, rows, "epoch"), _floats(path, rows, "loss"), "o-")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=f"{cls.bid} {name}" if cls else name, xlabel="epoch",
               ylabel=textwrap.fill(cls.loss_name if cls else "mean training loss", 34))
        switch = _objective_switch(path)
        if switch is not None:
            ax.axvline(switch, color="grey", ls="--")
            right = switch > np.mean(ax.get_xlim())  # write on the side with room
            ax.annotate("classifier joins:\nthe loss jumps by design", (switch, 0.95), xycoords=("data", "axes fraction"),
                        ha="right" if right else "left", va="top", fontsize=9, color="dimgrey",
                        xytext=(-4 if right else 4, 0), textcoords="offset points")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(paths) :]:
        ax.axis("off")
    fig.suptitle(f"training loss per epoch (mean over the epoch's batches): {_where(paths[0].parent.parent)}")
    fig.tight_layout()
    return _save(fig, out)


def _where(path: Path) -> str:
    return str(path.resolve())


def _labelled(paths: list[Path]) -> list[ScoreRow]:
    rows = [r for f in score_files(paths) for r in read_scores(f)]
    labelled = [r for r in rows if r.label is not None]
    if len({r.label for r in labelled}) < 2:
        raise DataError("the scored clips need normal and anomalous labels in their names (normal_/anomaly_) to plot")
    return labelled


def _threshold(rows: list[ScoreRow]) -> float | None:
    """Where a section's decisions switch from normal to anomalous (between the highest score
    decided normal and the lowest decided anomalous): score files do not hold the threshold
    itself, so the plot says what it draws; None without decisions."""
    normal = [r.score for r in rows if r.decision == 0]
    anomalous = [r.score for r in rows if r.decision == 1]
    if not normal or not anomalous or any(r.decision is None for r in rows):
        return None
    return (max(normal) + min(anomalous)) / 2 if max(normal) < min(anomalous) else None


def plot_scores(paths: list[Path], out: Path) -> Path:
    """ROC curve of each section (pAUC region shaded) and, per section, the histogram of its
    scores by label (and domain), with the decision threshold where decisions were given. Each
    section has its own panel: scores of different sections are on different scales."""
    rows = _labelled(paths)
    sections = sorted({(r.machine, r.section) for r in rows})
    panels = 1 + len(sections)
    cols = min(4, panels)
    n_rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3.6 * n_rows), squeeze=False)
    roc = axes.flat[0]
    roc.axvspan(0, MAX_FPR, color="orange", alpha=0.15, label=f"pAUC region (FPR <= {MAX_FPR})")
    for machine, section in sections:
        own = [r for r in rows if (r.machine, r.section) == (machine, section)]
        labels, scores = [r.label for r in own], [r.score for r in own]
        if len(set(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        unit = "id_" if all(r.dcase2020 for r in own) else "section "
        roc.plot(fpr, tpr, lw=1.5, label=f"{machine} {unit}{section}: AUC {auc(labels, scores):.3f}, "
                                            f"pAUC {pauc(labels, scores):.3f}")
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(title="ROC curve per section", xlabel="false-positive rate", ylabel="true-positive rate",
            xlim=(-0.01, 1.01), ylim=(-0.01, 1.02))
    if len(sections) <= 6:
        roc.legend(fontsize=8, loc="lower right", framealpha=0.85)
    else:  # many sections: the legend beside the panel, not over the curves
        roc.legend(fontsize=6 if len(sections) > 12 else 7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                   borderaxespad=0.0)
    for ax, (machine, section) in zip(axes.flat[1:], sections):
        own = [r for r in rows if (r.machine, r.section) == (machine, section)]
        values = np.array([r.score for r in own])
        bins = np.linspace(values.min(), values.max(), 25) if np.ptp(values) > 0 else 10
        domains = sorted({r.domain for r in own if r.domain}) or [None]
        for label, color, name in ((0, "tab:blue", "normal"), (1, "tab:red", "anomalous")):
            for domain, style in zip(domains, ("stepfilled", "step")):
                chosen = [r.score for r in own if r.label == label and (domain is None or r.domain == domain)]
                tag = f"{name}{', ' + domain if domain else ''} ({len(chosen)})"
                ax.hist(chosen, bins=bins, histtype=style, alpha=0.5 if style == "stepfilled" else 1.0, lw=1.5,
                        color=color, label=tag)
        threshold = _threshold(own)
        if threshold is not None:
            ax.axvline(threshold, color="black", ls="--", lw=1, label="decisions switch (between the clips decided "
                       "normal and anomalous)")
        unit = "id_" if all(r.dcase2020 for r in own) else "section "
        ax.set(title=f"{machine} {unit}{section}: anomaly scores", xlabel="anomaly score (higher = more anomalous)",
               ylabel="clips")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    fig.suptitle("scores of " + ", ".join(_where(p) for p in paths))
    fig.tight_layout()
    return _save(fig, out)
