"""`asd evaluate` against the official DCASE 2023 evaluator's own results (../shared/fixtures)."""

import csv
from pathlib import Path

import pytest

from asdcli.services.evaluation.evaluate import evaluate, results_csv

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "dcase2023-evaluator"
CASES = ["unbalanced-sections", "auc-zero-and-ties", "eval-names-with-ground-truth"]


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(text.splitlines()))


@pytest.mark.parametrize("case", CASES)
def test_every_figure_of_the_official_evaluator(case):
    folder = FIXTURES / case
    if not folder.is_dir():
        pytest.skip(f"fixtures {folder} not present")
    mine = _cells(results_csv(evaluate([folder / "scores"], ground_truth=folder)))
    theirs = _cells((folder / "official_result.csv").read_text())
    assert len(mine) == len(theirs)
    compared = 0
    for ours, official in zip(mine, theirs):
        assert len(ours) == len(official), (ours, official)
        for a, b in zip(ours, official):
            try:
                expected = float(b)
            except ValueError:
                assert a == b
                continue
            assert float(a) == pytest.approx(expected, abs=1e-9, rel=0), (ours[0], official[0])
            compared += 1
    assert compared > 100  # sections, means, official score and its interval


def test_unbalanced_sections_average_the_domain_aucs_not_the_pooled_ones():
    folder = FIXTURES / "unbalanced-sections"
    if not folder.is_dir():
        pytest.skip(f"fixtures {folder} not present")
    result = evaluate([folder / "scores"], ground_truth=folder)
    valve = [s for s in result.sections if s.machine == "valve"]
    pooled = sum(s.auc for s in valve) / 2
    domains = sum(s.auc_source + s.auc_target for s in valve) / 4
    assert result.machines["valve"]["arithmetic mean"].auc == pytest.approx(domains)
    assert abs(pooled - domains) > 0.01
