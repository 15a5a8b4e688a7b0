"""`asd plot`: PNG figures of freeze-debug logs, of score CSVs and of a run's training logs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from asdcli.atomic import atomic_path  # noqa: E402
from asdcli.errors import DataError  # noqa: E402
from asdcli.metrics import MAX_FPR, auc, pauc  # noqa: E402
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


def log_kind(path: Path) -> str:
    """``debug`` (freeze-debug CSV), ``epochs`` (a run's per-epoch log) or ``scores``."""
    if path.is_dir():
        return "run" if (path / "run.json").exists() else "scores"
    with path.open(encoding="utf-8", errors="replace") as handle:
        header = handle.readline().strip().split(",")
    if header[:1] == ["kind"] and "loss_total" in header:
        return "debug"
    if header[:2] == ["epoch", "loss"]:
        return "epochs"
    return "scores"


def _debug_label(path: Path) -> str:
    return "frozen " + path.stem.removeprefix("debug_freeze_").replace("_", "+")


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
    parts = list(dict.fromkeys(p for _, _, ps in logs for p in ps))
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
    for k, part in enumerate(parts):
        axes.flat[k].set(title=f"{PART_NAMES.get(part, part)}: training loss", xlabel="training step", ylabel="loss")
        axes.flat[k].legend(fontsize=7)
        axes.flat[k].grid(alpha=0.3)
    grad_ax.set(title="gradient norms (frozen: 0, not drawn)", xlabel="training step",
                ylabel="gradient L2 norm (log scale)")
    grad_ax.legend(fontsize=6)
    grad_ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(parts) + 1 :]:
        ax.axis("off")
    fig.suptitle("freeze-debug: " + " vs ".join(_debug_label(p) for p in paths))
    fig.tight_layout()
    return _save(fig, out)


def plot_epochs(paths: list[Path], out: Path, size: tuple[int, int] = (12, 7)) -> Path:
    """Training loss per epoch of a run's branches (``<run>/logs/<branch>_train.csv``), one panel each."""
    cols = min(3, len(paths))
    rows_n = math.ceil(len(paths) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=size, squeeze=False)
    for ax, path in zip(axes.flat, paths):
        rows = read_table(path, ["epoch", "loss"])
        ax.plot(_floats(path, rows, "epoch"), _floats(path, rows, "loss"), "o-")
        ax.set(title=f"{path.stem.removesuffix('_train')}: training loss", xlabel="epoch", ylabel="mean loss per epoch")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(paths) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, out)


def _labelled(paths: list[Path]) -> list[ScoreRow]:
    rows = [r for f in score_files(paths) for r in read_scores(f)]
    labelled = [r for r in rows if r.label is not None]
    if len({r.label for r in labelled}) < 2:
        raise DataError("the scored clips need normal and anomalous labels in their names (normal_/anomaly_) to plot")
    return labelled


def plot_scores(paths: list[Path], out: Path, size: tuple[int, int] = (16, 5)) -> Path:
    """ROC curve of each section and of all clips (pAUC region shaded) and score histograms by
    domain and label, from score CSVs (``asd score`` output or DCASE files)."""
    rows = _labelled(paths)
    domains = sorted({r.domain for r in rows if r.domain}) or [None]
    fig, axes = plt.subplots(1, 1 + len(domains), figsize=size, squeeze=False)
    roc = axes[0, 0]
    roc.axvspan(0, MAX_FPR, color="orange", alpha=0.15, label=f"pAUC region (FPR <= {MAX_FPR})")
    sections = sorted({(r.machine, r.section) for r in rows})
    for machine, section in sections + [("all", "")]:
        own = [r for r in rows if machine == "all" or (r.machine, r.section) == (machine, section)]
        labels, scores = [r.label for r in own], [r.score for r in own]
        if len(set(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        unit = "id_" if all(r.dcase2020 for r in own) else "section "
        name = "all clips" if machine == "all" else f"{machine} {unit}{section}"
        roc.plot(fpr, tpr, lw=2.5 if machine == "all" else 1, color="black" if machine == "all" else None,
                 label=f"{name}: AUC {auc(labels, scores):.3f}, pAUC {pauc(labels, scores):.3f}")
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(title="ROC curves", xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01))
    roc.legend(fontsize=6, loc="lower right")
    values = np.array([r.score for r in rows])
    bins = np.linspace(np.percentile(values, 0.5), np.percentile(values, 99.5), 40)
    for ax, domain in zip(axes[0, 1:], domains):
        for label, color, name in ((0, "tab:blue", "normal"), (1, "tab:red", "anomaly")):
            own = [r.score for r in rows if r.label == label and (domain is None or r.domain == domain)]
            ax.hist(np.clip(own, bins[0], bins[-1]), bins=bins, alpha=0.55, color=color, label=f"{name} ({len(own)})")
        ax.set(title=f"anomaly scores, {domain} domain" if domain else "anomaly scores, all clips", xlabel="anomaly score (higher = more anomalous)",
               ylabel="clips")
        ax.legend()
    fig.tight_layout()
    return _save(fig, out)
