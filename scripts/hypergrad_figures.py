r"""The hypergrad family's figures (Clarke et al., ICLR 2022) from a ``compare`` workdir, or from
several single-algorithm workdirs::

  python scripts/hypergrad_figures.py runs/hg-compare                 # -> runs/hg-compare/plots/
  python scripts/hypergrad_figures.py runs/hg-ours runs/hg-random --out figs

Three PNGs:

* ``sorted_final_losses.png``: per algorithm, its final test metric over the initialisations,
  sorted, against the fraction of initialisations (the paper's CDF-style figure; log y).
  Diverged runs count as the worst (they sit past the end of the line, named in the legend).
  ``random_3batched`` and ``bayesopt`` come from the compare summary's sources (the
  Random_Validation runs in 3-batches, the BayesOpt repeats' final losses).
* ``hyperparameter_trajectories.png``: learning rate, weight decay and momentum over network
  steps (log y for the first two) of up to 10 initialisations, one row of panels per
  hypergradient algorithm (those that optimise a hyperparameter); step 0 is the initial value.
  A per-parameter learning rate is drawn as its logged ``lr`` with the band of its 10-90 %
  deciles.
* ``loss_over_time.png``: median and interquartile band over the initialisations of the test
  metric at every logged step, per trained algorithm.

Each figure is built by a function returning a matplotlib ``Figure`` (importable:
``load_runs``, ``sorted_losses``, ``sorted_losses_figure``, ``trajectories_figure``,
``loss_over_time_figure``, ``write_figures``).
"""

import argparse
import os
import sys

import numpy as np
from matplotlib import ticker

from irmx.io import plots
from irmx.io import workdir as wd
from irmx.io.scalars import read_scalars

LABELS = {
    "random": "Random", "random_validation": "Random (validation)",
    "random_3batched": "Random (3-batched)", "bayesopt": "Bayesian Optimisation",
    "lorraine": "Lorraine", "baydin": "Baydin", "ours_lr": "Ours (WD+LR)",
    "ours_lr_momentum": "Ours (WD+LR+M)", "ours_hdlr_momentum": "Ours (WD+HDLR+M)",
    "diff_through_opt": "Diff-through-Opt",
}
HYPERS = (("lr", "learning rate", True), ("weight_decay", "weight decay", True),
          ("momentum", "momentum", False))
METRIC_LABELS = {"unnormalised_test_loss": "final test MSE (unnormalised)",
                 "test_loss": "final test loss"}
MAX_TRAJECTORIES = 10
FILES = ("sorted_final_losses.png", "hyperparameter_trajectories.png", "loss_over_time.png")


def label(name: str) -> str:
    return LABELS.get(name, name)


# ---------------------------------------------------------------------------------------------
# Reading


class Runs:
    """The algorithms of a comparison: ``order`` (names), ``dirs`` (name -> trained workdir),
    ``summaries`` (name -> its summary.json), ``extra_losses`` (name -> final losses of the
    rows without a trained workdir: random_3batched, bayesopt), ``metric``, ``config`` (the
    comparison's, or the first workdir's) and ``scalars(name)`` (``read_scalars``, cached)."""

    def __init__(self):
        self.order, self.dirs, self.summaries, self.extra_losses = [], {}, {}, {}
        self.metric, self.config, self._scalars = "test_loss", {}, {}

    def scalars(self, name: str) -> dict:
        if name not in self._scalars:
            self._scalars[name] = read_scalars(self.dirs[name])
        return self._scalars[name]

    @property
    def num_initialisations(self) -> int:
        return max((s["num_learners"] for s in self.summaries.values()), default=0)


def _is_compare(path: str) -> bool:
    try:
        return "rows" in wd.read_json(os.path.join(path, "summary.json"))
    except (OSError, ValueError):
        return False


def _add_workdir(runs: Runs, path: str, name: str | None = None) -> None:
    summary = wd.read_json(os.path.join(path, "summary.json"))
    if "final_losses" in summary:  # a BayesOpt search: its repeats' final losses only
        name = name or os.path.basename(os.path.normpath(path))
        runs.extra_losses[name] = np.asarray(
            [np.nan if v is None else v for v in summary["final_losses"]], np.float64)
    else:
        name = name or summary.get("name") or os.path.basename(os.path.normpath(path))
        runs.dirs[name], runs.summaries[name] = path, summary
    runs.metric = summary.get("result_metric", runs.metric)
    if name not in runs.order:
        runs.order.append(name)


