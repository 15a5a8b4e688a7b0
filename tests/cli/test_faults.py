"""Faults a user can cause: each gives one named line (or a named skipped clip) and loses nothing."""

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from asdcli.cli import app
from tests.conftest import noise, write_wav

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _one_line_error(result, *fragments: str) -> str:
    text = _plain(result.output)
    assert result.exit_code == 1, text
    assert "Traceback" not in text and result.exception is None or isinstance(result.exception, SystemExit), text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _bad_corpus(folder: Path) -> dict[str, str]:
    """Every class of bad file, in one training folder: name -> what its skip line must say."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "section_00_source_train_normal_9000_a_1.wav").write_bytes(b"")
    (folder / "section_00_source_train_normal_9001_a_1.wav").write_text("not audio at all\n")
    whole = write_wav(folder.parent / "whole.wav", noise(2.0))
    data = whole.read_bytes()
    (folder / "section_00_source_train_normal_9002_a_1.wav").write_bytes(data[: len(data) // 3])
    whole.unlink()
    write_wav(folder / "section_00_source_train_normal_9003_a_1.wav", noise(2.0) * 1e30, subtype="FLOAT")
    nan = noise(2.0)
    nan[100] = np.nan
    write_wav(folder / "section_00_source_train_normal_9004_a_1.wav", nan, subtype="FLOAT")
    write_wav(folder / "section_00_source_train_normal_9005_a_1.wav", noise(0.05))
    os.symlink(folder / "gone.wav", folder / "section_00_source_train_normal_9006_a_1.wav")
    return {"9000": "empty file", "9001": "not a readable WAV", "9002": "truncated WAV",
            "9003": "non-finite log-mel", "9004": "NaN or infinite", "9005": "too short",
            "9006": "link whose target is missing"}


@pytest.fixture()
def dirty(tmp_path, synth_root):
    """The synthetic data plus every class of bad file in fan's training folder."""
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    return data, _bad_corpus(data / "fan" / "train")


def _skipped(text: str) -> dict[str, str]:
    return {key: line for line in text.splitlines() for key in re.findall(r"normal_(9\d{3})_", line)}


def test_bad_files_are_named_and_skipped_by_features_train_and_score(dirty, tmp_path):
    data, expected = dirty
    cache = str(tmp_path / "c")
    for args in (["features", str(data), "-c", "tiny", "--cache-dir", cache],
                 ["train-branch", "b2", "--data", str(data), "--run", str(tmp_path / "run"), "-c", "tiny", "--epochs", "1",
                  "--cache-dir", cache]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, _plain(result.output)
        skipped = _skipped(_plain(result.output))
        assert skipped.keys() == expected.keys(), _plain(result.output)
        for key, reason in expected.items():
            assert reason in skipped[key], skipped[key]
    scored = runner.invoke(app, ["score", str(data / "fan" / "train"), "--run", str(tmp_path / "run"), "--cache-dir", cache])
    assert scored.exit_code == 0, _plain(scored.output)
    assert _skipped(_plain(scored.stderr)).keys() == expected.keys()
    rows = [line for line in scored.stdout.splitlines() if line.endswith(tuple("0123456789"))]
    assert len(rows) == 10 and not any("90" in r.split("_")[4] for r in rows if r.count("_") > 4)


def test_unwritable_places_are_one_line_errors(tmp_path, synth_root):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    under = blocker / "below"
    cache = str(tmp_path / "c")
    _one_line_error(runner.invoke(app, ["synth", str(under), "-c", "tiny"]), "cannot write", "a-file/below")
    _one_line_error(runner.invoke(app, ["features", str(synth_root), "-c", "tiny", "--cache-dir", str(under)]),
                    "a-file/below")
    _one_line_error(runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(under), "-c", "tiny",
                                        "--epochs", "1", "--cache-dir", cache]), "a-file/below")
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(run), "-c", "tiny",
                                  "--epochs", "1", "--cache-dir", cache])
    assert trained.exit_code == 0
    _one_line_error(runner.invoke(app, ["score", str(synth_root), "--run", str(run), "--out-dir", str(under),
                                        "--cache-dir", cache]), "cannot write", "a-file/below")
    _one_line_error(runner.invoke(app, ["plot", str(run), "--out", str(under / "p.png")]), "cannot write", "a-file/below")


