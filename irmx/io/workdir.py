"""The workdir contract shared by every family (see DESIGN.md)::

    DIR/config.json    resolved config + irmx version
    DIR/status.json    {"state": running|done|diverged|failed|preempted, "step": n, ...}
    DIR/metrics.jsonl  one object per logged point: {"step", "learner", coords..., metrics...}
    DIR/summary.json   final metrics per learner + mean/std/min/max over seeds per grid point
    DIR/ckpt/          orbax CheckpointManager
    DIR/tb/<point>/    TensorBoard, one run per grid point (``irmx.io.tensorboard``)
    DIR/plots/*.png    the family's figures

JSON files are written atomically (temp file + ``os.replace``), readable as the process umask
allows (a shared results folder stays shared); a killed run's leftover temp files are removed
when the workdir is next opened. One process at a time holds a workdir (an ``fcntl`` lock on
``DIR/.lock``); a second is refused.
"""

import fcntl
import json
import math
import os
import secrets
import subprocess
import sys
import time

import numpy as np

import irmx
from irmx.errors import UserError

TEMP_PREFIX = ".tmp-"  # write_json_atomic's temp files: TEMP_PREFIX + random + .json / .jsonl
STALE_TEMP_S = 60.0  # a temp file this old is a killed writer's leftover, not one in flight


class WorkdirError(UserError, RuntimeError):
    """A workdir cannot be used as asked (busy, holding another config, not a writable folder)."""


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


def shortest_decimals(values: np.ndarray) -> np.ndarray:
    """float32 (and float16) values as the float64 of their shortest round-tripping decimal
    (``float32(result) == values`` exactly, NaN and inf kept): their JSON text is
    "0.0011033721", not the float64 "0.0011033720802515745", so metrics.jsonl is about half as
    long and reads about twice as fast. Other dtypes are returned as they are."""
    if values.dtype in (np.float32, np.float16):
        return values.astype(str).astype(np.float64)
    return values


def write_atomic(path: str, write) -> None:
    """``write(f)`` into a temp file next to ``path``, then an atomic rename onto ``path``.

    The temp file is created with mode 0o666 less the process umask, like ``open(path, "w")``
    (``tempfile.mkstemp`` would give 0600: unreadable to the other users of a shared folder).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = ".jsonl" if path.endswith(".jsonl") else ".json"
    while True:
        tmp = os.path.join(folder, f"{TEMP_PREFIX}{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to ``path`` via a temp file in the same folder and an atomic rename."""
    write_atomic(path, lambda f: json.dump(to_json(obj), f, indent=1, sort_keys=False))


def remove_stale_temp_files(root: str, max_age_s: float = STALE_TEMP_S) -> list[str]:
    """Delete the ``write_atomic`` temp files a killed run left under ``root`` (older than
    ``max_age_s``: a temp file of a writer still running is seconds old). Returns their paths."""
    removed, now = [], time.time()
    for folder, _, names in os.walk(root):
        for name in names:
            if name.startswith(TEMP_PREFIX) and name.endswith((".json", ".jsonl")):
                path = os.path.join(folder, name)
                try:
                    if now - os.path.getmtime(path) > max_age_s:
                        os.unlink(path)
                        removed.append(path)
                except FileNotFoundError:  # renamed or removed meanwhile
                    pass
    return removed


def check_workdir(path: str) -> None:
    """Raise ``WorkdirError`` unless ``path`` is a folder this process can write, or can be
    created as one (checked without creating anything)."""
    path = os.path.abspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise WorkdirError(f"workdir {path} exists and is not a folder; pick another --workdir")
    parent = path
    while not os.path.lexists(parent):  # the nearest existing folder holds the new ones
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise WorkdirError(f"workdir {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        where = "" if parent == path else f" (its folder {parent} is not writable)"
        raise WorkdirError(f"workdir {path} is not writable by this user{where}; pick another "
                           "--workdir or change its permissions")


def _open_lock_file(path: str):
    """Create the workdir ``path`` and open its ``.lock``; ``WorkdirError`` when it cannot."""
    check_workdir(path)
    try:
        os.makedirs(path, exist_ok=True)
        return open(os.path.join(path, ".lock"), "w")
    except OSError as e:
        raise WorkdirError(f"workdir {path} cannot be used: {e.strerror or e} "
                           f"({e.filename or path}); pick another --workdir") from None


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


def git_commit() -> str:
    """The git commit of the irmx checkout this process imports (``+dirty`` with uncommitted
    changes), or "" when irmx is not imported from a git checkout."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(irmx.__file__)))
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode:
            return ""
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--", "irmx"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty else "")


def provenance() -> dict:
    """What made a run: the command line as typed (``sys.orig_argv``), irmx's git commit, the
    time."""
    return {"command": list(getattr(sys, "orig_argv", sys.argv)), "git_commit": git_commit(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class Workdir:
    """An opened, locked workdir. ``state`` is "new", "resume" or "done".

    A stored config that differs only in ``axis_keys`` (the learner axis) is accepted and
    replaced: the runner then computes only the learners it has no results for."""

    def __init__(self, path: str, config: dict, family: str = "", axis_keys=()):
        self.path = os.path.abspath(path)
        self._lock = _open_lock_file(self.path)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise WorkdirError(
                f"workdir {self.path} is in use by another irmx process; wait for it or pick "
                "another --workdir"
            ) from None
        remove_stale_temp_files(self.path)  # safe now: no other irmx process writes here
        config = to_json(config)
        cfg_path = self.file("config.json")
        record = {"irmx_version": irmx.__version__, "config": config}
        if family:
            record["family"] = family
        stored = read_json(cfg_path) if os.path.exists(cfg_path) else {}
        # every invocation on this workdir: its command line, irmx's git commit, the time
        record["invocations"] = [*stored.get("invocations", []), provenance()]
        if stored:
            diff = config_differences(stored.get("config", {}), config)
            # The learner axis may grow (or shrink): results are stored per learner_id.
            fixed = [k for k in diff if k.split(".")[0] not in axis_keys]
            if fixed:
                self.close()
                raise WorkdirError(
                    f"workdir {self.path} holds a run of a different config (differing keys: "
                    f"{', '.join(fixed)}); use a new --workdir or delete this one"
                )
            status = self.status()
            if diff:
                self.state = "resume"
            else:
                self.state = "done" if status.get("state") in ("done", "diverged") else "resume"
        else:
            self.state = "new"
        write_json_atomic(cfg_path, record)

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

    def __init__(self, path: str, resume_step: int = 0, cohort: str | None = None):
        self.path = path
        truncate_metrics(path, resume_step, cohort)
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


def truncate_metrics(path: str, max_step: int, cohort: str | None = None) -> None:
    """Keep only rows with step <= max_step (the restored checkpoint), atomically; with
    ``cohort``, only that cohort's rows are dropped (other cohorts' rows are finished)."""
    if not os.path.exists(path):
        return
    rows = [r for r in read_metrics(path)
            if r.get("step", 0) <= max_step or (cohort is not None and r.get("cohort") != cohort)]
    write_atomic(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows))
