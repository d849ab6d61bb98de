"""TensorBoard for a learner axis: one run per grid point, statistics over its seeds.

``DIR/tb/<point>/`` is one TensorBoard run per grid point (``irmx.learners.grid_points``, the
grouping of summary.json's ``grid``), named by its coordinates (``penalty_weight=100``,
``lr=0.01,penalty_weight=100``; ``all`` when the axis has only seeds). In each run:

* ``<metric>/mean``, ``/std``, ``/min``, ``/max`` over the point's learners at every chunk
  (``step`` = training step), diverged learners left out, and ``num_diverged``;
* a histogram ``<metric>`` of a metric that is a vector per learner (the hypergrad family's
  per-weight learning-rate deciles ``lr_quantiles``), over the point's learners;
* ``final/<metric>/mean|std|min|max`` and ``final/num_diverged``: summary.json's grid point (the
  ``evaluate`` results), at the last step;
* the hparams plugin's session (coordinates -> ``final/<metric>/mean``), so the HPARAMS tab
  lists one row per grid point.

When the grid points are sampled or zipped values (initialisations), the run ``all_learners``
holds the same curve statistics over every learner (the mean trajectory over initialisations).
The first run also holds a custom-scalars layout: one margin chart (mean within min..max) per
chunk metric. A factor that holds an ``epoch`` coordinate (the measures' checkpoint, epoch) is
not part of a run's name: its epoch is the step of the final metrics, so a measured metric is a
curve over epochs per grid point. With ``IRMX_TB_PER_LEARNER=1`` each learner also gets a run
``<point>/seed=<seed>`` with its own curves and final metrics (they are always in
metrics.jsonl and summary.json). ``read_scalars`` and ``read_hparams`` read the event files back
without TensorBoard (tests, notebooks).
"""

import hashlib
import os
import struct
import time
import uuid

import numpy as np
from tensorboardX import summary as tbx_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
from tensorboardX.proto.summary_pb2 import Summary

from irmx.learners import LearnerAxis, grid_points

PER_LEARNER_ENV = "IRMX_TB_PER_LEARNER"
STATS = ("mean", "std", "min", "max")
STEP_COORD = "epoch"
ALL_LEARNERS = "all_learners"  # the run of statistics over every learner (several grid points)


def per_learner_enabled() -> bool:
    return os.environ.get(PER_LEARNER_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    text = repr(v) if isinstance(v, float) else str(v)
    return text.replace("/", "_").replace("\\", "_")


def run_name(coords: dict) -> str:
    """``a=1,b=0.01`` (``all`` when empty); long names are cut and end in a hash."""
    name = ",".join(f"{k}={_fmt(v)}" for k, v in coords.items()) or "all"
    if len(name) > 200:
        name = name[:180] + "~" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def step_names(axis: LearnerAxis) -> tuple[str, ...]:
    """Names of the factor that holds ``epoch`` (a step-like coordinate), else ()."""
    for f in axis.factors[1:]:
        if STEP_COORD in f.names:
            return f.names
    return ()


def axis_runs(axis: LearnerAxis) -> list[dict]:
    """The runs of ``axis``: per grid point without its step factor, ``name``, ``hparams``
    (coordinates) and ``points``: (grid index, epoch or None, learner indices)."""
    skip = step_names(axis)
    runs, by_key = [], {}
    for g, (coords, idx) in enumerate(grid_points(axis)):
        hp = {k: v for k, v in coords.items() if k not in skip}
        key = tuple(hp.items())
        if key not in by_key:
            by_key[key] = {"name": run_name(hp), "hparams": hp, "points": []}
            runs.append(by_key[key])
        by_key[key]["points"].append((g, coords.get(STEP_COORD) if skip else None, idx))
    seen = {}
    for r in runs:  # distinct folders even when formatting merges two values
        n = seen[r["name"]] = seen.get(r["name"], 0) + 1
        if n > 1:
            r["name"] += f"~{n}"
    return runs


class EventWriter:
    """One run folder's event file, written synchronously (no thread per run)."""

    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        # a unique suffix: a second writer in the same second must not truncate the first file
        self._w = EventsWriter(os.path.join(folder, "events"), f".{uuid.uuid4().hex[:8]}")

    def summary(self, summary: Summary, step: int = 0) -> None:
        self._w.write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                            summary=summary))

    def scalars(self, step: int, values: dict) -> None:
        if values:
            self.summary(Summary(value=[Summary.Value(tag=k, simple_value=float(v))
                                        for k, v in values.items()]), step)

    def flush(self) -> None:
        self._w.flush()

    def close(self) -> None:
        self._w.close()


def _stats(v: np.ndarray, prefix: str) -> dict:
    v = v[np.isfinite(v)]
    if not v.size:
        return {}
    s = {"mean": v.mean(), "std": v.std(), "min": v.min(), "max": v.max()}
    return {f"{prefix}/{k}": float(x) for k, x in s.items()}


