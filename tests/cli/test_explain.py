"""asd explain: a sentence (or JSON) and a PNG per clip, spans and bands a person can check, a
one-line "nothing stands out" for normal clips; the maps' definitions."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from asdcli.cli import app
from asdcli.data.synth import generate
from asdcli.services.scoring.explain import find_band, find_span, kind_of, located_map
from asdcli.services.scoring.maps import time_map

runner = CliRunner()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, tiny):
    """Tiny synthetic data with localised faults only, and a run trained on it."""
    root = tmp_path_factory.mktemp("explain")
    cfg = tiny.synth.model_copy(update={"machines": ["fan"], "sections": 1, "train_source": 8, "train_target": 2,
                                        "test_per_domain": 6, "anomalies": ["knock", "whine", "dropout"]})
    generate(root / "data", cfg, seed=0)
    trained = runner.invoke(app, ["train", str(root / "data"), "--run", str(root / "run"), "-c", "tiny",
                                  "--no-evaluate", "--cache-dir", str(root / "cache"), "train.epochs=2"])
    assert trained.exit_code == 0, trained.output
    return root


def test_explain_prints_a_sentence_per_clip_and_writes_a_png(faulty, tmp_path):
    clips = sorted((faulty / "data" / "fan" / "test").glob("*.wav"))
    result = runner.invoke(app, ["explain", *map(str, clips), "--run", str(faulty / "run"), "--data",
                                 str(faulty / "data"), "--out", str(tmp_path / "png"),
                                 "--cache-dir", str(faulty / "cache")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(clips)
    for line in lines:
        assert "ANOMALOUS" in line and " s, " in line and " Hz " in line and "sd above" in line \
            or "nothing stands out (peak" in line
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == len(clips)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 20_000 for p in pngs)


def test_explain_json_holds_every_field_and_spans_lie_in_the_clip(faulty):
    clip = sorted((faulty / "data" / "fan" / "test").glob("*anomaly*.wav"))[0]
    result = runner.invoke(app, ["explain", str(clip), "--run", str(faulty / "run"), "--json", "--no-plot",
                                 "--cache-dir", str(faulty / "cache")])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert {"score", "decision", "threshold", "span_s", "band_hz", "peak_sd", "kind", "agreeing", "weights"} <= set(record)
    assert 0 <= record["span_s"][0] < record["span_s"][1] <= 2.1 and 0 <= record["band_hz"][0] < record["band_hz"][1]
    assert "no normal training clips given (--data)" in result.stderr  # heights against the clip statistics


def test_the_span_is_read_where_the_frame_exact_maps_weigh_twice():
    smeared = np.r_[np.zeros(40), 2.0 * np.ones(30), np.zeros(50)]  # a windowed map: 30 frames around a knock
    sharp = np.zeros(120)
    sharp[50:52] = 12.0  # a frame-exact map: the knock's 2 frames
    maps, names, weights = {"b1": smeared, "b2": sharp}, ["b1", "b2"], np.array([0.7, 0.3])
    fused = located_map(maps, weights, names, set())
    assert np.allclose(fused, np.sinh(0.7 * np.arcsinh(smeared) + 0.3 * np.arcsinh(sharp)))  # the fusion's combination
    assert find_span(fused) == (40, 69)  # the fused map spreads it over the window
    assert find_span(located_map(maps, weights, names, {"b2"})) == (50, 51)  # weighted twice: the knock


def test_spans_bands_and_kinds_follow_their_definitions():
    curve = np.r_[np.zeros(20), np.linspace(1, 10, 5), np.linspace(10, 1, 5), np.zeros(20)]
    first, last = find_span(curve)
    assert curve[first:last + 1].min() >= 0.3 * 10 and first >= 20 and last <= 29
    tone = np.r_[np.zeros(40), 3.0 * np.ones(60), np.zeros(40)]
    tone[10] = 8.0  # a single high frame elsewhere does not outweigh a long stretch above the rest
    assert find_span(tone) == (40, 99)
    logmel = np.zeros((32, 40))
    logmel[10:13, 15:25] += 12.0  # a tone in bins 10-12
    lo, hi, change = find_band(logmel, 15, 24)
    assert (lo, hi) == (10, 12) and change == pytest.approx(12.0)
    assert kind_of(1.0, 3 / 128, (900, 1000), 12.0) == "tone"
    assert kind_of(0.05, 0.6, (0, 8000), 15.0) == "burst"
    assert kind_of(0.5, 0.5, (90, 4000), -9.0) == "dropout"
    # a level change too wide for a tone, but the branches' shares sit in 2 of 32 bands: a tone
    assert kind_of(1.0, 0.3, (500, 1500), 2.0) == "band"
    assert kind_of(1.0, 0.3, (500, 1500), 2.0, (2 / 32, 4.0)) == "tone"
    assert kind_of(0.2, 0.3, (500, 1500), 2.0, (2 / 32, 4.0)) == "band"  # not held 0.4 s


def test_a_map_s_mean_over_time_is_the_clip_score():
    class Windows(torch.nn.Module):  # a branch without its own map: scored on windows
        def score(self, batch):
            return batch.feats.mean(dim=(1, 2)) + 3.0

    from asdcli.models.base import Batch

    feats = torch.randn(2, 8, 100)
    batch = Batch(feats=feats, group=torch.zeros(2, dtype=torch.long), domain=torch.zeros(2, dtype=torch.long),
                  label=torch.zeros(2, dtype=torch.long))
    score = torch.tensor([4.0, -2.0])
    curve = time_map(Windows(), batch, {}, score)
    assert curve.shape == (2, 100)
    assert torch.allclose(curve.mean(dim=1), score, atol=1e-5)


def test_explain_renders_a_png_per_clip_for_eight_sections(tiny, tmp_path):
    """Two machine types of four sections each, one clip of each section: eight readable PNGs."""
    import matplotlib.image

    from asdcli.services.training.fuse import train_fusion
    from asdcli.services.training.train import train_branch

    cfg = tiny.synth.model_copy(update={"machines": ["fan", "valve"], "sections": 4, "train_source": 3,
                                        "train_target": 1, "test_per_domain": 1})
    generate(tmp_path / "data", cfg, seed=3)
    run_cfg = tiny.with_overrides(**{"train.epochs": 1})
    train_branch("b2", tmp_path / "data", tmp_path / "run", run_cfg, cache_dir=tmp_path / "cache")
    train_fusion(tmp_path / "data", tmp_path / "run", run_cfg)
    clips = [sorted((tmp_path / "data" / m / "test").glob(f"section_0{s}_source_test_*.wav"))[0]
             for m in ("fan", "valve") for s in range(4)]
    result = runner.invoke(app, ["explain", *map(str, clips), "--run", str(tmp_path / "run"), "--data",
                                 str(tmp_path / "data"), "--out", str(tmp_path / "png"),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 8
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 8
    for png in pngs:
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 500 and image.shape[1] > 1000 and image.std() > 0.05  # drawn, not blank


def test_png_names_do_not_collide_where_dcase_file_names_repeat():
    from asdcli.cli.explain import png_names
    from asdcli.data.layout import parse_clip

    paths = [Path("dev/fan/test/normal_id_00_00000000.wav"), Path("dev/pump/test/normal_id_00_00000000.wav"),
             Path("dev/fan/test/anomaly_id_00_00000001.wav"), Path("more/fan/test/normal_id_00_00000000.wav")]
    names = png_names([parse_clip(p) for p in paths])
    assert names == ["fan_normal_id_00_00000000_1.png", "pump_normal_id_00_00000000.png",
                     "anomaly_id_00_00000001.png", "fan_normal_id_00_00000000_2.png"]


def test_a_section_baseline_is_kept_in_the_cache_and_a_damaged_one_made_again(faulty, tmp_path, monkeypatch):
    """asd explain --data maps the section's normal clips once; the next call reads them from the
    cache folder (same figures), and a damaged cache entry is made again, never an error."""
    import asdcli.services.scoring.explain as explain_module

    clip = sorted((faulty / "data" / "fan" / "test").glob("*anomaly*.wav"))[0]
    cache = tmp_path / "cache"
    shutil.copytree(faulty / "cache", cache)
    args = ["explain", str(clip), "--run", str(faulty / "run"), "--data", str(faulty / "data"), "--json", "--no-plot",
            "--cache-dir", str(cache)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    kept = list((cache / "explain-baselines").glob("*.npz"))
    assert len(kept) == 1
    mapped = []
    real_maps = explain_module._maps
    monkeypatch.setattr(explain_module, "_maps", lambda d, clips: mapped.append(len(clips)) or real_maps(d, clips))
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and second.stdout == first.stdout and mapped == [1]  # the clip only
    kept[0].write_bytes(b"not an npz")
    third = runner.invoke(app, args)
    assert third.exit_code == 0 and third.stdout == first.stdout and mapped[1:] == [1, 10]  # its 10 normal clips
