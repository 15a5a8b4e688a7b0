"""`asd plot`: PNG figures of freeze-debug logs, of score CSVs and of a run's training logs."""

from __future__ import annotations

import csv
import io
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
from asdcli.files import CSV_LIMIT, LOG_LIMIT, open_regular, read_regular  # noqa: E402
from asdcli.metrics import MAX_FPR, auc, pauc  # noqa: E402
from asdcli.models.registry import BRANCHES  # noqa: E402
from asdcli.services.store.runs import is_run, open_run, read_branch_record  # noqa: E402
from asdcli.services.evaluation.evaluate import ScoreRow, read_scores, score_files  # noqa: E402

DPI = 100
PART_NAMES = {"b1": "b1 pretrained", "b2": "b2 transformer-ae", "b3": "b3 contrastive", "b4": "b4 diffusion",
              "b5": "b5 flow", "fusion": "fusion head", "meta": "meta-learner"}


def read_table(path: Path, required: list[str]) -> list[dict[str, str]]:
    """Rows of a CSV with a header that has the ``required`` columns; errors name the file and line."""
    try:
        text = read_regular(path, "log", DataError, LOG_LIMIT).decode("utf-8")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: not a log this command can plot (missing column(s) {', '.join(missing)})")
        return list(reader)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnicodeDecodeError, csv.Error) as error:
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
    """``debug`` (freeze-debug CSV), ``epochs`` (a run's per-epoch log), ``watch`` (an asd watch
    log) or ``scores``."""
    if path.is_dir():
        return "run" if is_run(path) else "scores"
    if path.suffix == ".jsonl":
        return "watch"
    try:
        with open_regular(path, "log or score file", DataError, CSV_LIMIT) as (handle, _):
            header = handle.readline(4096).decode("utf-8", errors="replace").strip().split(",")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    if header[:1] == ["kind"] and "loss_total" in header:
        return "debug"
    if header[:2] == ["epoch", "loss"]:
        return "epochs"
    if header[:3] == ["time", "file", "machine"]:
        return "watch"
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
    """The figure of :func:`score_figure` as a PNG."""
    return _save(score_figure(paths), out)


def score_figure(paths: list[Path]):
    """ROC curve of each section (pAUC region shaded) beside a panel of their AUC and pAUC and
    of what the histograms draw, then, per section, the histogram of its scores by label (and
    domain), with the decision threshold where decisions were given. Each section has its own
    panel (scores of different sections are on different scales); the legends have a panel of
    their own, so that they cover no curve at 1 or 21 sections."""
    rows = _labelled(paths)
    sections = sorted({(r.machine, r.section) for r in rows})
    cols = max(2, min(4, len(sections)))
    hist_rows = math.ceil(len(sections) / cols)
    fig = plt.figure(figsize=(4.3 * cols, 4.4 + 3.3 * hist_rows), layout="constrained")
    grid = fig.add_gridspec(1 + hist_rows, cols, height_ratios=[4.4] + [3.3] * hist_rows)
    roc = fig.add_subplot(grid[0, : cols // 2])
    keys = fig.add_subplot(grid[0, cols // 2 :])
    keys.axis("off")
    curves = _roc_panel(roc, rows, sections)
    hist_handles: dict[str, object] = {}
    for k, (machine, section) in enumerate(sections):
        ax = fig.add_subplot(grid[1 + k // cols, k % cols])
        _histogram(ax, [r for r in rows if (r.machine, r.section) == (machine, section)], hist_handles)
    size = 8
    first = keys.legend(*zip(*curves), loc="upper left", fontsize=size, title="ROC curves (AUC, pAUC)",
                        title_fontsize=size + 1, ncol=2 if len(curves) > 10 else 1, frameon=False)
    keys.add_artist(first)
    keys.legend(list(hist_handles.values()), list(hist_handles), loc="lower left" if len(curves) <= 10 else "lower right",
                fontsize=size, frameon=False, title="histograms (clips per bin)", title_fontsize=size + 1)
    fig.suptitle("scores of " + ", ".join(_where(p) for p in paths))
    return fig


def _unit(rows: list[ScoreRow]) -> str:
    return "id_" if all(r.dcase2020 for r in rows) else "section "


def _roc_panel(roc, rows: list[ScoreRow], sections: list[tuple[str, str]]) -> list[tuple[object, str]]:
    """Every section's ROC curve on ``roc``; returns the (line, label) pairs for the legend panel."""
    shade = roc.axvspan(0, MAX_FPR, color="orange", alpha=0.15)
    curves = [(shade, f"pAUC region (FPR <= {MAX_FPR})")]
    colors = plt.get_cmap("tab20" if len(sections) > 10 else "tab10")
    for k, (machine, section) in enumerate(sections):
        own = [r for r in rows if (r.machine, r.section) == (machine, section)]
        labels, scores = [r.label for r in own], [r.score for r in own]
        if len(set(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        line, = roc.plot(fpr, tpr, lw=1.5, color=colors(k % colors.N))
        curves.append((line, f"{machine} {_unit(own)}{section}: {auc(labels, scores):.3f}, {pauc(labels, scores):.3f}"))
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(title="ROC curve per section", xlabel="false-positive rate", ylabel="true-positive rate",
            xlim=(-0.01, 1.01), ylim=(-0.01, 1.02), aspect="equal")
    roc.grid(alpha=0.3)
    return curves


def _histogram(ax, own: list[ScoreRow], handles: dict[str, object]) -> None:
    """One section's score histogram by label and domain (its legend entries go to ``handles``)."""
    values = np.array([r.score for r in own])
    bins = np.linspace(values.min(), values.max(), 25) if np.ptp(values) > 0 else 10
    domains = sorted({r.domain for r in own if r.domain}) or [None]
    for label, color, name in ((0, "tab:blue", "normal"), (1, "tab:red", "anomalous")):
        for domain, style in zip(domains, ("stepfilled", "step")):
            chosen = [r.score for r in own if r.label == label and (domain is None or r.domain == domain)]
            *_, patches = ax.hist(chosen, bins=bins, histtype=style, alpha=0.5 if style == "stepfilled" else 1.0,
                                  lw=1.5, color=color)
            handles.setdefault(f"{name}{', ' + domain if domain else ''}", patches[0])
    threshold = _threshold(own)
    if threshold is not None:
        handles.setdefault("decision threshold (between the clips\ndecided normal and anomalous)",
                           ax.axvline(threshold, color="black", ls="--", lw=1))
    normal, anomalous = sum(r.label == 0 for r in own), sum(r.label == 1 for r in own)
    ax.set_title(f"{own[0].machine} {_unit(own)}{own[0].section}: {normal} normal, {anomalous} anomalous", fontsize=10)
    ax.set(xlabel="anomaly score (higher = more anomalous)", ylabel="clips")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
