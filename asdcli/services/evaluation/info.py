"""`asd info RUN`: what a run holds: its sections, each stage, whether it is finished, unfinished or
stale, and the settings it was made with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asdcli.checkpoints import training_progress
from asdcli.errors import CheckpointError, ConfigError
from asdcli.models.registry import BRANCHES, branch_training, config_key
from asdcli.services.scoring.stages import fusion_changed, stale_branches
from asdcli.services.scoring.reliability import heldout_gap
from asdcli.services.store.records import FusionRecord, MetaLearnerRecord, read_record
from asdcli.services.store.commits import reading
from asdcli.services.store.runs import Run, open_run, read_branch_record, run_config, trained_config


@dataclass
class Stage:
    """One stage of a run: ``state`` is finished, unfinished, stale, damaged or missing; ``detail``
    says why or what it holds; ``settings`` the values it was made with."""

    name: str
    state: str
    detail: str = ""
    settings: dict[str, object] = field(default_factory=dict)


@dataclass
class RunInfo:
    path: Path
    sections: dict[str, int]  # section -> normal training clips
    classes: int
    holdout: int
    config: str
    stages: list[Stage]


def flat(data: dict, prefix: str = "") -> dict[str, object]:
    """Nested config data as ``{"a.b": value}``."""
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changes(stage: dict, base: dict, prefixes: tuple[str, ...]) -> str:
    """``key=value`` of the settings under ``prefixes`` in which a stage's stored config differs
    from the run's ``config.yaml`` (a stage's own ``-c`` file or command-line overrides)."""
    mine, theirs = flat(stage), flat(base)
    keys = sorted(k for k in mine if k.startswith(prefixes) and mine[k] != theirs.get(k))
    return " ".join(f"{k}={mine[k]}" for k in keys)


def _base(run: Run) -> dict:
    try:
        return run_config(run).model_dump(mode="json") if run.config_path.is_file() else {}
    except (CheckpointError, ConfigError):
        return {}


def _branch_stage(run: Run, name: str) -> Stage:
    cls = BRANCHES[name]
    label = f"{cls.bid} {name}"
    if not run.record(name).exists():
        progress = training_progress(run.train_state(name))
        if progress is None:
            return Stage(label, "missing", "not trained")
        return Stage(label, "unfinished", f"stopped at epoch {progress.get('epochs_done')}/{progress.get('epochs')}; "
                                          f"finish it: asd train DATA --run {run.path}")
    try:
        meta = read_branch_record(run, name)
        config = trained_config(run, name, meta)
    except (CheckpointError, ConfigError) as error:  # the record, or the config.yaml it is laid over
        return Stage(label, "damaged", str(error))
    lr = branch_training(config, name, "lr")
    notes = []
    base = _base(run)
    changed = changes(meta.config, base, ("train.", f"{config_key(name)}.", "seed")) if base else ""
    if changed:
        notes.append(f"trained with {changed} (unlike the run's config.yaml)")
    if meta.limitation:
        notes.append(meta.limitation)
    gap = heldout_gap(meta.heldout)
    if gap is not None:
        notes.append(f"held-out clips {gap:+.2f} (normal deviate; limit train.heldout_max_z {config.train.heldout_max_z:g})")
    pending = training_progress(run.train_state(name))
    if pending is not None:
        notes.append(f"a retraining stopped at epoch {pending.get('epochs_done')}/{pending.get('epochs')} (not used)")
    return Stage(label, "finished", "; ".join(notes),
                 {"epochs": meta.epochs_done, "lr": lr, "seed": meta.seed, "trained clips": meta.trained_clips,
                  "upstream": ",".join(meta.upstream) or "-"})


def _fusion_stage(run: Run) -> Stage:
    meta_path = run.fusion_record
    if not meta_path.exists():
        return Stage("fusion head", "missing", "asd train DATA --run RUN trains it")
    try:
        meta = read_record(FusionRecord, meta_path, "fusion metadata")
        stale = stale_branches(run, meta)
    except (CheckpointError, KeyError, OSError) as error:
        return Stage("fusion head", "damaged", str(error))
    weights = ", ".join(f"{BRANCHES[n].bid} {w:.2f}" for n, w in meta.mean_weights.items())
    detail = f"mean attention {weights}"
    if meta.left_out:
        detail += "; left out: " + ", ".join(meta.left_out)
    detail += "; " + prior_summary(meta.prior)
    base = _base(run)
    changed = changes(meta.config, base, ("fusion.", "seed")) if base and meta.config else ""
    if changed:
        detail += f"; fitted with {changed} (unlike the run's config.yaml)"
    settings = {"hidden": meta.hidden, "epochs": meta.config.get("fusion", {}).get("epochs"),
                "prior T": round(meta.prior_temperature, 3) if meta.prior_temperature is not None else "-"}
    if stale:
        return Stage("fusion head", "stale", f"{', '.join(stale)} retrained after it: asd train DATA --run RUN retrains it", settings)
    return Stage("fusion head", "finished", detail, settings)


def prior_summary(prior: dict) -> str:
    """Where a fusion head's prior over branches came from (``fusion.json`` ``prior``)."""
    if not prior:
        return "prior: the pseudo-anomalies alone (fused before labelled priors existed)"
    if prior.get("source") == "none":
        return "prior: none (fusion.prior none: the pseudo-anomalies alone)"
    weights = ", ".join(f"{BRANCHES[n].bid} {w:.2f}" for n, w in prior.get("prior_weights", {}).items() if n in BRANCHES)
    return (f"prior {weights} learned from labelled faults of {', '.join(prior.get('sets', [])) or '?'} "
            f"({prior.get('source')}; digest {prior.get('digest')}), pseudo-anomaly trust {prior.get('trust')}"
            + (" (the attention keeps the prior's weights: the head is not trained)" if prior.get("trust") == 0 else ""))


