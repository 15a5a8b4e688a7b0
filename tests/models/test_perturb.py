import torch

from asdcli.models.perturb import PERTURBATIONS, perturbed_copies


def test_every_kind_of_every_clip_or_a_random_few_per_clip():
    torch.manual_seed(0)
    feats = torch.randn(10, 16, 40)
    copies, kinds = perturbed_copies(feats, 3)
    assert copies.shape == (30, 16, 40) and kinds.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    torch.manual_seed(0)
    copies, kinds = perturbed_copies(feats, 3, per_clip=1)
    assert copies.shape == (10, 16, 40) and set(kinds.tolist()) <= {0, 1, 2} and len(set(kinds.tolist())) > 1
    # each clip appears once, perturbed by the kind it is listed with
    matched = [next(i for i in range(10) if torch.equal(PERTURBATIONS[int(k)](feats[i : i + 1])[0], c))
               for c, k in zip(copies, kinds)]
    assert sorted(matched) == list(range(10))
    torch.manual_seed(0)
    again = perturbed_copies(feats, 3, per_clip=1)
    assert torch.equal(again[0], copies) and torch.equal(again[1], kinds)  # torch's seed decides
    two = perturbed_copies(feats, 3, per_clip=2)[1]
    assert len(two) == 20 and perturbed_copies(feats, 2, per_clip=2)[1].tolist() == [0] * 10 + [1] * 10
