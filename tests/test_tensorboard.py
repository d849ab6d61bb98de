"""TensorBoard layout of a workdir (``irmx.io.tensorboard``): one run per grid point, the
statistics over its seeds, the final metrics and the hparams sessions; the classifier and the
measures drivers write it too. Event files are read back with the protobufs tensorboardX ships
(no TensorBoard installed here)."""

import os

import numpy as np
import pytest

from configs.irm import regression
from configs.measures import jacobian as jacobian_configs
from configs.measures import noisy_classification
from irmx.experiments import classify, irm, measures
from irmx.io import tensorboard as tb
from irmx.io import workdir as wd
from irmx.learners import make_axis


def _irm_config(**overrides):
    c = regression.get_config("irmv1,smoke")
    c.vmapped.penalty_weight = (1.0, 10.0)
    c.num_seeds = 3
    c.num_steps = 100
    c.update_from_flattened_dict(overrides)
    return c


@pytest.fixture(scope="module")
def irm_run(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tb") / "irm")
    os.environ.pop(tb.PER_LEARNER_ENV, None)
    summary = irm.run(_irm_config(), d, progress=False, report=False)
    return d, summary


def test_one_run_per_grid_point_with_the_mean_over_its_seeds(irm_run):
    d, summary = irm_run
    root = os.path.join(d, "tb")
    assert tb.list_runs(root) == ["penalty_weight=1", "penalty_weight=10"]
    rows = wd.read_metrics(os.path.join(d, "metrics.jsonl"))
    for pw in (1.0, 10.0):
        scalars = tb.read_scalars(os.path.join(root, tb.run_name({"penalty_weight": pw})))
        steps = [s for s, _ in scalars["risk/mean"]]
        assert steps == [50, 100]
        for step, mean in scalars["risk/mean"]:
            vals = np.array([r["risk"] for r in rows
                             if r["penalty_weight"] == pw and r["step"] == step], np.float64)
            assert len(vals) == 3
            np.testing.assert_allclose(mean, vals.mean(), rtol=1e-6)
            got = {k: dict(scalars[f"risk/{k}"])[step] for k in ("std", "min", "max")}
            np.testing.assert_allclose([got["std"], got["min"], got["max"]],
                                       [vals.std(), vals.min(), vals.max()], rtol=1e-5)
        assert dict(scalars["num_diverged"])[100] == 0
        # no per-learner tags and no per-learner runs unless opted in
        assert not any("learner" in t for t in scalars)
        # the final metrics are summary.json's grid point, at the last step
        point = next(p for p in summary["grid"] if p["penalty_weight"] == pw)
        metric = next(k for k, v in point.items() if isinstance(v, dict) and v.get("mean"))
        final = scalars[f"final/{metric}/mean"]
        assert final[-1][0] == 100
        np.testing.assert_allclose(final[-1][1], point[metric]["mean"], rtol=1e-6)
        hp = tb.read_hparams(os.path.join(root, tb.run_name({"penalty_weight": pw})))
        assert hp["hparams"] == {"penalty_weight": pw}
        assert f"final/{metric}/mean" in hp["metrics"]
        assert all(m in scalars for m in hp["metrics"])


def _synthetic_board(folder, per_learner):
    """An AxisBoard over 3 seeds x 2 penalty weights, fed two cohorts by hand (no training)."""
    axis = make_axis((100, 101, 102), {"penalty_weight": (1.0, 10.0)})
    board = tb.AxisBoard(folder, axis, per_learner=per_learner)
    return axis, board


def test_per_learner_runs_are_opt_in_and_cohorts_share_grid_points(tmp_path, monkeypatch):
    monkeypatch.setenv(tb.PER_LEARNER_ENV, "1")
    folder = str(tmp_path / "tb")
    axis, board = _synthetic_board(folder, per_learner=None)  # from the environment
    assert board.per_learner
    # cohort 1: seeds 100, 101 of both points; cohort 2: seed 102 (a grown axis)
    first, second = [0, 1, 2, 3], [4, 5]
    risk = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    for step in (10, 20):
        board.chunk(step, {"risk": risk[first] * step, "diverged": np.array([0, 0, 1, 0], bool)},
                    first)
    board.chunk(10, {"risk": risk[second], "diverged": np.zeros(2, bool)}, second)
    board.close()
    assert tb.list_runs(folder) == [
        "penalty_weight=1", *[f"penalty_weight=1/seed={s}" for s in (100, 101, 102)],
        "penalty_weight=10", *[f"penalty_weight=10/seed={s}" for s in (100, 101, 102)]]
    # learner 2 (seed 101, penalty_weight=1) diverged: left out of its point's statistics
    pw1 = tb.read_scalars(os.path.join(folder, "penalty_weight=1"))
    assert pw1["risk/mean"] == [(10, 5.0), (20, 20.0)]  # the 2nd cohort's 10 overwrites step 10
    assert dict(pw1["num_diverged"]) == {10: 0, 20: 1}
    pw10 = tb.read_scalars(os.path.join(folder, "penalty_weight=10"))
    np.testing.assert_allclose(dict(pw10["risk/mean"])[20], 60.0)
    np.testing.assert_allclose(dict(pw10["risk/std"])[20], 20.0)
    one = tb.read_scalars(os.path.join(folder, "penalty_weight=10", "seed=101"))
    assert one["risk"] == [(10, 40.0), (20, 80.0)]
    monkeypatch.delenv(tb.PER_LEARNER_ENV)
    assert not tb.AxisBoard(str(tmp_path / "off"), axis).per_learner


def test_run_names_and_grouping():
    axis = make_axis((1, 2), {"lr": (0.01, 0.1), "penalty_weight": (100.0, 1e-5)})
    assert [r["name"] for r in tb.axis_runs(axis)] == [
        "lr=0.01,penalty_weight=100", "lr=0.01,penalty_weight=1e-05",
        "lr=0.1,penalty_weight=100", "lr=0.1,penalty_weight=1e-05"]
    assert [r["name"] for r in tb.axis_runs(make_axis((1, 2, 3)))] == ["all"]
    # a step factor (checkpoint, epoch) folds into the run: epoch is the step
    axis = make_axis((1, 2), zipped={"checkpoint": (0, 1), "epoch": (0, 60)})
    (run,) = tb.axis_runs(axis)
    assert run["name"] == "all" and [p[1] for p in run["points"]] == [0, 60]


def test_classifier_and_measures_write_tensorboard(tmp_path):
    c = noisy_classification.get_config("smoke")
    c.num_seeds, c.epochs, c.checkpoint_epochs, c.eval_every = 1, 2, (0, 2), 2
    c.data.train_split, c.data.val_split = 100, 50
    train_dir = str(tmp_path / "train")
    classify.run(c, train_dir, progress=False)
    (run,) = tb.list_runs(os.path.join(train_dir, "tb"))
    scalars = tb.read_scalars(os.path.join(train_dir, "tb", run))
    assert "loss/mean" in scalars and any(t.startswith("final/") for t in scalars)
    assert tb.read_hparams(os.path.join(train_dir, "tb", run))["metrics"]

    m = jacobian_configs.get_config("smoke")
    m.source = train_dir
    m.checkpoint = -1
    m.num_samples = m.batch_size = 10
    m.metric = "accuracy"  # cheap to compile; any metric takes the same path
    stats_dir = str(tmp_path / "stats")
    summary = measures.run(m, stats_dir, progress=False)
    assert tb.list_runs(os.path.join(stats_dir, "tb")) == ["all"]
    scalars = tb.read_scalars(os.path.join(stats_dir, "tb", "all"))
    curve = scalars[f"final/{m.metric}/mean"]
    assert [s for s, _ in curve] == [int(e) for e in c.checkpoint_epochs]
    np.testing.assert_allclose([v for _, v in curve],
                               [g[m.metric]["mean"] for g in summary["grid"]], rtol=1e-6)
