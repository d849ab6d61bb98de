"""The measures driver on the one runner (``irmx.experiments.loop.run_program``).

A measures run is an eval-only program whose learners are the source run's learners times the
measured checkpoints: it keeps the status contract of every family (running, then done or
failed with the error), leaves a finished workdir alone ("nothing to do": no file rewritten,
nothing recomputed) and summarises with the shared ``irmx.learners.summarize``, whose
per-checkpoint statistics over seeds are checked here against numpy over the per-batch files.
One smoke classifier run (2 seeds, checkpoints at epochs 0, 2, 4) is trained once.
"""

import glob
import os
import types

import numpy as np
import pytest

import irmx.measures
from irmx.configs.measures import jacobian, noisy_classification
from irmx.experiments import classify, measures
from irmx.io import runs
from irmx.io import workdir as wd

SEEDS = (42, 43)
METRIC = "jacobian_operator_norm"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("train") / "run")
    classify.run(noisy_classification.get_config("smoke"), workdir, progress=False)
    return workdir


def measures_config(source_dir, **overrides):
    m = jacobian.get_config("smoke")  # 40 training points in batches of 20, checkpoint 1
    m.source = source_dir
    m.mode = "per_output"  # exact: no tolerance between runs
    m.update_from_flattened_dict(overrides)
    return m


def spy_status(mp):
    """Record (workdir, state, extra) of every ``Workdir.set_status`` call."""
    calls = []
    original = wd.Workdir.set_status

    def set_status(self, state, step, **extra):
        calls.append((self.path, state, extra))
        return original(self, state, step, **extra)

    mp.setattr(wd.Workdir, "set_status", set_status)
    return calls


def count_calls(mp, owner, name):
    """Wrap ``owner.name`` to count its calls; returns the one-element counter."""
    count = [0]
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    mp.setattr(owner, name, wrapped)
    return count


@pytest.fixture(scope="module")
def measured(source, tmp_path_factory):
    """Every checkpoint of both seeds, 40 points in 2 batches, with set_status spied on."""
    config = measures_config(source, checkpoint=-1)
    workdir = str(tmp_path_factory.mktemp("measures") / "stats")
    with pytest.MonkeyPatch.context() as mp:
        calls = spy_status(mp)
        summary = measures.run(config, workdir, progress=False)
    return types.SimpleNamespace(config=config, workdir=workdir, summary=summary,
                                 states=[s for p, s, _ in calls if p == workdir])


def batch_values(workdir):
    """{(seed, checkpoint): values of its per-batch JSON files, in batch order}."""
    out = {}
    paths = glob.glob(os.path.join(workdir, "stats", "**", f"{METRIC}_*.json"), recursive=True)
    for path in sorted(paths, key=lambda p: int(p.rsplit("-", 1)[1][: -len(".json")])):
        rec = wd.read_json(path)
        out.setdefault((rec["seed"], rec["checkpoint"]), []).extend(rec["values"])
    return out


def test_a_measures_run_writes_running_then_done(measured):
    assert measured.states == ["running", "done"]
    status = wd.read_json(os.path.join(measured.workdir, "status.json"))
    assert status["state"] == "done" and status["num_learners"] == len(SEEDS) * 3
    config = wd.read_json(os.path.join(measured.workdir, "config.json"))
    assert config["family"] == "measures"
    # one stored result per (seed, checkpoint), as the runner stores every family's learners
    assert len(os.listdir(os.path.join(measured.workdir, "learners"))) == len(SEEDS) * 3
    rows = wd.read_metrics(os.path.join(measured.workdir, "metrics.jsonl"))
    assert sorted((r["step"], r["seed"], r["checkpoint"]) for r in rows) == sorted(
        (b, s, c) for b in (0, 1) for s in SEEDS for c in (0, 1, 2))


