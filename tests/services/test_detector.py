"""The Python API: a run loaded once scores files and waveforms in memory as `asd score` does."""

import numpy as np
import pytest
import soundfile as sf

from asdcli import Detector
from asdcli.data.layout import discover
from asdcli.errors import CheckpointError, DataError
from asdcli.services.training.fuse import train_fusion
from asdcli.services.training.meta import meta_train
from asdcli.services.scoring.score import score_clips
from asdcli.services.training.train import train_branch


@pytest.fixture(scope="module")
def run(synth_root, tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("detector")
    cfg = tiny.with_overrides(**{"train.epochs": 1, "meta.iterations": 5})
    for name in ("b2", "b3"):
        train_branch(name, synth_root, root / "run", cfg, cache_dir=root / "cache")
    train_fusion(synth_root, root / "run", cfg)
    meta_train(root / "run", cfg, data=synth_root)
    return root / "run", root / "cache"


def test_a_loaded_detector_scores_files_and_waveforms_as_asd_score(run, synth_root):
    run_dir, cache = run
    test = discover(synth_root / "fan" / "test")
    detector = Detector.load(run_dir, cache_dir=cache)
    assert detector.method == "meta"
    result = detector.score([c.path for c in test])
    reference = score_clips(run_dir, test, cache)
    np.testing.assert_array_equal(result.score, reference.score)
    np.testing.assert_array_equal(result.decision, reference.decision)
    for i in (0, len(test) - 1):
        clip = test[i]
        alone = detector.score([clip.path])  # one clip per batch, as a waveform is scored (batches of other
        wave, rate = sf.read(str(clip.path), dtype="float32")  # sizes round convolutions differently, ~1e-4)
        one = detector.score_waveform(wave, rate, machine=clip.machine, section=clip.section, domain=clip.domain)
        # a file's features are computed by a loader thread with one intra-op thread, a waveform's on the
        # caller's: the log-mel may differ in its last bit (float32), the scores by ~1e-7
        assert one.score == pytest.approx(alone.score[0], abs=1e-6)
        assert one.decision == alone.decision[0] and one.method == "meta"
        assert one.normalized == pytest.approx({n: float(v[0]) for n, v in alone.normalized.items()}, abs=1e-6)
        assert one.score == pytest.approx(result.score[i], abs=1e-3)
        assert sum(one.weights.values()) == pytest.approx(1.0, abs=1e-5)
    wave, rate = sf.read(str(test[0].path), dtype="float32")
    stereo = np.stack([wave, wave], axis=1)
    assert detector.score_waveform(stereo, rate, "fan", 0).score == pytest.approx(
        detector.score_waveform(wave, rate, "fan", 0).score)
    with pytest.raises(DataError, match="waveform of fan section 0: contains NaN"):
        detector.score_waveform(np.full(rate, np.nan, dtype=np.float32), rate, "fan", 0)
    with pytest.raises(DataError, match="too short"):
        detector.score_waveform(wave[:10], rate, "fan", 0)


def test_edited_fusion_and_meta_metadata_are_one_error_each(run, tmp_path):
    import json
    import shutil

    run_dir, cache = run
    for name, field, change in (("fusion.json", "branch_digests", lambda m: m.pop("branch_digests")),
                                ("meta.json", "in_dim", lambda m: m.update(in_dim="wide"))):
        copy = tmp_path / name
        shutil.copytree(run_dir, copy)
        meta = json.loads((copy / name).read_text())
        change(meta)
        (copy / name).write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match=rf"{name}: field '{field}' is (missing|not valid)"):
            Detector.load(copy, cache_dir=cache)


def test_scoring_with_the_pretrained_branch_decodes_each_clip_once(synth_root, tiny, tmp_path, monkeypatch):
    import asdcli.data.audio as audio
    import asdcli.data.features as features
    import asdcli.services.inputs.dataset as dataset
    import asdcli.services.inputs.features as service

    cfg = tiny.with_overrides(**{"train.epochs": 1})
    train_branch("b1", synth_root, tmp_path / "run", cfg, cache_dir=tmp_path / "cache")
    test = discover(synth_root / "fan" / "test")
    warm = score_clips(tmp_path / "run", test, tmp_path / "cache")  # the test clips' features are now cached
    decoded: list[str] = []
    real = audio.load_audio

    def counting(path, config):
        decoded.append(str(path))
        return real(path, config)

    for module in (features, dataset, service):
        monkeypatch.setattr(module, "load_audio", counting, raising=False)
    for cache in (tmp_path / "cold", tmp_path / "cache"):  # cache misses, then hits
        decoded.clear()
        again = score_clips(tmp_path / "run", test, cache)
        assert sorted(decoded) == sorted(str(c.path) for c in test)  # once each, for features and b1 alike
        np.testing.assert_allclose(again.score, warm.score, rtol=1e-5)


def test_scoring_imports_no_training_module(run_fresh):
    _, loaded = run_fresh("import asdcli.services.scoring.score", ("asdcli.services.training.train", "asdcli.services.training.fuse",
                                                           "asdcli.services.training.meta", "learn2learn"))
    assert loaded == []
