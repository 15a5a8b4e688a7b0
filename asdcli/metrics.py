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

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from asdcli.errors import DataError

# scikit-learn and scipy.stats are imported where they are used: together they are about 0.8 s
# of a scoring command's start-up, which needs neither (its thresholds use the gamma fit below).

MAX_FPR = 0.1
DECISION_PERCENTILE = 0.9


def roc_auc_score(y_true, y_score, **kwargs) -> float:
    """scikit-learn's ``roc_auc_score`` (imported on first use)."""
    from sklearn.metrics import roc_auc_score as sklearn_auc

    return sklearn_auc(y_true, y_score, **kwargs)


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
class Decisions:
    """Precision, recall and F1 of the anomalous (1) decisions on a set of clips, as the DCASE
    2021+ evaluators compute them (each denominator floored at machine epsilon)."""

    precision: float
    recall: float
    f1: float


def decision_scores(y_true: Sequence[int], decisions: Sequence[int]) -> Decisions:
    """:class:`Decisions` of 0/1 ``decisions`` against 0/1 labels."""
    y_true, decided = np.asarray(y_true, dtype=int), np.asarray(decisions, dtype=int)
    eps = np.finfo(float).eps
    tp = float(np.sum((decided == 1) & (y_true == 1)))
    precision = tp / max(float(np.sum(decided == 1)), eps)
    recall = tp / max(float(np.sum(y_true == 1)), eps)
    return Decisions(precision, recall, 2.0 * precision * recall / max(precision + recall, eps))


@dataclass(frozen=True)
class SectionScores:
    """Metrics of one machine section. Domain AUCs are ``None`` where a domain has no normal clip
    (and for data without domains, DCASE 2020); ``decisions``: per domain ("source", "target", or
    "all" without domains), where decisions were given."""

    machine: str
    section: str
    auc: float
    pauc: float
    auc_source: float | None
    auc_target: float | None
    decisions: dict[str, Decisions] | None = None

    @property
    def has_domains(self) -> bool:
        return self.auc_source is not None or self.auc_target is not None

    def domain_entries(self) -> list[tuple[str, float, Decisions | None]]:
        """(domain, AUC, decisions) per domain as the evaluators average them: source and target
        where the section has domains, else ("all", AUC)."""
        decisions = self.decisions or {}
        pairs = [(d, a) for d, a in (("source", self.auc_source), ("target", self.auc_target)) if a is not None]
        return [(d, a, decisions.get(d)) for d, a in (pairs or [("all", self.auc)])]

    def official_terms(self) -> list[float]:
        """The values this section contributes to the official harmonic mean."""
        domain_aucs = [a for a in (self.auc_source, self.auc_target) if a is not None]
        return (domain_aucs or [self.auc]) + [self.pauc]


def section_scores(machine: str, section: str, y_true: Sequence[int], y_score: Sequence[float],
                   domains: Sequence[str | None], decisions: Sequence[int] | None = None) -> SectionScores:
    """AUC, pAUC, per-domain AUC and (given 0/1 ``decisions``) per-domain precision, recall and F1
    of one section, as the DCASE 2022-2025 evaluators define them."""
    y_true, y_score = _check(y_true, y_score, f"{machine} section {section}")
    domains = np.asarray([d or "" for d in domains])
    per_domain, decided = {}, {}
    for domain in ("source", "target"):
        keep = (domains == domain) | (y_true == 1)
        has_normals = np.any((domains == domain) & (y_true == 0))
        per_domain[domain] = float(roc_auc_score(y_true[keep], y_score[keep])) if has_normals else None
        if decisions is not None and has_normals:
            own = domains == domain
            decided[domain] = decision_scores(y_true[own], np.asarray(decisions)[own])
    if decisions is not None and not decided:
        decided["all"] = decision_scores(y_true, decisions)
    return SectionScores(
        machine=machine,
        section=section,
        auc=float(roc_auc_score(y_true, y_score)),
        pauc=float(roc_auc_score(y_true, y_score, max_fpr=MAX_FPR)),
        auc_source=per_domain["source"],
        auc_target=per_domain["target"],
        decisions=decided if decisions is not None else None,
    )


