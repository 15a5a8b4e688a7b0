"""How b1, b2 and b4 pool frames (or patches) into a clip score, on the runs bench_real.py kept.

    python bench/bench_pooling.py --work W [--synthetic RUN DATA] [--final OTHER] [--markdown ../docs/pooling.md]

The reconstruction branches (b2 Transformer AE, b4 diffusion) reconstruct every frame and bin of
a clip; their clip score is either the Mahalanobis distance of the clip's per-bin error profile
from its section's training clips (``score: mahalanobis``, the default) or the squared error of
each frame pooled over the frames (``score: mse`` with ``pooling``: mean, max, top10 - the mean
of the largest tenth of the frames - or gwrp). Every choice a user can set is scored here on the
same trained weights: for each fold and seed kept by ``bench_real.py --work W --reuse`` the branch
reconstructs the fold's training and labelled test clips once and every pooling is computed from
those errors (AUC per section, averaged over the set's sections). Then, for each set, the pooling
with the best mean AUC on the *other* sets is judged on it (leave one set out). ``--synthetic RUN
DATA``: the same on a run trained on synthetic data (``asd synth``), whose test clips are DATA's.
``--final OTHER``: the final score (the whole pipeline, fusion and meta-learner refitted) of
bench_real.py run into ``OTHER`` with a pooling changed in its ``--config``, set by set against the
runs of ``--work`` (each run's result.json): what a changed default does to the product's score.

b1 (frozen EfficientAT, kNN of clip embeddings: its backbone averages its last feature map over
frequency and time) is scored the way AnoPatch scores a pretrained model: the cosine distance of
each time step of that feature map (averaged over frequency) to the nearest time step of the
section's training clips, pooled over time (mean, max, top10), and the same over every
frequency-and-time patch, against its clip-embedding kNN ("clip", what b1 does); and b1's clip
embedding taken from the output of each block of EfficientAT instead of the last (the layer). b3's CNN pools
its last feature map to one embedding (mean and max together) and b5 scores b3's embedding: no
pooling over frames there to choose.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from asdcli.data.layout import discover
from asdcli.models.base import pool_time
from asdcli.models.error_profile import error_profile
from asdcli.services.inputs.dataset import ClipSet
from asdcli.services.inputs.features import make_extractor
from asdcli.services.scoring.score import Detector
from real_report import section_metrics

BRANCHES = ("pretrained", "transformer-ae", "diffusion")
POOLINGS = {"pretrained": ("clip", "steps mean", "steps max", "steps top10", "patches mean", "patches max",
                           "patches top10"),
            "transformer-ae": ("mahalanobis", "mse mean", "mse max", "mse top10", "mse gwrp")}
POOLINGS["diffusion"] = POOLINGS["transformer-ae"]
LAYERS = "b1 by layer"  # b1's clip embedding taken from each block of EfficientAT instead of the last


def _batches(detector: Detector, clips, cache: Path, with_wave: bool = False):
    """The clips it could read and their batches of 8 (features, and audio where ``with_wave``)."""
    config = detector.config
    clipset = ClipSet(clips, config, make_extractor(config, cache), detector.run.vocab, with_wave=with_wave,
                      keep_features=True, require_any=False)
    count = len(clipset.clips)
    return clipset.clips, (clipset.batch(list(range(start, min(start + 8, count)))) for start in range(0, count, 8))


def _errors(detector: Detector, name: str, clips, cache: Path):
    """The branch's signed errors (N, n_mels, T) of the clips it could read, their sections and clips."""
    branch, (read, batches) = detector.loaded.branches[name], _batches(detector, clips, cache)
    errors, groups = [], []
    with torch.no_grad():
        for batch in batches:
            errors.append(branch.error(batch).float())
            groups.append(batch.group)
    return torch.cat(errors), torch.cat(groups), read, branch


def _feature_maps(detector: Detector, clips, cache: Path):
    """b1's last feature maps (N, C, M', T') of the clips, every block's output averaged over
    frequency and time [(N, C_k)], their sections and clips."""
    branch, (read, batches) = detector.loaded.branches["pretrained"], _batches(detector, clips, cache, with_wave=True)
    backbone, maps, layers, groups = branch.backbone, [], [], []
    with torch.no_grad():
        for batch in batches:
            h = backbone.inputs(batch.wave, branch.context.sample_rate).contiguous(memory_format=torch.channels_last)
            means = []
            for block in backbone.model.features:
                h = block(h)
                means.append(h.float().mean(dim=(2, 3)))
            maps.append(h.float())
            layers.append(means)
            groups.append(batch.group)
    return torch.cat(maps), [torch.cat(m) for m in zip(*layers)], torch.cat(groups), read


def layer_scores(train: list[torch.Tensor], train_group: torch.Tensor, test: list[torch.Tensor],
                 test_group: torch.Tensor) -> dict[str, np.ndarray]:
    """b1's kNN of clip embeddings taken from each block (L0 the first; the last is b1's own), per section."""
    out = {f"L{k}": np.zeros(len(test[0])) for k in range(len(test))}
    for g in torch.unique(test_group).tolist():
        rows = (test_group == g).numpy()
        for k, (a, b) in enumerate(zip(train, test)):
            out[f"L{k}"][rows] = _clip_distance(a[train_group == g], b[test_group == g]).numpy()
    return out


