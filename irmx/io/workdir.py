"""The workdir contract shared by every family (see DESIGN.md)::

    DIR/config.json    resolved config + irmx version
    DIR/status.json    {"state": running|done|diverged|failed|preempted, "step": n, ...}
    DIR/metrics.jsonl  one object per logged point: {"step", "learner", coords..., metrics...}
    DIR/summary.json   final metrics per learner + mean/std/min/max over seeds per grid point
    DIR/ckpt/          orbax CheckpointManager
    DIR/tb/            TensorBoard event files
    DIR/plots/*.png    the family's figures

JSON files are written atomically (temp file + ``os.replace``). One process at a time holds a
workdir (an ``fcntl`` lock on ``DIR/.lock``); a second is refused.
"""

import fcntl
import json
import math
import os
import tempfile
import time

import numpy as np

import irmx


class WorkdirError(RuntimeError):
    """A workdir cannot be used as asked (busy, or holding another config)."""


def to_json(obj):
    """Plain-JSON form of configs and metrics: arrays to lists, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return to_json(np.asarray(obj).tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to ``path`` via a temp file in the same folder and an atomic rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_json(obj), f, indent=1, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two config dicts (added or removed keys too)."""
    a, b = flatten(to_json(old)), flatten(to_json(new))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


class Workdir:
    """An opened, locked workdir. ``state`` is "new", "resume" or "done"."""

    def __init__(self, path: str, config: dict):
        self.path = os.path.abspath(path)
        os.makedirs(self.path, exist_ok=True)
        self._lock = open(os.path.join(self.path, ".lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise WorkdirError(
                f"workdir {self.path} is in use by another irmx process; wait for it or pick "
                "another --workdir"
            ) from None
        config = to_json(config)
        cfg_path = self.file("config.json")
        if os.path.exists(cfg_path):
            stored = read_json(cfg_path)
            diff = config_differences(stored.get("config", {}), config)
            if diff:
                self.close()
                raise WorkdirError(
                    f"workdir {self.path} holds a run of a different config (differing keys: "
                    f"{', '.join(diff)}); use a new --workdir or delete this one"
                )
            status = self.status()
            self.state = "done" if status.get("state") in ("done", "diverged") else "resume"
        else:
            write_json_atomic(cfg_path, {"irmx_version": irmx.__version__, "config": config})
            self.state = "new"

    def file(self, *names: str) -> str:
        return os.path.join(self.path, *names)

    def status(self) -> dict:
        path = self.file("status.json")
        return read_json(path) if os.path.exists(path) else {}

    def set_status(self, state: str, step: int, **extra) -> None:
        write_json_atomic(
            self.file("status.json"),
            {"state": state, "step": int(step), "time": time.time(), **extra},
        )

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed and fsynced per call)."""

    def __init__(self, path: str, resume_step: int = 0):
        self.path = path
        truncate_metrics(path, resume_step)
        self._f = open(path, "a")

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            self._f.write(json.dumps(to_json(row)) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str) -> list[dict]:
    """All complete lines of a metrics.jsonl (a torn last line of a killed run is skipped)."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def truncate_metrics(path: str, max_step: int) -> None:
    """Keep only rows with step <= max_step (the restored checkpoint), atomically."""
    if not os.path.exists(path):
        return
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= max_step]
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".jsonl")
    with os.fdopen(fd, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
