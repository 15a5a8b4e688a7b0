"""Leave-one-out Mahalanobis distances of the reconstruction branches, in closed form."""

import numpy as np
import torch

from asdcli.models.error_profile import ProfileScorer, error_profile


def _refitted(scorer: ProfileScorer, profiles, group, exclude):
    """The definition: each clip's section Gaussian refitted without the excluded training row."""
    out = scorer(profiles, group)
    for i in torch.nonzero(exclude >= 0).flatten().tolist():
        keep = (scorer.train_group == group[i]) & (torch.arange(len(scorer.train_group)) != exclude[i])
        mean, precision = scorer._fit_one(scorer.train_profiles[keep])
        diff = profiles[i] - mean
        out[i] = (diff @ precision @ diff).clamp_min(0).sqrt()
    return out


def _scorer(sizes: list[int], dim: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, -1.5, dim)  # quiet and loud bins
    profiles = torch.cat([torch.randn(n, dim, generator=g) * scale + k for k, n in enumerate(sizes)])
    profiles[::7] *= 3  # outliers: their share of the shrinkage target matters most
    group = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    scorer = ProfileScorer(len(sizes), dim)
    scorer.fit(profiles, group)
    return scorer, profiles, group


def test_leave_one_out_matches_refitting_each_clip_out():
    scorer, profiles, group = _scorer([10, 40, 200])
    own = torch.arange(len(group))
    fast, slow = scorer.leave_one_out(profiles, group, own), _refitted(scorer, profiles, group, own)
    assert (fast > scorer(profiles, group)).all()  # a clip left out is further from its section
    for k, n in enumerate([10, 40, 200]):
        rows = group == k
        rel = ((fast[rows] - slow[rows]) / slow[rows]).abs()
        assert float(rel.max()) < 1e-5, (n, float(rel.max()))


def test_a_perturbed_copy_leaves_its_clean_original_out_and_others_stay_whole():
    scorer, profiles, group = _scorer([12, 12], seed=1)
    copies = profiles[[0, 5, 15]] + 0.05
    copy_group = torch.tensor([0, 0, 1])
    exclude = torch.tensor([0, -1, 15])
    fast = scorer.leave_one_out(copies, copy_group, exclude)
    slow = _refitted(scorer, copies, copy_group, exclude)
    assert np.allclose(fast.numpy(), slow.numpy(), rtol=1e-5)
    assert float(fast[1]) == float(scorer(copies[1:2], copy_group[1:2])[0])  # nothing to leave out
    tiny = ProfileScorer(1, 4)
    tiny.fit(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))  # two clips: nothing left to refit on
    assert torch.equal(tiny.leave_one_out(tiny.train_profiles, torch.zeros(2, dtype=torch.long), torch.arange(2)),
                       tiny(tiny.train_profiles, torch.zeros(2, dtype=torch.long)))


def test_the_per_section_downdate_is_computed_once_and_dropped_with_new_profiles():
    scorer, profiles, group = _scorer([30, 30], seed=2)
    own = torch.arange(len(group))
    whole = scorer.leave_one_out(profiles, group, own)
    halves = torch.cat([scorer.leave_one_out(profiles[:30], group[:30], own[:30]),
                        scorer.leave_one_out(profiles[30:], group[30:], own[30:])])
    assert torch.allclose(whole, halves) and set(scorer._loo) == {0, 1}  # batches share one downdate each
    other, _, _ = _scorer([30, 30], seed=3)
    scorer.load_state_dict(other.state_dict())
    assert scorer._loo == {}
    assert torch.allclose(scorer.leave_one_out(profiles, group, own), other.leave_one_out(profiles, group, own))


def test_the_shares_of_bins_and_frames_add_up_to_the_distance_and_point_at_the_fault():
    torch.manual_seed(0)
    scorer = ProfileScorer(2, 2 * 8)
    train = torch.randn(200, 8, 30)
    scorer.fit(error_profile(train), torch.tensor([0] * 100 + [1] * 100))
    error = torch.randn(3, 8, 30)
    error[0, 3, 10:15] += 3.0  # a fault in bin 3, frames 10-14
    group = torch.tensor([0, 1, -1])  # -1: an unknown section (the pooled statistics)
    shares = scorer.shares(error, group)
    torch.testing.assert_close(shares.sum(dim=1).mean(dim=1), scorer(error_profile(error), group))
    frames = shares[0].sum(dim=0)
    assert int(shares[0].sum(dim=1).argmax()) == 3 and frames[10:15].mean() > 3 * torch.cat([frames[:10], frames[15:]]).abs().mean()


def test_frame_poolings_of_a_clip_with_one_loud_frame():
    from asdcli.models.base import pool_time

    errors = torch.ones(2, 40)
    errors[0, 7] = 41.0  # one loud frame of 40: the mean 2, the top tenth (4 frames) 11
    assert torch.allclose(pool_time(errors, "mean"), torch.tensor([2.0, 1.0]))
    assert torch.allclose(pool_time(errors, "max"), torch.tensor([41.0, 1.0]))
    assert torch.allclose(pool_time(errors, "top10"), torch.tensor([11.0, 1.0]))
    assert pool_time(errors, "top10")[0] > pool_time(errors, "gwrp")[0] > pool_time(errors, "mean")[0]
    assert torch.allclose(pool_time(torch.arange(3.0)[None], "top10"), torch.tensor([2.0]))  # at least one frame
