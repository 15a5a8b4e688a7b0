"""Hostile input, second probe (docs/threat-model.md): special files and links in a run folder, a
prior or a score folder; crafted tensors and records; evaluate losing data; odd clip names; deep
or huge configs. Each ends in one line or a notice, reads nothing outside the run, never hangs."""

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import asdcli.services.evaluation.evaluate as evaluate_service
from asdcli.cli import app
from asdcli.config import load_config
from asdcli.data.layout import discover
from asdcli.errors import CheckpointError, ConfigError, DataError
from asdcli.services.training.branch_prior import load_prior
from asdcli.services.evaluation.evaluate import evaluate
from asdcli.services.training.fuse import train_fusion
from asdcli.services.scoring.score import score_clips
from asdcli.services.training.train import train_branch

runner = CliRunner()


@pytest.fixture(scope="module")
def base(synth_root, tiny, tmp_path_factory):
    """A run with b2, b3 (a memory bank) and the fusion head, and its feature cache."""
    root = tmp_path_factory.mktemp("hostile-files")
    cfg = tiny.with_overrides(**{"train.epochs": 1})
    for name in ("b2", "b3"):
        train_branch(name, synth_root, root / "run", cfg, cache_dir=root / "cache")
    train_fusion(synth_root, root / "run", cfg)
    return root / "run", root / "cache", cfg


