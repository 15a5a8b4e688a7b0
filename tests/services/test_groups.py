"""Which run section a clip belongs to: DCASE 2020 IDs, 2021+ sections and names of neither."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from asdcli.data.layout import parse_clip
from asdcli.errors import CheckpointError
from asdcli.services.inputs.dataset import Vocabulary
from asdcli.services.store.runs import open_or_create_run, open_run

ID_CLIP = parse_clip(Path("fan/test/anomaly_id_00_00000001.wav"))
SECTION_CLIP = parse_clip(Path("fan/test/section_00_source_test_anomaly_0001.wav"))
BARE_CLIP = replace(parse_clip(Path("recordings/rec1.wav")), machine="fan", section="00")


def test_a_run_of_2020_ids_never_takes_a_2021_section():
    vocab = Vocabulary(["fan_id_00"], ["fan_id_00|"])
    assert vocab.group_index(ID_CLIP) == 0
    assert vocab.group_index(SECTION_CLIP) == -1
    assert vocab.group_name(BARE_CLIP) == "fan_id_00"  # --machine fan --section 0 on a bare name
    assert vocab.label_index(ID_CLIP) == 0
    both = Vocabulary(["fan_id_00", "fan_section_00"], [])
    assert (both.group_index(ID_CLIP), both.group_index(SECTION_CLIP), both.group_index(BARE_CLIP)) == (0, 1, 1)


def test_a_run_made_before_2020_ids_had_groups_still_scores_them(tmp_path, tiny):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    info = {"format_version": 1, "groups": ["fan_section_00"], "labels": ["fan_section_00|"], "holdout": [],
            "audio": tiny.audio.model_dump(mode="json"), "features": tiny.features.model_dump(mode="json")}
    (run_dir / "run.json").write_text(json.dumps(info))
    run = open_run(run_dir)
    assert run.vocab.legacy_2020 and run.vocab.group_index(ID_CLIP) == 0 and run.vocab.label_index(ID_CLIP) == 0
    with pytest.raises(CheckpointError, match="before DCASE 2020 machine IDs had groups of their own"):
        open_or_create_run(run_dir, Vocabulary(["fan_id_00"], []), tiny, [])
    new = open_or_create_run(tmp_path / "new", Vocabulary(["fan_id_00"], ["fan_id_00|"]), tiny, [])
    assert json.loads((new.path / "run.json").read_text())["group_names"] == 2
    reopened = open_run(new.path)
    assert not reopened.vocab.legacy_2020 and reopened.vocab.group_index(SECTION_CLIP) == -1


def test_a_run_description_with_a_bad_field_is_one_error(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"format_version": 1, "groups": "fan", "labels": []}))
    with pytest.raises(CheckpointError, match="run.json: field 'groups' is not valid"):
        open_run(tmp_path)
