"""The prior over branches learned from labelled faults of other machines, and how far a machine's
own pseudo-anomalies may move the fusion away from it."""

import json

import numpy as np
import pytest

from asdcli.config import load_config
from asdcli.errors import ConfigError
from asdcli.services.training.branch_prior import (BUILTIN, Labelled, combine, learn_prior, load_prior, rank_auc,
                                          save_prior)
from asdcli.services.scoring.examples import Examples
from asdcli.services.training.fuse import attention_start, fit_fusion

NAMES = ["transformer-ae", "contrastive", "diffusion"]


def _labelled(set_name: str, seed: int, good: int, evidence_favours: int, n: int = 12) -> Labelled:
    """A labelled run where branch ``good`` ranks real faults and the others are noise; its own
    pseudo-anomalies favour branch ``evidence_favours``."""
    rng = np.random.default_rng(seed)
    label = np.array([0] * n + [1] * n)
    z = rng.standard_normal((2 * n, len(NAMES)))
    z[label == 1, good] += 2.0
    evidence = np.full(len(NAMES), 0.1)
    evidence[evidence_favours] = 0.8
    return Labelled(set_name, list(NAMES), z, label, np.array(["s"] * (2 * n)), evidence, 10)


def test_the_prior_favours_what_caught_real_faults_elsewhere_and_distrusts_misleading_evidence():
    # branch 0 catches real faults on every set; the pseudo-anomalies always point at branch 1
    runs = [_labelled(f"set{i}", i, good=0, evidence_favours=1) for i in range(4)]
    prior = learn_prior(runs, "test")
    weights = prior.weights(NAMES)
    assert weights.argmax() == 0 and weights[0] > 0.5
    assert prior.trust == 0.0  # trusting the evidence lowered every held-out set
    assert prior.source.sets == ["set0", "set1", "set2", "set3"] and "leave one set out" in prior.source.choice


def test_evidence_that_predicts_real_faults_is_trusted():
    # a different branch is right on each set, and the pseudo-anomalies say which
    runs = [_labelled(f"set{i}", i, good=i % 3, evidence_favours=i % 3) for i in range(6)]
    assert learn_prior(runs, "test").trust > 0


def test_a_branch_the_labelled_data_never_measured_counts_as_the_weakest():
    runs = [_labelled(f"set{i}", i, good=0, evidence_favours=0) for i in range(3)]
    prior = learn_prior(runs, "test")
    w = prior.weights(["transformer-ae", "pretrained"])
    floor = min(r.auc for r in prior.branches.values())
    assert np.isclose(w[1] / w[0], np.exp((floor - prior.branches["transformer-ae"].auc) / prior.temperature))


def test_one_labelled_set_chooses_nothing_it_cannot_judge():
    prior = learn_prior([_labelled("only", 0, good=0, evidence_favours=1)], "test")
    assert prior.trust == 0.0 and "one labelled set" in prior.source.choice


def test_rank_auc_is_sklearns_and_combine_is_a_distribution():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    y, s = np.array([0, 1] * 10), rng.integers(0, 4, 20).astype(float)
    assert np.isclose(rank_auc(y, s), roc_auc_score(y, s))
    w = combine(np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.1, 0.8]), 0.0)
    assert np.allclose(w, [0.7, 0.2, 0.1])
    assert np.isclose(combine(np.array([0.5, 0.5]), np.array([0.9, 0.1]), 1.0).sum(), 1.0)


def test_prior_files_round_trip_byte_for_byte_and_bad_ones_are_one_line(tmp_path):
    prior = learn_prior([_labelled(f"set{i}", i, good=0, evidence_favours=1) for i in range(3)], "test")
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    save_prior(prior, first)
    save_prior(load_prior(str(first)), second)
    assert first.read_bytes() == second.read_bytes()
    with pytest.raises(ConfigError, match="no such file"):
        load_prior(str(tmp_path / "missing.json"))
    data = json.loads(first.read_text())
    data["trust"] = 3
    first.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="field 'trust'"):
        load_prior(str(first))
    first.write_text("{not json")
    with pytest.raises(ConfigError, match="a.json: damaged prior file"):
        load_prior(str(first))
    for hostile, fragment in ((json.dumps({**data, "trust": 0}).replace('"trust": 0', '"trust": 0, "trust": 1'),
                               "key 'trust' is given twice"),
                              (json.dumps({**data, "trust": 0, "branches": {}}), "field 'branches'"),
                              (json.dumps({**data, "trust": 0, "branches": {"b9": next(iter(data["branches"].values()))}}),
                               "'b9' is not a branch"),
                              (json.dumps({**data, "trust": 0, "temperature": float("inf")}), "field 'temperature'"),
                              ("[" * 100_000, "nested too deeply")):
        first.write_text(hostile)
        with pytest.raises(ConfigError, match=fragment):
            load_prior(str(first))
    assert load_prior("none") is None


def test_the_shipped_prior_loads_and_names_its_data():
    prior = load_prior("builtin")
    assert BUILTIN.is_file() and prior.source.sets and prior.source.description
    assert set(prior.branches) <= {"pretrained", "transformer-ae", "contrastive", "diffusion", "flow"}


def test_with_no_trust_the_head_is_its_start_for_every_clip():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((40, 2))
    ex = Examples(["transformer-ae", "contrastive"], ["s0"], z, np.array([0, 1] * 20), np.zeros(40, dtype=int),
                  np.array([0, 3] * 20), {"transformer-ae": [], "contrastive": []})
    config = load_config("tiny")
    start = attention_start(ex, config)
    start.trust = 0.0
    model, loss = fit_fusion(ex, config, start)
    import torch
    with torch.no_grad():
        weights = model(torch.from_numpy(z).float()).weights.numpy()
    assert np.allclose(weights, start.weights, atol=1e-6) and np.isnan(loss)


def test_learn_prior_from_a_labelled_run_then_fuse_with_it_and_see_it_in_info(synth_root, tiny, tmp_path):
    from typer.testing import CliRunner

    from asdcli.cli import app
    from asdcli.services.training.fuse import train_fusion
    from asdcli.services.training.train import train_branch

    runner = CliRunner()
    cfg = tiny.with_overrides(**{"train.epochs": 1})
    run, cache = tmp_path / "run", tmp_path / "cache"
    for name in ("b2", "b4"):
        train_branch(name, synth_root, run, cfg, cache_dir=cache)
    train_fusion(synth_root, run, cfg)
    out = tmp_path / "prior.json"
    learned = runner.invoke(app, ["learn-prior", "--run", str(run), "--data", str(synth_root), "--out", str(out),
                                  "--description", "tiny synthetic dev set", "--cache-dir", str(cache)])
    assert learned.exit_code == 0, learned.output
    prior = load_prior(str(out))
    assert set(prior.branches) == {"transformer-ae", "diffusion"} and prior.source.description == "tiny synthetic dev set"
    fused = runner.invoke(app, ["train-fusion", "--run", str(run), "--data", str(synth_root), f"fusion.prior={out}"])
    assert fused.exit_code == 0, fused.output
    info = runner.invoke(app, ["info", str(run), "--as-json"])
    assert "learned from labelled faults of synth" in info.output and "tiny synthetic dev set" in info.output
    mismatched = runner.invoke(app, ["learn-prior", "--run", str(run), "--out", str(out)])
    assert mismatched.exit_code != 0
