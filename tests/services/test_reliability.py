"""Held-out normal clips and the branches the fusion leaves out."""

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from asdcli.checkpoints import read_json
from asdcli.config import ContrastiveConfig
from asdcli.data.layout import discover, parse_clip
from asdcli.data.synth import generate
from asdcli.models.base import BranchContext
from asdcli.models.branch_contrastive import ContrastiveBranch
from asdcli.models.branch_transformer_ae import TransformerAEBranch
from asdcli.services.inputs.dataset import clip_key, holdout_keys
from asdcli.services.training.fuse import train_fusion
from asdcli.services.scoring.reliability import heldout_check, left_out_reason
from asdcli.services.store.records import BranchRecord
from asdcli.services.scoring.score import score_clips
from asdcli.services.training.train import train_branch


def _clips(counts: dict[str, int]) -> list:
    return [parse_clip(Path(f"fan/train/normal_id_{sid}_{i:08d}.wav")) for sid, n in counts.items() for i in range(n)]


def test_holdout_keys_take_a_share_of_each_section_and_leave_two_to_train_on():
    clips = _clips({"00": 30, "01": 5, "02": 3, "03": 2})
    keys = holdout_keys(clips, 0.1, seed=0)
    per_section = {s: sum(k.startswith(f"fan_id_{s}/") for k in keys) for s in ("00", "01", "02", "03")}
    assert per_section == {"00": 3, "01": 1, "02": 1, "03": 0}
    assert keys == holdout_keys(list(reversed(clips)), 0.1, seed=0)  # seeded, not order-dependent
    assert keys != holdout_keys(clips, 0.1, seed=1)
    assert holdout_keys(clips, 0.0, seed=0) == []
    assert sum(k.startswith("fan_id_01/") for k in holdout_keys(clips, 0.45, seed=0)) == 2


def test_heldout_check_standardises_each_held_out_clip_with_its_own_section():
    scores = np.array([1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 40.0, 7.0])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    held = np.array([False, False, False, True, False, False, False, True, True])
    # section 0: mean 2, std 1 -> z 3; section 1: mean 20, std 10 -> z 2; section 2 has no trained clips
    check = heldout_check(scores, groups, held)
    assert check["clips"] == 3 and check["median_z"] == 2.5
    # 3 trained clips each: z / sqrt(4/3) under a t with 2 degrees of freedom, as a normal deviate
    tails = [stats.t.sf(z / np.sqrt(4 / 3), df=2) for z in (3.0, 2.0)]
    assert check["median_normal_z"] == pytest.approx(np.median(stats.norm.isf(tails)))
    assert check["median_normal_z"] < 1.6  # 3 clips say little of their spread
    assert heldout_check(scores, groups, np.zeros(9, dtype=bool)) == {"clips": 0, "median_z": None,
                                                                      "median_normal_z": None}


def test_the_held_out_gap_tends_to_the_plain_z_with_many_trained_clips():
    rng = np.random.default_rng(0)
    gaps = {}
    for n in (4, 30, 3000):
        ref = rng.normal(size=n)
        scores = np.append(ref, ref.mean() + 6 * ref.std(ddof=1))
        gaps[n] = heldout_check(scores, np.zeros(n + 1, dtype=int), np.arange(n + 1) == n)["median_normal_z"]
    assert gaps[4] < 3 < gaps[30] < gaps[3000] < 6  # 4 memorised clips: 6 sd is within reach
    assert gaps[3000] == pytest.approx(6, abs=0.05)
    far = np.append(np.array([0.0, 1.0, 0.5, 0.2] * 100), 1e6)
    assert np.isfinite(heldout_check(far, np.zeros(401, dtype=int), np.arange(401) == 400)["median_normal_z"])