def _nearest(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(n, S, C) and (K, C) unit vectors -> (n, S) cosine distance of each to its nearest in the bank."""
    return 1 - (queries @ bank.T).amax(dim=2)


def _clip_distance(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """(K, C) and (n, C) clip embeddings -> (n,) cosine distance of each test clip to its nearest training clip."""
    unit = torch.nn.functional.normalize
    return _nearest(unit(test, dim=1)[:, None], unit(train, dim=1))[:, 0]


def patch_scores(train: torch.Tensor, train_group: torch.Tensor, test: torch.Tensor,
                 test_group: torch.Tensor) -> dict[str, np.ndarray]:
    """b1's scores of POOLINGS["pretrained"] from (N, C, M', T') feature maps, per section."""
    unit = torch.nn.functional.normalize
    out = {mode: np.zeros(len(test)) for mode in POOLINGS["pretrained"]}
    for g in torch.unique(test_group).tolist():
        a, b = train[train_group == g], test[test_group == g]
        rows = (test_group == g).numpy()
        out["clip"][rows] = _clip_distance(a.mean(dim=(2, 3)), b.mean(dim=(2, 3))).numpy()
        for kind, (bank, query) in {"steps": (a.mean(dim=2), b.mean(dim=2)),
                                    "patches": (a.flatten(2), b.flatten(2))}.items():
            flat_bank = unit(bank, dim=1).transpose(1, 2).reshape(-1, a.shape[1])  # (N * S, C)
            dist = _nearest(unit(query, dim=1).transpose(1, 2), flat_bank)
            for mode in ("mean", "max", "top10"):
                out[f"{kind} {mode}"][rows] = pool_time(dist, mode).numpy()
    return out


def pooled_scores(branch, error: torch.Tensor, group: torch.Tensor) -> dict[str, np.ndarray]:
    """Every pooling of POOLINGS[b2/b4] of the (N, n_mels, T) errors: (N,) clip scores each."""
    out = {"mahalanobis": branch.profiles(error_profile(error), group)}
    frames = error.pow(2).mean(dim=1)  # (N, T) each frame's squared error
    for mode in ("mean", "max", "top10", "gwrp"):
        out[f"mse {mode}"] = pool_time(frames, mode, branch.cfg.gwrp_decay)
    return {k: v.numpy().astype(float) for k, v in out.items()}


def _mean_auc(groups: list[str], labels: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean([auc for auc, _ in section_metrics(groups, labels, scores).values()]))


def run_aucs(run: Path, data: Path, cache: Path) -> dict[str, dict[str, float]]:
    """{branch: {pooling: AUC (mean over sections)}} of one trained run on DATA's labelled test clips."""
    test = [c for c in discover(data) if c.split == "test" and c.label is not None]
    detector = Detector.load(run, "cpu", cache, names=[n for n in BRANCHES if (run / f"{n}.json").is_file()])
    out = {}
    for name in detector.names:
        if name == "pretrained":
            train, train_layers, train_group, _ = _feature_maps(
                detector, [c for c in discover(data) if c.split == "train"], cache)
            maps, test_layers, group, clips = _feature_maps(detector, test, cache)
            scores = patch_scores(train, train_group, maps, group)
            by_layer = layer_scores(train_layers, train_group, test_layers, group)
        else:
            error, group, clips, branch = _errors(detector, name, test, cache)
            scores = pooled_scores(branch, error, group)
        labels, groups = np.array([c.is_anomaly for c in clips]), [c.group for c in clips]
        out[name] = {mode: _mean_auc(groups, labels, s) for mode, s in scores.items()}
        if name == "pretrained":  # the last block first: b1's own embedding
            order = [f"L{len(by_layer) - 1}", *[f"L{k}" for k in range(len(by_layer) - 1)]]
            out[LAYERS] = {mode: _mean_auc(groups, labels, by_layer[mode]) for mode in order}
    return out


def kept_runs(work: Path) -> dict[str, list[tuple[Path, Path]]]:
    """{set: [(run, data)]} of every fold and seed bench_real.py kept under ``work``."""
    out: dict[str, list[tuple[Path, Path]]] = {}
    for run in sorted(work.glob("*/fold*/seed*/run")):
        if (run / "run.json").is_file():
            out.setdefault(run.parents[2].name, []).append((run, run.parents[1] / "data"))
    return out


def final_aucs(work: Path) -> dict[str, list[float]]:
    """{set: the final score's AUC (mean over sections) of each fold and seed} from bench_real's result.json files."""
    out: dict[str, list[float]] = {}
    for path in sorted(work.glob("*/fold*/seed*/result.json")):
        sections = json.loads(path.read_text())["metrics"]["final"].values()
        out.setdefault(path.parents[2].name, []).append(float(np.mean([auc for auc, _ in sections])))
    return out


def _pooling_of(work: Path) -> str:
    """b2's and b4's score and pooling in the config of the first run kept under ``work``."""
    from asdcli.services.store.runs import open_run, trained_config

    run = open_run(next(work.glob("*/fold*/seed*/run/run.json")).parent)
    names = ("transformer-ae", "diffusion")
    parts = [(n, getattr(trained_config(run, n).branches, n.replace("-", "_"))) for n in names]
    return ", ".join(f"{n} {c.score}" + (f" {c.pooling}" if c.score == "mse" else "") for n, c in parts)


def report_final(work: Path, other: Path) -> None:
    before, after = final_aucs(work), final_aucs(other)
    sets = sorted(set(before) & set(after))
    print(f"\nThe final score (AUC, mean over folds and seeds) of bench_real.py's runs with {_pooling_of(work)} "
          f"(default) and with {_pooling_of(other)} (changed): the same folds and seeds, every other branch the "
          "same, fusion and meta-learner refitted\n")
    print("| set | runs | default | changed | difference |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in sets:
        a, b = np.mean(before[name]), np.mean(after[name])
        print(f"| {name} | {len(after[name])} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    a = np.mean([v for n in sets for v in before[n]])
    b = np.mean([v for n in sets for v in after[n]])
    print(f"| all | {sum(len(after[n]) for n in sets)} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")


def report(table: dict[str, dict[str, dict[str, list[float]]]], synthetic: dict | None, command: str) -> None:
    sets = sorted(table)
    print(f"Written by `{command}`; do not edit by hand.\n")
    print("AUC of b1, b2 and b4 by how they pool a clip's frames or patches into a score (mean over the set's "
          "sections, then over its folds and seeds; the same trained weights for every pooling; the first row is "
          "what the branch does by default; b1's \"clip\" is the nearest training clip's cosine distance, which b1 "
          "takes per domain where the data have domains, so on the synthetic data its figure is close to, not "
          "exactly, b1's own). Last, b1's clip embedding taken from each block of EfficientAT (L0 the first; the "
          "last, its own, first in the table) instead of the last.")
    for name in [n for n in (*BRANCHES, LAYERS) if n in table[sets[0]]]:
        modes = list(table[sets[0]][name])  # the first: what the branch does by default
        default_mode, term = modes[0], "layer" if name == LAYERS else "pooling"
        print(f"\n{name}\n")
        print(f"| {term} | " + " | ".join(sets) + " | mean |" + (" synthetic (unseen seed) |" if synthetic else ""))
        print("| --- |" + " ---: |" * (len(sets) + 1 + bool(synthetic)))
        for mode in modes:
            means = [np.mean(table[s][name][mode]) for s in sets]
            tail = f" {synthetic.get(name, {}).get(mode, float('nan')):.3f} |" if synthetic else ""
            print(f"| {mode} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {np.mean(means):.3f} |" + tail)
        print(f"\nLeave one set out ({name}): the {term} with the best mean on the other sets, judged on the set\n")
        print(f"| judged set | chosen without it | its AUC there | {default_mode} (the default) |")
        print("| --- | --- | ---: | ---: |")
        judged, default = [], []
        for held in sets:
            pick = max(modes, key=lambda m: np.mean([np.mean(table[s][name][m]) for s in sets if s != held]))
            judged.append(np.mean(table[held][name][pick]))
            default.append(np.mean(table[held][name][default_mode]))
            print(f"| {held} | {pick} | {judged[-1]:.3f} | {default[-1]:.3f} |")
        print(f"\nMean over the judged sets: {np.mean(judged):.3f} with the {term} chosen without each set, "
              f"{np.mean(default):.3f} with the default.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="bench_real.py's --work (runs kept with --reuse)")
    parser.add_argument("--synthetic", type=Path, nargs=2, metavar=("RUN", "DATA"), help="a synthetic run and its data")
    parser.add_argument("--final", type=Path, metavar="OTHER",
                        help="bench_real.py's --work of runs with a pooling changed")
    parser.add_argument("--markdown", type=Path, help="also write the report here (docs/pooling.md)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs = kept_runs(args.work)
    if not runs:
        sys.exit(f"no runs kept under {args.work}: run bench_real.py --work {args.work} --reuse first")
    table: dict = {}
    for name, pairs in runs.items():
        table[name] = {}
        for run, data in pairs:
            for branch, aucs in run_aucs(run, data, args.work / "cache").items():
                for mode, value in aucs.items():
                    table[name].setdefault(branch, {}).setdefault(mode, []).append(value)
        print(f"{name}: {len(pairs)} runs", file=sys.stderr, flush=True)
    synthetic = run_aucs(*args.synthetic, args.work / "cache") if args.synthetic else None
    command = "python bench/bench_pooling.py " + " ".join(sys.argv[1:])
    if args.markdown:
        with args.markdown.open("w") as handle, contextlib.redirect_stdout(handle):
            print("# How b1, b2 and b4 pool frames into a clip score, on real recordings\n")
            report(table, synthetic, command)
            if args.final:
                report_final(args.work, args.final)
    report(table, synthetic, command)
    if args.final:
        report_final(args.work, args.final)


if __name__ == "__main__":
    main()
