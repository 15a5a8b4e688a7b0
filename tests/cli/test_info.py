"""`asd info`: every stage's state and settings."""

import json

import pytest
from typer.testing import CliRunner

from asdcli.cli import app
from asdcli.services.training.fuse import train_fusion
from asdcli.services.evaluation.info import run_info
from asdcli.services.training.train import train_branch

runner = CliRunner()


def test_info_names_finished_unfinished_stale_and_missing_stages(tmp_path, synth_root, tiny):
    run, cache = tmp_path / "run", tmp_path / "c"
    cfg = tiny.with_overrides(**{"train.epochs": 2})
    train_branch("b2", synth_root, run, cfg, cache_dir=cache)
    train_fusion(synth_root, run, cfg)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_branch("b3", synth_root, run, cfg, cache_dir=cache, on_epoch=stop)
    train_branch("b2", synth_root, run, cfg.with_overrides(seed=5), cache_dir=cache)
    states = {s.name: s for s in run_info(run).stages}
    assert states["b2 transformer-ae"].state == "finished" and states["b2 transformer-ae"].settings["seed"] == 5
    assert states["b3 contrastive"].state == "unfinished" and "epoch 1/2" in states["b3 contrastive"].detail
    assert states["b4 diffusion"].state == "missing"
    assert states["fusion head"].state == "stale" and "transformer-ae retrained" in states["fusion head"].detail
    assert states["fusion head"].settings["hidden"] == tiny.fusion.hidden
    assert states["meta-learner"].state == "missing"
    result = runner.invoke(app, ["info", str(run), "--as-json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["config"] == "config.yaml" and set(data["sections"]) == {"fan_section_00", "valve_section_00"}
    assert runner.invoke(app, ["info", str(tmp_path / "nowhere")]).exit_code == 1
    assert json.loads(runner.invoke(app, ["info", "--run", str(run), "--as-json"]).stdout) == data  # as other commands
    both = runner.invoke(app, ["info", str(run), "--run", str(tmp_path / "other")])
    assert both.exit_code == 1 and "two run folders given" in both.output
    assert "name the run folder" in runner.invoke(app, ["info"]).output
