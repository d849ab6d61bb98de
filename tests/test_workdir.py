"""The workdir contract: files, atomic JSON, resume after interruption, refusals."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from irmx.configs.irm import regression
from irmx.experiments import irm
from irmx.io import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(**overrides):
    c = regression.get_config("irmv1,smoke")
    c.num_seeds = 3
    c.update_from_flattened_dict(overrides)
    return c


def strip_time(summary):
    return json.loads(json.dumps(summary))


def test_workdir_files_and_finished_rerun_does_nothing(tmp_path, capsys):
    d = tmp_path / "run"
    summary = irm.run(cfg(), str(d), progress=False)
    for name in ("config.json", "status.json", "metrics.jsonl", "summary.json"):
        assert (d / name).exists(), name
    assert os.listdir(d / "ckpt") and os.listdir(d / "tb")
    assert (d / "plots" / "curves.png").exists() and (d / "plots" / "errors.png").exists()
    status = wd.read_json(str(d / "status.json"))
    assert status["state"] == "done" and status["step"] == 200
    rows = wd.read_metrics(str(d / "metrics.jsonl"))
    assert len(rows) == 3 * 4  # 3 learners x 4 chunks
    assert {"step", "learner", "seed", "risk", "penalty"} <= set(rows[0])
    stored = wd.read_json(str(d / "summary.json"))
    assert set(stored["learners"][0]) >= {"causal_error", "noncausal_error", "heldout_mse"}
    assert stored["grid"][0]["causal_error"]["n"] == 3
    mtime = os.path.getmtime(d / "summary.json")
    capsys.readouterr()
    again = irm.run(cfg(), str(d), progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert os.path.getmtime(d / "summary.json") == mtime
    assert again == strip_time(summary)


def test_different_config_is_refused_naming_keys(tmp_path):
    d = str(tmp_path / "run")
    irm.run(cfg(), d, progress=False, max_chunks=1)
    keys = r"differing keys: criterion.penalty_weight, optim.lr"
    with pytest.raises(wd.WorkdirError, match=keys):
        irm.run(cfg(**{"optim.lr": 0.5, "criterion.penalty_weight": 3.0}), d, progress=False)


def test_second_process_is_refused(tmp_path):
    d = str(tmp_path / "run")
    with wd.Workdir(d, {"a": 1}):
        with pytest.raises(wd.WorkdirError, match="in use by another irmx process"):
            wd.Workdir(d, {"a": 1})
    wd.Workdir(d, {"a": 1}).close()  # released on exit


def test_resume_after_preemption_matches_uninterrupted(tmp_path):
    c = cfg(**{"checkpoint_every": 50})
    full = irm.run(c, str(tmp_path / "full"), progress=False)
    part = str(tmp_path / "part")
    assert irm.run(c, part, progress=False, max_chunks=1) == {}
    assert wd.read_json(os.path.join(part, "status.json"))["state"] == "preempted"
    irm.run(c, part, progress=False, max_chunks=1)
    resumed = irm.run(c, part, progress=False)
    assert resumed["learners"] == full["learners"]
    assert len(wd.read_metrics(os.path.join(part, "metrics.jsonl"))) == 3 * 4


def test_exception_mid_run_marks_failed_then_resumes_identically(tmp_path, monkeypatch):
    c = cfg(**{"checkpoint_every": 100})
    full = irm.run(c, str(tmp_path / "full"), progress=False)
    d = str(tmp_path / "crash")
    real_build = irm.build_program

    def crashing_build(config):
        program = real_build(config)
        calls = {"n": 0}
        real_chunk = program.chunk

        def chunk(state, data):
            calls["n"] += 1
            if calls["n"] == 3:  # after the step-100 checkpoint, before step 150 is saved
                raise KeyboardInterrupt
            return real_chunk(state, data)

        return dataclasses.replace(program, chunk=chunk)

    monkeypatch.setattr(irm, "build_program", crashing_build)
    with pytest.raises(KeyboardInterrupt):
        irm.run(c, d, progress=False)
    status = wd.read_json(os.path.join(d, "status.json"))
    assert status["state"] == "interrupted" and status["step"] == 100
    assert "re-run the same command to resume" in status["message"]
    monkeypatch.setattr(irm, "build_program", real_build)
    resumed = irm.run(c, d, progress=False)
    assert resumed["learners"] == full["learners"]
    rows = wd.read_metrics(os.path.join(d, "metrics.jsonl"))
    assert sorted({r["step"] for r in rows}) == [50, 100, 150, 200]
    assert len(rows) == 3 * 4  # no duplicated points from the crashed attempt


def test_killed_process_resumes_to_the_same_numbers(tmp_path):
    """SIGKILL a CLI run after its first checkpoint; the same command finishes identically."""
    args = ["--config=configs/irm/regression.py:irmv1,smoke", "--config.num_seeds=3",
            "--config.num_steps=3000", "--config.chunk_steps=50", "--config.checkpoint_every=100",
            "--progress=false"]
    cmd = [sys.executable, "launch/irm.py", *args]
    full_dir, kill_dir = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(cmd + [f"--workdir={full_dir}"], cwd=ROOT, check=True, capture_output=True)
    proc = subprocess.Popen(cmd + [f"--workdir={kill_dir}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status_path = os.path.join(kill_dir, "status.json")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # status.json's step is current at every chunk: kill right after the first checkpoint
        if os.path.exists(status_path) and wd.read_json(status_path).get("step", 0) >= 100:
            break
        time.sleep(0.01)
    killed_mid_run = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_mid_run, "the run finished before it could be killed"
    assert wd.read_json(os.path.join(kill_dir, "status.json"))["state"] == "running"
    subprocess.run(cmd + [f"--workdir={kill_dir}"], cwd=ROOT, check=True, capture_output=True)
    a = wd.read_json(os.path.join(full_dir, "summary.json"))
    b = wd.read_json(os.path.join(kill_dir, "summary.json"))
    assert a["learners"] == b["learners"]


def test_atomic_json_never_leaves_a_partial_file(tmp_path):
    path = str(tmp_path / "x.json")
    wd.write_json_atomic(path, {"a": np.float32(1.5), "b": np.array([1, 2]), "c": float("nan")})
    assert wd.read_json(path) == {"a": 1.5, "b": [1, 2], "c": None}

    class Boom:
        pass

    with pytest.raises(TypeError):
        wd.write_json_atomic(path, {"a": Boom()})
    assert wd.read_json(path)["a"] == 1.5  # old content intact
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []


def test_metrics_truncation_drops_points_after_checkpoint(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    w = wd.MetricsWriter(path)
    w.write([{"step": s, "learner": 0} for s in (10, 20, 30)])
    w.close()
    with open(path, "a") as f:
        f.write('{"step": 40, "lear')  # torn line of a killed writer
    wd.MetricsWriter(path, resume_step=20).close()
    assert [r["step"] for r in wd.read_metrics(path)] == [10, 20]


def test_lock_is_released_when_thread_holder_exits(tmp_path):
    d = str(tmp_path / "run")
    done = threading.Event()

    def hold():
        with wd.Workdir(d, {"a": 1}):
            done.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.2)
    with pytest.raises(wd.WorkdirError):
        wd.Workdir(d, {"a": 1})
    done.set()
    t.join()
    wd.Workdir(d, {"a": 1}).close()
