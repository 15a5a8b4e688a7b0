import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asdcli.checkpoints import read_json, training_progress
from asdcli.errors import CheckpointError, ConfigError, TrainingError
from asdcli.services.training import schedule
from asdcli.services.inputs.device import resolve_device
from asdcli.services.store.runs import load_branch, open_run
from asdcli.services.scoring.branch_scores import score_branches
from asdcli.services.training.schedule import Precision
from asdcli.services.training.train import train_branch
from asdcli.data.layout import discover

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cfg(tiny):
    return tiny.with_overrides(**{"train.epochs": 2, "train.batch_size": 8})


def _weights(run: Path, name: str) -> dict:
    return load_file(str(run / f"{name}.safetensors"))


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_same_weights_and_scores(synth_root, cfg, tmp_path):
    cache = tmp_path / "cache"
    for run in ("a", "b"):
        train_branch("b2", synth_root, tmp_path / run, cfg, cache_dir=cache)
    _assert_same_weights(_weights(tmp_path / "a", "transformer-ae"), _weights(tmp_path / "b", "transformer-ae"))
    test = discover(synth_root / "fan" / "test")
    a = score_branches(tmp_path / "a", ["b2"], test, cache).scores["transformer-ae"]
    b = score_branches(tmp_path / "b", ["b2"], test, cache).scores["transformer-ae"]
    assert (a == b).all()
    other = cfg.with_overrides(seed=7)
    train_branch("b2", synth_root, tmp_path / "c", other, cache_dir=cache)
    c = _weights(tmp_path / "c", "transformer-ae")
    assert not torch.equal(c["proj.weight"], _weights(tmp_path / "a", "transformer-ae")["proj.weight"])


def test_resume_after_interruption_matches_uninterrupted(synth_root, cfg, tmp_path):
    cfg3 = cfg.with_overrides(**{"train.epochs": 3})
    cache = tmp_path / "cache"
    train_branch("b3", synth_root, tmp_path / "whole", cfg3, cache_dir=cache)

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_branch("b3", synth_root, tmp_path / "cut", cfg3, cache_dir=cache, on_epoch=stop_after_first)
    assert not (tmp_path / "cut" / "contrastive.json").exists()  # only the unfinished-training file
    assert training_progress(tmp_path / "cut" / "contrastive.train.safetensors")["epochs_done"] == 1
    with pytest.raises(CheckpointError, match="stopped at epoch 1/3; finish it: asd train DATA --run"):
        load_branch(open_run(tmp_path / "cut"), "contrastive")
    for change, reason in ((cfg3.with_overrides(**{"train.epochs": 5}), "epochs 3 \\(now 5\\)"),
                           (cfg3.with_overrides(seed=4), "seed 0 \\(now 4\\)"),
                           (cfg3.with_overrides(**{"train.lr": 0.01}), "train.lr 0.002 \\(now 0.01\\)")):
        with pytest.raises(CheckpointError, match="cannot resume: the interrupted training had " + reason):
            train_branch("b3", synth_root, tmp_path / "cut", change, cache_dir=cache, resume=True)
    train_branch("b3", synth_root, tmp_path / "cut", cfg3, cache_dir=cache, resume=True)
    assert not (tmp_path / "cut" / "contrastive.train.safetensors").exists()
    _assert_same_weights(_weights(tmp_path / "whole", "contrastive"), _weights(tmp_path / "cut", "contrastive"))
    log = (tmp_path / "cut" / "logs" / "contrastive_train.csv").read_text().splitlines()
    assert log[0] == "epoch,loss,lr,clips,seconds,clips_per_s" and [r.split(",")[0] for r in log[1:]] == ["1", "2", "3"]
    with pytest.raises(CheckpointError, match="already finished"):
        train_branch("b3", synth_root, tmp_path / "cut", cfg3, cache_dir=cache, resume=True)


def test_flow_before_its_inputs_says_what_to_train(synth_root, cfg, tmp_path):
    with pytest.raises(CheckpointError, match=r"branch 'contrastive' is not trained in .*asd train-branch contrastive"):
        train_branch("flow", synth_root, tmp_path / "run", cfg, cache_dir=tmp_path / "cache")


