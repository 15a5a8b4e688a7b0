"""Fusion head, meta-learner and the scoring pipeline on a tiny run."""

import numpy as np
import pytest
import torch

from asdcli.checkpoints import read_json
from asdcli.config import load_config
from asdcli.data.layout import discover
from asdcli.errors import CheckpointError, DataError
from asdcli.metrics import auc
from asdcli.models.fusion_attention import AttentionFusion, separability_prior
from asdcli.services.scoring.branch_scores import DomainShift
from asdcli.services.scoring.examples import KINDS, Examples, normal_examples
from asdcli.services.training.fuse import train_fusion
from asdcli.services.scoring.stages import MetaLearner, fused_features, load_fusion, load_meta, support_rows
from asdcli.services.store.records import MetaLearnerRecord
from asdcli.services.training.meta import fit_meta, meta_train
from asdcli.services.store.runs import open_run
from asdcli.services.scoring.score import METHODS, score_clips
from asdcli.services.training.train import train_branch


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
    # Training normals are standardised by their own statistics (mean 0 per section and branch
    # before the target-domain shift is taken out of the target clips).
    normals = normal_examples(open_run(run), result.branches)
    assert np.allclose(ex.z[ex.label == 0], normals.z)
    target = np.array([d == "target" for d in normals.domains])
    assert target.any() and (~target).any()
    for g, name in enumerate(ex.groups):
        rows = np.array(normals.groups) == name
        before = normals.z[rows].copy()
        n = normals.shift.counts[name]
        # undo the leave-one-out shift: z_i = c_i + (S - z_i) / n  =>  z_i = (n c_i + S) / (n + 1)
        before[target[rows]] = (n * before[target[rows]] + normals.shift.sums[name]) / (n + 1)
        assert np.abs(before.mean(axis=0)).max() < 1e-6
    assert set(result.pseudo_auc) == {"transformer-ae", "contrastive", "fused"}
    assert result.pseudo_auc["fused"] > 0.5


def test_fusion_is_deterministic_and_starts_at_the_separability_prior(trained, synth_root, cfg):
    run, _ = trained
    train_fusion(synth_root, run, cfg)
    first = read_json(run / "fusion.json", "fusion")["mean_weights"]
    train_fusion(synth_root, run, cfg)
    assert read_json(run / "fusion.json", "fusion")["mean_weights"] == first
    # without a labelled prior, the pseudo-anomalies alone set the start
    alone = cfg.with_overrides(**{"fusion.epochs": 1, "fusion.lr": 1e-9, "fusion.prior": "none"})
    untrained = train_fusion(synth_root, run, alone)
    aucs = torch.tensor([untrained.fair_pseudo_auc[n] for n in untrained.branches])
    assert untrained.prior_temperature >= cfg.fusion.prior_temperature
    prior = separability_prior(aucs, untrained.prior_temperature)
    assert np.allclose([untrained.mean_weights[n] for n in untrained.branches], prior.numpy(), atol=1e-3)
    assert untrained.prior["source"] == "none" and untrained.prior["trust"] == 1.0
    train_fusion(synth_root, run, cfg)


def test_meta_learner_adapts_and_scores_use_every_stage(trained, synth_root, cfg):
    run, cache = trained
    train_fusion(synth_root, run, cfg)
    result = meta_train(run, cfg)
    assert result.tasks == ["fan_section_00", "valve_section_00"]
    assert np.isfinite([result.query_loss_adapted, result.query_loss_unadapted]).all()
    learner = load_meta(open_run(run))
    assert learner.meta.holdout == []
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


def test_with_too_few_sections_the_meta_learner_keeps_the_fused_score(trained, synth_root, cfg):
    run, cache = trained
    train_fusion(synth_root, run, cfg)
    strict = cfg.with_overrides(**{"meta.min_tasks": 3})
    result = meta_train(run, strict)
    assert "2 section(s) to meta-train on, fewer than meta.min_tasks=3" in result.abstained
    assert read_json(run / "meta.json", "meta")["abstained"] == result.abstained
    test = [c for c in discover(synth_root) if c.split == "test"]
    scored = score_clips(run, test, cache)
    assert scored.method == "kept" and np.array_equal(scored.score, scored.fused)  # says what it does
    assert "run asd meta-train" not in METHODS["kept"]  # it did run: no hint to run it
    said = [n for n in scored.notices if "meta-learner: 2 section(s)" in n]
    assert len(said) == 1 and said[0].count("the final score is the fused score") == 1
    learned = meta_train(run, cfg)  # min_tasks 1 in the tiny preset: it learns and adapts
    assert learned.abstained is None and not np.allclose(score_clips(run, test, cache).score, scored.fused, atol=1e-3)


def test_meta_learner_makes_its_own_examples_and_goes_stale_with_the_fusion(trained, synth_root, cfg):
    run, cache = trained
    train_fusion(synth_root, run, cfg)
    result = meta_train(run, cfg, data=synth_root)
    assert result.examples == "meta_examples.safetensors" and result.tasks == ["fan_section_00", "valve_section_00"]
    own, fusions = Examples.load(run / "meta_examples.safetensors"), Examples.load(run / "examples.safetensors")
    normal = own.label == 0
    assert np.array_equal(own.z[normal], fusions.z[fusions.label == 0])  # the same training clips
    assert own.counts() == fusions.counts() and not np.allclose(own.z[~normal], fusions.z[fusions.label == 1])
    assert read_json(run / "meta.json", "meta")["examples"] == "meta_examples.safetensors"
    test = [c for c in discover(synth_root) if c.split == "test"]
    first = score_clips(run, test, cache)
    assert first.method == "meta" and (score_clips(run, test, cache).score == first.score).all()
    train_fusion(synth_root, run, cfg.with_overrides(**{"fusion.epochs": 3}))
    with pytest.raises(CheckpointError, match="fusion head was retrained after the meta-learner"):
        score_clips(run, test, cache)
    meta_train(run, cfg)
    assert read_json(run / "meta.json", "meta")["examples"] == "examples.safetensors"
    assert score_clips(run, test, cache).method == "meta"


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


