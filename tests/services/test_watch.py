"""`asd watch`: each recording scored once when complete, a log that survives a crash, alerts."""

import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from asdcli.cli import app
from asdcli.services.training.fuse import train_fusion
from asdcli.services.scoring.score import Detector
from asdcli.services.training.train import train_branch
from asdcli.services.scoring.arrivals import WatchOptions, WatchState, wav_state
from asdcli.services.scoring.watch import Monitor, Watch
from asdcli.services.scoring.watch_log import DecisionLog, LogLine

runner = CliRunner()


@pytest.fixture(scope="module")
def run(synth_root, tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("watch-run")
    cfg = tiny.with_overrides(**{"train.epochs": 1})
    train_branch("b2", synth_root, root / "run", cfg, cache_dir=root / "cache")
    train_fusion(synth_root, root / "run", cfg)
    return root / "run"


def _clips(synth_root: Path, count: int) -> list[Path]:
    return sorted((synth_root / "fan" / "test").glob("*.wav"))[:count]


class Running:
    """A Watch in a thread (polling, settling fast), stopped on exit."""

    def __init__(self, folder: Path, run: Path, log: Path, **options):
        self.lines: list[LogLine] = []
        self.alerts: list[LogLine] = []
        self.stop = threading.Event()
        options = {"settle_s": 0.3, "poll": True, **options}
        self.watch = Watch(folder, run, DecisionLog(log), WatchOptions(**options), Detector.load, self.lines.append,
                           lambda line: self.alerts.append(line))
        self.thread = threading.Thread(target=lambda: setattr(self, "summary", self.watch.run(self.stop)), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()

    def until(self, test, seconds: float = 30.0) -> None:
        end = time.monotonic() + seconds
        while not test():
            assert time.monotonic() < end, [line.file for line in self.lines]
            time.sleep(0.05)

    def scored(self) -> dict[str, float]:
        return {line.file: line.score for line in self.lines if line.kind == "clip"}


def test_each_file_is_scored_once_as_asd_score_scores_it_and_a_restart_catches_up(run, synth_root, tmp_path):
    folder, log = tmp_path / "rec" / "fan", tmp_path / "log.csv"
    folder.mkdir(parents=True)
    clips = _clips(synth_root, 6)
    for clip in clips[:2]:
        shutil.copy(clip, folder / clip.name)
    with Running(folder.parent, run, log) as first:
        first.until(lambda: len(first.scored()) == 2)
        for clip in clips[2:4]:
            shutil.copy(clip, folder / f".{clip.name}.part")
            os.rename(folder / f".{clip.name}.part", folder / clip.name)  # renamed into place
        first.until(lambda: len(first.scored()) == 4)
    for clip in clips[4:]:
        shutil.copy(clip, folder / clip.name)  # while it is down
    with Running(folder.parent, run, log) as second:
        second.until(lambda: len(second.scored()) == 2)
    assert second.summary.caught_up == 2
    logged = [line for line in DecisionLog(log).read() if line.kind == "clip"]
    assert Counter(line.file for line in logged) == Counter(f"fan/{c.name}" for c in clips)  # once each
    expected = Detector.load(run).score(clips)
    by_name = {line.file.split("/")[-1]: line for line in logged}
    assert np.allclose([by_name[c.path.name].score for c in expected.clips], expected.score, atol=1e-6)
    assert [by_name[c.path.name].decision for c in expected.clips] == expected.decision.tolist()


def test_a_crash_mid_line_leaves_no_half_line_and_that_clip_is_scored_again(tmp_path):
    log = DecisionLog(tmp_path / "log.csv")
    log.open()
    log.append(LogLine("t", "a.wav", "fan", "00", 0.5, 0))
    log.close()
    with open(tmp_path / "log.csv", "a") as handle:
        handle.write("t,b.wav,fan,00,0.7")  # killed while writing
    lines = DecisionLog(tmp_path / "log.csv").read()
    assert [line.file for line in lines] == ["a.wav"]
    assert (tmp_path / "log.csv").read_text().endswith("clip,,,,\n")
    json_log = DecisionLog(tmp_path / "log.jsonl", as_json=True)
    json_log.open()
    json_log.append(LogLine("t", "a.wav", "fan", "00", 0.5, 0))
    json_log.close()
    assert DecisionLog(tmp_path / "log.jsonl", as_json=True).read()[0].score == 0.5


def test_a_log_begun_by_an_earlier_asd_is_continued_in_its_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("time,file,machine,section,score,threshold,decision,kind,message\nt,a.wav,fan,00,0.5,1.0,0,clip,\n")
    log = DecisionLog(path)
    assert [line.file for line in log.open()] == ["a.wav"]
    log.append(LogLine("t", "b.wav", "fan", "00", 2.5, 1, threshold=1.0, span_s="1.00-1.20", band_hz="0-8000",
                       what="burst"))
    log.close()
    assert path.read_text().splitlines()[-1] == "t,b.wav,fan,00,2.500000,1.000000,1,clip,"  # no span columns
    assert [line.score for line in DecisionLog(path).read()] == [0.5, 2.5]


@pytest.mark.parametrize("where", [True, False])
def test_an_anomalous_clip_is_logged_with_where_it_sounds_wrong(run, synth_root, tmp_path, where):
    """The top span, band and kind of asd explain for each clip decided anomalous (read against the
    training clips given), in the log and the alert command's environment; nothing for normal ones."""
    from asdcli.data.layout import discover
    from asdcli.services.scoring.explain import KINDS

    folder, log = tmp_path / "rec" / "fan", tmp_path / "log.csv"
    folder.mkdir(parents=True)
    clips = sorted((synth_root / "fan" / "test").glob("*anomaly*.wav"))[:6]
    for clip in clips:
        shutil.copy(clip, folder / clip.name)
    reference = [c for c in discover(synth_root / "fan") if c.split == "train"]
    with Running(folder.parent, run, log, where=where) as watching:
        watching.watch.reference = reference
        watching.until(lambda: len(watching.scored()) == len(clips))
    lines = [line for line in DecisionLog(log).read() if line.kind == "clip"]
    flagged = [line for line in lines if line.decision == 1]
    assert flagged and all(not line.span_s and not line.what for line in lines if line.decision == 0)
    if not where:
        assert all(not line.span_s for line in lines) and all(not a.span_s for a in watching.alerts)
        return
    for line in flagged:
        start, end = map(float, line.span_s.split("-"))
        low, high = map(float, line.band_hz.split("-"))
        assert 0 <= start < end <= 2.0 + 1e-6 and 0 <= low < high <= 8000 and line.what in KINDS
    assert watching.alerts and all(a.span_s for a in watching.alerts)
    assert not any("no normal training clips given" in line.message for line in watching.lines)


def test_partial_deleted_and_non_audio_files(run, synth_root, tmp_path):
    folder, log = tmp_path / "rec", tmp_path / "log.csv"
    (folder / "fan").mkdir(parents=True)
    clip = _clips(synth_root, 1)[0]
    data = clip.read_bytes()
    partial = folder / "fan" / "growing.wav"
    partial.write_bytes(data[: len(data) // 3])
    assert wav_state(partial, partial.stat().st_size) == "partial"
    (folder / "fan" / "notes.wav").write_text("not audio")
    with Running(folder, run, log) as watching:
        watching.until(lambda: any(line.kind == "skipped" for line in watching.lines))
        time.sleep(1.0)
        assert "fan/growing.wav" not in watching.scored()  # its header promises more: it waits
        with open(partial, "ab") as handle:
            handle.write(data[len(data) // 3:])
        watching.until(lambda: "fan/growing.wav" in watching.scored())
        doomed = folder / "fan" / "doomed.wav"
        doomed.write_bytes(data[: len(data) // 2])  # seen while it is written, then deleted
        watching.until(lambda: "fan/doomed.wav" in watching.watch.state.candidates)
        doomed.unlink()
        watching.until(lambda: "fan/doomed.wav" in {line.file for line in watching.lines})
    skipped = {line.file: line.message for line in watching.lines if line.kind == "skipped"}
    assert set(skipped) == {"fan/notes.wav", "fan/doomed.wav"} and "not a readable" in skipped["fan/notes.wav"]
    assert "deleted before it was scored" in skipped["fan/doomed.wav"]


def test_older_files_than_since_are_left_alone(run, synth_root, tmp_path):
    folder = tmp_path / "rec" / "fan"
    folder.mkdir(parents=True)
    old, new = _clips(synth_root, 2)
    shutil.copy(old, folder / old.name)
    os.utime(folder / old.name, (time.time() - 7200, time.time() - 7200))
    shutil.copy(new, folder / new.name)
    with Running(folder.parent, run, tmp_path / "log.csv", since_s=3600) as watching:
        watching.until(lambda: len(watching.scored()) == 1)
    assert list(watching.scored()) == [f"fan/{new.name}"] and watching.summary.older == 1


def test_alerts_after_k_of_n_and_a_drift_notice(tmp_path):
    state, fired = WatchState(), []
    monitor = Monitor(state, WatchOptions(alert_k=2, alert_n=3, drift_window=4, drift_z=1.0),
                      lambda line: fired.append(line.file))

    def clip(name: str, score: float, decision: int) -> list[LogLine]:
        return monitor.clip(LogLine("t", name, "pump", "00", score, decision))

    assert clip("a", 3.0, 1) == [] and clip("b", 0.0, 0) == []
    assert [line.kind for line in clip("c", 3.0, 1)] == ["alert"] and fired == ["c"]
    assert clip("d", 3.0, 1) == []  # the window starts again after an alert
    notices = [line for score in (1.5, 1.6, 1.7, 1.8) for line in clip("n", score, 0)]
    assert len(notices) == 1 and "normal sound has changed" in notices[0].message
    silent = Monitor(WatchState(last_arrival=time.monotonic() - 100), WatchOptions(silence_s=60), lambda line: None)
    assert "no new recording for 60 s" in silent.idle(time.monotonic())[0].message
    assert silent.idle(time.monotonic()) == []  # said once


def test_the_command_refuses_bad_options_in_one_line(tmp_path, run):
    for args, fragment in ((["--alert-after", "5/3"], "--alert-after: '5/3' is not K/N"),
                           (["--since", "yesterday"], "--since: 'yesterday' is not a duration")):
        result = runner.invoke(app, ["watch", str(tmp_path), "--run", str(run), *args])
        assert result.exit_code == 1 and fragment in result.output
    result = runner.invoke(app, ["watch", str(tmp_path / "missing"), "--run", str(run)])
    assert result.exit_code == 1 and "not a folder to watch" in result.output


def test_a_watch_log_plots_as_a_timeline(tmp_path):
    log = DecisionLog(tmp_path / "log.csv")
    log.open()
    for i in range(40):
        for section in ("00", "01"):
            score = 3.0 if i == 30 else 0.1 * (i % 5)
            log.append(LogLine(f"2026-12-0{1 + i // 20}T{i % 20:02d}:00:00Z", f"pump/{section}_{i}.wav", "pump",
                               section, score, int(score > 1.5), threshold=1.5))
    log.append(LogLine("2026-12-02T10:00:00Z", "pump/00_30.wav", "pump", "00", 3.0, 1, "alert", "1 of 1"))
    log.close()
    result = runner.invoke(app, ["plot", str(tmp_path / "log.csv"), "-o", str(tmp_path / "timeline.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = DecisionLog(tmp_path / "empty.csv")
    empty.open()
    empty.close()
    result = runner.invoke(app, ["plot", str(tmp_path / "empty.csv")])
    assert result.exit_code == 1 and "no scored clip" in result.output


def test_a_one_hour_recording_is_scored_on_its_first_seconds_without_reading_it_all(run, synth_root, tmp_path):
    import soundfile as sf

    folder = tmp_path / "rec" / "fan"
    folder.mkdir(parents=True)
    wave, rate = sf.read(str(_clips(synth_root, 1)[0]), dtype="int16")
    with sf.SoundFile(str(folder / "hour.wav"), "w", rate, 1, "PCM_16") as handle:
        for _ in range(3600 * rate // len(wave) + 1):
            handle.write(wave)
    assert (folder / "hour.wav").stat().st_size > 3600 * rate * 2
    with Running(folder.parent, run, tmp_path / "log.csv") as watching:
        watching.until(lambda: "fan/hour.wav" in watching.scored(), seconds=60)
    alone = Detector.load(run).score([folder / "hour.wav"])
    assert watching.scored()["fan/hour.wav"] == pytest.approx(float(alone.score[0]), abs=1e-6)


def test_files_trickling_in_are_scored_in_a_few_batch_shapes():
    from asdcli.services.scoring.watch import batch_sizes

    assert batch_sizes(0, 32) == []
    assert batch_sizes(27, 32) == [16, 8, 2, 1]
    assert batch_sizes(70, 32) == [32, 32, 4, 2]
    assert {s for n in range(1, 200) for s in batch_sizes(n, 32)} == {1, 2, 4, 8, 16, 32}
    assert all(sum(batch_sizes(n, 32)) == n for n in range(200))
