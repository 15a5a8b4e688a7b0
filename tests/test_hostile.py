"""Hostile input (docs/threat-model.md): a run folder, config, data or ground truth from someone
else is one line naming the file or field, touches nothing outside the run, and readers never see
half a commit."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import asdcli.services.store.commits as commits
import asdcli.services.store.runs as runs
from asdcli.atomic import write_text
from asdcli.cli import app
from asdcli.config import load_config
from asdcli.data.audio import load_audio
from asdcli.data.layout import discover
from asdcli.errors import CheckpointError, ConfigError, DataError, OutputError
from asdcli.services.scoring.branch_scores import normalize, thin_sections
from asdcli.services.scoring.dcase_files import write_dcase_files
from asdcli.services.evaluation.evaluate import evaluate, read_ground_truth
from asdcli.services.training.fuse import train_fusion
from asdcli.services.training.meta import meta_train
from asdcli.services.store.records import BranchRecord
from asdcli.services.scoring.score import Detector, score_clips
from asdcli.services.training.train import train_branch
from tests.conftest import noise, write_wav

runner = CliRunner()


@pytest.fixture(scope="module")
def base(synth_root, tiny, tmp_path_factory):
    """A run with b2, fusion and meta-learner, and its feature cache (copied by each test)."""
    root = tmp_path_factory.mktemp("hostile")
    cfg = tiny.with_overrides(**{"train.epochs": 1, "meta.iterations": 5, "meta.min_tasks": 1})
    train_branch("b2", synth_root, root / "run", cfg, cache_dir=root / "cache")
    train_fusion(synth_root, root / "run", cfg)
    meta_train(root / "run", cfg)
    return root / "run", root / "cache", cfg


@pytest.fixture
def run(base, tmp_path):
    shutil.copytree(base[0], tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def outside(tmp_path):
    """A folder beside the run with a file in it: nothing may touch them."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / ".bashrc").write_text("precious\n")
    return folder


def _untouched(outside: Path) -> None:
    assert (outside / ".bashrc").read_text() == "precious\n"


def _journal(run: Path, record: dict) -> Path:
    path = run / ".commit-1-host-abcd.json"
    path.write_text(json.dumps({"format_version": 1, **record}))
    return path


@pytest.mark.parametrize("record", [
    lambda o: {"staging": str(o), "files": []},
    lambda o: {"staging": "../outside", "files": []},
    lambda o: {"staging": ".staging-1-host-abcd", "files": ["../outside/.bashrc"]},
    lambda o: {"staging": ".staging-1-host-abcd", "files": [str(o / ".bashrc")]},
    lambda o: {"staging": ".staging-1-host-abcd", "files": "x"},
])
def test_a_journal_naming_paths_outside_the_run_is_refused_and_touches_nothing(run, outside, synth_root, base, record):
    (run / ".staging-1-host-abcd").mkdir()
    (run / ".staging-1-host-abcd" / ".bashrc").write_text("hostile\n")
    journal = _journal(run, record(outside))
    with pytest.raises(CheckpointError, match=str(journal.name)):
        runs.open_run(run)
    _untouched(outside)
    assert journal.exists()
    result = runner.invoke(app, ["score", str(synth_root / "fan" / "test"), "--run", str(run)])
    assert result.exit_code == 1 and "refusing to use this run folder" in result.output
    _untouched(outside)


def test_a_staging_link_out_of_the_run_is_never_emptied_or_followed(run, outside, synth_root, base):
    (run / f".staging-999999-{socket.gethostname()}-x").symlink_to(outside)  # a dead pid's leftover, as a link
    train_fusion(synth_root, run, base[2])
    _untouched(outside)
    (run / ".staging-2-host-x").symlink_to(outside)
    _journal(run, {"staging": ".staging-2-host-x", "files": [".bashrc"]})
    with pytest.raises(CheckpointError, match="a link to .* outside the run folder"):
        runs.open_run(run)
    _untouched(outside)
    assert not (run / ".bashrc").exists()


