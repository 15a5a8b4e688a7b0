"""The flow's whitening on few clips: new clips of the training distribution score like the
training clips (the fan recordings showed held-out normals 17 standard deviations above them)."""

import numpy as np
import torch

from asdcli.config import load_config
from asdcli.models.base import Batch, BranchContext
from asdcli.models.registry import build_branch


def _batch(emb: torch.Tensor) -> Batch:
    n = emb.shape[0]
    zeros = torch.zeros(n, dtype=torch.long)
    return Batch(feats=torch.zeros(n, 8, 4), group=zeros, domain=zeros, label=zeros, embeddings={"contrastive": emb})


def _heldout_z(n_train: int, seed: int = 0) -> float:
    """Median z of 200 new clips against ``n_train`` training clips, all drawn from one 32-dim
    Gaussian with a decaying spectrum, scored by an untrained flow (its whitening alone)."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(0, -2, 32)  # variances from 1 down to 0.01
    draw = lambda n: torch.randn(n, 32, generator=g) * spectrum.sqrt()  # noqa: E731
    cfg = load_config("tiny").with_overrides(**{"branches.flow.max_dims": 32, "branches.flow.couplings": 2})
    context = BranchContext(n_mels=8, frames=4, sample_rate=16000, n_groups=1, n_labels=1, embed_dims={"contrastive": 32})
    torch.manual_seed(seed)
    flow = build_branch("flow", cfg, context).eval()
    train = draw(n_train)
    flow.prepare_training([_batch(train)])
    with torch.no_grad():
        seen, new = flow.score(_batch(train)).numpy(), flow.score(_batch(draw(200))).numpy()
    return float(np.median((new - seen.mean()) / seen.std(ddof=1)))


def test_a_flow_fitted_on_a_handful_of_clips_does_not_blow_up_new_normal_clips():
    for n_train in (5, 10, 25):
        assert _heldout_z(n_train) < 3.0, n_train


def test_with_many_clips_new_normal_clips_score_like_the_training_clips():
    assert abs(_heldout_z(2000)) < 0.5


def test_a_flow_with_too_few_clips_per_section_says_so():
    cfg = load_config("tiny").with_overrides(**{"branches.flow.max_dims": 8, "branches.flow.couplings": 2})
    context = BranchContext(n_mels=8, frames=4, sample_rate=16000, n_groups=2, n_labels=2, embed_dims={"contrastive": 8})
    flow = build_branch("flow", cfg, context)

    def prepared(per_section: list[int]):
        groups = torch.cat([torch.full((n,), g) for g, n in enumerate(per_section)])
        batch = _batch(torch.randn(len(groups), 8))
        flow.prepare_training([Batch(batch.feats, groups, batch.domain, batch.label, embeddings=batch.embeddings)])
        return flow.limitation()

    assert "9 training clips (median), fewer than branches.flow.min_clips=20" in prepared([9, 9])
    assert prepared([25, 30]) is None
    flow.cfg = cfg.branches.flow.model_copy(update={"min_clips": 0})
    assert prepared([5, 5]) is None