def test_damaged_and_missing_checkpoints(synth_root, cfg, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="does not exist"):
        open_run(run)
    train_branch("b2", synth_root, run, cfg.with_overrides(**{"train.epochs": 1}), cache_dir=tmp_path / "c")
    (run / "transformer-ae.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError, match="transformer-ae.safetensors: damaged checkpoint"):
        load_branch(open_run(run), "b2")
    (run / "transformer-ae.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="transformer-ae.json: damaged"):
        load_branch(open_run(run), "b2")


def test_gpu_request_without_cuda_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="cuda:0: no CUDA device is available"):
        resolve_device(gpu=0)
    assert resolve_device(device="cpu").type == "cpu"


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_weights(synth_root, tmp_path):
    env = {**os.environ, "ASD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "asdcli", "train-branch", "b3", "--data", str(synth_root), "--run-dir", str(tmp_path / "run"),
           "-c", "tiny", "--epochs", "2"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes; replicas identical: True" in result.stderr
    assert read_json(tmp_path / "run" / "contrastive.json", "meta")["status"] == "complete"


def test_score_ensemble_decisions_and_dcase_files(synth_root, cfg, tmp_path):
    from asdcli.services.scoring.dcase_files import write_dcase_files
    from asdcli.services.evaluation.evaluate import evaluate
    from asdcli.services.scoring.score import score_clips

    cache, run = tmp_path / "cache", tmp_path / "run"
    for name in ("b2", "b3"):
        train_branch(name, synth_root, run, cfg, cache_dir=cache)
    test = [c for c in discover(synth_root) if c.split == "test"]
    result = score_clips(run, test, cache)
    assert result.branches == ["transformer-ae", "contrastive"] and result.score.shape == (len(test),)
    assert set(result.decision.tolist()) <= {0, 1} and set(result.thresholds) == {"fan_section_00", "valve_section_00"}
    again = score_clips(run, test, cache)
    assert (again.score == result.score).all()
    only = score_clips(run, test, cache, names=["b3"], fpr=0.2)
    assert only.branches == ["contrastive"]
    files = write_dcase_files(result, tmp_path / "out")
    assert sorted(p.name for p in files) == [
        "anomaly_score_fan_section_00_test.csv", "anomaly_score_valve_section_00_test.csv",
        "decision_result_fan_section_00_test.csv", "decision_result_valve_section_00_test.csv"]
    assert len(evaluate([tmp_path / "out"]).sections) == 2


def test_frozen_ast_embeddings_are_cached_on_disk(synth_root, cfg, tmp_path, monkeypatch):
    from transformers import ASTModel

    frozen = cfg.with_overrides(**{"branches.pretrained.finetune_layers": 0})
    cache, run = tmp_path / "cache", tmp_path / "run"
    train_branch("b1", synth_root, run, frozen, cache_dir=cache)
    assert len(list((cache / "embeddings").rglob("*.f32"))) == 20  # the training clips
    test = discover(synth_root / "fan" / "test")
    first = score_branches(run, ["b1"], test, cache).scores["pretrained"]
    assert len(list((cache / "embeddings").rglob("*.f32"))) == 28

    def no_model(*args, **kwargs):
        raise AssertionError("the AST ran although every embedding was cached")

    def no_audio(*args, **kwargs):
        raise AssertionError("the audio was read although its features and embedding were cached")

    monkeypatch.setattr(ASTModel, "forward", no_model)
    import asdcli.services.inputs.dataset as dataset
    import asdcli.services.inputs.features as features

    with monkeypatch.context() as patch:
        patch.setattr(dataset, "load_audio", no_audio)
        patch.setattr(features, "load_audio", no_audio)
        again = score_branches(run, ["b1"], test, cache).scores["pretrained"]
    assert (first == again).all()
    train_branch("b5", synth_root, run, frozen.with_overrides(**{"branches.flow.inputs": ["pretrained"]}),
                 cache_dir=cache)  # a branch on b1's embeddings reads them from the cache too


def test_the_flow_embeds_each_training_clip_once_with_its_frozen_input_branch(synth_root, cfg, tmp_path, monkeypatch):
    from asdcli.models.branch_contrastive import ContrastiveBranch

    run, cache = tmp_path / "run", tmp_path / "cache"
    train_branch("b3", synth_root, run, cfg, cache_dir=cache)
    embedded = []
    embed = ContrastiveBranch.embed
    monkeypatch.setattr(ContrastiveBranch, "embed", lambda self, batch: embedded.append(len(batch)) or embed(self, batch))
    result = train_branch("b5", synth_root, run, cfg.with_overrides(**{"train.epochs": 3}), cache_dir=cache)
    assert sum(embedded) == result.clips == 20  # not once more per epoch or for the training clips' scores


def test_a_diverging_training_fails_and_leaves_the_complete_branch(synth_root, cfg, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    train_branch("b2", synth_root, run, cfg.with_overrides(**{"train.epochs": 1}), cache_dir=cache)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(TrainingError, match=r"transformer-ae diverged in epoch 1 \(loss (nan|inf).*lower its learning rate"):
        train_branch("b2", synth_root, run, cfg.with_overrides(**{"train.lr": 1e30, "train.grad_clip": 1e30}),
                     cache_dir=cache)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_a_branch_precision_overrides_the_shared_one_and_auto_follows_the_hardware(cfg, monkeypatch, native):
    # both kinds of host, whichever this one is: auto means bf16 only where the CPU computes it natively
    monkeypatch.setattr(schedule, "native_bf16", lambda device: native)
    cpu = torch.device("cpu")
    assert cfg.branches.contrastive.precision == "auto" and cfg.train.precision == "fp32"
    assert Precision.of(cfg, "transformer-ae", cpu).dtype is None
    assert Precision.of(cfg, "contrastive", cpu).dtype == (torch.bfloat16 if native else None)
    shared = cfg.with_settings({"train.precision": "bf16", "branches.contrastive.precision": None})
    assert shared.branches.contrastive.precision is None  # the branch follows train.precision
    assert Precision.of(shared, "b2", cpu).dtype == Precision.of(shared, "b3", cpu).dtype == torch.bfloat16
    own = cfg.with_overrides(**{"train.precision": "bf16", "branches.contrastive.precision": "fp32"})
    assert Precision.of(own, "contrastive", cpu).dtype is None
    with pytest.raises(ConfigError, match="branches.transformer_ae.precision: fp16 needs a CUDA device"):
        Precision.of(cfg.with_overrides(**{"branches.transformer_ae.precision": "fp16"}), "transformer-ae", cpu)


def test_mixed_precision_trains_in_bf16_and_refuses_fp16_without_cuda(synth_root, cfg, tmp_path):
    cache = tmp_path / "cache"
    train_branch("b2", synth_root, tmp_path / "fp32", cfg, cache_dir=cache)
    half = cfg.with_overrides(**{"train.precision": "bf16"})
    result = train_branch("b2", synth_root, tmp_path / "bf16", half, cache_dir=cache)
    assert result.final_loss is not None and result.final_loss == result.final_loss  # finite, not NaN
    a, b = _weights(tmp_path / "fp32", "transformer-ae"), _weights(tmp_path / "bf16", "transformer-ae")
    assert {k: t.dtype for k, t in b.items()} == {k: t.dtype for k, t in a.items()}  # weights stay fp32
    assert not torch.equal(a["proj.weight"], b["proj.weight"])  # the steps did run in bf16
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a CUDA device"):
        train_branch("b2", synth_root, tmp_path / "fp16", cfg.with_overrides(**{"train.precision": "fp16"}),
                     cache_dir=cache)


def test_batches_assembled_ahead_train_the_same_weights(synth_root, cfg, tmp_path):
    cache = tmp_path / "cache"
    for run, prefetch in (("a", 0), ("b", 3)):
        train_branch("b3", synth_root, tmp_path / run, cfg.with_overrides(**{"loader.prefetch": prefetch}),
                     cache_dir=cache)
    _assert_same_weights(_weights(tmp_path / "a", "contrastive"), _weights(tmp_path / "b", "contrastive"))
    log = [line.split(",")[1] for line in (tmp_path / "a" / "logs" / "contrastive_train.csv").read_text().splitlines()]
    assert log == [line.split(",")[1] for line in
                   (tmp_path / "b" / "logs" / "contrastive_train.csv").read_text().splitlines()]