def test_record_paths_and_branch_names_are_confined_to_the_run(run, base, synth_root):
    meta = json.loads((run / "meta.json").read_text())
    for hostile in ("/etc/passwd", "../x.safetensors"):
        (run / "meta.json").write_text(json.dumps({**meta, "examples": hostile}))
        with pytest.raises(CheckpointError, match="field 'examples'"):
            score_clips(run, discover(synth_root / "fan" / "test"), base[1])
    (run / "meta.json").write_text(json.dumps(meta))
    fusion = json.loads((run / "fusion.json").read_text())
    (run / "fusion.json").write_text(json.dumps({**fusion, "branches": ["../../etc/x"]}))
    with pytest.raises(CheckpointError, match="fusion.json: field 'branches.0'"):
        score_clips(run, discover(synth_root / "fan" / "test"), base[1])


def test_a_reader_sees_a_commit_before_or_after_never_during(run):
    done = threading.Event()

    def commit():
        with commits.commit_stage(run) as place:
            write_text(place(run / "x.json"), "{}")
        done.set()

    with commits.reading(run):
        writer = threading.Thread(target=commit)
        writer.start()
        writer.join(0.5)
        assert not done.is_set() and not (run / "x.json").exists()  # the commit waits for the reader
    writer.join(10)
    assert done.is_set() and (run / "x.json").exists()


def test_a_commit_cut_after_its_journal_is_read_from_its_staging_and_completed_by_the_next_writer(run):
    staging = run / ".staging-1-host-cut"
    staging.mkdir()
    (staging / "y.json").write_text("{}")
    _journal(run, {"staging": staging.name, "files": ["y.json"]})
    with commits.reading(run):
        assert runs.open_run(run).file("y.json") == staging / "y.json"  # the reader sees the commit ...
        assert not (run / "y.json").exists() and staging.exists()  # ... and moves nothing
    with commits.writing(run, "fusion"):
        assert (run / "y.json").exists() and not staging.exists()
        assert runs.open_run(run).file("y.json") == run / "y.json"


def test_a_second_writer_of_the_same_stage_stops_with_one_line(run, synth_root, base):
    with commits.writing(run, "fusion"):
        with pytest.raises(CheckpointError, match="another asd command is writing its fusion"):
            train_fusion(synth_root, run, base[2])
        with pytest.raises(CheckpointError, match="writing its transformer-ae"), commits.writing(run, "transformer-ae"):
            with commits.writing(run, "transformer-ae"):
                pass


def test_dcase_files_are_written_all_or_none(run, base, synth_root, tmp_path, monkeypatch):
    result = score_clips(run, discover(synth_root), base[1])
    out = tmp_path / "out"
    old = write_dcase_files(result, out)
    before = {p: p.read_text() for p in old}
    result.score = result.score + 1.0
    moves = {"n": 0}
    move = commits._move

    def cut(source, target):
        moves["n"] += 1
        if moves["n"] == 2:
            raise KeyboardInterrupt  # killed between two renames
        move(source, target)

    monkeypatch.setattr(commits, "_move", cut)
    with pytest.raises(KeyboardInterrupt):
        write_dcase_files(result, out)
    monkeypatch.setattr(commits, "_move", move)
    assert {p.read_text() for p in old} != set(before.values())  # a mix: some renamed, some not
    evaluate([out])  # a reader of the folder completes the commit first
    expected = write_dcase_files(result, tmp_path / "fresh")
    assert [p.read_text() for p in old] == [p.read_text() for p in expected]
    assert any(p.read_text() != before[p] for p in old)
    assert not list(out.glob(".staging-*")) and not list(out.glob(".commit-*")) and not list(out.rglob("*.tmp"))


def test_a_section_with_one_training_clip_borrows_the_others_spread(base):
    meta = BranchRecord.model_validate({"branch": "transformer-ae", "status": "complete", "epochs_done": 1, "epochs": 1,
                                      "seed": 0, "config": {}, "groups": ["a", "b"],
                                      "score_stats": {"a": {"count": 1, "mean": 5.0, "std": 0.0},
                                                      "b": {"count": 9, "mean": 0.0, "std": 2.0}},
                                      "embed_dims": {}, "upstream": [], "extra": None, "heldout": None,
                                      "limitation": None, "trained_clips": None})
    assert thin_sections(meta) == ["a"]
    assert normalize(np.array([7.0]), ["a"], meta)[0] == pytest.approx(1.0)


def test_an_unwritable_cache_slows_scoring_but_does_not_stop_it(run, synth_root, tmp_path):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    result = score_clips(run, discover(synth_root / "fan" / "test"), blocked)
    assert len(result.score) == 8 and any("cannot be written" in n for n in result.notices)


