"""`asd evaluate` against the official DCASE 2023 evaluator's arithmetic on a hand-made case."""

import sys

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics

from asdcli.errors import DataError
from asdcli.services.evaluate import evaluate

# Two machine types, one section each; the second has an AUC of 0 in the target domain.
CASE = {
    "fan": [("section_00_source_test_normal_0000.wav", 0.1), ("section_00_source_test_normal_0001.wav", 0.4),
            ("section_00_target_test_normal_0000.wav", 0.5), ("section_00_target_test_normal_0001.wav", 0.2),
            ("section_00_source_test_anomaly_0000.wav", 0.9), ("section_00_target_test_anomaly_0000.wav", 0.45)],
    "valve": [("section_00_source_test_normal_0000.wav", 0.3), ("section_00_target_test_normal_0000.wav", 0.9),
              ("section_00_source_test_anomaly_0000.wav", 0.7), ("section_00_target_test_anomaly_0000.wav", 0.2)],
}


def _official(rows):
    """The DCASE 2023 evaluator's formulas, written out: per section AUC (source/target) over
    (domain == d) | anomalous, pAUC over the section, official = hmean of all, floored at eps."""
    y_true = np.array([int("anomaly" in n) for n, _ in rows])
    y_pred = np.array([s for _, s in rows])
    y_domain = np.array([int("target" in n) for n, _ in rows])
    out = {}
    for d, name in ((0, "source"), (1, "target")):
        keep = (y_domain == d) | (y_true != 0)
        out[name] = metrics.roc_auc_score(y_true[keep], y_pred[keep])
    out["pauc"] = metrics.roc_auc_score(y_true, y_pred, max_fpr=0.1)
    out["auc"] = metrics.roc_auc_score(y_true, y_pred)
    return out


@pytest.fixture()
def score_dir(tmp_path):
    for machine, rows in CASE.items():
        text = "".join(f"{name},{score}\n" for name, score in rows)
        (tmp_path / f"anomaly_score_{machine}_section_00_test.csv").write_text(text)
        (tmp_path / f"decision_result_{machine}_section_00_test.csv").write_text(
            "".join(f"{name},0\n" for name, _ in rows))
    return tmp_path


def test_matches_the_official_evaluator_arithmetic(score_dir):
    result = evaluate([score_dir])
    expected = {m: _official(rows) for m, rows in CASE.items()}
    assert [(s.machine, s.section) for s in result.sections] == [("fan", "00"), ("valve", "00")]
    for s in result.sections:
        e = expected[s.machine]
        assert (s.auc_source, s.auc_target, s.pauc, s.auc) == pytest.approx((e["source"], e["target"], e["pauc"], e["auc"]))
    assert expected["valve"]["target"] == 0.0  # the epsilon floor matters here
    all_perf = [e["source"] for e in expected.values()] + [e["target"] for e in expected.values()] + \
        [e["pauc"] for e in expected.values()]
    official = scipy.stats.hmean(np.maximum(all_perf, sys.float_info.epsilon))
    assert result.official == pytest.approx(official)
    assert result.arithmetic == pytest.approx(np.mean(all_perf))
    assert result.harmonic_source == pytest.approx(scipy.stats.hmean([e["source"] for e in expected.values()]))


def test_asd_score_csv_with_paths_and_header(tmp_path):
    lines = ["filename,score,decision"] + [f"fan/test/{n},{s},0" for n, s in CASE["fan"]] + \
        ["fan/test/section_00_0001.wav,0.3,0"]
    (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
    result = evaluate([tmp_path / "scores.csv"])
    assert [s.machine for s in result.sections] == ["fan"] and result.unlabeled == 1
    assert result.sections[0].auc_source == pytest.approx(_official(CASE["fan"])["source"])


def test_bad_score_files(tmp_path):
    (tmp_path / "bad.csv").write_text("fan/test/section_00_source_test_normal_0000.wav,abc\n")
    with pytest.raises(DataError, match=r"bad.csv, line 1: score 'abc' is not a number"):
        evaluate([tmp_path / "bad.csv"])
    with pytest.raises(DataError, match="score file or folder not found"):
        evaluate([tmp_path / "missing.csv"])
    (tmp_path / "eval.csv").write_text("section_00_0000.wav,0.3\n")
    with pytest.raises(DataError, match="no clip with a label"):
        evaluate([tmp_path / "eval.csv"])
