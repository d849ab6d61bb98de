"""The standard figures of every family: each run writes its PNGs, and each figure has axis
labels, a title saying what and over how many seeds, readable ticks and a scale that shows its
values (the oracle's exact-zero non-causal error does not flatten the others onto a line).

The figure functions are checked on their ``Figure`` objects (labels, titles, scales, tick
label boxes after drawing); one tiny run per family checks the files the runner writes."""

import os

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

from irmx import classify_plots
from irmx.configs.irm import regression
from irmx.configs.measures import jacobian as jacobian_configs
from irmx.configs.measures import noisy_classification
from irmx.experiments import classify, irm, measures
from irmx.io import plots as io_plots
from irmx.irm import plots as irm_plots
from irmx.measures import plots as measures_plots

PM = "\u00b1"


def labelled(ax):
    return ax.get_xlabel().strip() and ax.get_ylabel().strip()


def title_of(fig, ax=None) -> str:
    sup = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
    return " ".join(t for t in (sup, ax.get_title() if ax is not None else "") if t)


def tick_label_boxes(fig, ax, axis="x"):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_window_extent(renderer) for t in labels if t.get_text() and t.get_visible()]


def assert_no_overlap(boxes, rotation=0.0, line_px=0.0):
    """Neighbouring tick labels do not overlap: their boxes, or for labels rotated by
    ``rotation`` degrees (whose axis-aligned boxes always overlap), the spacing of their anchors
    along the axis against a text line's height (``line_px``) measured along the axis."""
    for a, b in zip(boxes, boxes[1:]):
        if rotation:
            assert abs(b.x1 - a.x1) > line_px / np.sin(np.radians(rotation)), (a, b)
        else:
            assert not a.overlaps(b), (a, b)


def visible_tick_labels(fig, ax, axis="y"):
    FigureCanvasAgg(fig).draw()
    getter = ax.get_yticklabels if axis == "y" else ax.get_xticklabels
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    lo, hi = min(lo, hi), max(lo, hi)
    return [t.get_text() for t in getter() if t.get_text() and lo <= t.get_position()[
        1 if axis == "y" else 0] <= hi]


# ---------------------------------------------------------------------------------------------
# Shared helpers


def test_set_scale_log_symlog_linear():
    ax = Figure().subplots()
    assert io_plots.set_scale(ax, [np.array([0.3, 0.5, 0.8])]) == "linear"  # under a decade
    ax = Figure().subplots()
    assert io_plots.set_scale(ax, [np.array([0.01, 0.05, 0.4])]) == "log"
    fig = ax.figure
    ax.plot([0, 1, 2], [0.01, 0.05, 0.4])
    assert len(visible_tick_labels(fig, ax)) >= 3  # 1-2-5 ticks on a 1.6-decade range
    ax = Figure().subplots()
    assert io_plots.set_scale(ax, [np.array([0.0, 0.0, 0.004, 0.45])]) == "symlog"
    assert ax.get_yscale() == "symlog"
    ax = Figure().subplots()
    assert io_plots.set_scale(ax, [np.zeros(4)]) == "linear"
    assert list(ax.get_yticks()) == [0.0]


def test_category_ticks_rotate_long_labels_so_they_do_not_overlap():
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    names = ["base_erm", "base_erm_oracle", "irmv1", "adareg_simple", "adareg"]
    ax.boxplot([np.arange(3.0)] * len(names))
    io_plots.category_ticks(ax, names)
    rotation = ax.get_xticklabels()[0].get_rotation()
    assert rotation > 0  # these do not fit side by side
    label = ax.get_xticklabels()[0]
    line_px = label.get_fontsize() * fig.dpi / 72
    assert_no_overlap(tick_label_boxes(fig, ax), rotation, line_px)


