import numpy as np
import pytest
import soundfile as sf
import torch

from asdcli.config import AudioConfig
from asdcli.data.audio import fit_length, load_audio
from asdcli.errors import DataError
from tests.conftest import noise, write_wav

CFG = AudioConfig(duration_s=1.0, min_duration_s=0.25)


def test_mono_16k_is_returned_at_configured_length(tmp_path):
    path = write_wav(tmp_path / "a.wav", noise(1.5))
    wave = load_audio(path, CFG)
    assert wave.shape == (16000,) and wave.dtype == torch.float32
    expected, _ = sf.read(str(path), dtype="float32")
    assert torch.equal(wave, torch.from_numpy(expected[:16000]))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled(tmp_path, rate):
    t = np.arange(int(1.2 * rate)) / rate
    path = write_wav(tmp_path / f"tone{rate}.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), rate)
    wave = load_audio(path, CFG).numpy()
    assert wave.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) - 1000) <= 2  # 1 s at 16 kHz: 1 Hz bins; the tone stays at 1 kHz


def test_channel_policy(tmp_path):
    data = np.stack([np.full(16000, 0.1), np.full(16000, 0.3)], axis=1).astype(np.float32)
    path = write_wav(tmp_path / "stereo.wav", data, subtype="FLOAT")
    assert torch.allclose(load_audio(path, CFG), torch.full((16000,), 0.1))
    assert torch.allclose(load_audio(path, CFG.model_copy(update={"channel": 1})), torch.full((16000,), 0.3))
    assert torch.allclose(load_audio(path, CFG.model_copy(update={"channel": "mean"})), torch.full((16000,), 0.2))
    with pytest.raises(DataError, match=r"stereo.wav: has 2 channel\(s\); channel 5 was requested \(audio.channel\)"):
        load_audio(path, CFG.model_copy(update={"channel": 5}))


def test_flac_loads(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(str(path), noise(1.0), 16000, format="FLAC")
    assert load_audio(path, CFG).shape == (16000,)


def test_eight_channel_extensible_mimii_files_load(shared_data):
    for path in sorted((shared_data / "mimii-8ch").glob("*.wav")):
        info = sf.info(str(path))
        assert info.channels == 8
        wave = load_audio(path, AudioConfig(channel=7))
        assert wave.shape == (160000,) and torch.isfinite(wave).all() and wave.abs().max() > 0


def test_short_clips_are_tiled_and_too_short_rejected(tmp_path):
    ramp = torch.arange(5, dtype=torch.float32)
    assert fit_length(ramp, 12).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    path = write_wav(tmp_path / "half.wav", noise(0.5))
    wave = load_audio(path, CFG)
    assert wave.shape == (16000,) and torch.equal(wave[:8000], wave[8000:])
    short = write_wav(tmp_path / "blip.wav", noise(0.1))
    with pytest.raises(DataError, match=r"blip.wav: too short \(0.100 s; audio.min_duration_s is 0.25 s\)"):
        load_audio(short, CFG)


def test_bad_files_get_errors_naming_them(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.wav: empty file"):
        load_audio(empty, CFG)
    text = tmp_path / "text.wav"
    text.write_text("this is not audio at all" * 10)
    with pytest.raises(DataError, match=r"text.wav: not a readable WAV/FLAC audio file"):
        load_audio(text, CFG)
    good = write_wav(tmp_path / "good.wav", noise(1.0)).read_bytes()
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good[:30])
    with pytest.raises(DataError, match=r"truncated.wav"):
        load_audio(truncated, CFG)
    header_only = tmp_path / "header.wav"
    write_wav(header_only, np.zeros(0, dtype=np.float32))
    with pytest.raises(DataError, match=r"header.wav: audio file holds no samples"):
        load_audio(header_only, CFG)
    with pytest.raises(DataError, match=r"missing.wav: cannot read"):
        load_audio(tmp_path / "missing.wav", CFG)


def test_nan_samples_are_rejected(tmp_path):
    data = noise(1.0)
    data[100] = np.nan
    path = write_wav(tmp_path / "nan.wav", data, subtype="FLOAT")
    with pytest.raises(DataError, match=r"nan.wav: contains NaN or infinite samples"):
        load_audio(path, CFG)
