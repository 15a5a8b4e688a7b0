"""`asd train`: checked before the first long step, continued where it stopped; overrides on the
command line, validated and shown by `asd info`."""

import hashlib

import pytest
from typer.testing import CliRunner

from asdcli.cli import app
from asdcli.errors import ConfigError
from asdcli.services.training.pipeline import plan, preflight
from asdcli.services.training.train import train_branch

runner = CliRunner()


def _digest(path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_a_branch_that_cannot_get_its_weights_stops_the_pipeline_before_any_training(synth_root, tiny, tmp_path):
    cfg = tiny.with_overrides(**{"branches.pretrained.source": str(tmp_path / "missing.pt")})
    steps = plan(tmp_path / "run", cfg)
    with pytest.raises(ConfigError, match=r"^b1 pretrained: branches.pretrained.source: no weights file"):
        preflight(synth_root, cfg, steps)
    result = runner.invoke(app, ["train", str(synth_root), "--run", str(tmp_path / "run"), "-c", "tiny",
                                 f"branches.b1.source={tmp_path / 'missing.pt'}"])
    assert result.exit_code == 1 and "b1 pretrained" in result.output and "--skip b1" in result.output
    assert not (tmp_path / "run" / "run.json").exists()  # nothing was trained
    skipped = plan(tmp_path / "run", cfg, ["b1", "b3"])
    assert {s.stage: s.action for s in skipped}["flow"] == "skip"  # it models b3's embeddings
    preflight(synth_root, cfg, skipped)


@pytest.mark.slow
def test_an_interrupted_pipeline_continues_without_redoing_finished_stages(synth_root, tiny, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    cfg = tiny.with_overrides(**{"train.epochs": 2, "meta.iterations": 5})
    train_branch("b2", synth_root, run, cfg, cache_dir=cache)

    def cut(row):
        raise KeyboardInterrupt  # killed after b3's first epoch

    with pytest.raises(KeyboardInterrupt):
        train_branch("b3", synth_root, run, cfg, cache_dir=cache, on_epoch=cut)
    actions = {s.stage: s.action for s in plan(run, cfg)}
    assert actions == {"transformer-ae": "keep", "contrastive": "resume", "diffusion": "train", "pretrained": "train",
                       "flow": "train", "fusion": "train", "meta-learner": "train"}
    before = _digest(run / "transformer-ae.safetensors")
    result = runner.invoke(app, ["train", str(synth_root), "--run", str(run), "--cache-dir", str(cache),
                                 "train.epochs=2", "meta.iterations=5"])
    assert result.exit_code == 0, result.output
    assert _digest(run / "transformer-ae.safetensors") == before
    assert "official score" in result.output
    again = runner.invoke(app, ["train", str(synth_root), "--run", str(run), "--cache-dir", str(cache), "--no-evaluate"])
    assert again.exit_code == 0 and "done in" not in again.output and "keep" in again.output
    files = sorted((synth_root / "fan" / "test").glob("*.wav"))[:2]
    two = runner.invoke(app, ["score", str(files[0]), str(files[1]), "--run", str(run), "--cache-dir", str(cache)])
    assert two.exit_code == 0 and [line.split(",")[0] for line in two.stdout.splitlines()] == [f.name for f in files]


def test_overrides_are_validated_like_the_config_and_shown_by_info(synth_root, tmp_path):
    bad = runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(tmp_path / "run"), "-c",
                              "tiny", "train.lrr=0.01"])
    assert bad.exit_code == 1 and "field 'train.lrr': unknown field" in bad.output
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "run.json").exists()
    wrong = runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(tmp_path / "run"), "-c",
                                "tiny", "train.epochs=true"])
    assert wrong.exit_code == 1 and "train.epochs" in wrong.output
    runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(tmp_path / "run"), "-c", "tiny",
                        "--cache-dir", str(tmp_path / "cache")])
    good = runner.invoke(app, ["train-branch", "b4", "--data", str(synth_root), "--run", str(tmp_path / "run"),
                               "--cache-dir", str(tmp_path / "cache"), "train.lr=0.005", "branches.b4.epochs=1"])
    assert good.exit_code == 0, good.output
    info = runner.invoke(app, ["info", str(tmp_path / "run")])
    assert "branches.diffusion.epochs=1" in info.output and "train.lr=0.005" in info.output


def test_without_learn2learn_the_pipeline_skips_the_meta_learner_and_says_so(tiny, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "learn2learn" else real(name, *a))
    steps = {s.stage: s for s in plan(tmp_path / "run", tiny)}
    assert steps["meta-learner"].action == "skip" and "learn2learn is not installed" in steps["meta-learner"].why


def test_the_library_pipeline_trains_every_stage_and_a_second_call_keeps_them(synth_root, tiny, tmp_path):
    import asdcli
    from asdcli.services.training.pipeline import Progress

    cfg = tiny.with_overrides(**{"train.epochs": 1, "meta.iterations": 3, "meta.min_tasks": 1})
    seen = []
    progress = Progress(planned=lambda t: seen.append(("planned", t.clips)), stage=lambda s: seen.append(s.stage),
                        done=lambda s, result, seconds: seen.append((s.stage, type(result).__name__)))
    trained = asdcli.train(synth_root, tmp_path / "run", cfg, skip=["b1", "b3", "b4"], cache_dir=tmp_path / "c",
                           progress=progress)
    assert seen[0][0] == "planned" and seen[1] == "transformer-ae"
    assert ("transformer-ae", "TrainResult") in seen and ("fusion", "FusionResult") in seen
    assert set(trained.results) == {"transformer-ae", "fusion", "meta-learner"}
    again = asdcli.train(synth_root, tmp_path / "run", cfg, skip=["b1", "b3", "b4"], cache_dir=tmp_path / "c")
    assert {s.stage: s.action for s in again.steps if s.action != "skip"} == {
        "transformer-ae": "keep", "fusion": "keep", "meta-learner": "keep"} and not again.results
