"""DCASE Task 2 metrics: AUC, pAUC, per-domain AUC, official score and the decision threshold.

Computed exactly as the official evaluators (2020-2025) do, with scikit-learn:

- ``AUC`` over all test clips of a section; ``pAUC`` = ``roc_auc_score(..., max_fpr=0.1)``
  (scikit-learn's McClish-standardised partial AUC, as the evaluators call it).
- ``AUC (source)`` / ``AUC (target)`` (2022+): normal clips of that domain against *all*
  anomalous clips of the section; pAUC stays computed over the whole section.
- Official score (2022+): harmonic mean of every section's AUC (source), AUC (target) and pAUC
  over all machine types and sections. 2020: arithmetic mean of AUC and pAUC per machine ID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import scipy.stats
from sklearn.metrics import roc_auc_score

from asdcli.errors import DataError

MAX_FPR = 0.1
DECISION_PERCENTILE = 0.9


def _check(y_true: Sequence[int], y_score: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_score = np.asarray(y_true, dtype=int), np.asarray(y_score, dtype=float)
    if y_true.shape != y_score.shape:
        raise DataError(f"{what}: {y_true.shape[0]} labels but {y_score.shape[0]} scores")
    if not np.isfinite(y_score).all():
        raise DataError(f"{what}: scores contain NaN or infinite values")
    if np.unique(y_true).size < 2:
        raise DataError(f"{what}: needs both normal and anomalous clips")
    return y_true, y_score


def auc(y_true: Sequence[int], y_score: Sequence[float]) -> float:
    """Area under the ROC curve (1 = anomalous, higher score = more anomalous)."""
    return float(roc_auc_score(*_check(y_true, y_score, "AUC")))


def pauc(y_true: Sequence[int], y_score: Sequence[float], max_fpr: float = MAX_FPR) -> float:
    """Standardised partial AUC over false-positive rates in ``[0, max_fpr]``."""
    return float(roc_auc_score(*_check(y_true, y_score, "pAUC"), max_fpr=max_fpr))


@dataclass(frozen=True)
class SectionScores:
    """Metrics of one machine section. Domain AUCs are ``None`` where a domain has no normal clip."""

    machine: str
    section: str
    auc: float
    pauc: float
    auc_source: float | None
    auc_target: float | None

    def official_terms(self) -> list[float]:
        """The values this section contributes to the official harmonic mean."""
        domain_aucs = [a for a in (self.auc_source, self.auc_target) if a is not None]
        return (domain_aucs or [self.auc]) + [self.pauc]


def section_scores(machine: str, section: str, y_true: Sequence[int], y_score: Sequence[float],
                   domains: Sequence[str | None]) -> SectionScores:
    """AUC, pAUC and per-domain AUC of one section, as the DCASE 2022-2025 evaluators define them."""
    y_true, y_score = _check(y_true, y_score, f"{machine} section {section}")
    domains = np.asarray([d or "" for d in domains])
    per_domain = {}
    for domain in ("source", "target"):
        keep = (domains == domain) | (y_true == 1)
        has_normals = np.any((domains == domain) & (y_true == 0))
        per_domain[domain] = float(roc_auc_score(y_true[keep], y_score[keep])) if has_normals else None
    return SectionScores(
        machine=machine,
        section=section,
        auc=float(roc_auc_score(y_true, y_score)),
        pauc=float(roc_auc_score(y_true, y_score, max_fpr=MAX_FPR)),
        auc_source=per_domain["source"],
        auc_target=per_domain["target"],
    )


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean as the DCASE evaluators take it (``scipy.stats.hmean``), with zeros floored
    at machine epsilon so that one AUC of 0 does not make it undefined."""
    if len(values) == 0:
        raise DataError("harmonic mean of no values")
    return float(scipy.stats.hmean(np.maximum(np.asarray(values, dtype=float), np.finfo(float).eps)))


def official_score(sections: Iterable[SectionScores]) -> float:
    """Harmonic mean of AUC (source), AUC (target) and pAUC over all sections (DCASE 2022+).

    Sections without domain labels (2020 data) contribute their overall AUC instead.
    """
    terms = [t for s in sections for t in s.official_terms()]
    if not terms:
        raise DataError("official score: no sections to average")
    return harmonic_mean(terms)


def arithmetic_score(sections: Iterable[SectionScores]) -> float:
    """Arithmetic mean of the same terms as :func:`official_score`."""
    terms = [t for s in sections for t in s.official_terms()]
    if not terms:
        raise DataError("arithmetic score: no sections to average")
    return float(np.mean(terms))


def gamma_threshold(train_scores: Sequence[float], percentile: float = DECISION_PERCENTILE) -> float:
    """Decision threshold as in the DCASE baselines: the ``percentile`` of a gamma fit.

    ``scipy.stats.gamma.fit`` (shape, location and scale) on the anomaly scores of the normal
    training clips, then ``gamma.ppf(percentile)``. The fit starts from method-of-moments
    estimates; where it still fails (few or degenerate scores give a threshold outside the
    plausible range), the empirical percentile is used. Scores above it are decided anomalous.
    """
    scores = np.asarray(train_scores, dtype=float)
    if scores.size < 2 or not np.isfinite(scores).all():
        raise DataError("decision threshold: needs at least two finite training scores")
    if np.ptp(scores) == 0:
        return float(scores[0])
    mean, std, skew = scores.mean(), scores.std(), scipy.stats.skew(scores)
    shape0 = float(np.clip(4.0 / max(skew, 1e-3) ** 2, 0.5, 1e3))
    scale0 = std / np.sqrt(shape0)
    loc0 = min(mean - shape0 * scale0, scores.min() - 1e-6 * np.ptp(scores))
    with np.errstate(all="ignore"):
        shape, loc, scale = scipy.stats.gamma.fit(scores, shape0, loc=loc0, scale=scale0)
        threshold = float(scipy.stats.gamma.ppf(percentile, shape, loc=loc, scale=scale))
    empirical = float(np.quantile(scores, percentile))
    spread = np.ptp(scores)
    if not np.isfinite(threshold) or not scores.min() <= threshold <= scores.max() + spread:
        return empirical
    return threshold


def fpr_threshold(train_scores: Sequence[float], fpr: float) -> float:
    """Threshold that flags a fraction ``fpr`` of the normal training clips (empirical quantile)."""
    if not 0 < fpr < 1:
        raise DataError(f"false-positive rate must lie in (0, 1), got {fpr}")
    scores = np.asarray(train_scores, dtype=float)
    if scores.size < 1:
        raise DataError("decision threshold: no training scores")
    return float(np.quantile(scores, 1 - fpr))
