"""Fault injection: a stage interrupted after any single file write leaves the run scoring exactly
as before the command or exactly as after it, and --resume continues or refuses with a reason."""

import shutil

import numpy as np
import pytest

import asdcli.atomic as atomic
import asdcli.services.store.commits as commits
from asdcli.data.layout import discover
from asdcli.errors import CheckpointError
from asdcli.services.training.fuse import train_fusion
from asdcli.services.training.meta import meta_train
from asdcli.services.scoring.score import score_clips
from asdcli.services.training.train import train_branch


class Interrupted(BaseException):
    """Stands for a kill at that moment (not an Exception: nothing may catch it on the way)."""


def _writes(monkeypatch, stop_at: int | None) -> dict:
    """Count every atomic file write and every rename of a committed stage; raise at ``stop_at``."""
    calls = {"n": 0}
    temporary, move = atomic._temporary, commits._move

    def tick():
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise Interrupted(f"write {stop_at}")

    def counted_temporary(*args, **kwargs):
        tick()
        return temporary(*args, **kwargs)

    def counted_move(*args, **kwargs):
        tick()
        return move(*args, **kwargs)

    monkeypatch.setattr(atomic, "_temporary", counted_temporary)
    monkeypatch.setattr(commits, "_move", counted_move)
    return calls


def _scores(run, test, cache):
    return score_clips(run, test, cache).score


def _check_every_interruption(tmp_path, monkeypatch, base, stage, test, cache) -> list[str]:
    """Run ``stage(run)`` on copies of ``base``, interrupted after each of its writes in turn;
    returns, per write, whether the run then scored as before or as after."""
    before = _scores(base, test, cache)
    whole = tmp_path / "whole"
    shutil.copytree(base, whole)
    with monkeypatch.context() as m:
        calls = _writes(m, None)
        stage(whole)
    after = _scores(whole, test, cache)
    assert not np.array_equal(before, after)
    outcomes = []
    for stop in range(1, calls["n"] + 1):
        run = tmp_path / f"cut{stop}"
        shutil.copytree(base, run)
        with monkeypatch.context() as m:
            _writes(m, stop)
            with pytest.raises(Interrupted):
                stage(run)
        scores = _scores(run, test, cache)
        same = "before" if np.array_equal(scores, before) else "after" if np.array_equal(scores, after) else None
        assert same is not None, f"interrupted at write {stop} of {calls['n']}: a mix of before and after"
        outcomes.append(same)
        shutil.rmtree(run)
    assert outcomes[0] == "before" and "after" in outcomes  # the commit point lies inside the stage
    return outcomes


@pytest.fixture(scope="module")
def cfg(tiny):
    return tiny.with_overrides(**{"train.epochs": 2, "meta.iterations": 5})


@pytest.mark.slow
def test_an_interrupted_branch_training_scores_as_before_or_after(tmp_path, monkeypatch, synth_root, cfg):
    cache, base = tmp_path / "cache", tmp_path / "base"
    train_branch("b2", synth_root, base, cfg, cache_dir=cache)
    test = discover(synth_root / "fan" / "test")
    retrain = cfg.with_overrides(seed=5)
    outcomes = _check_every_interruption(tmp_path, monkeypatch, base, lambda run: train_branch(
        "b2", synth_root, run, retrain, cache_dir=cache), test, cache)
    after = _scores(tmp_path / "whole", test, cache)
    for stop, outcome in enumerate(outcomes, start=1):  # --resume: the uninterrupted weights, or a reason
        run = tmp_path / f"resume{stop}"
        shutil.copytree(base, run)
        with monkeypatch.context() as m:
            _writes(m, stop)
            with pytest.raises(Interrupted):
                train_branch("b2", synth_root, run, retrain, cache_dir=cache)
        try:
            train_branch("b2", synth_root, run, retrain, cache_dir=cache, resume=True)
        except CheckpointError as error:
            assert "nothing to resume" in str(error) or "no interrupted training" in str(error), str(error)
        else:
            assert np.array_equal(_scores(run, test, cache), after), f"resumed after write {stop}"
        shutil.rmtree(run)


@pytest.mark.slow
def test_an_interrupted_fusion_and_meta_training_score_as_before_or_after(tmp_path, monkeypatch, synth_root, cfg):
    cache, base = tmp_path / "cache", tmp_path / "base"
    for name in ("b2", "b3"):
        train_branch(name, synth_root, base, cfg, cache_dir=cache)
    test = discover(synth_root / "fan" / "test")
    _check_every_interruption(tmp_path / "fusion", monkeypatch, base, lambda run: train_fusion(synth_root, run, cfg),
                              test, cache)
    fused = tmp_path / "fused"
    shutil.copytree(base, fused)
    train_fusion(synth_root, fused, cfg)
    _check_every_interruption(tmp_path / "meta", monkeypatch, fused, lambda run: meta_train(run, cfg), test, cache)


def test_staging_left_by_a_dead_command_is_removed_and_others_are_kept(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    dead = tmp_path / f"{commits.STAGING_PREFIX}{gone.pid}-{host}-0000aaaa"
    alive = tmp_path / f"{commits.STAGING_PREFIX}{os.getpid()}-{host}-0000bbbb"
    elsewhere = tmp_path / f"{commits.STAGING_PREFIX}{gone.pid}-another-machine-0000cccc"
    for folder in (dead, alive, elsewhere):
        folder.mkdir()
        (folder / "fusion.json").write_text("{}")
    commits._forget_abandoned(tmp_path)
    assert not dead.exists() and alive.exists() and elsewhere.exists()