def test_weights_replaced_without_their_metadata_make_the_next_stage_stale(synth_root, cfg, tmp_path):
    run, other, cache = tmp_path / "run", tmp_path / "other", tmp_path / "cache"
    trusting = cfg.with_settings({"fusion.prior": "none"})  # a head that trains: the two runs' heads differ
    for folder, seed in ((run, 0), (other, 5)):
        train_branch("b2", synth_root, folder, cfg.with_overrides(seed=seed), cache_dir=cache)
        train_fusion(synth_root, folder, trusting)
    meta_train(run, cfg)
    load_meta(open_run(run))
    (run / "fusion.safetensors").write_bytes((other / "fusion.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="fusion head was retrained after the meta-learner"):
        load_meta(open_run(run))
    (run / "transformer-ae.safetensors").write_bytes((other / "transformer-ae.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="transformer-ae were retrained after the fusion head"):
        load_fusion(open_run(run))


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
    # 6 normal clips, fewer than support_normals asks for: the support set takes half of them
    assert meta_train(run, cfg.with_overrides(**{"meta.support_normals": 8})).tasks == ["pump_section_00"]
    assert meta_train(run, cfg).tasks == ["pump_section_00"]
    with pytest.raises(DataError, match="no section outside --holdout"):
        meta_train(run, cfg, holdout=["pump_section_00"])


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


def test_domain_shift_moves_target_clips_back_and_leaves_each_fitted_clip_out():
    z = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0], [6.0, -2.0]])
    groups, domains = ["a"] * 4, ["source", "source", "target", "target"]
    shift = DomainShift.fit(z, groups, domains)
    assert np.allclose(shift.of("a"), [10 / 3, 2 / 3])  # two target clips and one pseudo-clip at 0
    assert np.allclose(shift.of("b"), 0.0)
    assert np.allclose(shift.apply(z, groups, domains), [[0, 1], [2, 1], [4 - 10 / 3, 4 - 2 / 3], [6 - 10 / 3, -2 - 2 / 3]])
    # left out of its own shift: (S - z_i) / (n - 1 + 1)
    assert np.allclose(shift.apply(z, groups, domains, fitted=True), [[0, 1], [2, 1], [4 - 3, 4 + 1], [6 - 2, -2 - 2]])
    # clips of other sections, of no domain or of the source domain are left as they are
    assert np.allclose(shift.apply(z[:2], ["b", "a"], ["target", None]), z[:2])


def _sections(seed: int, informative: list[int], per_label: int) -> Examples:
    """Examples of sections whose pseudo-anomalies stand out (+2.5 sd) in one branch of three each."""
    rng = np.random.default_rng(seed)
    z, label, group = [], [], []
    for g, branch in enumerate(informative):
        normal, anomalous = rng.standard_normal((per_label, 3)), rng.standard_normal((per_label, 3))
        anomalous[:, branch] += 2.5
        z += [normal, anomalous]
        label += [0] * per_label + [1] * per_label
        group += [g] * (2 * per_label)
    kind = np.where(np.array(label) == 1, KINDS.index("knocks") + np.arange(len(label)) % 2, 0)
    return Examples(["a", "b", "c"], [f"s{g}" for g in range(len(informative))], np.concatenate(z),
                    np.array(label), np.array(group), kind)


@pytest.mark.slow
def test_meta_learner_adapts_to_a_held_out_section_from_its_support_set():
    # Training sections reward branch a or b; the held-out one only branch c, which no task taught.
    informative = [0, 1, 0, 1, 0, 1, 2]
    examples, fresh = _sections(0, informative, 40), _sections(1, informative, 200)
    fusion = AttentionFusion(3, 8)  # untrained: the average of the branches
    config = load_config("default").with_overrides(**{"meta.iterations": 100})  # default inner loop
    maml, tasks, _, unadapted, adapted_loss = fit_meta(examples, fused_features(fusion, examples.z), config, ["s6"])
    assert [examples.groups[g] for g in tasks] == [f"s{g}" for g in range(6)]
    assert adapted_loss < unadapted  # on fresh tasks of the training sections
    learner = MetaLearner(maml.module, config.meta, config.seed, MetaLearnerRecord(
        tasks=[], in_dim=0, meta={}, seed=config.seed, examples="", fusion_digest="", fusion_loss=None, holdout=[],
        abstained=None))
    support = support_rows(examples, 6, config.meta, config.seed)
    rows = fresh.rows(6)
    x = fused_features(fusion, fresh.z[rows])
    before = auc(fresh.label[rows], learner.scores(x, None, None))
    after = auc(fresh.label[rows], learner.scores(x, fused_features(fusion, examples.z[support]),
                                                  torch.from_numpy(examples.label[support]).float()))
    assert after > before + 0.03, (before, after)


def test_support_sizes_leave_a_query_set_for_a_handful_of_clips(cfg):
    from asdcli.services.scoring.stages import support_sizes

    meta = cfg.meta.model_copy(update={"support_normals": 8, "support_anomalies": 8})
    assert support_sizes(100, 100, meta) == (8, 8)
    assert support_sizes(5, 40, meta) == (2, 8)
    assert support_sizes(2, 2, meta) == (1, 1)