def test_left_out_reason_names_limitations_memorising_branches_and_their_dependants(tiny):
    def meta(**fields) -> BranchRecord:
        optional = {"embed_dims": {}, "upstream": [], "extra": None, "heldout": None, "limitation": None,
                    "trained_clips": None}
        return BranchRecord(branch="b", status="complete", epochs_done=1, epochs=1, seed=0, config={}, groups=[],
                            score_stats={}, **{**optional, **fields})

    metas = {
        "contrastive": meta(limitation="one section-and-attribute class"),
        "flow": meta(upstream=["contrastive"], heldout={"clips": 2, "median_z": 0.1, "median_normal_z": 0.1}),
        "transformer-ae": meta(heldout={"clips": 3, "median_z": 17.5, "median_normal_z": 5.2}),
        "diffusion": meta(heldout={"clips": 3, "median_z": 0.5, "median_normal_z": 0.5}),
        "pretrained": meta(heldout={"clips": 0, "median_z": None, "median_normal_z": None}),
        "few": meta(heldout={"clips": 1, "median_z": 12.7, "median_normal_z": 2.9}),
        "one": meta(heldout={"clips": 1, "median_z": 40.0, "median_normal_z": 4.5}),
    }
    assert left_out_reason("contrastive", metas, tiny) == "one section-and-attribute class"
    assert "models the embeddings of contrastive" in left_out_reason("flow", metas, tiny)
    assert "+17.5 standard deviations above its training clips" in left_out_reason("transformer-ae", metas, tiny)
    assert left_out_reason("diffusion", metas, tiny) is None
    assert left_out_reason("pretrained", metas, tiny) is None
    assert "as unlikely as +5.2" in left_out_reason("transformer-ae", metas, tiny)
    assert left_out_reason("few", metas, tiny) is None  # far above 4 memorised clips, yet within their reach
    assert left_out_reason("transformer-ae", metas, tiny.with_overrides(**{"train.heldout_max_z": 6.0})) is None
    assert left_out_reason("one", metas, tiny) is None  # a single held-out clip is reported, never decisive
    assert "+40.0" in left_out_reason("one", metas, tiny.with_overrides(**{"train.heldout_min_clips": 1}))
    assert "+17.5" in left_out_reason("transformer-ae", metas, tiny.with_overrides(**{"train.heldout_min_clips": 3}))
    assert left_out_reason("transformer-ae", metas, tiny.with_overrides(**{"train.heldout_min_clips": 4})) is None
    metas["contrastive"] = meta(extra={"classes": 1})  # one class: its only negatives its perturbed copies
    assert left_out_reason("contrastive", metas, tiny.with_overrides(**{"branches.contrastive.min_classes": 1})) is None
    two = tiny.with_overrides(**{"branches.contrastive.min_classes": 2})
    assert "1 class(es) to tell apart, fewer than branches.contrastive.min_classes=2" in left_out_reason("contrastive", metas, two)
    assert "models the embeddings of contrastive" in left_out_reason("flow", metas, two)
    metas["contrastive"] = meta(extra={"classes": 3})
    assert left_out_reason("contrastive", metas, two) is None


def test_training_never_sees_the_held_out_clips(synth_root, tiny, tmp_path, monkeypatch):
    cfg = tiny.with_overrides(**{"train.epochs": 2, "train.batch_size": 4})
    seen: set[int] = set()
    loss = TransformerAEBranch.loss

    def recording_loss(self, batch):
        seen.update(batch.index.tolist())
        return loss(self, batch)

    monkeypatch.setattr(TransformerAEBranch, "loss", recording_loss)
    result = train_branch("b2", synth_root, tmp_path / "run", cfg, cache_dir=tmp_path / "cache")
    holdout = set(read_json(tmp_path / "run" / "run.json", "run")["holdout"])
    clips = [c for c in discover(synth_root, split="train")]
    held = {i for i, c in enumerate(clips) if clip_key(c) in holdout}
    assert len(held) == 2  # 1 of the 10 clips of each of the 2 sections
    assert seen and not seen & held
    meta = read_json(tmp_path / "run" / "transformer-ae.json", "meta")
    assert meta["trained_clips"] == len(clips) - 2 and meta["clips"] == len(clips)
    assert result.heldout["clips"] == 2 and np.isfinite(result.heldout["median_z"])
    assert meta["heldout"] == result.heldout
    scores = read_json(tmp_path / "run" / "transformer-ae.train_scores.json", "scores")["scores"]
    assert holdout <= set(scores)  # held-out clips are scored and enter the statistics


@pytest.fixture(scope="module")
def single_section(tmp_path_factory, tiny):
    """One machine section (a single class), with b2 and b3 (no perturbed copies) trained."""
    root = tmp_path_factory.mktemp("single")
    cfg = tiny.with_overrides(**{"train.epochs": 1, "train.batch_size": 8, "meta.iterations": 5,
                                 "branches.contrastive.perturbations": 0})
    generate(root / "data", cfg.synth.model_copy(update={"machines": ["pump"], "sections": 1, "train_source": 8,
                                                         "train_target": 0, "test_per_domain": 2}), seed=2)
    for name in ("b2", "b3"):
        result = train_branch(name, root / "data", root / "run", cfg, cache_dir=root / "cache")
    return root, cfg, result


def test_a_single_class_contrastive_branch_learns_from_its_perturbed_copies():
    one = BranchContext(n_mels=32, frames=40, sample_rate=16000, n_groups=1, n_labels=1)
    assert ContrastiveBranch(one, ContrastiveConfig(perturbations=3)).limitation() is None
    assert "perturbations is 0" in ContrastiveBranch(one, ContrastiveConfig(perturbations=0)).limitation()
    two = BranchContext(n_mels=32, frames=40, sample_rate=16000, n_groups=2, n_labels=2)
    assert ContrastiveBranch(two, ContrastiveConfig(perturbations=0)).limitation() is None


def test_a_single_class_contrastive_branch_without_perturbations_says_so_and_is_left_out(single_section):
    root, cfg, b3 = single_section
    assert "one section-and-attribute class" in b3.limitation
    test = [c for c in discover(root / "data") if c.split == "test"]
    averaged = score_clips(root / "run", test, root / "cache")
    assert averaged.method == "average" and averaged.branches == ["transformer-ae"]
    assert any(n.startswith("contrastive left out of the average: one section") for n in averaged.notices)
    fusion = train_fusion(root / "data", root / "run", cfg)
    assert fusion.branches == ["transformer-ae"] and list(fusion.left_out) == ["contrastive"]
    assert read_json(root / "run" / "fusion.json", "fusion")["left_out"] == fusion.left_out
    assert fusion.missing == ["pretrained", "diffusion", "flow"]
