"""The contract every registered branch keeps, with tiny settings."""

import pytest
import torch

from asdcli.checkpoints import load_weights, save_weights
from asdcli.config import load_config
from asdcli.models.base import Batch, BranchContext
from asdcli.models.registry import BRANCHES, build_branch, canonical_name
from asdcli.errors import ConfigError

CONTEXT = BranchContext(n_mels=32, frames=40, sample_rate=16000, n_groups=2, n_labels=3,
                        embed_dims={"contrastive": 8, "transformer-ae": 16})


def make_batch(n: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        feats=torch.randn(n, 32, 40, generator=g) * 10 - 40,
        group=torch.tensor([0, 1] * (n // 2)),
        domain=torch.tensor([0, 0, 1] * (n // 3)),
        label=torch.tensor([0, 1, 2] * (n // 3)),
        wave=torch.randn(n, 8000, generator=g) * 0.1,
        embeddings={"contrastive": torch.randn(n, 8, generator=g), "transformer-ae": torch.randn(n, 16, generator=g)},
        index=torch.arange(n),
    )


def batch_for(branch, seed: int = 0) -> Batch:
    """make_batch without an embedding of ``branch`` itself (the service fills that one from the
    branch, and scoring would take it as the branch's own)."""
    batch = make_batch(seed=seed)
    batch.embeddings.pop(branch.name, None)
    return batch


def build(name: str):
    torch.manual_seed(0)
    branch = build_branch(name, load_config("tiny"), CONTEXT)
    batch = make_batch()
    branch.set_input_stats(batch.feats.mean(dim=(0, 2)), batch.feats.std(dim=(0, 2)))
    branch.prepare_training([batch])
    return branch


@pytest.fixture(params=sorted(BRANCHES))
def branch(request):
    return build(request.param)


def test_loss_is_finite_with_gradients(branch):
    branch.train()
    branch.set_progress(1.0)
    loss = branch.loss(make_batch())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in branch.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _prepared(branch):
    branch.eval()
    with torch.no_grad():
        branch.prepare_scoring([batch_for(branch, seed=1)])
    return branch


def test_embed_and_score_shapes_and_determinism(branch):
    branch = _prepared(branch)
    batch = batch_for(branch, seed=2)
    with torch.no_grad():
        emb, s1, s2 = branch.embed(batch), branch.score(batch), branch.score(batch)
        train = branch.train_scores(batch_for(branch, seed=1))
    assert emb.ndim == 2 and emb.shape[0] == 6
    assert s1.shape == (6,) and torch.isfinite(s1).all()
    assert torch.equal(s1, s2)
    assert train.shape == (6,) and torch.isfinite(train).all()


def test_scores_do_not_depend_on_the_batch(branch):
    branch = _prepared(branch)
    batch = batch_for(branch, seed=3)
    with torch.no_grad():
        whole = branch.score(batch)
        first_half = branch.score(Batch(batch.feats[:3], batch.group[:3], batch.domain[:3], batch.label[:3],
                                        batch.wave[:3], {k: v[:3] for k, v in batch.embeddings.items()}))
    torch.testing.assert_close(whole[:3], first_half, rtol=1e-4, atol=1e-5)


def test_training_scores_kept_by_prepare_scoring_equal_scoring_the_clips_again(branch):
    """What a branch keeps of its training clips scores them as train_scores does: the
    training service scores them once, not twice."""
    branch = _prepared(branch)
    with torch.no_grad():
        fitted = branch.fitted_train_scores()
        again = branch.train_scores(batch_for(branch, seed=1))
    if branch.name == "flow":  # keeps nothing of the clips: the service scores them again
        assert fitted is None
    else:
        torch.testing.assert_close(fitted, again, rtol=1e-5, atol=1e-5)


def test_an_embedding_already_in_the_batch_is_not_computed_again(branch):
    branch = _prepared(branch)
    batch = batch_for(branch, seed=2)
    with torch.no_grad():
        before = branch.score(batch)
        batch.embeddings[branch.name] = branch.embed(batch)
        calls = []
        embed = branch.embed
        branch.embed = lambda b: calls.append(1) or embed(b)
        after = branch.score(batch)
    torch.testing.assert_close(after, before)
    if branch.name in ("pretrained", "contrastive"):  # they score their own embedding
        assert not calls


def test_save_load_gives_identical_scores(branch, tmp_path):
    branch = _prepared(branch)
    batch = batch_for(branch, seed=4)
    with torch.no_grad():
        before = branch.score(batch)
    save_weights(branch, tmp_path / "b.safetensors", {"branch": branch.name})
    torch.manual_seed(123)
    fresh = build_branch(branch.name, load_config("tiny"), CONTEXT, branch.extra_meta() or None).eval()
    meta = load_weights(fresh, tmp_path / "b.safetensors")
    assert meta["branch"] == branch.name
    with torch.no_grad():
        assert torch.equal(fresh.score(batch), before)


def test_names_and_ids_are_interchangeable():
    assert [canonical_name(x) for x in ("b1", "b2", "b3", "b4", "b5")] == \
        ["pretrained", "transformer-ae", "contrastive", "diffusion", "flow"]
    assert canonical_name("Transformer_AE") == "transformer-ae"
    with pytest.raises(ConfigError, match="unknown branch 'b9'.*b3=contrastive"):
        canonical_name("b9")