@pytest.mark.slow
def test_safetensors_files_have_the_same_bytes_in_every_process(tmp_path):
    script = ("import sys, torch; from pathlib import Path; from asdcli.checkpoints import save_arrays; "
              "save_arrays(Path(sys.argv[1]), {'b': torch.ones(3), 'a': torch.zeros(2)}, "
              "{k: str(i) for i, k in enumerate('qwertyuiopasdf')})")
    for name in ("one", "two", "three"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True)
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes() == (tmp_path / "three").read_bytes()


def test_a_full_disk_in_the_run_folder_is_one_line(monkeypatch, tmp_path):
    import safetensors.torch
    import torch

    from asdcli.checkpoints import save_weights

    def full(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr("asdcli.checkpoints.save_model", full)
    with pytest.raises(OutputError, match="cannot write .*os error 28"):
        save_weights(torch.nn.Linear(2, 2), tmp_path / "w.safetensors", {})
    assert not list(tmp_path.iterdir())


def test_a_wav_declaring_an_absurd_rate_is_refused_at_once(tmp_path, tiny):
    path = write_wav(tmp_path / "one_hz.wav", noise(3.0, rate=16000)[:32000], rate=16000)
    data = bytearray(path.read_bytes())
    data[24:28] = (1).to_bytes(4, "little")  # sample rate 1 Hz
    data[28:32] = (2).to_bytes(4, "little")  # byte rate
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sample rate 1 Hz is not usable"):
        load_audio(path, tiny.audio)


def test_damaged_training_scores_and_an_edited_log_are_one_line(run, base, synth_root):
    path = run / "transformer-ae.train_scores.json"
    path.write_text(json.dumps({"format_version": 1, "branch": "transformer-ae", "scores": {}}))
    with pytest.raises(CheckpointError, match="field 'scores'"):
        score_clips(run, discover(synth_root / "fan" / "test"), base[1])
    cfg = base[2].with_overrides(**{"train.epochs": 2})

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_branch("b3", synth_root, run, cfg, cache_dir=base[1], on_epoch=stop)
    (run / "logs" / "contrastive_train.csv").write_text("epoch,loss\nabc,1\n")
    with pytest.raises(CheckpointError, match="damaged training log"):
        train_branch("b3", synth_root, run, cfg, cache_dir=base[1], resume=True)


def test_the_api_refuses_what_it_cannot_score_in_one_line(base, synth_root, tmp_path):
    detector = Detector.load(base[0], cache_dir=base[1])
    clip = discover(synth_root / "fan" / "test")[0]
    one = detector.score(str(clip.path))
    assert len(one.score) == 1  # one path is one clip, not its characters
    assert one.rows()[0]["file"] == str(clip.path) and one.rows()[0]["score"] == one.score[0] and "z_b2" in one.rows()[0]
    with pytest.raises(DataError, match="no clips were given"):
        detector.score([])
    with pytest.raises(DataError, match="a folder, not an audio file"):
        detector.score([synth_root / "fan"])
    with pytest.raises(DataError, match="expected audio file paths"):
        detector.score([3])
    wave = (noise(2.0) * 32767).astype(np.int16)
    as_int = detector.score_waveform(wave, 16000, "fan", 0)
    as_float = detector.score_waveform(wave.astype(np.float32) / 32768, 16000, "fan", 0)
    assert as_int.score == pytest.approx(as_float.score)
    for rate in (0, float("nan"), 1):
        with pytest.raises(DataError, match="sample rate"):
            detector.score_waveform(noise(2.0), rate, "fan", 0)
    with pytest.raises(DataError, match="section 'abc'"):
        detector.score_waveform(noise(2.0), 16000, "fan", "abc")
    with pytest.raises(DataError, match="numeric audio"):
        detector.score_waveform(np.array(["a", "b"]), 16000, "fan", 0)
    with pytest.raises(DataError, match="domain"):
        detector.score_waveform(noise(2.0), 16000, "fan", 0, domain="elsewhere")
    unknown = detector.score_waveform(noise(2.0), 16000, "pump", 7)
    assert any("was not in the training data" in n for n in unknown.notices)


def _csv(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r + "\n" for r in rows))
    return path