def test_summary_per_checkpoint_mean_over_seeds_equals_numpy_over_batch_files(measured):
    values = batch_values(measured.workdir)
    assert set(values) == {(s, c) for s in SEEDS for c in (0, 1, 2)}
    assert all(len(v) == 40 for v in values.values())
    summary = wd.read_json(os.path.join(measured.workdir, "summary.json"))
    assert summary["metric"] == METRIC and summary["family"] == "measures"
    assert [(r["seed"], r["checkpoint"]) for r in summary["learners"]] == [
        (s, c) for s in SEEDS for c in (0, 1, 2)]
    for row in summary["learners"]:
        np.testing.assert_allclose(row[METRIC], np.mean(values[(row["seed"], row["checkpoint"])]),
                                   rtol=1e-12)
    assert [g["checkpoint"] for g in summary["grid"]] == [0, 1, 2]
    for g in summary["grid"]:
        per_seed = np.array([np.mean(values[(s, g["checkpoint"])]) for s in SEEDS])
        stats = g[METRIC]
        np.testing.assert_allclose(stats["mean"], per_seed.mean(), rtol=1e-12)
        np.testing.assert_allclose(stats["std"], per_seed.std(), rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose([stats["min"], stats["max"]],
                                   [per_seed.min(), per_seed.max()], rtol=1e-12)
        assert stats["n"] == g["num_seeds"] == len(SEEDS)
        assert g["epoch"] == (0, 2, 4)[g["checkpoint"]]


def test_a_finished_workdir_is_left_alone(measured, capsys, monkeypatch):
    files = [os.path.join(measured.workdir, n) for n in ("summary.json", "status.json",
                                                         "metrics.jsonl")]
    files += glob.glob(os.path.join(measured.workdir, "stats", "**", "*.json"), recursive=True)
    before = {p: (os.stat(p).st_mtime_ns, open(p).read()) for p in files}
    metric_calls = count_calls(monkeypatch, irmx.measures, "compute_metric")
    restores = count_calls(monkeypatch, runs.Run, "restore")
    statuses = spy_status(monkeypatch)
    summary = measures.run(measured.config, measured.workdir, progress=False)
    assert "already holds this finished run; nothing to do" in capsys.readouterr().out
    assert {p: (os.stat(p).st_mtime_ns, open(p).read()) for p in files} == before
    assert metric_calls[0] == 0 and restores[0] == 0 and statuses == []
    assert summary == wd.read_json(os.path.join(measured.workdir, "summary.json"))


def test_a_failing_evaluation_ends_failed_with_the_error(source, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the metric broke")

    workdir = str(tmp_path / "stats")
    config = measures_config(source, num_samples=20)
    with monkeypatch.context() as mp:
        mp.setattr(irmx.measures, "compute_metric", broken)
        calls = spy_status(mp)
        with pytest.raises(RuntimeError, match="the metric broke"):
            measures.run(config, workdir, progress=False)
    assert [s for _, s, _ in calls] == ["running", "failed"]
    status = wd.read_json(os.path.join(workdir, "status.json"))
    assert status["state"] == "failed"
    assert status["error"] == "RuntimeError: the metric broke"
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    learners = os.path.join(workdir, "learners")
    assert not os.path.isdir(learners) or not os.listdir(learners)
    # the same command again, the metric repaired: it runs to the end
    summary = measures.run(config, workdir, progress=False)
    assert wd.read_json(os.path.join(workdir, "status.json"))["state"] == "done"
    assert [(r["seed"], r["checkpoint"]) for r in summary["learners"]] == [(s, 1) for s in SEEDS]


def test_the_printed_table_names_seed_checkpoint_epoch_and_both_label_groups(measured):
    table = measures.format_summary(measured.summary)
    header = table.splitlines()[1].split()
    assert header == ["seed", "ckpt", "epoch", METRIC, "clean", "corrupted"]
    body = table.splitlines()[2:2 + len(SEEDS) * 3]
    assert [tuple(int(x) for x in line.split()[:3]) for line in body] == [
        (s, c, e) for s in SEEDS for c, e in zip((0, 1, 2), (0, 2, 4), strict=True)]
    assert all(len(line.split()) == 6 for line in body)
    assert "ckpt 2 (epoch 4)" in table and f"({len(SEEDS)} seeds)" in table