def test_a_full_disk_while_writing_the_dcase_files_leaves_the_old_ones(tmp_path, synth_root, monkeypatch):
    run, cache, out = tmp_path / "run", str(tmp_path / "c"), tmp_path / "res"
    assert runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(run), "-c", "tiny",
                               "--epochs", "1", "--cache-dir", cache]).exit_code == 0
    first = runner.invoke(app, ["score", str(synth_root), "--run", str(run), "--out-dir", str(out), "--cache-dir", cache])
    assert first.exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 4
    calls = {"n": 0}
    real_fsync = os.fsync

    def full_disk(fd):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    failed = runner.invoke(app, ["score", str(synth_root), "--run", str(run), "--out-dir", str(out), "--cache-dir", cache,
                                 "--fpr", "0.5"])
    _one_line_error(failed, "No space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_full_disk_while_training_keeps_the_finished_branch(tmp_path, synth_root, monkeypatch):
    run, cache = tmp_path / "run", str(tmp_path / "c")
    args = ["train-branch", "b2", "--data", str(synth_root), "--run", str(run), "-c", "tiny", "--epochs", "2",
            "--cache-dir", cache]
    assert runner.invoke(app, args).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    _one_line_error(runner.invoke(app, args), "cannot write", str(run), "No space left")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_config_that_is_not_utf8_and_a_folder_named_like_a_preset(tmp_path, monkeypatch, synth_root):
    latin = tmp_path / "mine.yaml"
    latin.write_bytes("# r\xe9glages\nseed: 3\n".encode("latin-1"))
    _one_line_error(runner.invoke(app, ["synth", str(tmp_path / "d"), "-c", str(latin)]), "mine.yaml: not UTF-8")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    made = runner.invoke(app, ["features", str(synth_root / "fan"), "-c", "tiny", "--cache-dir", str(tmp_path / "c")])
    assert made.exit_code == 0, _plain(made.output)


def test_weights_of_another_config_and_edited_metadata(tmp_path, synth_root):
    cache = str(tmp_path / "c")
    for run, extra in (("a", []), ("b", ["--config", str(_wider(tmp_path))])):
        result = runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(tmp_path / run),
                                     "-c", "tiny", "--epochs", "1", "--cache-dir", cache] if not extra else
                               ["train-branch", "b2", "--data", str(synth_root), "--run", str(tmp_path / run),
                                "--epochs", "1", "--cache-dir", cache, *extra])
        assert result.exit_code == 0, _plain(result.output)
    shutil.copy(tmp_path / "b" / "transformer-ae.safetensors", tmp_path / "a" / "transformer-ae.safetensors")
    score = ["score", str(synth_root), "--run", str(tmp_path / "a"), "--cache-dir", cache]
    _one_line_error(runner.invoke(app, score), "transformer-ae.safetensors: weights of another configuration")
    meta = tmp_path / "b" / "transformer-ae.json"
    meta.write_text(meta.read_text().replace('"score_stats"', '"score_statistics"'))
    _one_line_error(runner.invoke(app, ["score", str(synth_root), "--run", str(tmp_path / "b"), "--cache-dir", cache]),
                    "transformer-ae.json: field 'score_stats' is missing")


def _wider(tmp_path: Path) -> Path:
    path = tmp_path / "wider.yaml"
    text = (ROOT / "asdcli" / "presets" / "tiny.yaml").read_text().replace("d_model: 32", "d_model: 48")
    path.write_text(text)
    return path


def test_non_finite_training_fails_and_a_non_finite_score_is_never_normal(tmp_path, synth_root, monkeypatch):
    run, cache = tmp_path / "run", str(tmp_path / "c")
    base = ["train-branch", "b2", "--data", str(synth_root), "--run", str(run), "--cache-dir", cache, "--epochs", "1"]
    assert runner.invoke(app, [*base, "-c", "tiny"]).exit_code == 0
    before = (run / "transformer-ae.safetensors").read_bytes()
    diverging = tmp_path / "lr.yaml"
    diverging.write_text((ROOT / "asdcli" / "presets" / "tiny.yaml").read_text()
                         .replace("lr: 0.002", "lr: 1.0e+30\n  grad_clip: 1.0e+30"))
    _one_line_error(runner.invoke(app, [*base, "-c", str(diverging)]), "diverged in epoch 1")
    assert (run / "transformer-ae.safetensors").read_bytes() == before

    from asdcli.models.branch_transformer_ae import TransformerAEBranch

    score = TransformerAEBranch.score

    def one_nan(self, batch):
        out = score(self, batch).clone()
        out[0] = float("nan")
        return out

    monkeypatch.setattr(TransformerAEBranch, "score", one_nan)
    result = runner.invoke(app, ["score", str(synth_root / "fan" / "test"), "--run", str(run), "--cache-dir", cache,
                                 "--decision"])
    assert result.exit_code == 0, _plain(result.output)
    assert "its anomaly score is not finite (transformer-ae); left out rather than decided normal" in _plain(result.stderr)
    assert "nan" not in result.stdout.lower()