def test_curves_mean_std_and_count_per_step():
    rows = [{"step": s, "seed": k, "risk": float(s + k)} for s in (10, 20) for k in (0, 1, 2)]
    rows.append({"step": 20, "seed": 3, "risk": float("nan")})
    steps, mean, std, n = io_plots.curves(rows, ["risk"])["risk"][()]
    np.testing.assert_array_equal(steps, [10, 20])
    np.testing.assert_allclose(mean, [11, 21])
    np.testing.assert_allclose(std, np.std([0, 1, 2]))
    np.testing.assert_array_equal(n, [3, 3])


# ---------------------------------------------------------------------------------------------
# IRM


def irm_summary(names=(), values=(), zeros=False):
    axis = {"seed": [0, 1, 2], **{n: list(v) for n, v in zip(names, values)}}
    grid = [()] if not names else [(v,) for v in values[0]]
    learners = []
    for g in grid:
        for s in axis["seed"]:
            learners.append({"seed": s, "diverged": False, **dict(zip(names, g)),
                             "causal_error": 0.3 + 0.01 * s, "heldout_mse": 100.0 + s,
                             "noncausal_error": 0.0 if zeros else 0.05 * (s + 1)})
    return {"name": "irmv1", "axis": axis, "learners": learners}


def irm_history(names=(), grid=((),)):
    return [{"step": t, "seed": s, "diverged": False, "risk": 10.0 / t + s, "penalty": 1.0 / t,
             **dict(zip(names, g))}
            for t in (50, 100, 150) for s in (0, 1, 2) for g in grid]


INFO = {"setting": "FEU", "criterion": "irmv1", "reduction": "mean"}


def test_irm_curves_figure_labels_and_title():
    fig = irm_plots.irm_curves_figure(irm_summary(), irm_history(), INFO)
    for ax in fig.axes:
        assert ax.get_xlabel() == "training step"
        assert labelled(ax)
        assert "irmv1 on FEU" in ax.get_title()
        assert f"mean {PM} std over 3 seeds" in ax.get_title()
    assert "risk" in fig.axes[0].get_ylabel() and "MSE" in fig.axes[0].get_ylabel()


def test_irm_curves_one_curve_per_grid_point():
    s = irm_summary(("penalty_weight",), [(1.0, 10.0, 100.0)])
    h = irm_history(("penalty_weight",), [(1.0,), (10.0,), (100.0,)])
    fig = irm_plots.irm_curves_figure(s, h, INFO)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1", "10", "100"]
    assert ax.get_legend().get_title().get_text() == "penalty_weight"


def test_irm_errors_figure_noncausal_panel_is_not_linear_when_a_value_is_zero():
    s = irm_summary(("penalty_weight",), [(0.0, 10.0)])
    for r in s["learners"]:
        if r["penalty_weight"] == 10.0:
            r["noncausal_error"] = 0.0  # an exact zero beside values a decade apart
        else:
            r["noncausal_error"] *= 10 ** r["seed"]
    fig = irm_plots.irm_errors_figure(s, INFO)
    causal, noncausal, heldout = fig.axes[:3]
    assert noncausal.get_yscale() != "linear"
    for ax in (causal, noncausal, heldout):
        assert labelled(ax) and ax.get_title()
    assert "non-causal error" in noncausal.get_ylabel()
    assert "penalty_weight" in causal.get_xlabel()
    assert "3 seeds" in fig.get_suptitle() and "irmv1 on FEU" in fig.get_suptitle()


def test_irm_errors_figure_all_zero_panel_says_so():
    fig = irm_plots.irm_errors_figure(irm_summary(zeros=True), INFO)
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert "every value is exactly 0" in texts


