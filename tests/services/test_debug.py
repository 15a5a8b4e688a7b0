"""freeze-debug: frozen parts stay bit-identical, the per-step log, trouble reports; plot."""

import csv
import math
import struct

import matplotlib.pyplot as plt
import pytest
from matplotlib.legend import Legend
import torch

from asdcli.config import load_config
from asdcli.errors import ConfigError, DataError
from asdcli.models.branch_transformer_ae import TransformerAEBranch
from asdcli.services.training.debug import freeze_debug, log_columns
from asdcli.services.training.trouble import TroubleDetector
from asdcli.services.training.fuse import train_fusion
from asdcli.services.evaluation.plot import plot_debug, plot_epochs, plot_scores, score_figure
from asdcli.services.training.train import train_branch


@pytest.fixture(scope="module")
def cfg(tiny):
    # a prior that trusts the pseudo-anomalies, so that the fusion head trains (the shipped one, trust 0: below)
    return tiny.with_overrides(**{"train.epochs": 1, "train.batch_size": 8, "meta.support_normals": 2,
                                  "meta.query": 3, "fusion.prior": "none"})


@pytest.fixture(scope="module")
def run_with_examples(synth_root, cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("debug")
    run = root / "run"
    for name in ("b2", "b3"):
        train_branch(name, synth_root, run, cfg, cache_dir=root / "cache")
    train_fusion(synth_root, run, cfg)
    return run


def _rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_frozen_branch_is_untouched_and_the_log_is_complete(synth_root, cfg, run_with_examples, tmp_path):
    log = tmp_path / "logs" / "debug_freeze_b3.csv"
    result = freeze_debug(synth_root, cfg, ["b3"], 2, log, run_with_examples)
    assert result.frozen == ["contrastive"] and result.unchanged == {"contrastive": True}
    assert result.parts == ["pretrained", "transformer-ae", "contrastive", "diffusion", "flow", "fusion", "meta"]
    rows = _rows(log)
    assert list(rows[0]) == log_columns(result.parts)
    steps = [r for r in rows if r["kind"] == "step"]
    # 18 trained clips (20, 2 held out as asd train-branch holds them out), batches of 8: 3 steps an epoch
    assert len(steps) == result.steps == 6 and [r["kind"] for r in rows].count("epoch") == 2
    assert [int(r["global_step"]) for r in steps] == [1, 2, 3, 4, 5, 6]
    for row in steps:
        assert float(row["grad_norm_b3"]) == 0.0
        for part in ("b1", "b2", "b4", "b5", "fusion", "meta"):
            assert float(row[f"grad_norm_{part}"]) > 0.0, part
        losses = [float(row[c]) for c in row if c.startswith("loss_")]
        assert all(math.isfinite(v) for v in losses)
    assert float(steps[-1]["time_s"]) >= float(steps[0]["time_s"]) > 0
    assert not result.troubles


def test_several_parts_frozen_and_heads_need_examples(synth_root, cfg, run_with_examples, tmp_path):
    result = freeze_debug(synth_root, cfg, ["b2", "fusion"], 1, tmp_path / "d.csv", run_with_examples)
    assert result.unchanged == {"transformer-ae": True, "fusion": True}
    assert all(float(r["grad_norm_fusion"]) == 0.0 for r in _rows(tmp_path / "d.csv"))
    with pytest.raises(ConfigError, match="cannot freeze a part"):
        freeze_debug(synth_root, cfg, ["meta"], 1, tmp_path / "e.csv", run_dir=None)


def test_nan_loss_is_reported_where_it_begins_and_rows_survive_a_crash(synth_root, cfg, tmp_path, monkeypatch):
    original, calls = TransformerAEBranch.loss, {"n": 0}

    def flaky(self, batch):
        calls["n"] += 1
        loss = original(self, batch)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(TransformerAEBranch, "loss", flaky)
    seen = []

    def crash(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt

    log = tmp_path / "crash.csv"
    with pytest.raises(KeyboardInterrupt):
        freeze_debug(synth_root, cfg, ["b1"], 3, log, on_step=crash, on_trouble=seen.append)
    b2 = [str(t) for t in seen if t.part == "transformer-ae"]  # (b3's last batch of 2 clips has no positive pair)
    assert b2 == ["non-finite loss in transformer-ae beginning at epoch 1, step 3 (value nan)"]
    assert [r["global_step"] for r in _rows(log)] == ["1", "2", "3"]  # every step logged before the crash


def test_trouble_detector_finds_exploding_and_vanishing_gradients():
    detector = TroubleDetector(load_config("tiny"))
    for step in range(1, 7):
        assert detector.check("flow", 1.0, 1.0, 1, step) == []
    exploding = detector.check("flow", 1.0, 500.0, 1, 7)
    assert [t.kind for t in exploding] == ["exploding gradient norm"] and exploding[0].step == 7
    assert detector.check("flow", 1.0, 600.0, 1, 8) == []  # reported once, where it began
    assert [t.kind for t in detector.check("diffusion", 1.0, 0.0, 1, 1)] == ["vanishing gradient norm"]
    assert detector.check("meta", 1.0, None, 1, 1) == []  # frozen: no gradient expected


@pytest.mark.parametrize("sections", [1, 8, 21])
def test_the_score_plot_keeps_every_legend_and_label_clear_of_the_curves_and_inside_the_image(tmp_path, sections):
    folder = tmp_path / "scores"
    folder.mkdir()
    for k in range(sections):
        name = f"machine{k // 2}_section_{k % 2:02d}"
        rows = [f"section_{k % 2:02d}_{domain}_test_{label}_{i:04d}_x_1.wav,{i * (2 if label == 'anomaly' else 1)}"
                for domain in ("source", "target") for label in ("normal", "anomaly") for i in range(5)]
        (folder / f"anomaly_score_{name}_test.csv").write_text("\n".join(rows) + "\n")
    fig = score_figure([folder])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    roc, keys, *hists = fig.axes
    assert len(hists) == sections
    page = fig.bbox
    for ax in fig.axes:
        for text in [ax.title, ax.xaxis.label, ax.yaxis.label]:
            box = text.get_window_extent(renderer)
            assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y0 >= page.y0 - 1, text.get_text()
    legends = [c for c in keys.get_children() if isinstance(c, Legend)]
    assert len(legends) == 2 and roc.get_legend() is None and all(ax.get_legend() is None for ax in hists)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert box.x1 <= page.x1 + 1 and box.y0 >= page.y0 - 1  # inside the image
        assert not box.overlaps(roc.get_window_extent(renderer))  # beside the curves, not over them
        assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in hists)
    assert "rate" in roc.yaxis.label.get_text() and roc.yaxis.label.get_window_extent(renderer).x0 >= page.x0
    plt.close(fig)


@pytest.mark.slow
def test_plots_are_pngs_and_bad_logs_get_clear_errors(synth_root, cfg, run_with_examples, tmp_path):
    a, b = tmp_path / "debug_freeze_b3.csv", tmp_path / "debug_freeze_b2.csv"
    freeze_debug(synth_root, cfg, ["b3"], 1, a, run_with_examples)
    freeze_debug(synth_root, cfg, ["b2"], 1, b, run_with_examples)
    assert _png_size(plot_debug([a, b], tmp_path / "cmp.png")) == (1600, 800)
    assert _png_size(plot_epochs(sorted((run_with_examples / "logs").glob("*_train.csv")), tmp_path / "ep.png")) == (1300, 700)
    scores = tmp_path / "scores.csv"
    scores.write_text("fan/test/section_00_source_test_normal_0000_x_1.wav,0.1\n"
                      "fan/test/section_00_source_test_anomaly_0000_x_1.wav,0.9\n"
                      "fan/test/section_00_target_test_normal_0001_x_1.wav,0.3\n"
                      "fan/test/section_00_target_test_anomaly_0001_x_1.wav,0.2\n")
    assert _png_size(plot_scores([scores], tmp_path / "roc.png")) == (860, 770)  # ROC, its keys, one histogram
    broken = tmp_path / "debug_freeze_b4.csv"
    header, first = a.read_text().splitlines()[:2]
    cells = first.split(",")
    cells[3] = "abc"  # global_step
    broken.write_text(header + "\n" + ",".join(cells) + "\n")
    with pytest.raises(DataError, match=r"debug_freeze_b4.csv, line 2: column global_step holds 'abc'"):
        plot_debug([broken], tmp_path / "x.png")
    (tmp_path / "bad.csv").write_text("kind,loss_total\nstep,1\n")
    with pytest.raises(DataError, match="missing column"):
        plot_debug([tmp_path / "bad.csv"], tmp_path / "y.png")


def test_each_branch_trains_in_its_own_precision(synth_root, cfg, tmp_path, monkeypatch):
    seen, original = [], TransformerAEBranch.loss

    def loss(self, batch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original(self, batch)

    monkeypatch.setattr(TransformerAEBranch, "loss", loss)
    freeze_debug(synth_root, cfg.with_overrides(**{"branches.transformer_ae.precision": "bf16"}), [], 1,
                 tmp_path / "a.csv")
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)
    seen.clear()
    freeze_debug(synth_root, cfg.with_overrides(**{"branches.transformer_ae.precision": "fp32"}), [], 1,
                 tmp_path / "b.csv")
    assert seen and not any(on for on, _ in seen)
    with pytest.raises(ConfigError, match="branches.transformer_ae.precision"):
        freeze_debug(synth_root, cfg.with_overrides(**{"branches.transformer_ae.precision": "fp16"}), [], 1,
                     tmp_path / "c.csv")


def test_freeze_debug_trains_what_the_commands_train(synth_root, cfg, run_with_examples, tmp_path):
    """The same seed and data give the same first-step loss in freeze-debug as in train-branch
    (b2, b3: its perturbed copies drawn from its own generator), train-fusion and meta-train."""
    import numpy as np

    from asdcli.services.scoring.examples import Examples
    from asdcli.services.training.fuse import attention_start, fusion_objective, new_head
    from asdcli.services.training.meta import new_meta_learner, step_losses, task_groups
    from asdcli.services.scoring.stages import fused_features

    first = {}
    for name in ("b2", "b3"):
        losses = []
        train_branch(name, synth_root, tmp_path / f"alone-{name}", cfg, cache_dir=tmp_path / "cache",
                     on_step=lambda info: losses.append(info.loss))
        first[name] = losses[0]
    trusting = cfg.with_overrides(**{"fusion.prior": "none"})  # trust 1: the head trains
    train_fusion(synth_root, run_with_examples, trusting)
    log = tmp_path / "d.csv"
    freeze_debug(synth_root, trusting, ["b1"], 1, log, run_with_examples, cache_dir=tmp_path / "cache")
    step = _rows(log)[0]
    # the run's branches were trained on the same clips in the same order: their own first steps
    assert float(step["loss_b2"]) == pytest.approx(first["b2"], rel=1e-5)
    assert float(step["loss_b3"]) == pytest.approx(first["b3"], rel=1e-5)
    from asdcli.services.store.runs import open_run

    examples = Examples.load(open_run(run_with_examples).examples)
    start = attention_start(examples, trusting)
    assert float(step["loss_fusion"]) == pytest.approx(float(fusion_objective(examples, trusting, start)(
        new_head(examples, trusting, start)).detach()), rel=1e-5)
    head = new_head(examples, trusting, start)
    x, y = fused_features(head, examples.z), torch.from_numpy(examples.label).float()
    maml = new_meta_learner(x.shape[1], len(examples.branches), trusting)
    begin = [p.detach().clone() for p in maml.parameters()]
    meta = sum(float(loss.detach()) for _, loss in step_losses(maml, x, y, examples, task_groups(examples, trusting.meta, []),
                                                       trusting.meta, np.random.default_rng(trusting.seed), begin))
    assert float(step["loss_meta"]) == pytest.approx(meta, rel=1e-5)


def test_a_fusion_head_the_prior_does_not_let_train_is_frozen_with_a_notice(synth_root, cfg, run_with_examples, tmp_path):
    from asdcli.services.training.branch_prior import load_prior

    shipped = cfg.with_settings({"fusion.prior": "builtin"})
    if load_prior("builtin").trust > 0:
        pytest.skip("the shipped prior trusts pseudo-anomalies: asd train-fusion trains the head")
    result = freeze_debug(synth_root, shipped, ["b3"], 1, tmp_path / "logs" / "debug.csv", run_with_examples)
    assert result.frozen == ["contrastive", "fusion"] and result.unchanged["fusion"]
    assert any("trust 0" in n for n in result.notices)
