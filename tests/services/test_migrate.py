"""Run folders of formats 1 and 2 (the releases before this one) still open and score the same; a
format-3 record that lacks a field is refused; a newer format is one error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from asdcli.checkpoints import FORMAT_VERSION
from asdcli.data.layout import discover
from asdcli.errors import AsdError, CheckpointError
from asdcli.services.training.fuse import train_fusion
from asdcli.services.training.meta import meta_train
from asdcli.services.store.migrate import upgrade_state
from asdcli.services.store.runs import load_branch, open_run, read_branch_record
from asdcli.services.scoring.score import score_clips
from asdcli.services.scoring.stages import branch_digests, stage_digest
from asdcli.services.training.train import train_branch


@pytest.fixture(scope="module")
def made(synth_root, tiny, tmp_path_factory):
    """A run of this release (b2, b3, fusion, meta-learner), its cache and its test scores."""
    root = tmp_path_factory.mktemp("migrate")
    cfg = tiny.with_overrides(**{"train.epochs": 1, "meta.iterations": 5, "meta.min_tasks": 1})
    for name in ("b2", "b3"):
        train_branch(name, synth_root, root / "run", cfg, cache_dir=root / "cache")
    train_fusion(synth_root, root / "run", cfg)
    meta_train(root / "run", cfg)
    clips = discover(synth_root / "fan" / "test")
    return root / "run", root / "cache", clips, score_clips(root / "run", clips, root / "cache")


def _as_format_1(run, drop: dict[str, list[str]] | None = None, version: int = 1) -> None:
    """Rewrite every file of ``run`` with format ``version`` (1 or 2), as the releases before this
    one wrote them: each branch and fusion record with the whole config, the later stages' digests
    of the earlier ones made again, as those releases made them; ``drop``: JSON fields (``a.b``
    for nested) to remove, as earlier format-1 releases lacked them."""
    whole = yaml.safe_load((run / "config.yaml").read_text())
    for path in run.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            meta = {**(handle.metadata() or {}), "format_version": str(version)}
        if drop:
            meta.pop("trained_kinds", None)
        save_file(tensors, str(path), metadata=meta)
    later = ["fusion.json", "meta.json"]  # in this order: each records the digests of those before
    for path in sorted(run.glob("*.json"), key=lambda p: later.index(p.name) if p.name in later else -1):
        data = json.loads(path.read_text())
        data["format_version"] = version
        if "config" in data and path.name != "run.json":
            data["config"] = whole
        for field in (drop or {}).get(path.name, []):
            *parents, leaf = field.split(".")
            node = data
            for key in parents:
                node = node[key]
            node.pop(leaf)
        opened = open_run(run) if path.name in later else None
        if path.name == "fusion.json":
            data["branch_digests"] = branch_digests(opened, data["branches"])
        if path.name == "meta.json":
            data["fusion_digest"] = stage_digest(opened.fusion_record, opened.fusion_weights)
        path.write_text(json.dumps(data))


def test_this_release_writes_format_3_with_one_config(made):
    run = made[0]
    assert FORMAT_VERSION == 3
    assert {json.loads(p.read_text())["format_version"] for p in run.glob("*.json")} == {3}
    for path in run.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            assert handle.metadata()["format_version"] == "3", path.name
    # the run's config.yaml is the config; a record keeps only what its stage's weights depend on
    b2 = json.loads((run / "transformer-ae.json").read_text())["config"]
    assert set(b2) == {"seed", "train", "branches"} and set(b2["branches"]) == {"transformer_ae"}
    assert set(json.loads((run / "fusion.json").read_text())["config"]) == {"seed", "fusion"}


@pytest.mark.parametrize("version", [1, 2])
def test_a_run_of_an_older_format_scores_the_same(made, tmp_path, version):
    run, cache, clips, expected = made
    old = tmp_path / "old"
    shutil.copytree(run, old)
    _as_format_1(old, version=version)
    result = score_clips(old, clips, cache)
    np.testing.assert_array_equal(result.score, expected.score)
    np.testing.assert_array_equal(result.fused, expected.fused)
    assert json.loads((old / "run.json").read_text())["format_version"] == version  # nothing written back


def test_a_branch_is_built_from_its_own_settings_over_the_run_config(made, tmp_path):
    """A branch trained with other settings than the run's config.yaml (train-branch --config)
    is rebuilt with its own: a changed config.yaml section of it is not read."""
    run = tmp_path / "edited"
    shutil.copytree(made[0], run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["branches"]["transformer_ae"]["d_model"] *= 2  # weights of that size would not load
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = score_clips(run, made[2], made[1])
    np.testing.assert_array_equal(result.score, made[3].score)


def test_a_format_1_run_without_later_fields_reads_as_it_behaved(made, tmp_path):
    run, cache, clips, expected = made
    old = tmp_path / "older"
    shutil.copytree(run, old)
    _as_format_1(old, {"run.json": ["group_names"],
                       "transformer-ae.json": ["heldout.median_normal_z", "limitation", "trained_clips"],
                       "fusion.json": ["prior", "pseudo_auc", "fair_pseudo_auc", "prior_temperature"],
                       "meta.json": ["fusion_loss", "abstained", "fusion_digest"]})
    opened = open_run(old)
    assert opened.vocab.legacy_2020  # DCASE 2020 IDs were named as sections then
    record = read_branch_record(opened, "transformer-ae")
    assert record.heldout.median_normal_z == record.heldout.median_z and record.limitation is None
    result = score_clips(old, clips, cache)
    assert result.score.shape == expected.score.shape and np.isfinite(result.score).all()


def test_a_format_3_record_missing_a_field_is_one_error(made, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(made[0], broken)
    data = json.loads((broken / "fusion.json").read_text())
    del data["prior"]
    (broken / "fusion.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"fusion.json: field 'prior' is missing"):
        score_clips(broken, made[2], made[1])


def test_a_newer_format_is_refused_with_the_versions_this_asd_reads(made, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(made[0], newer)
    data = json.loads((newer / "run.json").read_text())
    (newer / "run.json").write_text(json.dumps({**data, "format_version": 4}))
    with pytest.raises(CheckpointError, match="has format version 4; this asd reads versions 1, 2, 3"):
        open_run(newer)
    (newer / "run.json").write_text(json.dumps({**data, "format_version": "2"}))
    with pytest.raises(CheckpointError, match="has format version '2'; this asd reads versions 1, 2, 3"):
        open_run(newer)


def test_format_1_pretrained_checkpoints_are_renamed_only_when_old():
    state = {"ast.embeddings.cls": torch.zeros(1), "classifier.weight": torch.zeros(2), "bank.keys": torch.zeros(3)}
    assert set(upgrade_state("pretrained", state, "1")) == {"backbone.ast.embeddings.cls", "bank.keys"}
    assert upgrade_state("pretrained", state, "2") is state
    assert upgrade_state("transformer-ae", state, "1") is state


@pytest.mark.parametrize("field, value", [("heldout", 5), ("extra", [1])])
def test_a_damaged_format_1_record_is_one_error(made, tmp_path, field, value):
    old = tmp_path / "old"
    shutil.copytree(made[0], old)
    _as_format_1(old)
    path = old / "transformer-ae.json"
    data = json.loads(path.read_text())
    # "branch": "pretrained" takes the record through the pretrained branch's upgrade of "extra"
    data.update({field: value, "branch": "pretrained" if field == "extra" else data["branch"]})
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=rf"transformer-ae.json: field '{field}' is not valid"):
        read_branch_record(open_run(old), "transformer-ae")


@pytest.mark.parametrize("value, says", [(5, "field 'config.branches' is not a mapping"),
                                         ({"transformer_ae": {"d_model": "wide"}}, "d_model")])
def test_a_damaged_config_in_a_branch_record_is_one_error(made, tmp_path, value, says):
    broken = tmp_path / "broken"
    shutil.copytree(made[0], broken)
    path = broken / "transformer-ae.json"
    data = json.loads(path.read_text())
    data["config"]["branches"] = value
    path.write_text(json.dumps(data))
    with pytest.raises(AsdError, match=says):  # the branch alone (the fusion head would first call it retrained)
        load_branch(open_run(broken), "transformer-ae")
