"""The attention prior: branches judged on pseudo-anomalies they were not trained to separate,
and a prior that stays near uniform where a handful of clips cannot rank the branches."""

import numpy as np

from asdcli.config import load_config
from asdcli.data.pseudo_anomalies import KINDS
from asdcli.models.branch_contrastive import ContrastiveBranch
from asdcli.models.base import BranchContext
from asdcli.services.scoring.examples import Examples
from asdcli.services.training.fuse import fit_fusion, fusion_prior, separability


def _examples(per_kind: int, sections: int = 2, seed: int = 0) -> Examples:
    """Branch 'contrastive' flags every other-section clip (what it was trained on) and nothing
    else; branch 'transformer-ae' flags knocks a little and other sections not at all."""
    rng = np.random.default_rng(seed)
    z, label, group, kind = [], [], [], []
    for g in range(sections):
        for k, name in ((0, "normal"), (1, "knocks"), (1, "other_section")):
            block = rng.standard_normal((per_kind, 2))
            if name == "knocks":
                block[:, 0] += 1.0
            if name == "other_section":
                block[:, 1] += 5.0
            z.append(block)
            label += [k] * per_kind
            group += [g] * per_kind
            kind += [KINDS.index(name)] * per_kind
    return Examples(["transformer-ae", "contrastive"], [f"s{g}" for g in range(sections)], np.concatenate(z),
                    np.array(label), np.array(group), np.array(kind),
                    {"transformer-ae": [], "contrastive": ["other_section"]})


def test_the_contrastive_branch_names_what_its_training_separates():
    cfg = load_config("tiny").branches.contrastive
    context = BranchContext(n_mels=32, frames=40, sample_rate=16000, n_groups=2, n_labels=2)
    kinds = ContrastiveBranch(context, cfg).trained_kinds()
    assert set(kinds) == {"other_section", "speed_change", "muffle", "brighten", "wobble"}
    assert ContrastiveBranch(context, cfg.model_copy(update={"perturbations": 0})).trained_kinds() == ("other_section",)
    assert set(kinds) < set(KINDS)


def test_a_branch_is_judged_only_on_kinds_it_was_not_trained_on():
    ex = _examples(200)
    config = load_config("tiny").with_overrides(**{"fusion.prior": "none"})  # the pseudo-anomalies alone
    raw = [separability(ex, ex.z[:, k])[0] for k in range(2)]
    assert raw[1] > raw[0]  # on every pseudo-anomaly the contrastive branch looks best ...
    prior, temperature, fair = fusion_prior(ex, config)
    assert fair[0] > 0.55 and abs(fair[1] - 0.5) < 0.05  # ... but it is blind to the others
    assert prior[0] > 0.9
    model, _ = fit_fusion(ex, config)
    assert float(model.prior.softmax(0)[0]) > 0.9


def test_the_prior_stays_near_uniform_when_a_handful_of_clips_cannot_rank_the_branches():
    config = load_config("tiny")
    many = fusion_prior(_examples(200), config)
    few = fusion_prior(_examples(4), config)
    assert many[1] == config.fusion.prior_temperature or many[1] < 0.05
    assert few[1] > 0.1  # the standard error of an AUC from 4 + 4 clips per section
    assert float(few[0].min()) > 0.2  # both branches keep a real share
    auc, error = separability(_examples(4), _examples(4).z[:, 0])
    assert np.isclose(error, np.sqrt(2 * (4 + 8 + 1) / (12 * 4 * 8)) / 2)
