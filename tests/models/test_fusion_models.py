"""The fusion head, the meta-learner's classifier and the waveform pseudo-anomalies."""

import numpy as np
import pytest
import torch

from asdcli.metrics import auc
from asdcli.data.pseudo_anomalies import PERTURBATIONS, perturb
from asdcli.models.fusion_attention import (AttentionFusion, balanced_bce, pairwise_rank_loss, prior_kl,
                                             separability_prior)
from asdcli.models.meta_learner import MetaClassifier, adapted, adapted_copy, maml_wrapper, meta_features


def test_untrained_fusion_is_the_average_of_compressed_scores():
    z = torch.randn(6, 4) * 3
    with torch.no_grad():
        out = AttentionFusion(4, 8)(z)
    assert torch.allclose(out.weights, torch.full((6, 4), 0.25))
    assert torch.allclose(out.fused, torch.asinh(z).mean(dim=1), atol=1e-6)
    assert float(prior_kl(out.weights, torch.full((4,), 0.25))) == pytest.approx(0.0, abs=1e-6)


def test_separability_prior_favours_the_best_branch_and_sets_the_start():
    prior = separability_prior(torch.tensor([0.70, 0.95, 0.93]), temperature=0.01)
    assert prior.argmax() == 1 and prior[1] > 0.85 and prior[0] < 1e-6
    model = AttentionFusion(3, 4)
    model.set_prior(prior)
    with torch.no_grad():
        weights = model(torch.randn(5, 3)).weights
    assert torch.allclose(weights, prior.expand(5, 3), atol=1e-5)


@pytest.mark.parametrize("loss", ["bce", "rank"])
def test_fusion_learns_to_trust_the_informative_branch(loss):
    torch.manual_seed(0)
    label = torch.arange(200) % 2
    good = label * 3.0 + torch.randn(200) * 0.5
    noise = torch.randn(200) * 3
    z = torch.stack([noise, good], dim=1)  # (N, 2)
    model = AttentionFusion(2, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        out, group = model(z), torch.zeros(200, dtype=torch.long)
        (balanced_bce(out.logit, label, group) if loss == "bce" else pairwise_rank_loss(out.fused, label, group)).backward()
        optimizer.step()
    with torch.no_grad():
        out = model(z)
    assert out.weights[:, 1].median() > 0.8
    assert auc(label, out.fused) > auc(label, torch.asinh(z).mean(dim=1)) and auc(label, out.fused) > 0.95


def test_meta_classifier_starts_as_the_fused_score_and_adapts():
    z = torch.randn(10, 3)
    out = AttentionFusion(3, 4)(z)
    x = meta_features(out)  # (10, 7)
    assert x.shape == (10, 7)
    model = MetaClassifier(7, 8, fused_index=3)
    assert torch.allclose(model(x), out.fused)
    maml = maml_wrapper(model, inner_lr=0.5, first_order=False)
    y = (torch.arange(10) % 2).float()
    learner = adapted(maml, x, y, steps=3)
    assert not torch.allclose(learner(x), maml(x))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(learner(x), y)
    loss.backward()  # second-order gradients reach the meta-parameters
    assert model.linear.weight.grad is not None and torch.isfinite(model.linear.weight.grad).all()


@pytest.mark.parametrize("first_order", [False, True])
def test_scoring_adapts_exactly_as_maml_does(first_order):
    """Scoring adapts a copy of the classifier without learn2learn: same updates, same scores."""
    torch.manual_seed(0)
    x, y = torch.randn(12, 7), (torch.arange(12) % 2).float()
    model = MetaClassifier(7, 8, fused_index=3)
    torch.nn.init.normal_(model.net[2].weight)  # a meta-trained classifier: every part moves
    maml = maml_wrapper(model, inner_lr=0.3, first_order=first_order)
    expected = adapted(maml, x, y, steps=4)(x)
    copy = adapted_copy(model, x, y, steps=4, lr=0.3)
    assert torch.equal(copy(x), expected)
    assert not torch.equal(model(x), expected)  # the model itself is not changed


@pytest.mark.parametrize("kind", list(PERTURBATIONS))
def test_perturbations_keep_length_are_seeded_and_change_the_clip(kind):
    rng = np.random.default_rng(0)
    wave = torch.from_numpy((0.1 * rng.standard_normal(16000)).astype(np.float32))
    a, b = perturb(wave, 16000, kind, seed=5), perturb(wave, 16000, kind, seed=5)
    assert a.shape == wave.shape and torch.isfinite(a).all() and a.abs().max() <= 1.0
    assert torch.equal(a, b)
    assert not torch.allclose(a, wave, atol=1e-4)


def test_rank_loss_is_per_section_and_orders_pairs():
    label, group = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1])
    good = pairwise_rank_loss(torch.tensor([0.0, 5.0, 10.0, 15.0]), label, group)
    # Across sections the anomaly of section 0 (5) is below the normal of section 1 (10): no matter.
    assert float(good) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-5.0))))
    assert float(pairwise_rank_loss(torch.tensor([5.0, 0.0, 15.0, 10.0]), label, group)) > float(good)