def load_runs(paths) -> Runs:
    """A compare workdir (its sub-workdirs in the comparison's order) or single-algorithm
    workdirs (each named by its summary's ``name``)."""
    runs = Runs()
    paths = [paths] if isinstance(paths, str) else list(paths)
    for path in paths:
        if not os.path.exists(os.path.join(path, "summary.json")):
            raise SystemExit(f"{path}: no summary.json (not a finished hypergrad workdir)")
        if not runs.config:
            runs.config = plots.run_config(path)
        if not _is_compare(path):
            _add_workdir(runs, path)
            continue
        top = wd.read_json(os.path.join(path, "summary.json"))
        runs.metric = top.get("result_metric", runs.metric)
        config = plots.run_config(path)
        for name in top["rows"]:
            sub = os.path.join(path, name)
            if os.path.exists(os.path.join(sub, "summary.json")):
                _add_workdir(runs, sub, name)
            elif name not in runs.order:  # derived from another algorithm's runs
                losses = _derived_losses(runs, config, name)
                if losses is not None:
                    runs.extra_losses[name] = losses
                    runs.order.append(name)
    return runs


def _derived_losses(runs: Runs, config: dict, name: str):
    """``random_3batched``: the Random_Validation runs in batches (the driver's rule)."""
    spec = config.get("compare", {}).get(name, {})
    size = int(spec.get("batched", 1) or 1)
    source = runs.summaries.get("random_validation")
    if size <= 1 or source is None:
        return None
    from irmx.experiments.hypergrad import batched_losses

    return batched_losses(source, runs.metric, size, int(config.get("seed", 0)))


def final_losses(summary: dict, metric: str) -> np.ndarray:
    """Per learner of ``summary``, its final ``metric`` (NaN when it diverged)."""
    return np.array([np.nan if r.get("diverged") or r.get(metric) is None else r[metric]
                     for r in summary["learners"]], np.float64)


def sorted_losses(runs: Runs) -> dict:
    """{algorithm: its final losses sorted ascending, the diverged (NaN) ones last}."""
    out = {}
    for name in runs.order:
        v = (final_losses(runs.summaries[name], runs.metric) if name in runs.summaries
             else runs.extra_losses[name])
        out[name] = np.sort(v)  # np.sort puts NaN last
    return out


def hypergradient_algorithms(runs: Runs) -> list[str]:
    """The trained algorithms that optimise a hyperparameter (in the comparison's order)."""
    return [n for n in runs.order if n in runs.summaries
            and runs.summaries[n].get("algorithm", {}).get("optimised")]


# ---------------------------------------------------------------------------------------------
# Figures


def _data_name(runs: Runs) -> str:
    return runs.config.get("data", {}).get("name", "")


def _inits_phrase(n: int) -> str:
    return f"{n} initialisation{'s' if n != 1 else ''}"


