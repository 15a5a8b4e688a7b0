import re

import pytest
from typer.testing import CliRunner

from asdcli.cli import app

runner = CliRunner()
COMMANDS = ["synth", "features", "train-branch", "train-fusion", "meta-train", "score", "evaluate", "freeze-debug", "plot", "info"]


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_top_level_help_lists_the_design_card():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in _plain(result.output)


def test_plot_errors_name_the_input(tmp_path):
    missing = runner.invoke(app, ["plot", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 1 and "no such file" in _plain(missing.output)
    (tmp_path / "x.csv").write_text("kind,global_step,loss_total\nstep,1,2\n")
    (tmp_path / "y.csv").write_text("a.wav,0.5\n")
    mixed = runner.invoke(app, ["plot", str(tmp_path / "x.csv"), str(tmp_path / "y.csv")])
    assert mixed.exit_code == 1 and "different kinds" in _plain(mixed.output)
    unlabelled = runner.invoke(app, ["plot", str(tmp_path / "y.csv")])
    assert unlabelled.exit_code == 1 and "normal and anomalous labels" in _plain(unlabelled.output)


def test_freeze_debug_cli_writes_the_named_log_and_plots_it(tmp_path, synth_root):
    logs = tmp_path / "logs"
    result = runner.invoke(app, ["freeze-debug", "--branch", "b3", "--branch", "b4", "--epochs", "1", "--data",
                                 str(synth_root), "-c", "tiny", "--log-dir", str(logs), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    text = _plain(result.output)
    assert "frozen, weights bit-identical" in text and "fusion and meta-learner not logged" in text
    assert (logs / "debug_freeze_b3_b4.csv").exists()
    plotted = runner.invoke(app, ["plot", str(logs / "debug_freeze_b3_b4.csv")])
    assert plotted.exit_code == 0 and (logs / "debug_freeze_b3_b4.png").stat().st_size > 10_000


@pytest.mark.slow
def test_synth_then_features_then_cached(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    result = runner.invoke(app, ["synth", str(data), "-c", "tiny"])
    assert result.exit_code == 0, result.output
    assert "wrote 384 clips" in _plain(result.output)
    first = runner.invoke(app, ["features", str(data / "fan"), "-c", "tiny", "--cache-dir", str(cache)])
    assert first.exit_code == 0 and "96 clips: 96 computed, 0 from cache, 0 skipped" in _plain(first.output)
    again = runner.invoke(app, ["features", str(data / "fan"), "-c", "tiny", "--cache-dir", str(cache), "-j", "1"])
    assert "96 clips: 0 computed, 96 from cache" in _plain(again.output)


def test_features_reports_bad_clip_and_carries_on(tmp_path, synth_root):
    folder = tmp_path / "m" / "test"
    folder.mkdir(parents=True)
    for clip in list((synth_root / "fan" / "test").glob("*.wav"))[:3]:
        (folder / clip.name).write_bytes(clip.read_bytes())
    (folder / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    result = runner.invoke(app, ["features", str(tmp_path), "-c", "tiny", "--cache-dir", str(tmp_path / "c")])
    out = _plain(result.output)
    assert result.exit_code == 0
    assert "4 clips: 3 computed, 0 from cache, 1 skipped" in out
    assert "broken.wav: not a readable WAV/FLAC audio file" in out


def test_data_error_is_one_line_and_exit_1(tmp_path):
    result = runner.invoke(app, ["features", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert _plain(result.output).strip().startswith("error: data path does not exist")
    assert "Traceback" not in result.output


def test_config_error_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth:\n  machins: [fan]\n")
    result = runner.invoke(app, ["synth", str(tmp_path / "out"), "-c", str(bad)])
    assert result.exit_code == 1
    assert "bad.yaml: field 'synth.machins': unknown field" in _plain(result.output)
    assert not (tmp_path / "out").exists()


def test_all_bad_clips_is_an_error(tmp_path):
    (tmp_path / "a.wav").write_text("nope")
    result = runner.invoke(app, ["features", str(tmp_path), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 1 and "no clip under" in _plain(result.output)


def test_train_branch_end_to_end_and_its_errors(tmp_path, synth_root):
    run = tmp_path / "run"
    base = ["--data", str(synth_root), "--run", str(run), "-c", "tiny", "--cache-dir", str(tmp_path / "c")]
    ok = runner.invoke(app, ["train-branch", "transformer-ae", *base, "--epochs", "1"])
    assert ok.exit_code == 0, ok.output
    assert "transformer-ae: 20 training clips, 1 epochs" in _plain(ok.output)
    assert (run / "transformer-ae.safetensors").exists() and (run / "logs" / "transformer-ae_train.csv").exists()
    unknown = runner.invoke(app, ["train-branch", "b9", *base])
    assert unknown.exit_code == 1 and "unknown branch 'b9'" in _plain(unknown.output)
    early = runner.invoke(app, ["train-branch", "b5", *base])
    assert early.exit_code == 1 and "branch 'contrastive' is not trained" in _plain(early.output)


def test_gpu_without_cuda_fails_instead_of_using_the_cpu(tmp_path, synth_root):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = runner.invoke(app, ["train-branch", "diffusion", "--gpu", "0", "--data", str(synth_root),
                                 "--run", str(tmp_path / "r"), "-c", "tiny"])
    assert result.exit_code == 1 and "no CUDA device is available" in _plain(result.output)
    assert not (tmp_path / "r").exists()


def test_evaluate_prints_table_and_writes_json(tmp_path):
    rows = ["section_00_source_test_normal_0000.wav,0.1", "section_00_target_test_normal_0000.wav,0.2",
            "section_00_source_test_anomaly_0000.wav,0.9", "section_00_target_test_anomaly_0000.wav,0.8"]
    (tmp_path / "anomaly_score_fan_section_00_test.csv").write_text("\n".join(rows) + "\n")
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "official score" in _plain(result.output) and "1.0000" in _plain(result.output)
    import json

    assert json.loads((tmp_path / "r.json").read_text())["official_score"] == pytest.approx(1.0)


def test_score_writes_csv_to_stdout_and_dcase_files(tmp_path, synth_root):
    run, cache = tmp_path / "run", str(tmp_path / "c")
    trained = runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(run), "-c", "tiny",
                                  "--epochs", "1", "--cache-dir", cache])
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["score", str(synth_root / "fan" / "test"), "--run", str(run), "--decision",
                                 "--out-dir", str(tmp_path / "out"), "--cache-dir", cache])
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in _plain(result.stdout).splitlines() if line.startswith("section_")]
    assert len(rows) == 8 and all(len(r) == 3 and r[2] in ("0", "1") for r in rows)
    assert (tmp_path / "out" / "anomaly_score_fan_section_00_test.csv").exists()
    missing = runner.invoke(app, ["score", str(synth_root), "--run", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "does not exist" in _plain(missing.output)


def test_fusion_meta_score_explain_then_evaluate(tmp_path, synth_root):
    run, cache = tmp_path / "run", str(tmp_path / "c")
    for name in ("b2", "b3"):
        trained = runner.invoke(app, ["train-branch", name, "--data", str(synth_root), "--run", str(run), "-c", "tiny",
                                      "--epochs", "1", "--cache-dir", cache])
        assert trained.exit_code == 0, trained.output
    before = runner.invoke(app, ["meta-train", "--run", str(run)])
    assert before.exit_code == 1 and "asd train-fusion" in _plain(before.output)
    fused = runner.invoke(app, ["train-fusion", "--data", str(synth_root), "--run", str(run)])
    assert fused.exit_code == 0, fused.output
    assert "not fused (not trained): pretrained, diffusion, flow" in _plain(fused.output)
    meta = runner.invoke(app, ["meta-train", "--data", str(synth_root), "--run", str(run), "--iterations", "5"])
    assert meta.exit_code == 0, meta.output
    assert "tasks from meta_examples.safetensors" in _plain(meta.output)
    bad = runner.invoke(app, ["meta-train", "--run", str(run), "--holdout", "nope_section_09"])
    assert bad.exit_code == 1 and "not a section of this run" in _plain(bad.output)
    import asdcli.services.store.runs as runs

    opened, read_record = [], runs.read_record

    def counted(schema, path, what):  # open_run reads the run description: once per opening
        opened.extend([path] if schema is runs.RunDescription else [])
        return read_record(schema, path, what)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "read_record", counted)
        result = runner.invoke(app, ["score", str(synth_root), "--run", str(run), "--explain", "--decision",
                                     "--cache-dir", cache])
    assert result.exit_code == 0, result.output
    assert opened == [run / "run.json"]  # the run is opened once and handed down
    assert "meta-learner adapted per section" in _plain(result.stderr)
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "filename,score,decision,fused,z_b2,w_b2,z_b3,w_b3"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 16 and all(abs(float(r[5]) + float(r[7]) - 1.0) < 1e-3 for r in rows)
    (tmp_path / "scores.csv").write_text(result.stdout)
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "scores.csv")])
    assert evaluated.exit_code == 0, evaluated.output


def test_dcase2020_round_trip_writes_and_reads_2020_names(tmp_path, shared_data):
    data, run, cache = shared_data / "dcase2020-mini", tmp_path / "run", str(tmp_path / "c")
    trained = runner.invoke(app, ["train-branch", "b2", "--data", str(data), "--run", str(run), "-c", "tiny",
                                  "--epochs", "1", "--cache-dir", cache])
    assert trained.exit_code == 0, trained.output
    scored = runner.invoke(app, ["score", str(data / "slider"), "--run", str(run), "--out-dir", str(tmp_path / "res"),
                                 "--cache-dir", cache])
    assert scored.exit_code == 0, scored.output
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["anomaly_score_slider_id_00.csv",
                                                                    "decision_result_slider_id_00.csv"]
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "res"), "--csv", str(tmp_path / "result.csv")])
    assert evaluated.exit_code == 0, evaluated.output
    text = _plain(evaluated.output)
    assert "DCASE 2020 evaluation" in text and "source" not in text and "score (AUC+pAUC)/2" in text
    assert (tmp_path / "result.csv").read_text().startswith("slider\nid,AUC,pAUC\n00,")


def test_asd_help_lists_every_command_without_loading_torch(run_fresh):
    code = "from asdcli.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0"
    from asdcli.cli import COMMANDS as every

    output, loaded = run_fresh(code, ("torch",))
    assert loaded == []
    for name in every:
        assert f"  {name} " in output


def test_every_command_help_answers_without_loading_torch_or_scipy(run_fresh):
    code = ("from asdcli.cli import main, COMMANDS\nfor name in COMMANDS:\n    try:\n"
            "        main([name, '--help'])\n    except SystemExit as e:\n        assert e.code == 0, name")
    from asdcli.cli import COMMANDS as every

    output, loaded = run_fresh(code, ("torch", "scipy", "numpy", "torchaudio"))
    assert loaded == []
    assert output.count("Usage: asd ") == len(every)


def test_score_takes_the_machine_and_section_of_clips_whose_names_say_neither(tmp_path, synth_root):
    import shutil

    run, cache = tmp_path / "run", str(tmp_path / "c")
    assert runner.invoke(app, ["train-branch", "b2", "--data", str(synth_root), "--run", str(run), "-c", "tiny",
                               "--epochs", "1", "--cache-dir", cache]).exit_code == 0
    odd = tmp_path / "recordings"
    odd.mkdir()
    source = sorted((synth_root / "fan" / "test").glob("*.wav"))[0]
    shutil.copy(source, odd / "monday.wav")
    guessed = runner.invoke(app, ["score", str(odd), "--run", str(run), "--cache-dir", cache])
    assert "section recordings_section_00 was not in the training data" in _plain(guessed.stderr)
    told = runner.invoke(app, ["score", str(odd), "--run", str(run), "--cache-dir", cache, "--machine", "fan",
                               "--section", "0"])
    assert told.exit_code == 0 and "was not in the training data" not in _plain(told.stderr)
    named = runner.invoke(app, ["score", str(source), "--run", str(run), "--cache-dir", cache])
    assert told.stdout.split(",")[1] == named.stdout.split(",")[1]  # the same clip, told or named
