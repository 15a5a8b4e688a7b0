import os

import numpy as np
import pytest
import torch

from asdcli.config import AudioConfig, FeatureConfig
from asdcli.data.features import FeatureCache, FeatureExtractor, LogMel, num_frames
from tests.conftest import noise, write_wav


def test_logmel_shape_and_frames():
    audio, feats = AudioConfig(duration_s=1.0), FeatureConfig(n_fft=512, hop_length=256, n_mels=32)
    out = LogMel(audio, feats)(torch.from_numpy(noise(1.0)))
    assert out.shape == (32, num_frames(audio, feats)) == (32, 63)
    batch = LogMel(audio, feats)(torch.from_numpy(noise(1.0, channels=3).T.copy()))
    assert batch.shape == (3, 32, 63)


def test_logmel_matches_the_dcase_baseline_librosa_computation():
    librosa = pytest.importorskip("librosa")
    wave = noise(2.0, seed=3) + 0.2 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000).astype(np.float32)
    ours = LogMel(AudioConfig(duration_s=2.0), FeatureConfig())(torch.from_numpy(wave)).numpy()
    mel = librosa.feature.melspectrogram(y=wave.astype(np.float64), sr=16000, n_fft=1024, hop_length=512,
                                         n_mels=128, power=2.0)
    reference = 20.0 / 2.0 * np.log10(mel + np.finfo(float).eps)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=0.02)


@pytest.fixture()
def setup(tmp_path):
    audio, feats = AudioConfig(duration_s=1.0), FeatureConfig(n_fft=512, hop_length=256, n_mels=32)
    path = write_wav(tmp_path / "data" / "a.wav", noise(1.0))
    return tmp_path / "cache", audio, feats, path


def test_cache_hit_returns_identical_features(setup):
    cache_dir, audio, feats, path = setup
    extractor = FeatureExtractor(audio, feats, FeatureCache(cache_dir, audio, feats))
    first, cached_first = extractor(path)
    second, cached_second = extractor(path)
    assert (cached_first, cached_second) == (False, True)
    np.testing.assert_array_equal(first, second)
    assert len(list(cache_dir.rglob("*.f32"))) == 1 and not list(cache_dir.rglob("*.tmp*"))


def test_cache_invalidated_by_settings_change(setup):
    cache_dir, audio, feats, path = setup
    FeatureExtractor(audio, feats, FeatureCache(cache_dir, audio, feats))(path)
    other = feats.model_copy(update={"n_mels": 16})
    out, cached = FeatureExtractor(audio, other, FeatureCache(cache_dir, audio, other))(path)
    assert not cached and out.shape[0] == 16
    _, cached = FeatureExtractor(audio, feats, FeatureCache(cache_dir, audio, feats))(path)
    assert cached


def test_cache_invalidated_when_the_file_changes(setup):
    cache_dir, audio, feats, path = setup
    extractor = FeatureExtractor(audio, feats, FeatureCache(cache_dir, audio, feats))
    before, _ = extractor(path)
    write_wav(path, noise(1.0, seed=9))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after, cached = extractor(path)
    assert not cached and not np.array_equal(before, after)


def test_corrupt_cache_entry_is_recomputed(setup):
    cache_dir, audio, feats, path = setup
    cache = FeatureCache(cache_dir, audio, feats)
    extractor = FeatureExtractor(audio, feats, cache)
    good, _ = extractor(path)
    cache.entry(path).write_bytes(b"garbage")
    again, cached = extractor(path)
    assert not cached
    np.testing.assert_array_equal(good, again)


def test_features_read_into_a_batch_row_and_a_damaged_entry_is_computed_again(setup):
    cache_dir, audio, feats, path = setup
    cache = FeatureCache(cache_dir, audio, feats)
    extractor = FeatureExtractor(audio, feats, cache)
    row = np.full(extractor.shape, np.nan, dtype=np.float32)
    assert not cache.load_into(path, row)  # not cached yet
    extractor.fill(path, row)  # computed and stored
    good = extractor.compute(path)
    np.testing.assert_array_equal(row, good)
    row[...] = np.nan
    assert cache.load_into(path, row)
    np.testing.assert_array_equal(row, good)
    for damage in (good.tobytes()[:-4], good.tobytes() + b"\0\0\0\0"):  # short, long
        cache.entry(path).write_bytes(damage)
        assert not cache.load_into(path, row)
        row[...] = np.nan
        extractor.fill(path, row)
        np.testing.assert_array_equal(row, good)
        assert cache.load_into(path, row)  # stored again whole
