"""Outlier exposure for b3: a background folder of other machines' recordings, and the fusion
leaving b3 out where it has too few classes to tell apart."""

import json
import shutil

import pytest
import torch

from asdcli.data.background import background_clips
from asdcli.errors import ConfigError
from asdcli.models.branch_contrastive import ContrastiveBranch
from asdcli.services.inputs.background import background_features
from asdcli.services.store.records import BranchRecord, read_record
from asdcli.services.scoring.reliability import left_out_reason
from asdcli.services.training.train import train_branch


@pytest.fixture(scope="module")
def folder(synth_root, tmp_path_factory):
    """A background: the synthetic valve's training clips as 'valve', and as 'pump' (a second type),
    a fan type (the run's own: never background) and a test clip and an anomaly (never background)."""
    root = tmp_path_factory.mktemp("background")
    clips = sorted((synth_root / "valve" / "train").glob("*.wav"))[:3]
    for kind in ("valve", "pump", "Fan"):
        (root / kind).mkdir()
        for clip in clips:
            shutil.copy(clip, root / kind / clip.name)
    (root / "pump" / "test").mkdir()
    shutil.copy(clips[0], root / "pump" / "test" / clips[0].name)
    shutil.copy(clips[0], root / "pump" / "section_00_source_train_anomaly_0001_x_1.wav")
    return root


def test_the_background_leaves_out_the_runs_own_types_test_clips_and_anomalies(folder):
    found = background_clips(str(folder), {"fan"})
    assert sorted({c.kind for c in found}) == ["pump", "valve"] and len(found) == 6
    assert background_clips("none", {"fan"}) == []
    with pytest.raises(ConfigError, match="branches.contrastive.background: .* is not a folder"):
        background_clips(str(folder / "missing"), set())


def test_b3_trains_against_the_background_and_records_its_classes(synth_root, folder, tiny, tmp_path, monkeypatch):
    seen = []
    original = ContrastiveBranch.set_background

    def spy(self, feats, kinds):
        seen.append((tuple(feats.shape), sorted(set(kinds.tolist()))))
        original(self, feats, kinds)

    monkeypatch.setattr(ContrastiveBranch, "set_background", spy)
    cfg = tiny.with_overrides(**{"train.epochs": 1, "branches.contrastive.background": str(folder)})
    feats, kinds, names = background_features(str(folder), {"fan", "valve"}, cfg, tmp_path / "cache")
    assert names == ["Fan", "pump"] or names == ["pump"]  # the run's types, without case, are not background
    train_branch("b3", synth_root, tmp_path / "run", cfg, cache_dir=tmp_path / "cache")
    assert seen and seen[0][1] == [0] and seen[0][0][0] == 3  # pump only: fan and valve are the run's
    record = read_record(BranchRecord, tmp_path / "run" / "contrastive.json", "b3")
    labels = json.loads((tmp_path / "run" / "run.json").read_text())["labels"]
    assert record.extra == {"classes": len(labels) + 1}  # the run's classes and the background's pump
    assert feats.dtype == torch.float32


def test_with_too_few_classes_the_fusion_leaves_b3_out(synth_root, tiny, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(synth_root / "fan", one / "fan")
    cfg = tiny.with_overrides(**{"train.epochs": 1})
    train_branch("b3", one, tmp_path / "run", cfg, cache_dir=tmp_path / "cache")
    record = read_record(BranchRecord, tmp_path / "run" / "contrastive.json", "b3")
    classes = record.extra["classes"]
    metas = {"contrastive": record}
    assert left_out_reason("contrastive", metas, cfg.with_overrides(**{"branches.contrastive.min_classes": classes})) is None
    reason = left_out_reason("contrastive", metas, cfg.with_overrides(**{"branches.contrastive.min_classes": classes + 1}))
    assert f"{classes} class(es) to tell apart" in reason
