"""`asd evaluate` against the official DCASE 2023 evaluator's arithmetic on a hand-made case."""

import sys

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics

from asdcli.errors import DataError
from asdcli.services.evaluation.evaluate import evaluate, results_csv

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


def test_a_single_class_section_is_named_with_the_reason(score_dir):
    (score_dir / "anomaly_score_pump_section_00_test.csv").write_text(
        "section_00_source_test_normal_0000.wav,0.1\nsection_00_source_test_normal_0001.wav,0.2\n")
    result = evaluate([score_dir])
    assert [s.machine for s in result.sections] == ["fan", "valve"]
    assert result.notices == ["pump section 00: only normal clips (2); AUC and pAUC need both, so it is left out "
                              "of every figure"]


def test_decisions_give_precision_recall_and_f1_per_domain(score_dir):
    (score_dir / "decision_result_fan_section_00_test.csv").write_text(
        "".join(f"{name},{int(score > 0.42)}\n" for name, score in CASE["fan"]))
    fan = evaluate([score_dir]).sections[0]
    # source: normals 0.1, 0.4 -> 0, anomaly 0.9 -> 1; target: normal 0.5 -> 1 (false), anomaly 0.45 -> 1
    assert (fan.decisions["source"].precision, fan.decisions["source"].recall) == (1.0, 1.0)
    assert (fan.decisions["target"].precision, fan.decisions["target"].recall) == (0.5, 1.0)
    assert fan.decisions["target"].f1 == pytest.approx(2 / 3)


def _write_ground_truth(root, machine, rows):
    for folder, column in (("ground_truth_data", 1), ("ground_truth_domain", 2)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"ground_truth_{machine}_section_00_test.csv").write_text(
            "".join(f"{r[0]},{r[column]}\n" for r in rows))


def test_evaluation_set_names_take_labels_and_domains_from_the_ground_truth(tmp_path):
    names = [f"section_00_{i:04d}.wav" for i in range(len(CASE["fan"]))]
    (tmp_path / "anomaly_score_fan_section_00_test.csv").write_text(
        "".join(f"{n},{s}\n" for n, (_, s) in zip(names, CASE["fan"])) + "section_00_0099.wav,0.5\n")
    truth = [(n, int("anomaly" in orig), int("target" in orig)) for n, (orig, _) in zip(names, CASE["fan"])]
    _write_ground_truth(tmp_path / "gt", "fan", truth + [("section_00_0098.wav", 0, 0)])
    result = evaluate([tmp_path], ground_truth=tmp_path / "gt")
    expected = _official(CASE["fan"])
    s = result.sections[0]
    assert (s.auc_source, s.auc_target, s.pauc) == pytest.approx((expected["source"], expected["target"], expected["pauc"]))
    assert result.unlabeled == 1
    assert any("1 scored clip(s) are not in the ground truth" in n for n in result.notices)
    assert any("1 clip(s) of the ground truth have no score" in n for n in result.notices)
    with pytest.raises(DataError, match="no ground_truth_data/ground_truth_"):
        evaluate([tmp_path], ground_truth=tmp_path)
    (tmp_path / "gt" / "ground_truth_data" / "ground_truth_fan_section_00_test.csv").write_text("section_00_0000.wav,2\n")
    with pytest.raises(DataError, match=r"ground_truth_fan_section_00_test.csv, line 1: expected filename,label"):
        evaluate([tmp_path], ground_truth=tmp_path / "gt")


def test_dcase2020_files_give_the_2020_figures_without_domains(tmp_path):
    rows = {"00": [("normal_id_00_00000000.wav", 0.1), ("normal_id_00_00000001.wav", 0.3),
                   ("anomaly_id_00_00000000.wav", 0.2), ("anomaly_id_00_00000001.wav", 0.9)],
            "02": [("normal_id_02_00000000.wav", 0.1), ("anomaly_id_02_00000000.wav", 0.8)]}
    for section, own in rows.items():
        (tmp_path / f"anomaly_score_fan_id_{section}.csv").write_text("".join(f"{n},{s}\n" for n, s in own))
    result = evaluate([tmp_path])
    assert result.dcase2020 and [s.section for s in result.sections] == ["00", "02"]
    assert all(s.auc_source is None and s.auc_target is None for s in result.sections)
    aucs = [metrics.roc_auc_score([int("anomaly" in n) for n, _ in own], [s for _, s in own]) for own in rows.values()]
    paucs = [metrics.roc_auc_score([int("anomaly" in n) for n, _ in own], [s for _, s in own], max_fpr=0.1)
             for own in rows.values()]
    mean = result.machines["fan"]["arithmetic mean"]
    assert (mean.auc, mean.pauc) == pytest.approx((np.mean(aucs), np.mean(paucs)))
    assert result.official == pytest.approx((np.mean(aucs) + np.mean(paucs)) / 2)
    text = results_csv(result)
    assert text.startswith("fan\nid,AUC,pAUC\n00,0.75,") and "Average," in text and "source" not in text


def test_an_asd_score_csv_of_one_machine_folder_gives_its_decisions_and_takes_the_machine(tmp_path):
    from asdcli.services.evaluation.evaluate import evaluate

    rows = ["section_00_source_test_normal_0000.wav,0.1,0", "section_00_source_test_normal_0001.wav,0.2,0",
            "section_00_source_test_anomaly_0000.wav,0.9,1", "section_00_source_test_anomaly_0001.wav,0.15,0"]
    path = tmp_path / "scores.csv"
    path.write_text("".join(r + "\n" for r in rows))
    unnamed = evaluate([path])
    assert unnamed.sections[0].machine == "unknown" and any("--machine" in n for n in unnamed.notices)
    named = evaluate([path], machine="fan")
    assert named.sections[0].machine == "fan" and named.sections[0].decisions is not None
