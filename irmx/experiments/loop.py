"""The one driver loop: workdir, resume, lax.scan chunks, metrics, checkpoints, summary.

A family describes its experiment as a ``Program`` of pure, jitted, learner-vmapped functions;
``run_program`` does everything that touches the filesystem, identically for every family.
"""

import dataclasses
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from tensorboardX import SummaryWriter

from irmx.io import checkpoints
from irmx.io import workdir as wd
from irmx.learners import LearnerAxis, summarize


@dataclasses.dataclass
class Program:
    """A family's experiment as pure functions over the learner axis N.

    init() -> (state_N, data):  fresh train state of every learner and its data
    chunk(state_N, data) -> (state_N, metrics_N):  ``chunk_steps`` steps, last-step metrics
    evaluate(state_N, data) -> metrics_N:  final metrics, per learner
    """

    name: str
    axis: LearnerAxis
    init: Callable
    chunk: Callable
    evaluate: Callable
    num_steps: int
    chunk_steps: int
    checkpoint_every: int  # steps; a multiple of chunk_steps
    select_by: str = ""
    plot: Callable | None = None  # plot(workdir_path, summary, history_rows)
    keep_steps: tuple = ()  # steps whose checkpoints are kept for good (numbered checkpoints)


class Progress:
    """One self-overwriting status line on stderr while a run works."""

    def __init__(self, name: str, total: int, enabled: bool = True):
        self.name, self.total, self.enabled = name, total, enabled
        self.start = time.time()
        self.tty = sys.stderr.isatty()
        self.last_quarter = -1

    def update(self, step: int, note: str = "") -> None:
        if not self.enabled:
            return
        frac = step / max(self.total, 1)
        quarter = int(4 * frac)
        if not self.tty and quarter == self.last_quarter:
            return  # in logs, one line per quarter instead of a redrawn bar
        self.last_quarter = quarter
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        elapsed = time.time() - self.start
        line = f"[{self.name}] {bar} step {step}/{self.total} {elapsed:6.1f}s {note}"
        sys.stderr.write(f"\r{line:<79}" if self.tty else line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _rows(axis: LearnerAxis, step: int, metrics_N: dict) -> list[dict]:
    coords = axis.coords
    metrics_N = {k: np.asarray(v) for k, v in metrics_N.items()}
    rows = []
    for i in range(axis.size):
        row = {"step": step, "learner": i, **{n: c[i].item() for n, c in coords.items()}}
        row.update({k: v[i] for k, v in metrics_N.items()})
        rows.append(row)
    return rows


def _write_tb(writer: SummaryWriter, step: int, metrics_N: dict, diverged_N) -> None:
    ok = ~np.asarray(diverged_N, bool)
    for k, v in metrics_N.items():
        v = np.asarray(v, np.float64)
        if v.ndim != 1 or not np.isfinite(v[ok]).any():
            continue  # e.g. evaluation metrics of a chunk that did not evaluate
        writer.add_scalar(f"mean/{k}", float(np.nanmean(v[ok])), step)
        for i, x in enumerate(v):
            if np.isfinite(x):
                writer.add_scalar(f"learner_{i:03d}/{k}", float(x), step)


def run_program(
    program: Program,
    config_dict: dict,
    workdir: str,
    progress: bool = True,
    max_chunks: int | None = None,
) -> dict:
    """Run (or resume, or skip if finished) ``program`` in ``workdir``; returns summary.json.

    ``max_chunks`` stops after that many chunks of this call (status "preempted"), e.g. to
    share a time-sliced machine; the next call resumes from the last checkpoint.
    """
    with wd.Workdir(workdir, config_dict) as w:
        if w.state == "done":
            print(f"[{program.name}] {w.path} already holds this finished run; nothing to do.")
            return wd.read_json(w.file("summary.json"))
        state, data = program.init()
        manager = checkpoints.make_manager(w.file("ckpt"), keep_steps=program.keep_steps)
        state, step = checkpoints.restore_latest(manager, state)
        if step == 0 and 0 in program.keep_steps:
            checkpoints.save(manager, 0, state)  # the initialisation, as a numbered checkpoint
        if step:
            print(f"[{program.name}] resuming {w.path} from step {step}.")
        w.set_status("running", step, num_learners=program.axis.size)
        writer = wd.MetricsWriter(w.file("metrics.jsonl"), resume_step=step)
        tb = SummaryWriter(w.file("tb"))
        bar = Progress(program.name, program.num_steps, progress)
        try:
            done_chunks = 0
            while step < program.num_steps:
                if max_chunks is not None and done_chunks >= max_chunks:
                    w.set_status("preempted", step, num_learners=program.axis.size)
                    bar.done()
                    return {}
                state, metrics = program.chunk(state, data)
                metrics = jax.device_get(metrics)
                step += program.chunk_steps
                done_chunks += 1
                writer.write(_rows(program.axis, step, metrics))
                _write_tb(tb, step, metrics, metrics["diverged"])
                if (step % program.checkpoint_every == 0 or step == program.num_steps
                        or step in program.keep_steps):
                    checkpoints.save(manager, step, state)
                bar.update(step, f"diverged {int(np.sum(metrics['diverged']))}")
            bar.done()
            final = jax.device_get(program.evaluate(state, data))
            diverged = np.asarray(jax.device_get(state.diverged))
            summary = summarize(program.axis, final, diverged, program.select_by)
            summary["name"] = program.name
            summary["num_steps"] = program.num_steps
            wd.write_json_atomic(w.file("summary.json"), summary)
            if program.plot is not None:
                program.plot(w.path, summary, wd.read_metrics(w.file("metrics.jsonl")))
            final_state = "diverged" if diverged.all() else "done"
            w.set_status(final_state, step, num_learners=program.axis.size,
                         num_diverged=int(diverged.sum()))
            return summary
        except BaseException as e:
            w.set_status("failed", step, error=f"{type(e).__name__}: {e}")
            raise
        finally:
            writer.close()
            tb.close()
            manager.close()
