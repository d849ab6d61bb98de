"""The one runner: workdir, results store, resume, lax.scan chunks, metrics, checkpoints, summary.

A family describes its experiment as a ``Program`` of pure, jitted, learner-vmapped functions;
``run_program`` does everything that touches the filesystem, identically for every family, for
training programs and for eval-only ones (``chunk=None``), and ``run_group`` runs several
programs under one workdir with one combined table.

Results are stored per learner (``DIR/learners/<learner_id>.json``): a re-run with a grown
learner axis trains only the learners it has no result for, as one **cohort** whose stacked
checkpoints live in ``DIR/ckpt/<cohort>/`` (``cohort.json`` there lists its learner ids in
order); the summary always covers the whole current axis.

TensorBoard (``irmx.io.tensorboard``): ``DIR/tb/<grid point>/`` is one run per grid point,
named by its coordinates (``tb/penalty_weight=100``, ``tb/lr=0.01,penalty_weight=100``;
``tb/all`` when only seeds vary), with ``<metric>/mean|std|min|max`` over the point's learners
of the training cohort at every chunk (diverged learners left out), ``final/<metric>/...`` from
summary.json's grid and an hparams session (one HPARAMS row per grid point). Eval-only programs
write the final metrics; an ``epoch`` coordinate (measures' checkpoints) is their step, not
part of the run name. Per-learner curves are in metrics.jsonl; ``IRMX_TB_PER_LEARNER=1`` in the
environment also writes them as runs ``<grid point>/seed=<seed>`` (an environment switch, so
it changes no config and no learner id).
"""

import dataclasses
import hashlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from irmx.io import checkpoints, tensorboard
from irmx.io import workdir as wd
from irmx.learners import AXIS_KEYS, LearnerAxis, summarize


@dataclasses.dataclass(frozen=True)
class Program:
    """A family's experiment as pure functions over a learner axis.

    init(coords) -> (state_n, data): fresh state of the learners whose numeric coordinates are
        ``coords`` (name -> array (n,), a subset of ``axis``) and their data
    chunk(state_n, data) -> (state_n, metrics_n): ``chunk_steps`` steps, last-step metrics;
        None for an eval-only program (no training steps, no checkpoints)
    evaluate(state_n, data) -> metrics_n: final metrics, per learner

    An eval-only program (``chunk=None``: measures of another run's checkpoints) goes through
    the same status contract (running, then done or failed), results store and summary; its
    ``init`` gets the numeric coordinates of the learners that have no stored result yet, and
    its ``evaluate`` may run a host loop (batches, files of its own) before returning them.
    """

    name: str
    family: str
    axis: LearnerAxis
    init: Callable
    evaluate: Callable
    chunk: Callable | None = None
    num_steps: int = 0
    chunk_steps: int = 1
    checkpoint_every: int = 0  # steps; a multiple of chunk_steps (0: only at the end)
    keep_steps: tuple = ()  # steps whose checkpoints are kept for good (numbered checkpoints)
    select_by: str = ""
    plot: Callable | None = None  # plot(workdir_path, summary, history_rows)
    report: Callable | None = None  # report(summary) -> str, printed after a run
    # extend_summary(summary) -> dict: the family's own top-level keys (what was measured, ...),
    # merged into the shared summary (``irmx.learners.summarize``) before summary.json is written
    extend_summary: Callable | None = None
    model: Any = None  # the flax module (run loader, measures)
    steps_per_epoch: int = 1
    trace_counter: Any = None  # the chunk function whose num_traces counts traces
    progress_metrics: tuple = ()  # chunk metrics shown (mean over learners) on the progress line


