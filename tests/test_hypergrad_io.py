"""irmx.io.scalars.read_scalars (metrics.jsonl -> arrays) and scripts/hypergrad_figures.py."""

import importlib.util
import json
import os

import numpy as np
import pytest

from irmx.experiments import hypergrad
from irmx.experiments.cli import load_config
from irmx.io import workdir as wd
from irmx.io.scalars import read_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "hypergrad", "uci.py")
DROPPED = ("lorraine", "baydin", "ours_lr_momentum", "diff_through_opt")


def _figures_module():
    spec = importlib.util.spec_from_file_location(
        "hypergrad_figures", os.path.join(ROOT, "scripts", "hypergrad_figures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["json", "arrow"])
def use_arrow(request):
    """Both metrics.jsonl parsers of read_scalars: ``json`` row by row and pyarrow's reader."""
    if request.param == "arrow":
        pytest.importorskip("pyarrow")
    return request.param == "arrow"


def _write_rows(path, rows, torn_tail=""):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write(torn_tail)


def test_read_scalars_hand_written_metrics(tmp_path, use_arrow):
    rows = [
        {"step": 10, "learner": 1, "learner_id": "b", "cohort": "c0", "seed": 1, "lr": 0.2,
         "loss": 3.0, "diverged": False, "lr_quantiles": [1.0, 2.0, 3.0]},
        {"step": 10, "learner": 0, "learner_id": "a", "cohort": "c0", "seed": 0, "lr": 0.1,
         "loss": 1.0, "diverged": False, "lr_quantiles": [0.1, 0.2, 0.3]},
        {"step": 20, "learner": 0, "learner_id": "a", "cohort": "c0", "seed": 0, "lr": 0.15,
         "loss": 0.5, "diverged": False, "lr_quantiles": [0.4, None, 0.6]},
        # learner b misses step 20 and logs its val_loss only at step 30; loss null = NaN
        {"step": 30, "learner": 1, "learner_id": "b", "cohort": "c0", "seed": 1, "lr": 0.25,
         "loss": None, "diverged": True, "val_loss": 7.0, "lr_quantiles": None},
        # a resumed run wrote (a, 20) again: the last row wins
        {"step": 20, "learner": 0, "learner_id": "a", "cohort": "c1", "seed": 0, "lr": 0.125,
         "loss": 0.25, "diverged": False, "lr_quantiles": [0.5, 0.55, 0.65]},
        {"step": 30, "learner": 0, "learner_id": "a", "cohort": "c1", "seed": 0, "lr": 0.0625,
         "loss": 0.125, "diverged": False, "lr_quantiles": [0.7, 0.8, 0.9]},
    ]
    _write_rows(tmp_path / "metrics.jsonl", rows, torn_tail='{"step": 40, "learner": 0, "lo')
    # learner a has a stored result: its coordinates are its initial values
    os.makedirs(tmp_path / "learners")
    wd.write_json_atomic(str(tmp_path / "learners" / "a.json"),
                         {"learner_id": "a", "coords": {"seed": 0, "lr": 0.05},
                          "metrics": {"lr": 0.0625, "loss": 0.125}})
    wd.write_json_atomic(str(tmp_path / "learners" / "b.json"),
                         {"learner_id": "b", "coords": {"seed": 1, "lr": 0.3},
                          "metrics": {"lr": 0.25, "loss": np.nan}})
    s = read_scalars(str(tmp_path), use_arrow=use_arrow)
    nan = np.nan
    np.testing.assert_array_equal(s["step"], [10, 20, 30])
    assert s["step"].dtype.kind == "i"
    np.testing.assert_array_equal(s["learner"], [0, 1])
    np.testing.assert_array_equal(s["learner_id"], ["a", "b"])
    np.testing.assert_array_equal(s["cohort"], ["c1", "c0"])
    np.testing.assert_array_equal(s["loss"], [[1.0, 0.25, 0.125], [3.0, nan, nan]])
    np.testing.assert_array_equal(s["lr"], [[0.1, 0.125, 0.0625], [0.2, nan, 0.25]])
    np.testing.assert_array_equal(s["diverged"], [[0, 0, 0], [0, nan, 1]])
    np.testing.assert_array_equal(s["val_loss"], [[nan, nan, nan], [nan, nan, 7.0]])
    assert s["lr_quantiles"].shape == (2, 3, 3)
    np.testing.assert_array_equal(s["lr_quantiles"][0], [[0.1, 0.2, 0.3], [0.5, 0.55, 0.65],
                                                          [0.7, 0.8, 0.9]])
    np.testing.assert_array_equal(s["lr_quantiles"][1], [[1.0, 2.0, 3.0], [nan] * 3, [nan] * 3])
    assert s["loss"].dtype == np.float64
    # coordinates: initial values from the results store; seed, never overwritten, at the top
    np.testing.assert_array_equal(s["coords"]["lr"], [0.05, 0.3])
    np.testing.assert_array_equal(s["coords"]["seed"], [0, 1])
    np.testing.assert_array_equal(s["seed"], [0, 1])
    assert "step" not in s["coords"]


def test_read_scalars_without_ids_or_store(tmp_path, use_arrow):
    rows = [{"step": 5, "learner": i, "loss": float(i + step)} for step in (5, 10)
            for i in range(3)]
    for r, step in zip(rows, (5, 5, 5, 10, 10, 10)):
        r["step"] = step
    _write_rows(tmp_path / "metrics.jsonl", rows)
    s = read_scalars(str(tmp_path), use_arrow=use_arrow)
    np.testing.assert_array_equal(s["learner"], [0, 1, 2])
    np.testing.assert_array_equal(s["loss"], [[5.0, 10.0], [6.0, 11.0], [7.0, 12.0]])
    assert s["coords"] == {}
    assert read_scalars(str(tmp_path / "nothing"), use_arrow=use_arrow)["step"].shape == (0,)


@pytest.fixture(scope="module")
def ours_lr_dir(tmp_path_factory):
    config = load_config(f"{CONFIG}:ours_lr,smoke")
    config.num_inits = 3
    path = str(tmp_path_factory.mktemp("hg-ours-lr"))
    hypergrad.run(config, path, progress=False)
    return path


def test_read_scalars_of_a_run_matches_its_metrics_and_summary(ours_lr_dir, use_arrow):
    s = read_scalars(ours_lr_dir, use_arrow=use_arrow)
    rows = wd.read_metrics(os.path.join(ours_lr_dir, "metrics.jsonl"))
    summary = wd.read_json(os.path.join(ours_lr_dir, "summary.json"))
    n = summary["num_learners"]
    assert n == 3
    steps = sorted({r["step"] for r in rows})
    np.testing.assert_array_equal(s["step"], steps)
    assert s["step"][-1] == summary["num_steps"]
    np.testing.assert_array_equal(s["learner"], range(n))
    np.testing.assert_array_equal(s["learner_id"], [r["learner_id"] for r in summary["learners"]])
    for name in ("loss", "val_loss", "test_loss", "lr", "weight_decay", "momentum",
                 "hypergrad_norm", "unnormalised_test_loss"):
        assert s[name].shape == (n, len(steps)), name
        for r in rows:
            want = np.nan if r.get(name) is None else r[name]
            got = s[name][r["learner"], steps.index(r["step"])]
            np.testing.assert_array_equal(got, want, err_msg=name)
    # the coordinates are the initial hyperparameters (summary's axis), not the logged ones,
    # also where a logged metric has the coordinate's name
    assert list(s["coords"]) == list(summary["axis"])
    sampled = [n for n in summary["axis"] if n != "seed"]
    assert sampled
    for hp in sampled:
        np.testing.assert_allclose(s["coords"][hp], [r[hp] for r in summary["learners"]])
        if s[hp].ndim == 1:  # a coordinate no metric overwrote (initial_lr) is at the top
            np.testing.assert_array_equal(s[hp], s["coords"][hp])
    np.testing.assert_array_equal(s["seed"], [r["seed"] for r in summary["learners"]])
    # the last logged lr is the final one of the summary
    np.testing.assert_allclose(s["lr"][:, -1], [r["lr"] for r in summary["learners"]],
                               rtol=1e-6)


def test_metrics_rows_hold_float32_values_as_shortest_decimals(ours_lr_dir):
    """The runner writes a float32 metric as its shortest round-tripping decimal (half the
    text of the float64 repr), and reading it back gives the float32 value exactly."""
    with open(os.path.join(ours_lr_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    axis = wd.read_json(os.path.join(ours_lr_dir, "summary.json"))["axis"]  # float64 draws
    values = [v for r in rows for k, v in r.items() if isinstance(v, float) and k not in axis]
    values += [x for r in rows for x in (r.get("lr_quantiles") or []) if x is not None]
    assert len(values) > 100
    for v in values:
        assert repr(v) == str(np.float32(v)), v
    raw = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * np.float32(1e-7)
    back = np.array(json.loads(json.dumps(wd.shortest_decimals(raw).tolist())), np.float32)
    np.testing.assert_array_equal(back, raw)
    assert wd.shortest_decimals(np.array([0.1])).tolist() == [0.1]  # float64 kept


def test_read_scalars_parsers_agree_on_a_compare_workdir(compare_dir):
    pytest.importorskip("pyarrow")
    subs = [d for d in sorted(os.listdir(compare_dir))
            if os.path.exists(os.path.join(compare_dir, d, "metrics.jsonl"))]
    assert "ours_hdlr_momentum" in subs and len(subs) >= 4
    for sub in subs:
        a = read_scalars(os.path.join(compare_dir, sub), use_arrow=True)
        b = read_scalars(os.path.join(compare_dir, sub), use_arrow=False)
        assert a.keys() == b.keys() and "val_loss" in a, sub
        assert ("lr_quantiles" in a) == (sub == "ours_hdlr_momentum"), sub
        for k in a:
            if k == "coords":
                assert a[k].keys() == b[k].keys()
                continue
            assert a[k].dtype == b[k].dtype, (sub, k)
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{sub} {k}")


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    config = load_config(f"{CONFIG}:compare,smoke")
    # a subset keeps the file fast; it still has every kind of row: trained, derived
    # (random_3batched), searched (bayesopt), a scalar and a per-parameter learning rate
    for name in DROPPED:
        del config.compare[name]
    config.compare_order = tuple(n for n in config.compare_order if n not in DROPPED)
    path = str(tmp_path_factory.mktemp("hg-compare"))
    hypergrad.run(config, path, progress=False)
    return path


def test_figures_of_a_compare_workdir(compare_dir, tmp_path, capsys):
    figures = _figures_module()
    figures.main([compare_dir])
    printed = capsys.readouterr().out.split()
    want = [os.path.join(compare_dir, "plots", f) for f in figures.FILES]
    assert printed == want
    for path in want:
        assert os.path.getsize(path) > 10_000, path
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    runs = figures.load_runs(compare_dir)
    top = wd.read_json(os.path.join(compare_dir, "summary.json"))
    metric = top["result_metric"]
    assert runs.order == list(top["rows"])
    data = figures.sorted_losses(runs)
    for name, row in top["rows"].items():
        sub = os.path.join(compare_dir, name, "summary.json")
        if name == "random_3batched":  # the Random_Validation runs in 3-batches
            continue
        summary = wd.read_json(sub)
        if name == "bayesopt":
            final = summary["final_losses"]
        else:
            final = [r[metric] for r in summary["learners"] if not r["diverged"]]
        np.testing.assert_array_equal(data[name][np.isfinite(data[name])], sorted(final),
                                      err_msg=name)
        assert len(data[name]) == row["runs"], name
    assert len(data["random_3batched"]) == top["rows"]["random_3batched"]["runs"]
    assert np.nanmin(data["random_3batched"]) == top["rows"]["random_3batched"]["best"]

    # the plotted lines are that data, the axes labelled, y on a log scale
    fig = figures.sorted_losses_figure(runs)
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_yscale() == "log"
    assert "3 initialisations" in ax.get_title()
    lines = {ln.get_label().split(" (n=")[0]: ln for ln in ax.get_lines()}
    for name, v in data.items():
        np.testing.assert_array_equal(lines[figures.label(name)].get_ydata(),
                                      v[np.isfinite(v)])

    fig = figures.trajectories_figure(runs)
    names = figures.hypergradient_algorithms(runs)
    assert "random" not in names and "ours_hdlr_momentum" in names
    assert len(fig.axes) == 3 * len(names)
    for ax in fig.axes:
        assert ax.get_ylabel() and ax.get_title()
    assert [ax.get_yscale() for ax in fig.axes[:3]] == ["log", "log", "linear"]
    assert all(ax.get_xlabel() == "network step" for ax in fig.axes[-3:])

    fig = figures.loss_over_time_figure(runs)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "network step" and ax.get_ylabel()
    curves = figures.loss_curves(runs)
    s = read_scalars(os.path.join(compare_dir, "ours_lr"))
    np.testing.assert_allclose(curves["ours_lr"][1], np.median(s[metric], axis=0))

    # several single-algorithm workdirs, --out elsewhere
    out = tmp_path / "figs"
    paths = figures.write_figures([os.path.join(compare_dir, n) for n in ("random", "ours_lr")],
                                  str(out))
    assert [os.path.basename(p) for p in paths] == list(figures.FILES)
    assert all(os.path.getsize(p) > 10_000 for p in paths)
