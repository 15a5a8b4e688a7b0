import hashlib

import numpy as np
import soundfile as sf
import torch

from asdcli.config import AudioConfig, FeatureConfig, SynthConfig
from asdcli.data.features import LogMel
from asdcli.data.layout import discover, group_clips
from asdcli.data.synth import count_clips, generate, render_clip, clip_specs
from asdcli.metrics import auc

SMALL = SynthConfig(machines=["fan", "pump", "valve", "slider", "gearbox"], sections=1, train_source=3,
                    train_target=1, test_per_domain=4, duration_s=1.0)


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.wav"))}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    generate(tmp_path / "a", SMALL, seed=1)
    generate(tmp_path / "b", SMALL, seed=1)
    generate(tmp_path / "c", SMALL, seed=2)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b and len(a) == count_clips(SMALL) == 5 * (3 + 1 + 8)
    assert set(a.values()).isdisjoint(c.values())


def test_a_clip_does_not_depend_on_dataset_size():
    spec = next(s for s in clip_specs(SMALL) if s.split == "test" and s.label == "anomaly")
    bigger = SMALL.model_copy(update={"train_source": 10})
    assert np.array_equal(render_clip(spec, SMALL, 0)[0], render_clip(spec, bigger, 0)[0])


def test_layout_labels_domains_and_attributes(tmp_path):
    generate(tmp_path, SMALL, seed=0)
    clips = discover(tmp_path)
    assert {c.naming for c in clips} == {"dcase2021"}
    assert {c.machine for c in clips} == set(SMALL.machines)
    test = [c for c in clips if c.split == "test"]
    assert sum(c.is_anomaly for c in test) == len(test) // 2
    assert {c.domain for c in clips} == {"source", "target"}
    for machine in SMALL.machines:
        source = {c.attributes for c in clips if c.machine == machine and c.domain == "source"}
        target = {c.attributes for c in clips if c.machine == machine and c.domain == "target"}
        assert source and target and source.isdisjoint(target)  # domains differ in operating condition
    truth = (tmp_path / "ground_truth.csv").read_text().splitlines()
    kinds = {line.split(",")[3] for line in truth[1:] if line.split(",")[2] == "anomaly"}
    assert kinds == set(SMALL.anomalies)


def test_loudness_is_realistic_and_no_clipping(tmp_path):
    generate(tmp_path, SMALL, seed=0)
    for path in tmp_path.rglob("*.wav"):
        data, rate = sf.read(str(path))
        rms_db = 20 * np.log10(np.sqrt(np.mean(data**2)))
        assert rate == 16000 and data.ndim == 1 and data.shape[0] == 16000
        assert -32 < rms_db < -20 and np.abs(data).max() < 1.0


def _clip_features(wave, logmel):
    spec = logmel(torch.from_numpy(wave.astype(np.float32))).numpy()  # (n_mels, frames)
    mean = spec.mean(1)
    return np.concatenate([mean - mean.mean(), spec.std(1)])  # gain-invariant mean and spread per band


def test_anomalies_are_detectable_but_not_by_energy(tmp_path):
    cfg = SynthConfig(sections=1, train_source=12, train_target=0, test_per_domain=20, duration_s=2.0)
    generate(tmp_path, cfg, seed=0)
    logmel = LogMel(AudioConfig(duration_s=2.0), FeatureConfig(n_mels=64))
    energy_aucs, knn_aucs = [], []
    for clips in group_clips(discover(tmp_path)).values():
        waves = {c.path: sf.read(str(c.path))[0] for c in clips}
        train = [c for c in clips if c.split == "train"]
        test = [c for c in clips if c.split == "test" and c.domain == "source"]
        bank = np.stack([_clip_features(waves[c.path], logmel) for c in train])
        scale = bank.std(0) + 0.1
        y = [c.is_anomaly for c in test]
        knn = [np.min(np.linalg.norm((bank - _clip_features(waves[c.path], logmel)) / scale, axis=1)) for c in test]
        energy = [np.mean(waves[c.path] ** 2) for c in test]
        knn_aucs.append(auc(y, knn))
        energy_aucs.append(auc(y, energy))
    # A gain-invariant spectral nearest-neighbour detector finds them; loudness does not.
    assert np.mean(knn_aucs) > 0.8, knn_aucs
    assert 0.3 < np.mean(energy_aucs) < 0.7, energy_aucs


def test_localised_faults_change_the_clip_only_where_and_in_the_band_they_say():
    from asdcli.data.synth import _localised

    sr = 16000
    for seed in range(6):
        sound = np.random.default_rng(seed).standard_normal(10 * sr)
        for kind in ("knock", "whine", "dropout"):
            out, fault = _localised(sound, kind, np.random.default_rng(100 + seed), sr, 1.0)
            changed = np.flatnonzero(out != sound)
            assert fault.kind == kind and 0 <= fault.start_s < fault.end_s <= 10
            assert changed.min() >= int(fault.start_s * sr) - 1 and changed.max() <= int(fault.end_s * sr) + 1
            assert changed.size > 0.9 * (fault.end_s - fault.start_s) * sr  # the whole span, nothing outside
            if kind == "whine":
                spectrum = np.abs(np.fft.rfft(out - sound))
                peak = np.argmax(spectrum) * sr / (2 * (spectrum.size - 1))
                assert fault.low_hz <= peak <= fault.high_hz and fault.high_hz - fault.low_hz < 0.1 * peak
            elif kind == "dropout":
                span = slice(int(fault.start_s * sr) + 400, int(fault.end_s * sr) - 400)  # inside the fades
                assert np.sqrt(np.mean(out[span] ** 2)) < 0.1 * np.sqrt(np.mean(sound[span] ** 2))
            else:
                assert (fault.low_hz, fault.high_hz) == (0.0, sr / 2) and fault.end_s - fault.start_s <= 0.06


def test_localised_faults_are_written_with_their_files_and_the_default_data_hold_none(tmp_path):
    local = SMALL.model_copy(update={"anomalies": ["knock", "whine", "dropout"], "duration_s": 2.0})
    generate(tmp_path / "loc", local, seed=0)
    rows = [line.split(",") for line in (tmp_path / "loc" / "faults.csv").read_text().splitlines()]
    assert rows[0] == ["machine", "file", "kind", "start_s", "end_s", "low_hz", "high_hz"]
    anomalous = {p.name for p in (tmp_path / "loc").rglob("*_anomaly_*.wav")}
    assert {r[1] for r in rows[1:]} == anomalous and {r[2] for r in rows[1:]} == {"knock", "whine", "dropout"}
    assert all(0 <= float(r[3]) < float(r[4]) <= 2.0 for r in rows[1:])
    generate(tmp_path / "plain", SMALL, seed=0)
    assert not (tmp_path / "plain" / "faults.csv").exists()