@dataclass(frozen=True)
class Means:
    """One averaged row of the DCASE 2021+ results: AUC and pAUC, and the decisions' precision,
    recall and F1 (None where a section has no decisions)."""

    auc: float
    pauc: float
    precision: float | None
    recall: float | None
    f1: float | None


def _mean_row(entries: list[tuple[SectionScores, float, Decisions | None]], harmonic: bool) -> Means:
    mean = (lambda v: harmonic_mean(v)) if harmonic else (lambda v: float(np.mean(v)))
    decided = [d for _, _, d in entries]
    known = all(d is not None for d in decided)
    return Means(mean([a for _, a, _ in entries]), mean([s.pauc for s, _, _ in entries]),
                 mean([d.precision for d in decided]) if known else None,
                 mean([d.recall for d in decided]) if known else None,
                 mean([d.f1 for d in decided]) if known else None)


def section_means(sections: Sequence[SectionScores]) -> dict[str, Means]:
    """The evaluators' averages over sections: each section contributes its AUC (source) and AUC
    (target) (its AUC where it has no domains), each with the section's pAUC and that domain's
    decision figures. Rows: "arithmetic mean", "harmonic mean" and, with domains, "source
    harmonic mean" and "target harmonic mean" (harmonic means floor zeros at machine epsilon)."""
    entries = [(s, auc_value, decided) for s in sections for _, auc_value, decided in s.domain_entries()]
    rows = {"arithmetic mean": _mean_row(entries, False), "harmonic mean": _mean_row(entries, True)}
    for domain in ("source", "target"):
        own = [(s, a, d) for s in sections for dom, a, d in s.domain_entries() if dom == domain]
        if own:
            rows[f"{domain} harmonic mean"] = _mean_row(own, True)
    return rows


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean as the DCASE evaluators take it (``scipy.stats.hmean``), with zeros floored
    at machine epsilon so that one AUC of 0 does not make it undefined."""
    if len(values) == 0:
        raise DataError("harmonic mean of no values")
    import scipy.stats

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
    mean, std, skew = scores.mean(), scores.std(), _skew(scores)
    shape0 = float(np.clip(4.0 / max(skew, 1e-3) ** 2, 0.5, 1e3))
    scale0 = std / np.sqrt(shape0)
    loc0 = min(mean - shape0 * scale0, scores.min() - 1e-6 * np.ptp(scores))
    with np.errstate(all="ignore"):
        threshold = _gamma_fit_ppf(scores, (shape0, loc0, scale0), percentile)
    empirical = float(np.quantile(scores, percentile))
    spread = np.ptp(scores)
    if not np.isfinite(threshold) or not scores.min() <= threshold <= scores.max() + spread:
        return empirical
    return threshold


def _skew(x: np.ndarray) -> float:
    """``scipy.stats.skew(x)`` (biased): the third central moment over the second's 1.5th power."""
    centred = x - x.mean()
    m2 = np.mean(centred ** 2)
    if m2 <= (np.finfo(float).resolution * x.mean()) ** 2:  # no spread: scipy gives nan
        return float("nan")
    return float(np.mean(centred ** 2 * centred) / m2 ** 1.5)


_FIT_PENALTY = np.log(np.finfo(float).max) * 100