@pytest.fixture
def run(base, tmp_path):
    shutil.copytree(base[0], tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def branches_only(run):
    """The run without its fusion head: scoring reads the branches' own files first (with the
    head, an edited branch file is reported as a branch retrained after it)."""
    for name in ("fusion.json", "fusion.safetensors", "examples.safetensors"):
        (run / name).unlink()
    return run


def _fails_at_once(call, error: type[Exception], match: str, seconds: float = 20.0) -> None:
    """``call()`` raises ``error`` matching ``match`` within ``seconds`` (a FIFO must never be waited on)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as problem:  # noqa: BLE001 - handed to the test thread
            outcome.append(problem)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still running after {seconds} s (it waits on a special file)"
    assert isinstance(outcome[0], error) and match in str(outcome[0]), outcome[0]
    assert "\n" not in str(outcome[0])


def _score(run: Path, synth_root: Path, cache: Path):
    return score_clips(run, discover(synth_root / "fan" / "test"), cache)


@pytest.mark.parametrize("name", ["contrastive.safetensors", "run.json", "transformer-ae.json", ".commit-1-host-x.json"])
def test_a_fifo_in_place_of_a_run_file_is_refused_at_once(run, base, synth_root, name):
    (run / name).unlink(missing_ok=True)
    os.mkfifo(run / name)
    _fails_at_once(lambda: _score(run, synth_root, base[1]), CheckpointError, "a FIFO (named pipe), not a regular file")


def test_links_to_devices_and_out_of_the_run_are_refused(run, base, synth_root, tmp_path):
    weights = run / "contrastive.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(weights, outside)
    weights.unlink()
    weights.symlink_to("/dev/zero")
    _fails_at_once(lambda: _score(run, synth_root, base[1]), CheckpointError, "outside")
    weights.unlink()
    weights.symlink_to(outside)  # a valid file, but not the run's
    _fails_at_once(lambda: _score(run, synth_root, base[1]), CheckpointError, "a link to")
    weights.unlink()
    weights.symlink_to("kept.safetensors")  # a link inside the run is the run's own file
    shutil.copy(outside, run / "kept.safetensors")
    assert len(_score(run, synth_root, base[1]).clips) == len(discover(synth_root / "fan" / "test"))


def test_a_prior_that_is_a_fifo_or_a_device_is_refused(tmp_path):
    os.mkfifo(tmp_path / "prior.json")
    _fails_at_once(lambda: load_prior(str(tmp_path / "prior.json")), ConfigError, "not a regular file")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    _fails_at_once(lambda: load_prior(str(tmp_path / "zero.json")), ConfigError, "a character device")


def _rewrite(path: Path, change) -> None:
    tensors = load_file(str(path))
    with open(path, "rb") as handle:  # keep the metadata
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    change(tensors)
    save_file(tensors, str(path), metadata=header.get("__metadata__"))


@pytest.mark.parametrize("change, match", [
    (lambda t: t.update({"bank.emb": t["bank.emb"].T.contiguous()}), "tensor 'bank.emb' has shape"),
    (lambda t: t.update({"bank.group": t["bank.group"][:-1].contiguous()}), "rows"),
    (lambda t: t.update({"project.0.weight": t["project.0.weight"].to(torch.int32)}), "is int32, the branch declares float32"),
    (lambda t: t.update({k: torch.full_like(v, float("nan")) for k, v in t.items() if v.is_floating_point()}),
     "holds NaN or infinite values"),
])
def test_crafted_tensors_are_one_line_naming_the_file_and_tensor(branches_only, base, synth_root, change, match):
    _rewrite(branches_only / "contrastive.safetensors", change)
    with pytest.raises(CheckpointError, match=match) as caught:
        _score(branches_only, synth_root, base[1])
    assert "contrastive.safetensors" in str(caught.value)


@pytest.mark.parametrize("file, edit, field", [
    ("transformer-ae.json", lambda d: d["score_stats"][next(iter(d["score_stats"]))].update(mean=float("nan")), "mean"),
    ("transformer-ae.json", lambda d: d["score_stats"][next(iter(d["score_stats"]))].update(std=float("inf")), "std"),
    ("transformer-ae.train_scores.json", lambda d: d["scores"].update({next(iter(d["scores"])): float("nan")}), "scores"),
])
def test_nan_or_infinity_in_a_record_names_the_file_and_field(branches_only, base, synth_root, file, edit, field):
    run = branches_only
    data = json.loads((run / file).read_text())
    edit(data)
    (run / file).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=field) as caught:
        _score(run, synth_root, base[1])
    assert file in str(caught.value)


def test_nan_in_the_fusion_record_names_the_file_and_field(run, base, synth_root):
    data = json.loads((run / "fusion.json").read_text())
    data["mean_weights"][next(iter(data["mean_weights"]))] = float("inf")
    (run / "fusion.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"fusion.json: field 'mean_weights\..*' is not valid"):
        _score(run, synth_root, base[1])


def _scores(folder: Path, section: str, rows: list[str], decisions: list[str] | None = None) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"anomaly_score_fan_section_{section}_test.csv").write_text("".join(r + "\n" for r in rows))
    if decisions is not None:
        (folder / f"decision_result_fan_section_{section}_test.csv").write_text("".join(r + "\n" for r in decisions))


def _section_rows(section: str) -> list[str]:
    return [f"section_{section}_source_test_{label}_{i:04d}_a_1.wav,{i + (3 if label == 'anomaly' else 0)}"
            for label in ("normal", "anomaly") for i in range(3)]


@pytest.mark.parametrize("decisions", [True, False])
def test_evaluate_names_a_section_whose_score_file_is_empty(tmp_path, decisions):
    folder = tmp_path / "scores"
    _scores(folder, "00", _section_rows("00"), [r.split(",")[0] + ",0" for r in _section_rows("00")] if decisions else None)
    _scores(folder, "01", [], [] if decisions else None)
    result = evaluate([folder])
    assert [s.section for s in result.sections] == ["00"]
    assert any("anomaly_score_fan_section_01_test.csv holds no scores" in n and "fan section 01 is left out" in n
               for n in result.notices)
    _scores(folder, "01", ["filename,score"])  # a header alone
    assert any("section_01" in n for n in evaluate([folder]).notices)


def test_evaluate_refuses_special_files_and_bounds_its_rows(tmp_path, monkeypatch):
    folder = tmp_path / "scores"
    _scores(folder, "00", _section_rows("00"))
    os.mkfifo(folder / "anomaly_score_fan_section_01_test.csv")
    _fails_at_once(lambda: evaluate([folder]), DataError, "a FIFO (named pipe), not a regular file")
    (folder / "anomaly_score_fan_section_01_test.csv").unlink()
    os.mkfifo(folder / "decision_result_fan_section_00_test.csv")
    _fails_at_once(lambda: evaluate([folder]), DataError, "decision_result_fan_section_00_test.csv: a FIFO")
    (folder / "decision_result_fan_section_00_test.csv").unlink()
    monkeypatch.setattr(evaluate_service, "MAX_ROWS", 4)
    with pytest.raises(DataError, match="more than 4 rows"):
        evaluate([folder])


def test_a_clip_name_that_is_not_utf8_and_an_over_long_path_skip_that_clip_only(base, synth_root, tmp_path):
    folder = tmp_path / "fan" / "test"
    clips = sorted((synth_root / "fan" / "test").glob("*.wav"))[:4]
    folder.mkdir(parents=True)
    for clip in clips:
        shutil.copy(clip, folder / clip.name)
    odd = os.fsencode(folder) + b"/section_00_source_test_normal_0999_\xff\xfe.wav"
    shutil.copy(clips[0], odd)
    deep = os.open(folder, os.O_RDONLY)
    for _ in range(17):  # a path of over 4096 bytes, made one folder at a time
        os.mkdir("d" * 250, dir_fd=deep)
        inner = os.open("d" * 250, os.O_RDONLY, dir_fd=deep)
        os.close(deep)
        deep = inner
    with open(os.open("section_00_source_test_normal_0998_a_1.wav", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=deep), "wb") as handle:
        handle.write(clips[0].read_bytes())
    os.close(deep)
    result = runner.invoke(app, ["score", str(folder), "--run", str(base[0]), "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "skipped 1 clip(s)" in result.output  # the over-long path only: the odd name is read
    written = (tmp_path / "out" / "anomaly_score_fan_section_00_test.csv").read_bytes()
    assert b"\xff\xfe.wav" in written and written.count(b"\n") == 5
    assert len(evaluate([tmp_path / "out"]).sections) == 1  # the odd name reads back


@pytest.mark.parametrize("text, match", [
    ("[" * 100_000, "nested more than 32 levels"),
    ("{a: " * 3000 + "1" + "}" * 3000, "nested more than 32 levels"),
    ("train: &x {epochs: 1}\nfusion: *x\n", "aliases"),
    ("seed: 100000000000000000000\n", "out of range"),
    ("train: {lr: .inf}\n", "field 'train.lr'"),
])
def test_deep_aliased_or_out_of_range_configs_are_one_line(tmp_path, text, match):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_a_huge_or_special_config_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(100 * 2**20)
    with pytest.raises(ConfigError, match="more than the 4.0 MiB a config file may have"):
        load_config(big)
    os.mkfifo(tmp_path / "fifo.yaml")
    _fails_at_once(lambda: load_config(tmp_path / "fifo.yaml"), ConfigError, "a FIFO")


def test_train_checks_the_prior_first_and_names_machines_without_training_clips(synth_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    shutil.rmtree(data / "valve" / "train")
    prior = tmp_path / "prior.json"
    prior.write_text('{"format_version": 1, "format_version": 1}')
    args = ["train", str(data), "--run", str(tmp_path / "run"), "-c", "tiny", "--skip", "b1", "--skip", "b3",
            "--skip", "b4", "train.epochs=1", "meta.iterations=2"]
    result = runner.invoke(app, args + [f"fusion.prior={prior}"])
    assert result.exit_code == 1 and "key 'format_version' is given twice" in result.output
    assert not (tmp_path / "run" / "transformer-ae.safetensors").exists()  # refused before any training
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "valve has no training clips" in text and "left out of the run" in text
    assert "valve" not in text.split("test clips scored")[1]  # nor in the evaluation table
    assert "scored against all sections' statistics" not in text
