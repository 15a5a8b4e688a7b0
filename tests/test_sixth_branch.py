"""A sixth branch is one module: defined here, registered, then trained by `asd train`, scored by
`asd score --explain` and trained with parts frozen by `asd freeze-debug`, with no edit anywhere in
the package."""

import csv

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from typer.testing import CliRunner

from asdcli.cli import app
from asdcli.config import BranchTrain, load_config
from asdcli.errors import ConfigError
from asdcli.models.base import Batch, Branch, BranchContext
from asdcli.models.registry import BRANCHES, branch_config, register_branch, unregister_branch

runner = CliRunner()


class ToyConfig(BranchTrain):
    """The toy's settings: the width of its code."""

    hidden: int = Field(8, ge=1)


class ToyBranch(Branch):
    """A linear autoencoder of the clip's mean log-mel spectrum; score: its reconstruction error."""

    name = "toy-ae"
    bid = "b6"
    config_field = "toy_ae"
    config_class = ToyConfig
    loss_name = "spectrum reconstruction MSE"

    def __init__(self, context: BranchContext, cfg: ToyConfig):
        super().__init__(context)
        self.cfg = cfg
        self.encoder = nn.Linear(context.n_mels, cfg.hidden)
        self.decoder = nn.Linear(cfg.hidden, context.n_mels)

    def _spectrum(self, batch: Batch) -> torch.Tensor:
        return self.normalize(batch.feats).mean(dim=2)  # (B, n_mels)

    def embed(self, batch: Batch) -> torch.Tensor:
        return torch.tanh(self.encoder(self._spectrum(batch)))

    def loss(self, batch: Batch) -> torch.Tensor:
        return F.mse_loss(self.decoder(self.embed(batch)), self._spectrum(batch))

    def score(self, batch: Batch) -> torch.Tensor:
        return ((self.decoder(self.embed(batch)) - self._spectrum(batch)) ** 2).mean(dim=1)


@pytest.fixture
def toy():
    register_branch(ToyBranch)
    try:
        yield ToyBranch
    finally:
        unregister_branch("toy-ae")


def test_a_registered_branch_is_configured_trained_scored_and_debugged_like_the_five(toy, synth_root, tmp_path):
    config = load_config("tiny")
    assert branch_config(config, "b6") == ToyConfig()  # its defaults where the config does not name it
    assert branch_config(config.with_overrides(**{"branches.b6.hidden": 4}), "toy-ae").hidden == 4
    with pytest.raises(ConfigError, match="toy_ae.hiden': unknown field"):
        config.with_overrides(**{"branches.toy_ae.hiden": 4})

    run, cache = tmp_path / "run", str(tmp_path / "cache")
    trained = runner.invoke(app, ["train", str(synth_root), "--run", str(run), "-c", "tiny", "--cache-dir", cache,
                                  "--skip", "b1", "--skip", "b3", "--skip", "b4", "--skip", "b5", "--no-evaluate"])
    assert trained.exit_code == 0, trained.output
    assert (run / "toy-ae.json").is_file() and (run / "toy-ae.safetensors").is_file()

    scored = runner.invoke(app, ["score", str(synth_root / "fan" / "test"), "--run", str(run), "--explain",
                                 "--cache-dir", cache])
    assert scored.exit_code == 0, scored.output
    header = scored.stdout.splitlines()[0].split(",")
    assert {"z_b2", "w_b2", "z_b6", "w_b6"} <= set(header)

    info = runner.invoke(app, ["info", str(run)])
    assert info.exit_code == 0 and "toy-ae" in info.output, info.output
    plotted = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "loss.png")])
    assert plotted.exit_code == 0 and (tmp_path / "loss.png").stat().st_size > 1000, plotted.output

    debug = runner.invoke(app, ["freeze-debug", "--branch", "b2", "--epochs", "1", "--data", str(synth_root),
                                "--run", str(run), "-c", "tiny", "--log-dir", str(tmp_path / "logs"),
                                "--cache-dir", cache])
    assert debug.exit_code == 0, debug.output
    rows = list(csv.DictReader((tmp_path / "logs" / "debug_freeze_b2.csv").open()))
    steps = [r for r in rows if r["kind"] == "step"]
    assert steps and all(float(r["grad_norm_b6"]) > 0 for r in steps)  # the toy trains beside the others
    assert all(float(r["grad_norm_b2"]) == 0 for r in steps)  # b2 is frozen


def test_a_branch_cannot_take_another_ones_name_or_be_half_declared(toy):
    class Clash(ToyBranch):
        name = "other"
        bid = "b2"
        config_field = "other"

    with pytest.raises(ConfigError, match="its bid is another branch's"):
        register_branch(Clash)

    class NoConfig(Branch):
        name, bid, config_field = "nothing", "b7", "nothing"

    with pytest.raises(ConfigError, match="config_class"):
        register_branch(NoConfig)
    with pytest.raises(ConfigError, match="built in"):
        unregister_branch("b2")
    assert "other" not in BRANCHES and "nothing" not in BRANCHES


class _Point:
    """An installed package's entry point of group asd.branches, as importlib.metadata gives it."""

    def __init__(self, name, value, target):
        self.name, self.value, self._target = name, value, target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_the_command_line_registers_the_branches_installed_packages_offer(monkeypatch, capsys):
    import importlib.metadata

    import asdcli.cli as cli

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [_Point("toy", "mypkg.toy:ToyBranch", ToyBranch)] if group == cli.PLUGIN_GROUP else [])
    try:
        cli.load_branch_plugins()
        cli.load_branch_plugins()  # twice: registered once
        assert BRANCHES["toy-ae"] is ToyBranch
    finally:
        unregister_branch("toy-ae")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [_Point("broken", "mypkg.broken:Nope", ImportError("No module named 'mypkg'"))])
    with pytest.raises(SystemExit) as stop:
        cli.load_branch_plugins()
    assert stop.value.code == 1
    assert "branch plugin 'broken' (mypkg.broken:Nope) does not load: No module named 'mypkg'" in capsys.readouterr().err