def _gamma_nll(theta: np.ndarray, x: np.ndarray, gammaln, xlogy) -> float:
    """The objective ``scipy.stats.gamma.fit`` minimises: the negative log-likelihood of ``x``
    under gamma(shape, loc, scale) = ``theta``, with scipy's penalty per point outside the support
    (``gammaln``, ``xlogy``: scipy.special's, passed in)."""
    shape, loc, scale = theta
    if not shape > 0 or scale <= 0:
        return np.inf
    z = np.asarray((x - loc) / scale)
    inside = z >= 0
    bad = np.count_nonzero(~inside)
    logpdf = xlogy(shape - 1.0, z[inside]) - z[inside] - gammaln(shape)
    finite = np.isfinite(logpdf)
    bad += np.sum(~finite)
    nll = -np.sum(logpdf[finite]) + bad * _FIT_PENALTY if bad > 0 else -np.sum(logpdf)
    return nll + len(z) * np.log(scale)


class _OutOfCalls(Exception):
    pass


def _nelder_mead(objective: Callable[[np.ndarray], float], start: Sequence[float]) -> np.ndarray:
    """The minimum of ``objective`` found from ``start`` by Nelder-Mead as ``scipy.optimize.fmin``
    finds it with its defaults (its first simplex, steps, order of evaluation and stopping rules,
    so the same numbers; a test holds them equal), without importing scipy.optimize (0.2 s of
    start-up)."""
    n = len(start)
    budget = 200 * n  # calls and iterations
    sim = np.empty((n + 1, n), dtype=float)
    sim[0] = start
    for k in range(n):
        point = np.array(start, dtype=float)
        point[k] = (1 + 0.05) * point[k] if point[k] != 0 else 0.00025
        sim[k + 1] = point
    calls = [0]

    def value(x: np.ndarray) -> float:
        if calls[0] >= budget:
            raise _OutOfCalls
        calls[0] += 1
        return objective(np.copy(x))

    def ranked(sim: np.ndarray, fsim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(fsim)
        return np.take(sim, order, 0), np.take(fsim, order, 0)

    fsim = np.full((n + 1,), np.inf, dtype=float)
    with contextlib.suppress(_OutOfCalls):
        for k in range(n + 1):
            fsim[k] = value(sim[k])
    sim, fsim = ranked(*ranked(sim, fsim))
    iterations = 1
    while calls[0] < budget and iterations < budget:
        if np.max(np.ravel(np.abs(sim[1:] - sim[0]))) <= 1e-4 and np.max(np.abs(fsim[0] - fsim[1:])) <= 1e-4:
            break
        with contextlib.suppress(_OutOfCalls):
            _nelder_mead_step(sim, fsim, value)
            iterations += 1
        sim, fsim = ranked(sim, fsim)
    return sim[0]


def _nelder_mead_step(sim: np.ndarray, fsim: np.ndarray, value: Callable[[np.ndarray], float]) -> None:
    """One step of :func:`_nelder_mead` on the ranked simplex, in place: reflect the worst point
    through the others' centre, then expand, accept, contract or shrink (scipy's coefficients
    1, 2, 0.5, 0.5 written as scipy combines them)."""
    rho, chi, psi, sigma = 1, 2, 0.5, 0.5
    centre = np.add.reduce(sim[:-1], 0) / (len(sim) - 1)
    xr = (1 + rho) * centre - rho * sim[-1]
    fxr = value(xr)
    if fxr < fsim[0]:
        xe = (1 + rho * chi) * centre - rho * chi * sim[-1]
        fxe = value(xe)
        sim[-1], fsim[-1] = (xe, fxe) if fxe < fxr else (xr, fxr)
        return
    if fxr < fsim[-2]:
        sim[-1], fsim[-1] = xr, fxr
        return
    if fxr < fsim[-1]:  # contraction outside
        xc = (1 + psi * rho) * centre - psi * rho * sim[-1]
        fxc = value(xc)
        if fxc <= fxr:
            sim[-1], fsim[-1] = xc, fxc
            return
    else:  # contraction inside
        xcc = (1 - psi) * centre + psi * sim[-1]
        fxcc = value(xcc)
        if fxcc < fsim[-1]:
            sim[-1], fsim[-1] = xcc, fxcc
            return
    for j in range(1, len(sim)):  # shrink toward the best point
        sim[j] = sim[0] + sigma * (sim[j] - sim[0])
        fsim[j] = value(sim[j])


def _gamma_fit_ppf(scores: np.ndarray, start: tuple[float, float, float], percentile: float) -> float:
    """``scipy.stats.gamma.ppf(percentile, *scipy.stats.gamma.fit(scores, shape0, loc=, scale=))``
    computed as scipy does (the same Nelder-Mead from the same start on the same objective, the
    same numbers; a test holds them equal) without importing scipy.stats or scipy.optimize (0.9 s
    of start-up together)."""
    from scipy.special import gammaincinv, gammaln, xlogy

    shape, loc, scale = _nelder_mead(lambda theta: _gamma_nll(theta, scores, gammaln, xlogy), start)
    if not (shape > 0 and scale > 0):
        return float("nan")  # scipy raises FitError: the empirical percentile is used
    return float(gammaincinv(shape, percentile) * scale + loc)


def fpr_threshold(train_scores: Sequence[float], fpr: float) -> float:
    """Threshold that flags a fraction ``fpr`` of the normal training clips (empirical quantile)."""
    if not 0 < fpr < 1:
        raise DataError(f"false-positive rate must lie in (0, 1), got {fpr}")
    scores = np.asarray(train_scores, dtype=float)
    if scores.size < 1:
        raise DataError("decision threshold: no training scores")
    return float(np.quantile(scores, 1 - fpr))


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _roc_areas(y_true: np.ndarray, y_score: np.ndarray, max_fpr: float) -> tuple[float, float]:
    """(AUC, McClish-standardised pAUC up to ``max_fpr``) of clips already sorted by descending
    score: the trapezoids of scikit-learn's ``roc_curve`` / ``roc_auc_score``, without its checks."""
    last = np.r_[np.flatnonzero(np.diff(y_score)), y_true.size - 1]  # the last clip of each tied run
    tps = np.r_[0.0, np.cumsum(y_true)[last]]
    fps = np.r_[0.0, (last + 1) - tps[1:]]
    tpr, fpr = tps / tps[-1], fps / fps[-1]
    full = _trapezoid(tpr, fpr)
    stop = int(np.searchsorted(fpr, max_fpr, "right"))
    head_tpr = np.r_[tpr[:stop], np.interp(max_fpr, fpr[stop - 1:stop + 1], tpr[stop - 1:stop + 1])]
    partial = _trapezoid(head_tpr, np.r_[fpr[:stop], max_fpr])
    min_area, max_area = 0.5 * max_fpr ** 2, max_fpr
    return full, 0.5 * (1 + (partial - min_area) / (max_area - min_area))


def jackknife_ci95(y_true: Sequence[int], y_score: Sequence[float], max_fpr: float = MAX_FPR) -> tuple[float, float]:
    """Half-widths of the 95 % confidence intervals of the AUC and the pAUC of all clips pooled,
    by jackknife (leave one clip out; Mesaros et al. 2019, section IV), as the DCASE 2023 evaluator
    reports them ("official score ci95" is their mean). Needs 2 clips of each class."""
    y_true, y_score = _check(y_true, y_score, "confidence interval")
    order = np.argsort(-y_score, kind="stable")
    y_sorted, s_sorted = y_true[order].astype(float), -np.sort(-y_score, kind="stable")
    n = y_true.size
    estimates = np.array([_roc_areas(np.delete(y_sorted, i), np.delete(s_sorted, i), max_fpr) for i in range(n)])
    sigma = np.sqrt(np.sum((estimates - estimates.mean(axis=0)) ** 2, axis=0) / (n * (n - 1)))
    import scipy.stats

    t_crit = abs(scipy.stats.t.ppf(0.025, n - 1))
    return float(t_crit * sigma[0]), float(t_crit * sigma[1])