def test_evaluate_refuses_duplicates_missing_decisions_and_mislabelled_sections(tmp_path):
    rows = ["section_00_source_test_normal_0000.wav,0.1", "section_00_source_test_anomaly_0000.wav,0.9"]
    dup = _csv(tmp_path / "a" / "anomaly_score_fan_section_00_test.csv", rows + [rows[0]])
    with pytest.raises(DataError, match="line 3: .* scored already on line 1"):
        evaluate([dup])
    good = _csv(tmp_path / "b" / "anomaly_score_fan_section_00_test.csv", rows)
    _csv(tmp_path / "b" / "decision_result_fan_section_00_test.csv", ["section_00_source_test_normal_0000.wav,0"])
    with pytest.raises(DataError, match="no decision for section_00_source_test_anomaly_0000.wav"):
        evaluate([good])
    wrong = _csv(tmp_path / "c" / "anomaly_score_fan_section_01_test.csv", rows)
    with pytest.raises(DataError, match="is a clip of section 00, the file is for section 01"):
        evaluate([wrong])
    truth = tmp_path / "truth"
    _csv(truth / "ground_truth_data" / "ground_truth_fan_section_00_test.csv", ["a.wav,0", "a.wav,1"])
    with pytest.raises(DataError, match="line 2: a.wav is given already on line 1"):
        read_ground_truth(truth)


def test_config_values_of_the_wrong_type_repeated_keys_and_link_loops_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"epochs": True}}))
    with pytest.raises(ConfigError, match="field 'train.epochs'"):
        load_config(bad)
    bad.write_text("train:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="key 'epochs' is given twice"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    os.symlink(loop, loop)
    with pytest.raises(ConfigError, match="symbolic link"):
        load_config(loop)


def test_a_pretrained_source_holding_an_unsafe_pickle_is_one_line(tmp_path, tiny):
    import torch
    from transformers import ASTConfig

    from asdcli.models.backbones import load_ast

    folder = tmp_path / "ast"
    folder.mkdir()
    ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(folder)
    torch.save({"x": threading.Lock}, folder / "pytorch_model.bin")  # a pickle that names a class
    cfg = tiny.branches.pretrained.model_copy(update={"backbone": "ast", "source": str(folder)})
    with pytest.raises(ConfigError, match="weights_only refused it"):
        load_ast(cfg)


def test_meta_train_without_learn2learn_is_one_line_naming_the_fix(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "learn2learn", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "learn2learn.algorithms", None)
    result = runner.invoke(app, ["meta-train", "--run", str(run)])
    assert result.exit_code == 1 and "needs learn2learn 0.2.0" in result.output and "scripts/install.sh" in result.output


def test_brackets_in_a_message_are_printed_as_they_are(tmp_path):
    weird = tmp_path / "data[bold]x"
    result = runner.invoke(app, ["features", str(weird), "-c", "tiny"])
    assert result.exit_code == 1 and "data[bold]x" in result.output


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_scoring_a_read_only_run_with_a_pending_commit_reads_it_and_writes_nothing(run, base, synth_root, tmp_path):
    """A run copied off a machine that died after a commit point (its journal and staged files
    are there): `asd score` sees the committed stage and leaves every file as it was."""
    test = discover(synth_root / "fan" / "test")
    before = score_clips(run, test, base[1]).score
    finished = tmp_path / "finished"  # the run as the commit leaves it: the meta-learner retrained
    shutil.copytree(run, finished)
    meta_train(finished, base[2].with_overrides(seed=7))
    expected = score_clips(finished, test, base[1]).score
    assert not np.array_equal(expected, before)
    staging = run / ".staging-1-deadhost-cut"
    staging.mkdir()
    names = sorted(p.name for p in finished.glob("meta*") if p.read_bytes() != (run / p.name).read_bytes())
    for name in names:
        shutil.copy2(finished / name, staging / name)
    _journal(run, {"staging": staging.name, "files": names})
    snapshot = _snapshot(run)
    modes = {p: p.stat().st_mode for p in [run, *run.rglob("*")]}
    for path in modes:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        np.testing.assert_array_equal(score_clips(run, test, base[1]).score, expected)
        result = runner.invoke(app, ["score", str(synth_root / "fan" / "test"), "--run", str(run),
                                     "--cache-dir", str(base[1])])
        assert result.exit_code == 0, result.output
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert _snapshot(run) == snapshot