def test_a_failed_first_training_does_not_tie_the_folder(tmp_path, synth_root):
    bad = tmp_path / "bad"
    (bad / "fan" / "train").mkdir(parents=True)
    (bad / "fan" / "train" / "section_00_source_train_normal_0000_a_1.wav").write_text("no audio")
    run, cache = tmp_path / "run", str(tmp_path / "c")
    failed = runner.invoke(app, ["train-branch", "b2", "--data", str(bad), "--run", str(run), "-c", "tiny",
                                 "--cache-dir", cache])
    assert failed.exit_code == 1
    assert not (run / "run.json").exists()
    good = runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(run), "-c", "tiny",
                               "--epochs", "1", "--cache-dir", cache])
    assert good.exit_code == 0, _plain(good.output)
    again = runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(run), "--epochs", "1",
                                "--cache-dir", cache])
    assert again.exit_code == 0, _plain(again.output)  # the run's config.yaml: no -c needed
    assert "has a finished transformer-ae; this training replaces it when it completes" in _plain(again.output)


def test_ctrl_c_exits_130_with_the_resume_hint(tmp_path, synth_root, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("asdcli.services.training.train.train_branch", interrupted)  # imported when it runs
    result = runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(tmp_path / "r"), "-c", "tiny"])
    assert result.exit_code == 130
    text = _plain(result.output)
    assert "run the same command again" in text and "--resume" in text and "Traceback" not in text


def _fake_asd(tmp_path: Path) -> Path:
    """A stand-in for the asd executable that records its calls."""
    script = tmp_path / "fake-asd"
    script.write_text("#!/usr/bin/env bash\n"
                      f"echo \"$@\" >> {tmp_path}/calls\n")
    script.chmod(0o755)
    return script


def test_train_ae_sh_is_asd_train_with_the_callers_paths_and_keeps_a_log(tmp_path, synth_root):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(synth_root, work / "data")
    env = {**os.environ, "ASD": str(_fake_asd(tmp_path))}
    cmd = ["bash", str(ROOT / "train_ae.sh"), "-d", "-r", "data", "-o", "out", "-c", "tiny", "--skip", "b1",
           "train.lr=0.01"]
    first = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["train data --run out/run --config tiny --out-dir out/results --no-evaluate --skip b1 train.lr=0.01",
                     "evaluate out/results --json out/evaluation.json --csv out/result.csv"]
    assert (work / "out" / "train_ae.log").is_file()
    (work / "out" / "run").mkdir()
    (work / "out" / "run" / "kept").write_text("")
    again = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and (work / "out" / "run" / "kept").exists()  # continued, not replaced
    forced = subprocess.run([*cmd, "--force"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert forced.returncode == 0 and not (work / "out" / "run").exists()  # --force starts over


def test_an_unlistable_folder_is_named_with_the_skipped_clips(tmp_path, synth_root, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    locked = data / "fan" / "train" / "more"
    locked.mkdir()
    walk = os.walk

    def walk_without_permission(top, onerror=None, followlinks=False):
        for folder, dirs, names in walk(top, onerror=onerror, followlinks=followlinks):
            if Path(folder) == locked:  # as os.walk reports a folder it may not list (root may list any)
                onerror(PermissionError(errno.EACCES, "Permission denied", str(locked)))
                continue
            yield folder, dirs, names

    monkeypatch.setattr(os, "walk", walk_without_permission)
    result = runner.invoke(app, ["features", str(data), "-c", "tiny", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, _plain(result.output)
    assert f"{locked}: a folder that cannot be listed" in _plain(result.output).replace("\n", "")