def _log_y(ax, values) -> None:
    """A log y axis with labelled ticks also when the values span under a decade."""
    v = plots._finite(values)
    v = v[v > 0]
    ax.set_yscale("log", nonpositive="mask")
    if not v.size:
        return
    span = np.log10(v.max() / v.min()) if v.min() > 0 else 0.0
    if span < 1:  # 6000, 7000, 8000: the 1..9 multiples of the decade
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=np.arange(1, 10)))
        ax.yaxis.set_minor_locator(ticker.LogLocator(subs=np.arange(1, 10) / 2 + 0.5))
    elif span < 3:
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0) if span < 2
                                                     else (1.0, 3.0)))
    if 1e-4 <= v.min() and v.max() <= 1e5:  # 0.002, 7000 rather than 2e-3, 7e3
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def sorted_losses_figure(runs: Runs):
    """(a) Final test metric of every initialisation, sorted, per algorithm (log y)."""
    data = sorted_losses(runs)
    fig, (ax,) = plots.subplots(1, (7.5, 4.8))
    for name, v in data.items():
        n, ok = len(v), np.isfinite(v)
        if not n:
            continue
        x = (np.arange(n) + 0.5) / n  # the i-th best of n runs at its quantile
        diverged = int(n - ok.sum())
        text = f"{label(name)} (n={n}" + (f", {diverged} diverged)" if diverged else ")")
        ax.plot(x[ok], v[ok], label=text, marker="o" if ok.sum() <= 12 else None, ms=3.5,
                lw=1.6)
    _log_y(ax, list(data.values()))
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of initialisations (sorted by final loss)")
    ax.set_ylabel(METRIC_LABELS.get(runs.metric, f"final {runs.metric}"))
    where = f" on {_data_name(runs)}" if _data_name(runs) else ""
    ax.set_title(f"Sorted final {runs.metric}{where} over "
                 f"{_inits_phrase(runs.num_initialisations)} per algorithm", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", frameon=False)
    return fig


def _with_start(steps, values, start):
    """Prepend step 0 with the initial value when it is known."""
    if start is None or not np.isfinite(start):
        return steps, values
    return np.concatenate([[0], steps]), np.concatenate([[start], values])


def trajectories_figure(runs: Runs, max_inits: int = MAX_TRAJECTORIES):
    """(b) lr / weight decay / momentum over network steps of up to ``max_inits``
    initialisations, one row per hypergradient algorithm."""
    names = hypergradient_algorithms(runs)
    nrows = max(len(names), 1)
    fig, axes = plots.subplots(3, (11, 2.3 * nrows + 0.6), nrows=nrows, sharex=True)
    axes = axes.reshape(nrows, 3)
    if not names:
        for ax in axes[0]:
            plots.empty_panel(ax, "no hypergradient algorithm in these runs")
    shown = 0
    colors = [f"C{i}" for i in range(10)]
    for row, name in zip(axes, names):
        s = runs.scalars(name)
        optimised = runs.summaries[name].get("algorithm", {}).get("optimised", [])
        k = min(max_inits, len(s["learner"]))
        shown = max(shown, k)
        for ax, (hp, hp_label, log) in zip(row, HYPERS):
            values = []
            if hp not in s or np.ndim(s[hp]) != 2:
                plots.empty_panel(ax, f"{hp} not logged")
            else:
                start = s["coords"].get(hp, s["coords"].get(f"initial_{hp}"))
                for i in range(k):
                    x, y = _with_start(s["step"], s[hp][i],
                                       None if start is None else float(start[i]))
                    ax.plot(x, y, color=colors[i % 10], lw=1.2, alpha=0.9)
                    values.append(y)
                    if hp == "lr" and "lr_quantiles" in s:  # per-parameter: 10-90 % deciles
                        q = s["lr_quantiles"][i]
                        ax.fill_between(s["step"], q[:, 1], q[:, 9], color=colors[i % 10],
                                        alpha=0.12, lw=0)
                        values += [q[:, 1], q[:, 9]]
                if log:
                    _log_y(ax, values)
            state = "optimised" if hp in optimised else "fixed"
            ax.set_title(f"{label(name)}: {hp_label} ({state})", fontsize=9)
            ax.set_ylabel(hp_label)
            ax.grid(True, alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("network step")
    total = runs.num_initialisations
    which = f"{shown} of {_inits_phrase(total)}" if shown < total else _inits_phrase(total)
    fig.suptitle(f"Hyperparameter trajectories of the hypergradient algorithms ({which}; "
                 "one colour per initialisation, step 0 = initial value)", fontsize=10)
    return fig


def loss_curves(runs: Runs) -> dict:
    """{algorithm: (steps, median, q25, q75, n)} of the test metric over initialisations
    (finite values only), for every trained algorithm."""
    out = {}
    for name in runs.order:
        if name not in runs.dirs:
            continue
        s = runs.scalars(name)
        metric = runs.metric if runs.metric in s else "test_loss"
        if metric not in s:
            continue
        v = np.where(np.isfinite(s[metric]), s[metric], np.nan)
        has = np.isfinite(v).any(axis=0)
        if not has.any():
            continue
        v = v[:, has]
        q25, med, q75 = np.nanpercentile(v, [25, 50, 75], axis=0)
        out[name] = (s["step"][has], med, q25, q75, np.isfinite(v).sum(axis=0))
    return out


def loss_over_time_figure(runs: Runs):
    """(c) Median and interquartile band of the test metric over initialisations vs step."""
    curves = loss_curves(runs)
    fig, (ax,) = plots.subplots(1, (7.5, 4.8))
    values = []
    for name, (x, med, lo, hi, _) in curves.items():
        (line,) = ax.plot(x, med, label=label(name), lw=1.5,
                          marker="o" if len(x) <= 12 else None, ms=3)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.1, lw=0)
        values += [med, lo, hi]
    if not curves:
        plots.empty_panel(ax, "no logged test loss")
    elif plots.set_scale(ax, values) == "linear" and plots._finite(values).min() > 0:
        _log_y(ax, values)
    ax.set_xlabel("network step")
    ax.set_ylabel(METRIC_LABELS.get(runs.metric, runs.metric).replace("final ", ""))
    where = f" on {_data_name(runs)}" if _data_name(runs) else ""
    ax.set_title(f"{runs.metric}{where} during training\nmedian and interquartile range over "
                 f"{_inits_phrase(runs.num_initialisations)} per algorithm", fontsize=10)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=7.5, frameon=False)
    return fig


def write_figures(paths, out: str | None = None) -> list[str]:
    """The three PNGs of the workdir(s) ``paths`` into ``out`` (default: the first workdir's
    ``plots/``); returns their paths."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    runs = load_runs(paths)
    out = out or os.path.join(paths[0], "plots")
    written = []
    for filename, make in zip(FILES, (sorted_losses_figure, trajectories_figure,
                                      loss_over_time_figure)):
        path = os.path.join(out, filename)
        plots.save_figure(make(runs), path)
        written.append(path)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                        help="a compare workdir, or single-algorithm workdirs")
    parser.add_argument("--out", default=None,
                        help="folder for the PNGs (default: WORKDIR/plots of the first)")
    args = parser.parse_args(argv)
    for path in write_figures(args.workdirs, args.out):
        print(path)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
