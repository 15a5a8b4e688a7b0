"""The picture of an explanation (`asd explain`): the clip's log-mel spectrogram with the flagged
span and band, the fused anomaly map under it with its threshold of interest, and each branch's
map, on one time axis in seconds (frequencies in Hz)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from asdcli.models.registry import BRANCHES  # noqa: E402
from asdcli.services.evaluation.plot import _save  # noqa: E402
from asdcli.services.scoring.explain import KINDS, Explanation  # noqa: E402


def explain_figure(ex: Explanation):
    """A figure of ``ex`` (module docstring)."""
    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True, height_ratios=[3, 1.4, 1.6], layout="constrained")
    end = ex.times[-1] + (ex.times[1] - ex.times[0] if ex.times.size > 1 else 0.03)
    spec, fused, branches = axes
    bins = ex.logmel.shape[0]
    spec.imshow(ex.logmel, origin="lower", aspect="auto", cmap="magma", extent=(0, end, 0, bins))
    ticks = np.linspace(0, bins - 1, 6).astype(int)
    spec.set_yticks(ticks + 0.5, [f"{ex.mel_hz[t + 1]:,.0f}" for t in ticks])
    spec.set_ylabel("frequency (Hz, mel scale)")
    verdict = "ANOMALOUS" if ex.decision else "normal"
    spec.set_title(f"{ex.clip.path.name}: {verdict}, score {ex.score:.2f} (threshold {ex.threshold:.2f})"
                   + (f"; {KINDS[ex.kind]}" if ex.decision else "; nothing stands out"), fontsize=10)
    if ex.decision:
        lo = int(np.searchsorted(ex.mel_hz[1:-1], ex.band_hz[0]))
        hi = int(np.searchsorted(ex.mel_hz[1:-1], ex.band_hz[1]))
        spec.add_patch(plt.Rectangle((ex.span[0], lo), ex.span[1] - ex.span[0], max(1, hi - lo), fill=False,
                                     edgecolor="cyan", linewidth=1.5))
        for ax in (fused, branches):
            ax.axvspan(*ex.span, color="tab:cyan", alpha=0.25, linewidth=0)
    fused.plot(ex.times, ex.fused_map, color="black", linewidth=1.2, label="fused map")
    fused.axhline(0, color="grey", linewidth=0.6)
    fused.axhline(1, color="grey", linewidth=0.6, linestyle=":")
    fused.plot([ex.peak_s], [ex.peak_sd], "v", color="tab:red", label=f"peak {ex.peak_sd:.1f} sd at {ex.peak_s:.2f} s")
    fused.set_ylabel("sd above\nnormal clips")
    fused.legend(loc="upper right", fontsize=8)
    for name, curve in ex.branch_maps.items():
        windowed = " (windows)" if name in ex.windowed else ""
        branches.plot(ex.times, curve, linewidth=0.9,
                      label=f"{BRANCHES[name].bid} {name}{windowed}, weight {ex.weights[name]:.2f}")
    branches.axhline(0, color="grey", linewidth=0.6)
    branches.set_ylabel("each branch\n(sd)")
    branches.set_xlabel("time (s)")
    branches.legend(loc="upper right", fontsize=7, ncol=2)
    branches.set_xlim(0, end)
    return fig


def plot_explanation(ex: Explanation, out: Path) -> Path:
    """Write the figure of ``ex`` to ``out`` (PNG, atomically)."""
    return _save(explain_figure(ex), out)