class Progress:
    """The progress display of a run on stderr: on a terminal a ``rich`` progress bar (steps,
    elapsed and remaining time, the chunk's mean loss); in a log (not a terminal) one plain
    line per quarter of the run, so a log stays short."""

    def __init__(self, name: str, total: int, enabled: bool = True):
        self.name, self.total, self.enabled = name, total, enabled
        self.start = time.time()
        self.tty = sys.stderr.isatty()
        self.last_quarter = -1
        self._bar = None
        if enabled and self.tty:
            from rich.console import Console
            from rich.markup import escape
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn(escape(f"[{name}]")), BarColumn(bar_width=24), MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                TextColumn("{task.fields[note]}", markup=False), console=Console(stderr=True),
                transient=False)
            self._task = self._bar.add_task(name, total=max(total, 1), note="")
            self._bar.start()

    def update(self, step: int, note: str = "") -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=step, note=note)
            return
        quarter = int(4 * step / max(self.total, 1))
        if quarter == self.last_quarter:
            return  # in logs, one line per quarter
        self.last_quarter = quarter
        elapsed = time.time() - self.start
        sys.stderr.write(f"[{self.name}] step {step}/{self.total} {elapsed:6.1f}s {note}\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


RESERVED = ("step", "learner", "learner_id", "cohort")


def check_metric_names(axis: LearnerAxis, names, where: str) -> None:
    """A metric may not share a name with a learner coordinate (or a row's bookkeeping keys):
    in metrics.jsonl and summary.json it would overwrite the coordinate."""
    clash = sorted(set(names) & (set(axis.names) | set(RESERVED)))
    if clash:
        raise ValueError(f"{where} metrics {clash} have the names of learner coordinates or "
                         f"row keys ({', '.join(axis.names)}); rename the metric or the "
                         "coordinate")


def _rows(axis: LearnerAxis, indices, ids, cohort: str, step: int, metrics_n: dict) -> list:
    check_metric_names(axis, metrics_n, "chunk")
    metrics_n = {k: wd.shortest_decimals(np.asarray(v)) for k, v in metrics_n.items()}
    all_rows = axis.rows
    rows = []
    for j, i in enumerate(indices):
        row = {"step": step, "learner": int(i), "learner_id": ids[i], "cohort": cohort,
               **all_rows[i]}
        row.update({k: v[j] for k, v in metrics_n.items()})
        rows.append(row)
    return rows


class ResultsStore:
    """Final results per learner, ``DIR/learners/<learner_id>.json`` (written atomically)."""

    def __init__(self, folder: str):
        self.folder = folder

    def path(self, learner_id: str) -> str:
        return os.path.join(self.folder, f"{learner_id}.json")

    def __contains__(self, learner_id: str) -> bool:
        return os.path.exists(self.path(learner_id))

    def get(self, learner_id: str) -> dict:
        return wd.read_json(self.path(learner_id))

    def put(self, learner_id: str, record: dict) -> None:
        wd.write_json_atomic(self.path(learner_id), record)


def _stack_results(records: list[dict]) -> tuple[dict, np.ndarray]:
    """Per-learner metric dicts -> (name -> array (N, ...)), diverged (N,)."""
    names = list(dict.fromkeys(k for r in records for k in r["metrics"]))
    metrics = {}
    for k in names:
        vals = [r["metrics"].get(k) for r in records]
        shape = next((np.shape(v) for v in vals if v is not None), ())
        metrics[k] = np.stack([np.full(shape, np.nan) if v is None else
                               np.asarray(v, np.float64) for v in vals])
    return metrics, np.array([r["diverged"] for r in records], bool)


def _progress_note(names, metrics: dict, num_diverged: int) -> str:
    """"risk 0.123 penalty 4.5e-05 diverged 0": the mean over the learners that have not
    diverged of each of ``names`` in this chunk's metrics."""
    ok = ~np.asarray(metrics["diverged"], bool)
    parts = []
    for name in (n for n in names if n in metrics):
        v = np.asarray(metrics[name], np.float64).reshape(len(ok), -1).mean(1)[ok]
        if v.size and np.isfinite(v).any():
            parts.append(f"{name} {np.nanmean(v):.4g}")
    return " ".join(parts + [f"diverged {num_diverged}"])


def cohort_name(ids: list[str]) -> str:
    return hashlib.sha256(",".join(ids).encode()).hexdigest()[:12]


def _train(program, w, indices, ids, cohort, progress, max_chunks, tb):
    """Train the cohort ``indices`` from its latest checkpoint, its curves into ``tb`` (an
    ``irmx.io.tensorboard.AxisBoard``); (state, data) at the end, or None when ``max_chunks``
    stopped it early (status preempted)."""
    state, data = program.init(program.axis.numeric_coords(indices))
    manager = checkpoints.make_manager(w.file("ckpt", cohort), keep_steps=program.keep_steps)
    writer = bar = None
    try:
        state, step = checkpoints.restore_latest(manager, state)
        saved = set(manager.all_steps())
        if step == 0 and 0 in program.keep_steps and 0 not in saved:
            checkpoints.save(manager, 0, state)  # the initialisation, as a numbered checkpoint
        if step:
            print(f"[{program.name}] resuming {w.path} from step {step}.")
        n = program.axis.size
        w.set_status("running", step, num_learners=n, training=len(indices))
        writer = wd.MetricsWriter(w.file("metrics.jsonl"), resume_step=step, cohort=cohort)
        bar = Progress(program.name, program.num_steps, progress)
        done_chunks = 0
        while step < program.num_steps:
            if max_chunks is not None and done_chunks >= max_chunks:
                w.set_status("preempted", step, num_learners=n, training=len(indices))
                return None
            state, metrics = program.chunk(state, data)
            metrics = jax.device_get(metrics)
            step += program.chunk_steps
            done_chunks += 1
            writer.write(_rows(program.axis, indices, ids, cohort, step, metrics))
            tb.chunk(step, metrics, indices)
            every = program.checkpoint_every
            if ((every and step % every == 0) or step == program.num_steps
                    or step in program.keep_steps) and step not in saved:
                checkpoints.save(manager, step, state)
                saved.add(step)
            num_div = int(np.sum(metrics["diverged"]))
            w.set_status("running", step, num_learners=n, training=len(indices),
                         num_diverged=num_div)
            bar.update(step, _progress_note(program.progress_metrics, metrics, num_div))
        return state, data
    finally:
        if bar is not None:
            bar.done()  # also on an interruption: the terminal gets its cursor back
        for closer in (writer, manager):
            if closer is not None:
                closer.close()


def run_program(program: Program, config_dict: dict, workdir: str, progress: bool = True,
                max_chunks: int | None = None) -> dict:
    """Run (or resume, or skip if finished) ``program`` in ``workdir``; returns summary.json.

    ``max_chunks`` stops after that many chunks of this call (status "preempted"), e.g. to
    share a time-sliced machine; the next call resumes from the last checkpoint.
    """
    with wd.Workdir(workdir, config_dict, family=program.family, axis_keys=AXIS_KEYS) as w:
        axis = program.axis
        ids = axis.learner_ids(config_dict)
        store = ResultsStore(w.file("learners"))
        todo = [i for i, lid in enumerate(ids) if lid not in store]
        if w.state == "done" and not todo and os.path.exists(w.file("summary.json")):
            print(f"[{program.name}] {w.path} already holds this finished run; nothing to do.")
            return wd.read_json(w.file("summary.json"))
        step = 0
        tb = tensorboard.AxisBoard(w.file("tb"), axis)
        try:
            if todo:
                if len(todo) < axis.size:
                    print(f"[{program.name}] {axis.size - len(todo)} of {axis.size} learners "
                          f"have results in {w.path}; computing the other {len(todo)}.")
                cohort_ids = [ids[i] for i in todo]
                cohort = cohort_name(cohort_ids)
                wd.write_json_atomic(w.file("ckpt", cohort, "cohort.json"),
                                     {"learners": cohort_ids, "indices": todo})
                if program.chunk is None:
                    w.set_status("running", 0, num_learners=axis.size, training=0)
                    out = program.init(axis.numeric_coords(todo))
                else:
                    out = _train(program, w, todo, ids, cohort, progress, max_chunks, tb)
                    if out is None:
                        return {}
                state, data = out
                step = program.num_steps
                final = jax.device_get(program.evaluate(state, data))
                check_metric_names(axis, final, "final")
                diverged = (np.asarray(jax.device_get(state.diverged)) if program.chunk
                            else np.zeros(len(todo), bool))
                for j, i in enumerate(todo):
                    store.put(ids[i], {
                        "learner_id": ids[i], "coords": axis.rows[i], "cohort": cohort,
                        "cohort_index": j, "diverged": bool(diverged[j]),
                        "metrics": {k: np.asarray(v)[j] for k, v in final.items()},
                    })
            records = [store.get(lid) for lid in ids]
            final, diverged = _stack_results(records)
            summary = summarize(axis, final, diverged, program.select_by, learner_ids=ids)
            if program.extend_summary is not None:
                summary.update(program.extend_summary(summary))
            summary.update(name=program.name, family=program.family,
                           num_steps=program.num_steps)
            wd.write_json_atomic(w.file("summary.json"), summary)
            tb.final(summary, program.num_steps)
            if program.plot is not None:
                program.plot(w.path, summary, wd.read_metrics(w.file("metrics.jsonl")))
            final_state = "diverged" if diverged.all() else "done"
            w.set_status(final_state, program.num_steps, num_learners=axis.size,
                         num_diverged=int(diverged.sum()))
            if final_state == "diverged":
                print(f"[{program.name}] every learner diverged (non-finite loss); see "
                      f"{w.file('metrics.jsonl')}")
            return summary
        except KeyboardInterrupt:
            w.set_status("interrupted", w.status().get("step", step),
                         message="interrupted; re-run the same command to resume")
            raise
        except BaseException as e:
            w.set_status("failed", w.status().get("step", step), error=f"{type(e).__name__}: {e}")
            raise
        finally:
            tb.close()


def run_group(members: list[tuple[Program, dict]], config_dict: dict, workdir: str,
              combine: Callable, progress: bool = True) -> dict:
    """Run each ``(program, config_dict)`` in ``workdir/<program.name>``, then
    ``combine(summaries) -> (group_summary, table)``: the group's summary.json and the one
    table printed (an IRM study, a batch-size sweep, hypergrad algorithms, a model zoo)."""
    with wd.Workdir(workdir, config_dict, family=members[0][0].family if members else "",
                    axis_keys=AXIS_KEYS) as w:
        try:
            w.set_status("running", 0, members=[p.name for p, _ in members])
            summaries = {p.name: run_program(p, c, os.path.join(workdir, p.name), progress)
                         for p, c in members}
            group, table = combine(summaries)
            wd.write_json_atomic(w.file("summary.json"), group)
            w.set_status("done", 0, members=list(summaries))
            group["table"] = table
            return group
        except KeyboardInterrupt:
            w.set_status("interrupted", 0,
                         message="interrupted; re-run the same command to resume")
            raise
        except BaseException as e:
            w.set_status("failed", 0, error=f"{type(e).__name__}: {e}")
            raise