def test_irm_study_figure_of_24_experiments_is_horizontal_and_legible():
    per_seed = {f"experiment_{k:02d}_{'FEU' if k % 2 else 'POS'}": {
        "causal_error": list(np.linspace(0.1, 0.5, 4) * (k + 1)),
        "noncausal_error": [0.0] * 4 if k % 5 == 0 else list(np.linspace(0.01, 0.1, 4)),
        "heldout_mse": list(np.linspace(10, 300, 4))} for k in range(24)}
    fig = irm_plots.irm_study_figure_object(per_seed, "FEU, POS")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(per_seed)
    assert_no_overlap(sorted(tick_label_boxes(fig, ax, axis="y"), key=lambda b: b.y0))
    assert fig.axes[1].get_xscale() == "symlog"  # zeros beside 0.01..0.1
    for a in fig.axes[:3]:
        assert a.get_xlabel() and a.get_title()
    assert "4 seeds" in fig.get_suptitle() and "FEU, POS" in fig.get_suptitle()


def test_irm_reference_figure_labels():
    per_seed = {"erm": {"causal_error": [0.8, 0.9], "noncausal_error": [0.3, 0.4]},
                "icp": {"causal_error": [0.5, 0.6], "noncausal_error": [0.0, 0.0]}}
    experiments = {"erm": ("FEU", "ERM"), "icp": ("FEU", "ICP")}
    references = {"erm": {"causal_error": (0.82, 0.01), "noncausal_error": (0.3, 0.02)}}
    fig = irm_plots.irm_reference_figure_object(per_seed, experiments, references, 2, 200)
    top, bottom = fig.axes[:2]
    assert top.get_ylabel() and bottom.get_ylabel() and bottom.get_xlabel()
    assert "2 seeds" in fig.get_suptitle() and "200 repetitions" in fig.get_suptitle()


# ---------------------------------------------------------------------------------------------
# Classifier and measures (synthetic summaries)


def classify_history(grid_name=None):
    rows = []
    for e in range(1, 5):
        for s in (42, 43):
            for v in ((0.0, 0.4) if grid_name else (None,)):
                ev = e % 2 == 0
                r = {"step": 4 * e, "epoch": e, "seed": s, "diverged": False,
                     "loss": 2.3 / e, "accuracy": 0.2 * e}
                for split in ("train", "train_clean", "val", "test"):
                    r[f"{split}_loss"] = 2.0 / e + 0.1 if ev else None
                    r[f"{split}_accuracy"] = 0.2 * e if ev else None
                if grid_name:
                    r[grid_name] = v
                rows.append(r)
    return rows


CLASSIFY_INFO = {"model": "mlp_32", "data": "digits", "label_noise": 0.2}


def test_classify_figure_without_grid_overlays_the_splits():
    summary = {"name": "noisy_classification", "axis": {"seed": [42, 43]}}
    fig = classify_plots.classify_curves_figure(summary, classify_history(), CLASSIFY_INFO)
    loss, acc = fig.axes[:2]
    for ax in (loss, acc):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
        assert f"mean {PM} std over 2 seeds" in ax.get_title()
        assert "mlp_32 on digits, 20% label noise" in ax.get_title()
    assert "cross-entropy" in loss.get_ylabel() and "accuracy" in acc.get_ylabel()
    legend = [t.get_text() for t in acc.get_legend().get_texts()]
    assert classify_plots.SPLIT_LABELS["train"] in legend
    assert classify_plots.SPLIT_LABELS["test"] in legend


def test_classify_figure_with_grid_has_a_curve_per_grid_point():
    summary = {"name": "noisy_classification",
               "axis": {"seed": [42, 43], "label_noise": [0.0, 0.4]}}
    fig = classify_plots.classify_curves_figure(summary, classify_history("label_noise"),
                                                CLASSIFY_INFO)
    axes = [a for a in fig.axes if a.get_visible()]
    assert len(axes) == 8  # loss and accuracy of 4 splits
    assert all(len(a.get_lines()) == 2 for a in axes)
    assert "over 2 seeds" in fig.get_suptitle()
    assert all(a.get_xlabel() == "epoch" for a in axes[4:])