def _meta_stage(run: Run) -> Stage:
    meta_path = run.meta_learner_record
    if not meta_path.exists():
        return Stage("meta-learner", "missing", "asd train DATA --run RUN trains it")
    try:
        meta = read_record(MetaLearnerRecord, meta_path, "meta-learner metadata")
        cfg = meta.meta
    except (CheckpointError, KeyError) as error:
        return Stage("meta-learner", "damaged", str(error))
    settings = {"iterations": cfg.get("iterations"), "inner steps": cfg.get("inner_steps"), "hidden": cfg.get("hidden"),
                "seed": meta.seed}
    if fusion_changed(run, meta):
        return Stage("meta-learner", "stale", "the fusion head was retrained after it: asd train DATA --run RUN retrains it", settings)
    note = f"{len(meta.tasks)} training sections"
    base = _base(run)
    changed = changes({"meta": meta.meta, "seed": meta.seed}, base, ("meta.", "seed")) if base else ""
    if changed:
        note += f"; trained with {changed} (unlike the run's config.yaml)"
    if meta.abstained:
        note += f"; {meta.abstained}"
    return Stage("meta-learner", "finished", note, settings)


def run_info(run_dir: Path) -> RunInfo:
    """Everything :class:`RunInfo` says of the run folder ``run_dir``."""
    run = open_run(run_dir)
    with reading(run.path):
        return _run_info(run)


def _run_info(run: Run) -> RunInfo:
    stages = [_branch_stage(run, name) for name in BRANCHES] + [_fusion_stage(run), _meta_stage(run)]
    sections = {g: 0 for g in run.vocab.groups}
    for name in BRANCHES:
        if run.record(name).exists():
            try:
                stats = read_branch_record(run, name).score_stats
            except CheckpointError:
                continue
            sections.update({g: s.count for g, s in stats.items()})
            break
    config = "config.yaml" if run.config_path.is_file() else "the first branch's stored config (no config.yaml)"
    try:
        run_config(run)
    except CheckpointError:
        config = "none yet"
    return RunInfo(run.path, sections, len(run.vocab.labels), len(run.holdout), config, stages)
