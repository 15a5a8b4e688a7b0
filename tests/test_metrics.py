import warnings

import numpy as np
import pytest
import scipy.stats

from asdcli.errors import DataError
from asdcli.metrics import (arithmetic_score, auc, fpr_threshold, gamma_threshold, official_score, pauc,
                            section_scores)


def test_auc_hand_worked():
    # Pairs (anomaly > normal): 0.35>0.1 yes, 0.35>0.4 no, 0.8 beats both: 3 of 4.
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_pauc_hand_worked():
    # ROC: (0, .5) after 0.8, then FPR jumps to .5. Area over FPR [0, .1] = .05; McClish
    # standardisation with min .005 and max .1: 0.5 * (1 + (.05 - .005) / (.1 - .005)).
    assert pauc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 * (1 + 0.045 / 0.095))
    assert pauc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)


def test_domain_auc_and_official_score_hand_worked():
    #              source normals   target normals   anomalies (source, target)
    scores = [0.1, 0.2, 0.5, 0.6, 0.55, 0.3]
    labels = [0, 0, 0, 0, 1, 1]
    domains = ["source", "source", "target", "target", "source", "target"]
    s = section_scores("fan", "00", labels, scores, domains)
    assert s.auc_source == pytest.approx(1.0)  # both anomalies above both source normals
    assert s.auc_target == pytest.approx(0.25)  # only 0.55 > 0.5
    assert s.auc == pytest.approx(5 / 8)
    # FPR reaches .25 before any anomaly: partial area 0 -> 0.5 * (1 - .005 / .095).
    assert s.pauc == pytest.approx(0.5 * (1 - 0.005 / 0.095))
    expected_h = 3 / (1 / 1.0 + 1 / 0.25 + 1 / s.pauc)
    assert official_score([s]) == pytest.approx(expected_h)
    assert arithmetic_score([s]) == pytest.approx((1.0 + 0.25 + s.pauc) / 3)


def test_sections_without_domains_use_overall_auc():
    s = section_scores("slider", "00", [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], [None] * 4)
    assert s.auc_source is None and s.auc_target is None
    assert s.official_terms() == [pytest.approx(0.75), pytest.approx(s.pauc)]


def test_metric_errors_are_clear():
    with pytest.raises(DataError, match="needs both normal and anomalous"):
        auc([0, 0], [0.1, 0.2])
    with pytest.raises(DataError, match="2 labels but 3 scores"):
        auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="NaN"):
        pauc([0, 1], [0.1, np.nan])


def test_gamma_threshold_recovers_the_90th_percentile():
    rng = np.random.default_rng(0)
    scores = rng.gamma(shape=2.0, scale=1.5, size=20000) + 3.0
    expected = scipy.stats.gamma.ppf(0.9, 2.0, loc=3.0, scale=1.5)
    assert gamma_threshold(scores) == pytest.approx(expected, rel=0.02)
    assert gamma_threshold([2.0, 2.0, 2.0]) == 2.0


def test_fpr_threshold():
    scores = np.arange(100, dtype=float)
    assert fpr_threshold(scores, 0.1) == pytest.approx(89.1)
    assert np.mean(scores > fpr_threshold(scores, 0.1)) == pytest.approx(0.1)
    with pytest.raises(DataError, match=r"\(0, 1\)"):
        fpr_threshold(scores, 1.5)


def test_the_gamma_fit_without_scipy_stats_gives_scipys_numbers():
    """gamma_threshold runs scipy.stats.gamma.fit's optimisation itself (scoring need not import
    scipy.stats): the thresholds must be scipy's to the last bit, with points outside the support too."""

    from asdcli.metrics import _gamma_fit_ppf, _skew

    rng = np.random.default_rng(0)
    samples = [rng.gamma(rng.uniform(0.3, 10), size=rng.integers(2, 120)) * rng.uniform(0.01, 100) - 5
               for _ in range(40)] + [rng.normal(size=30), np.round(rng.normal(size=25), 1), rng.exponential(size=50) ** 3]
    for x in samples:
        assert _skew(x) == pytest.approx(float(scipy.stats.skew(x)), rel=1e-12, abs=1e-12)
        for start in [(2.0, x.min() - 1.0, x.std()), (0.7, x.mean(), 0.5 * x.std())]:  # the second leaves points out
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    expected = float(scipy.stats.gamma.ppf(0.9, *scipy.stats.gamma.fit(x, start[0], loc=start[1],
                                                                                       scale=start[2])))
                except scipy.stats.FitError:
                    expected = float("nan")
                got = _gamma_fit_ppf(x, start, 0.9)
            assert got == expected or (np.isnan(got) and np.isnan(expected))


def _rosenbrock(x):
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


@pytest.mark.parametrize("objective, start", [(_rosenbrock, (2.0, -1.0, 0.5)), (_rosenbrock, (-3.0, 4.0, 0.0)),
                                              (_rosenbrock, (30.0, -20.0, 10.0)),
                                              (lambda x: -float(np.sum(x)), (1.0, 0.0, 2.0))])
def test_the_nelder_mead_is_scipys_fmin_to_the_last_bit(objective, start):
    """From near and far, with a zero in the start, and on a slope without a minimum (it runs out
    of its 600 calls)."""
    from scipy.optimize import fmin

    from asdcli.metrics import _nelder_mead

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(_nelder_mead(objective, start), fmin(objective, start, disp=0))


def test_scoring_imports_neither_scikit_learn_nor_scipy_stats():
    """Together 0.8 s of every `asd score`: the scoring modules leave them to the commands that need them."""
    import subprocess
    import sys

    code = ("import sys, asdcli.services.scoring.score, asdcli.services.scoring.watch, asdcli.cli.score; "
            "print(sorted(m for m in ('sklearn', 'scipy.stats', 'scipy.optimize') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
