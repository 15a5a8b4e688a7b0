import numpy as np

from asdcli.data.layout import discover, parse_clip
from asdcli.services.inputs.features import extract_features, iter_features, make_extractor
from tests.conftest import noise, write_wav


def test_order_is_kept_and_bad_clips_are_skipped_not_fatal(tmp_path, tiny):
    paths = [write_wav(tmp_path / "m" / "test" / f"clip_{i}.wav", noise(2.0, seed=i)) for i in range(6)]
    (tmp_path / "m" / "test" / "clip_3.wav").write_text("not audio")
    report = extract_features(discover(tmp_path), tiny, tmp_path / "cache")
    assert (report.total, report.computed, report.cached) == (6, 5, 0)
    assert [p.name for p, _ in report.failures] == ["clip_3.wav"]
    assert "clip_3.wav: not a readable WAV/FLAC audio file" in report.failures[0][1]
    items = list(iter_features(discover(tmp_path), make_extractor(tiny, tmp_path / "cache"), workers=3))
    assert [i.clip.path.name for i in items] == [p.name for p in paths]
    assert [i.cached for i in items] == [True, True, True, False, True, True]


def test_threads_give_the_same_features_as_one_thread(synth_root, tiny):
    clips = discover(synth_root)[:12]
    serial = [i.features for i in iter_features(clips, make_extractor(tiny, None), workers=1)]
    parallel = [i.features for i in iter_features(clips, make_extractor(tiny, None), workers=4)]
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_in_flight_clips_are_bounded(tmp_path, tiny):
    """Streaming: clips drawn from the input minus clips yielded never exceeds 2 * workers."""
    clip = parse_clip(write_wav(tmp_path / "a.wav", noise(2.0)))
    pulled, consumed, peak = [0], 0, 0

    def source():
        for _ in range(200):
            pulled[0] += 1
            yield clip

    for item in iter_features(source(), make_extractor(tiny, None), workers=2):
        consumed += 1
        peak = max(peak, pulled[0] - consumed)
        assert item.error is None
    assert consumed == 200 and peak <= 4
