import pytest

from asdcli.config import CONFIG_DIR, AsdConfig, dump_config, load_config, validate_config
from asdcli.errors import ConfigError


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_preset_loads(preset):
    assert isinstance(load_config(preset), AsdConfig)


def test_default_is_the_dcase_baseline():
    cfg = load_config()
    assert (cfg.features.n_fft, cfg.features.hop_length, cfg.features.n_mels, cfg.features.power) == (1024, 512, 128, 2.0)
    assert (cfg.audio.sample_rate, cfg.audio.duration_s, cfg.audio.channel) == (16000, 10.0, 0)


def test_typo_names_file_and_field(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("features:\n  n_mel: 64\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: field 'features.n_mel': unknown field"):
        load_config(path)


def test_bad_values_name_field_and_reason(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("audio:\n  sample_rate: -5\nfeatures:\n  n_fft: 256\n  hop_length: 128\n  n_mels: 200\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "field 'audio.sample_rate': Input should be greater than 0" in message
    assert "field 'features': n_mels must be at most n_fft // 2 + 1 = 129" in message


def test_not_yaml_and_not_a_mapping(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("audio: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_config(listing)
    with pytest.raises(ConfigError, match="config file not found.*presets: .*tiny"):
        load_config("no-such-preset")


def test_overrides_are_validated():
    cfg = load_config("tiny").with_overrides(**{"loader.workers": 4, "seed": None})
    assert cfg.loader.workers == 4 and cfg.seed == 0
    with pytest.raises(ConfigError, match="command line: field 'loader.workers'"):
        cfg.with_overrides(**{"loader.workers": 0})


def test_resolved_config_round_trips():
    cfg = load_config("tiny")
    import yaml

    assert validate_config(yaml.safe_load(dump_config(cfg)), "x") == cfg