def measures_summary(grid=False, corrupted=True):
    rows = []
    for v in ((0.0, 0.4) if grid else (None,)):
        for c, e in enumerate((0, 2, 4)):
            g = {"checkpoint": c, "epoch": e}
            for suffix, off in (("", 0.0), ("_clean", -0.1), ("_corrupted", 0.3)):
                none = suffix == "_corrupted" and not corrupted
                g["jacobian_operator_norm" + suffix] = {
                    "mean": None if none else 1.0 + e + off, "std": None if none else 0.1,
                    "n": 0 if none else 2}
            if grid:
                g["label_noise"] = v
            rows.append(g)
    axis = {"seed": [42, 43], "checkpoint": [0, 1, 2], "epoch": [0, 2, 4]}
    if grid:
        axis["label_noise"] = [0.0, 0.4]
    return {"name": "stats", "metric": "jacobian_operator_norm", "normalization": "none",
            "split": "train", "source": "/runs/train", "axis": axis, "grid": rows}


def test_measures_figure_clean_and_corrupted_per_checkpoint_epoch():
    fig = measures_plots.measures_figure(measures_summary())
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch of the checkpoint"
    assert "Jacobian operator norm" in ax.get_ylabel() and "train points" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["all measured points", "points with clean labels",
                      "points with corrupted labels"]
    assert f"mean {PM} std over 2 seeds" in fig.get_suptitle()
    assert list(ax.get_xticks()) == [0, 2, 4]


def test_measures_figure_with_grid_and_without_corrupted_points():
    fig = measures_plots.measures_figure(measures_summary(grid=True))
    assert [a.get_title() for a in fig.axes] == ["all measured points",
                                                 "points with clean labels",
                                                 "points with corrupted labels"]
    assert all(len(a.get_lines()) == 2 for a in fig.axes)
    fig = measures_plots.measures_figure(measures_summary(corrupted=False))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["all measured points"]  # no corrupted points: one curve


def test_double_descent_figure_labels():
    rows = [{"width": w, "test_error": 0.3, "test_error_std": 0.01,
             "jacobian_operator_norm": float(w), "jacobian_operator_norm_std": 0.1}
            for w in (2, 4, 8, 16, 32, 64, 128, 256, 512)]
    fig = measures_plots.double_descent_figure_object(rows, num_seeds=4)
    for ax in fig.axes:
        assert labelled(ax) and "over 4 seeds" in ax.get_title()
        assert_no_overlap(tick_label_boxes(fig, ax))
    assert fig.axes[1].get_yscale() == "log"


# ---------------------------------------------------------------------------------------------
# Every family's run writes its PNGs


def assert_png(path):
    assert os.path.exists(path), path
    assert imread(path).shape[0] > 100


def test_irm_run_writes_curves_and_errors(tmp_path):
    c = regression.get_config("irmv1,smoke")
    c.num_seeds, c.num_steps = 2, 100
    irm.run(c, str(tmp_path / "irm"), progress=False)
    for name in ("curves.png", "errors.png"):
        assert_png(tmp_path / "irm" / "plots" / name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    c = noisy_classification.get_config("smoke")
    c.epochs, c.checkpoint_epochs, c.eval_every, c.checkpoint_every = 2, (0, 2), 1, 2
    c.data.train_split, c.data.val_split = 100, 50
    for split in ("train_clean", "val"):  # fewer evaluators to compile
        del c.evals[split]
    workdir = str(tmp_path_factory.mktemp("train") / "run")
    classify.run(c, workdir, progress=False)
    return workdir


def test_classifier_run_writes_its_curves(trained):
    assert_png(os.path.join(trained, "plots", "curves.png"))


def test_measures_run_writes_the_metric_per_checkpoint(trained, tmp_path):
    m = jacobian_configs.get_config("smoke")
    m.source, m.checkpoint, m.num_samples, m.batch_size = trained, -1, 20, 20
    m.metric = "confidence"  # the figure's machinery at a fraction of a Jacobian's compile
    summary = measures.run(m, str(tmp_path / "stats"), progress=False)
    assert_png(tmp_path / "stats" / "plots" / f"{summary['metric']}.png")
