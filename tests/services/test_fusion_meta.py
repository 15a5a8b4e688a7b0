"""Fusion head, meta-learner and the scoring pipeline on a tiny run."""

import numpy as np
import pytest
import torch

from asdcli.checkpoints import read_json
from asdcli.data.layout import discover
from asdcli.errors import CheckpointError, DataError
from asdcli.models.fusion_attention import separability_prior
from asdcli.services.examples import KINDS, Examples
from asdcli.services.fuse import load_fusion, train_fusion
from asdcli.services.meta import load_meta, meta_train
from asdcli.services.runs import open_run
from asdcli.services.score import score_clips
from asdcli.services.train import train_branch


@pytest.fixture(scope="module")
def cfg(tiny):
    return tiny.with_overrides(**{"train.epochs": 1, "train.batch_size": 8, "meta.iterations": 10})


@pytest.fixture(scope="module")
def trained(synth_root, cfg, tmp_path_factory):
    """A run with b2 and b3 trained and its feature cache."""
    root = tmp_path_factory.mktemp("fusion")
    run, cache = root / "run", root / "cache"
    for name in ("b2", "b3"):
        train_branch(name, synth_root, run, cfg, cache_dir=cache)
    return run, cache


def test_examples_hold_normals_and_every_pseudo_kind(trained, synth_root, cfg):
    run, _ = trained
    result = train_fusion(synth_root, run, cfg)
    assert result.branches == ["transformer-ae", "contrastive"]
    assert result.missing == ["pretrained", "diffusion", "flow"]
    ex = Examples.load(run / "examples.safetensors")
    assert ex.z.shape == (len(ex.label), 2) and np.isfinite(ex.z).all()
    n_normal = (ex.label == 0).sum()
    assert n_normal == 20  # every training clip, scored leave-one-out
    per_section = cfg.fusion.perturbed_per_section + cfg.fusion.outliers_per_section
    assert (ex.label == 1).sum() == 2 * per_section
    assert {KINDS[k] for k in ex.kind} >= {"normal", "other_section", "speed_change", "knocks"}
    # Training normals are standardised by their own statistics: mean 0 per section and branch.
    for g in range(2):
        assert np.abs(ex.z[ex.rows(g, 0)].mean(axis=0)).max() < 1e-6
    assert set(result.pseudo_auc) == {"transformer-ae", "contrastive", "fused"}
    assert result.pseudo_auc["fused"] > 0.5


def test_fusion_is_deterministic_and_starts_at_the_separability_prior(trained, synth_root, cfg):
    run, _ = trained
    train_fusion(synth_root, run, cfg)
    first = read_json(run / "fusion.json", "fusion")["mean_weights"]
    train_fusion(synth_root, run, cfg)
    assert read_json(run / "fusion.json", "fusion")["mean_weights"] == first
    untrained = train_fusion(synth_root, run, cfg.with_overrides(**{"fusion.epochs": 1, "fusion.lr": 1e-9}))
    aucs = torch.tensor([untrained.pseudo_auc[n] for n in untrained.branches])
    prior = separability_prior(aucs, cfg.fusion.prior_temperature)
    assert np.allclose([untrained.mean_weights[n] for n in untrained.branches], prior.numpy(), atol=1e-3)
    train_fusion(synth_root, run, cfg)


def test_meta_learner_adapts_and_scores_use_every_stage(trained, synth_root, cfg):
    run, cache = trained
    train_fusion(synth_root, run, cfg)
    result = meta_train(run, cfg)
    assert result.tasks == ["fan_section_00", "valve_section_00"]
    assert np.isfinite([result.query_loss_adapted, result.query_loss_unadapted]).all()
    learner = load_meta(open_run(run))
    assert learner.meta["holdout"] == []
    test = [c for c in discover(synth_root) if c.split == "test"]
    scored = score_clips(run, test, cache)
    assert scored.method == "meta" and scored.weights.shape == (16, 2)
    assert np.allclose(scored.weights.sum(axis=1), 1.0, atol=1e-5)
    assert (score_clips(run, test, cache).score == scored.score).all()
    narrowed = score_clips(run, test, cache, names=["b2"])
    assert narrowed.method == "average" and narrowed.fused is None
    held = meta_train(run, cfg, holdout=["fan_section_00"])
    assert held.tasks == ["valve_section_00"]
    with pytest.raises(DataError, match="not a section"):
        meta_train(run, cfg, holdout=["pump_section_03"])


def test_retrained_branch_makes_the_fusion_stale(synth_root, cfg, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    train_branch("b2", synth_root, run, cfg, cache_dir=cache)
    with pytest.raises(CheckpointError, match="no fusion head"):
        load_fusion(open_run(run))
    train_fusion(synth_root, run, cfg)
    train_branch("b2", synth_root, run, cfg.with_overrides(seed=3), cache_dir=cache)
    with pytest.raises(CheckpointError, match="retrained after the fusion"):
        load_fusion(open_run(run))
    with pytest.raises(CheckpointError, match="no meta-learner"):
        load_meta(open_run(run))


def test_single_section_uses_synthetic_machines_as_outliers(tmp_path, cfg):
    from asdcli.data.synth import generate

    data = tmp_path / "data"
    generate(data, cfg.synth.model_copy(update={"machines": ["pump"], "sections": 1, "train_source": 6,
                                                "train_target": 0, "test_per_domain": 2}), seed=1)
    run = tmp_path / "run"
    train_branch("b2", data, run, cfg, cache_dir=tmp_path / "cache")
    result = train_fusion(data, run, cfg)
    assert result.counts["synthetic_machine"] == cfg.fusion.synth_outliers
    assert "other_section" not in result.counts
    with pytest.raises(DataError, match="meta.support_normals"):
        meta_train(run, cfg.with_overrides(**{"meta.support_normals": 6}))
    assert meta_train(run, cfg).tasks == ["pump_section_00"]


def test_fusion_needs_the_training_data(trained, tmp_path, cfg):
    run, _ = trained
    from asdcli.data.synth import generate

    other = tmp_path / "other"
    generate(other, cfg.synth.model_copy(update={"machines": ["slider"], "sections": 1, "train_source": 2,
                                                 "train_target": 0, "test_per_domain": 2}), seed=0)
    with pytest.raises(DataError, match="give the --data the branches were trained on"):
        train_fusion(other, run, cfg)


def test_unseen_section_adapts_from_given_normal_clips(trained, synth_root, cfg, tmp_path):
    from asdcli.data.synth import generate

    run, cache = trained
    train_fusion(synth_root, run, cfg)
    meta_train(run, cfg)
    new = tmp_path / "new"
    generate(new, cfg.synth.model_copy(update={"machines": ["pump"], "sections": 1, "train_source": 6,
                                               "train_target": 0, "test_per_domain": 4}), seed=2)
    test = [c for c in discover(new) if c.split == "test"]
    plain = score_clips(run, test, cache)
    assert any("pump_section_00 was not in the training data" in n and "--support" in n for n in plain.notices)
    assert "pump_section_00" not in plain.thresholds
    adapted = score_clips(run, test, cache, support=[c for c in discover(new) if c.split == "train"])
    assert any("statistics from the --support clips, meta-learner adapted" in n for n in adapted.notices)
    assert "pump_section_00" in adapted.thresholds and not np.allclose(adapted.score, plain.score)
    with pytest.raises(DataError, match="--support: none of these clips"):
        score_clips(run, test, cache, support=[c for c in discover(synth_root) if c.split == "train"])
