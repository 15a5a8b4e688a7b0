from pathlib import Path

import pytest

from asdcli.data.layout import discover, group_clips, parse_attributes, parse_clip
from asdcli.errors import DataError


@pytest.mark.parametrize(
    "path, expected",
    [
        ("ToyCar/train/normal_id_01_00000012.wav",
         dict(machine="ToyCar", section="01", domain=None, split="train", label="normal", naming="dcase2020")),
        ("fan/test/anomaly_id_06_00000129.wav",
         dict(machine="fan", section="06", split="test", label="anomaly", naming="dcase2020")),
        ("fan/test/id_05_00000000.wav",
         dict(machine="fan", section="05", label=None, split="test", naming="eval2020")),
        ("bearing/test/section_00_target_test_anomaly_0021_vel_8_loc_G.wav",
         dict(machine="bearing", section="00", domain="target", split="test", label="anomaly", index="0021",
              attributes=(("vel", "8"), ("loc", "G")), naming="dcase2021")),
        ("gearbox/train/section_02_source_train_normal_0073_volt_1.5_wt_0.wav",
         dict(section="02", attributes=(("volt", "1.5"), ("wt", "0")), attributes_raw="volt_1.5_wt_0")),
        ("valve/train/section_00_source_train_normal_0206_pat_01.wav", dict(attributes=(("pat", "01"),))),
        ("pump/test/section_03_source_test_0004.wav",
         dict(section="03", domain="source", split="test", label=None, naming="eval2021")),
        ("ToyTank/test/section_00_0042.wav", dict(section="00", domain=None, label=None, naming="eval2022")),
        ("fan/source_test/section_01_source_test_normal_0000.wav", dict(machine="fan", split="test")),
        ("somewhere/recording_at_noon.wav", dict(machine="somewhere", section=None, label=None, naming="unknown")),
    ],
)
def test_parse_names(path, expected):
    clip = parse_clip(Path("/data") / path)
    for key, value in expected.items():
        assert getattr(clip, key) == value, key


def test_odd_attribute_tokens_are_kept():
    assert parse_attributes("strength_1_ambient") == (("strength", "1"), ("ambient", ""))
    assert parse_attributes("") == ()


def test_every_shared_file_parses(shared_data):
    clips = discover(shared_data / "dcase2020-mini")
    assert len(clips) == 75 + 6 * 6
    assert {c.naming for c in clips} == {"dcase2020"}
    slider_train = [c for c in clips if c.machine == "slider" and c.split == "train"]
    assert len(slider_train) == 75 and all(c.label == "normal" for c in slider_train)
    assert sum(c.is_anomaly for c in clips) == 18

    clips23 = discover(shared_data / "dcase2023-mini")
    assert {c.naming for c in clips23} == {"dcase2021"}
    assert {c.machine for c in clips23} == {"ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve"}
    assert all(c.domain in ("source", "target") and c.attributes for c in clips23)

    mimii = discover(shared_data / "mimii-8ch")
    assert len(mimii) == 6 and all(c.label is None and c.machine == "mimii-8ch" for c in mimii)


def test_discover_accepts_root_machine_split_folder_and_file(synth_root):
    everything = discover(synth_root)
    fan = discover(synth_root / "fan")
    fan_test = discover(synth_root / "fan" / "test")
    one = discover(fan_test[0].path)
    assert {c.machine for c in everything} == {"fan", "valve"}
    assert all(c.machine == "fan" for c in fan) and len(fan) < len(everything)
    assert all(c.split == "test" for c in fan_test)
    assert one == [fan_test[0]]
    assert [c.split for c in discover(synth_root, split="train")] == ["train"] * 20


def test_groups_are_machine_sections(synth_root):
    groups = group_clips(discover(synth_root))
    assert list(groups) == ["fan_section_00", "valve_section_00"]


def test_discover_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "missing")
    with pytest.raises(DataError, match=r"no \.wav or \.flac files under .*expected <machine>/train"):
        discover(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not an audio file"):
        discover(text)


def test_hidden_folders_are_ignored(tmp_path, synth_root):
    hidden = tmp_path / ".cache" / "x.wav"
    hidden.parent.mkdir()
    hidden.write_bytes((synth_root / "fan" / "train").glob("*.wav").__next__().read_bytes())
    with pytest.raises(DataError):
        discover(tmp_path)


def test_dcase2020_ids_and_2021_sections_never_share_a_group(tmp_path):
    old = parse_clip(tmp_path / "fan" / "train" / "normal_id_00_00000000.wav")
    new = parse_clip(tmp_path / "fan" / "train" / "section_00_source_train_normal_0000_a_1.wav")
    bare = parse_clip(tmp_path / "fan" / "clip.wav")
    assert (old.group, new.group, bare.group) == ("fan_id_00", "fan_section_00", "fan_section_00")
    assert parse_clip(tmp_path / "fan" / "test" / "id_02_00000001.wav").group == "fan_id_02"