class AxisBoard:
    """The TensorBoard runs of one workdir's learner axis (module docstring)."""

    def __init__(self, folder: str, axis: LearnerAxis, per_learner: bool | None = None):
        self.folder, self.axis = folder, axis
        self.per_learner = per_learner_enabled() if per_learner is None else per_learner
        self.runs = axis_runs(axis)
        self._writers: dict[str, EventWriter] = {}
        self._layout_written = False
        seed_names = axis.factors[0].names
        # sampled grid points (initialisations) also get one run over every learner
        self.all_learners = len(self.runs) > 1 and any(f.kind in ("sampled", "zip")
                                                       for f in axis.factors)
        self._learner_names = [run_name({n: r[n] for n in seed_names}) for r in axis.rows]

    def writer(self, name: str) -> EventWriter:
        if name not in self._writers:
            self._writers[name] = EventWriter(os.path.join(self.folder, name))
        return self._writers[name]

    def chunk(self, step: int, metrics_n: dict, indices) -> None:
        """Curves of one chunk of the cohort ``indices`` (metrics_n: name -> (len(indices),))."""
        position = {int(i): j for j, i in enumerate(indices)}
        diverged = np.asarray(metrics_n.get("diverged", np.zeros(len(position))), bool)
        curves = {k: np.asarray(v, np.float64) for k, v in metrics_n.items()
                  if k != "diverged" and np.ndim(v) == 1}
        spreads = {k: np.asarray(v, np.float64) for k, v in metrics_n.items()
                   if np.ndim(v) == 2}  # a vector per learner (per-weight learning rates)
        for run in self.runs:
            sel = np.array([position[int(i)] for _, _, idx in run["points"] for i in idx
                            if int(i) in position], int)
            if not sel.size:
                continue  # no learner of this point in this cohort
            ok = sel[~diverged[sel]]
            values = {"num_diverged": int(diverged[sel].sum())}
            for k, v in curves.items():
                values.update(_stats(v[ok], k))
            w = self.writer(run["name"])
            if not self._layout_written:
                w.summary(self._layout(curves))
                self._layout_written = True
            w.scalars(step, values)
            for k, v in spreads.items():
                flat = v[ok].ravel()
                flat = flat[np.isfinite(flat)]
                if flat.size:
                    w.summary(tbx_summary.histogram(k, flat, "auto"), step)
            if self.per_learner:
                for j in sel:
                    self.writer(self._learner_path(run, int(indices[j]))).scalars(
                        step, {k: v[j] for k, v in curves.items() if np.isfinite(v[j])})
        if self.all_learners:  # every learner of the cohort together
            ok = ~diverged
            values = {"num_diverged": int(diverged.sum())}
            for k, v in curves.items():
                values.update(_stats(v[ok], k))
            self.writer(ALL_LEARNERS).scalars(step, values)
        self.flush()

    def _learner_path(self, run: dict, i: int) -> str:
        return os.path.join(run["name"], self._learner_names[i])

    @staticmethod
    def _layout(curves: dict) -> Summary:
        charts = {k: ["Margin", [f"{k}/mean", f"{k}/min", f"{k}/max"]] for k in curves}
        return tbx_summary.custom_scalars({"mean within min..max over seeds": charts})

    def final(self, summary: dict, step: int) -> None:
        """summary.json's grid (the final metrics per grid point) and the hparams sessions."""
        grid = summary["grid"]
        for run in self.runs:
            w = self.writer(run["name"])
            metric_tags = {}
            for g, epoch, idx in run["points"]:
                point = grid[g]
                values = {"final/num_diverged": point.get("num_diverged", 0)}
                for k, st in point.items():
                    if isinstance(st, dict) and "mean" in st:
                        values.update({f"final/{k}/{s}": st[s] for s in STATS
                                       if st.get(s) is not None})
                        metric_tags[f"final/{k}/mean"] = None
                at = step if epoch is None else int(epoch)
                w.scalars(at, values)
                if self.per_learner:
                    for i in idx:
                        row = summary["learners"][int(i)]
                        w_i = self.writer(self._learner_path(run, int(i)))
                        w_i.scalars(at, {f"final/{k}": v for k, v in row.items()
                                         if f"final/{k}/mean" in metric_tags
                                         and v is not None and np.isfinite(v)})
            for s in tbx_summary.hparams(dict(run["hparams"]), metric_tags):
                w.summary(s, step)
        self.flush()

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


# ---------------------------------------------------------------------------------------------
# Reading event files back (no TensorBoard needed)


def read_events(folder: str):
    """The events of every event file directly in ``folder``, file by file (name order)."""
    for name in sorted(os.listdir(folder)):
        if "tfevents" not in name:
            continue
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            yield event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4


def list_runs(root: str) -> list[str]:
    """Run names (folders under ``root`` holding event files, relative, '/'-separated)."""
    out = []
    for here, _, files in os.walk(root):
        if any("tfevents" in f for f in files):
            out.append(os.path.relpath(here, root).replace(os.sep, "/"))
    return sorted(out)


def read_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] of one run folder (a later write of a step wins)."""
    found: dict[str, dict[int, float]] = {}
    for ev in read_events(folder):
        for v in ev.summary.value:
            if v.WhichOneof("value") == "simple_value":
                found.setdefault(v.tag, {})[ev.step] = v.simple_value
    return {tag: sorted(points.items()) for tag, points in found.items()}


def read_hparams(folder: str) -> dict:
    """The hparams plugin's data of one run: ``{"hparams": {name: value}, "metrics": [tags]}``
    (empty when the run has no session)."""
    out = {}
    for ev in read_events(folder):
        for v in ev.summary.value:
            if v.metadata.plugin_data.plugin_name != "hparams":
                continue
            data = HParamsPluginData.FromString(v.metadata.plugin_data.content)
            if data.HasField("session_start_info"):
                out["hparams"] = {k: getattr(x, x.WhichOneof("kind"))
                                  for k, x in data.session_start_info.hparams.items()}
            if data.HasField("experiment"):
                out["metrics"] = [m.name.tag for m in data.experiment.metric_infos]
    return out
