"""The measures family's standard figures: a measures run's metric per checkpoint epoch
(``DIR/plots/<metric>.png``, written by the runner through ``Program.plot``) and the
double-descent panel (test error and Jacobian operator norm against model width, written by
``scripts/double_descent.py`` and the measures notebook). Mean +- std over seeds throughout;
each ``*_figure`` builds and returns the ``Figure``, the writers save it."""

import os

import numpy as np
from matplotlib import ticker

from irmx.io.plots import (
    PM,
    empty_panel,
    grid_names,
    mean_std_band,
    save_figure,
    seeds_phrase,
    set_scale,
    subplots,
)

# What each metric of irmx.measures.metrics is: a short name (titles) and its formula (axes).
SHORT = {"jacobian": "Jacobian Frobenius norm", "jacobian_operator_norm": "Jacobian operator norm",
         "accuracy": "accuracy", "crossentropy": "cross-entropy", "confidence": "confidence gap"}
FORMULA = {
    "jacobian": r"$\|J(x)\|_F$",
    "jacobian_operator_norm": r"$\sigma_{\max}(J(x))$",
    "accuracy": "(fraction correct)",
    "crossentropy": "(nats)",
    "confidence": r"$\|\mathrm{onehot}(y) - \mathrm{softmax}(f(x))\|_2$",
}
# what the Jacobian is of, per normalization
OUTPUT_OF = {"none": "of the logits", "softmax": "of softmax", "logsoftmax": "of log-softmax",
             "crossentropy": "of the cross-entropy"}
SUBSETS = (("", "all measured points", "k", "-"),
           ("_clean", "points with clean labels", "C0", "--"),
           ("_corrupted", "points with corrupted labels", "C3", ":"))


def metric_label(metric: str, normalization: str = "none", split: str = "") -> str:
    """The axis label, e.g. "Jacobian operator norm sigma_max(J(x)) of the logits, mean over
    train points" (the formula in mathtext, a line break before "mean")."""
    label = f"{SHORT.get(metric, metric)} {FORMULA.get(metric, '')}".strip()
    if metric.startswith("jacobian"):
        label += " " + OUTPUT_OF.get(normalization, f"({normalization})")
    where = f"{split} " if split else ""
    return f"{label},\nmean over {where}points"


def _subsets(summary: dict) -> list:
    """The point subsets with a value somewhere: clean / corrupted only on the training split
    with label noise (elsewhere every point is clean: no separate curves)."""
    m = summary["metric"]
    has = lambda suffix: any(g.get(m + suffix, {}).get("mean") is not None
                             for g in summary["grid"])
    if not has("_corrupted"):
        return [SUBSETS[0]]
    return [s for s in SUBSETS if has(s[0])]


def measures_figure(summary: dict):
    """The measured metric per checkpoint epoch, mean +- std over seeds, over all measured
    points and separately over clean and label-corrupted training points; without a grid one
    panel with the three, with one a panel per point subset and one curve per grid point."""
    m = summary["metric"]
    names = grid_names(summary, skip=("seed", "checkpoint", "epoch"))
    subsets = _subsets(summary)
    points = {}
    for g in summary["grid"]:
        points.setdefault(tuple(g[n] for n in names), []).append(g)
    seeds = seeds_phrase([g[m]["n"] for g in summary["grid"] if g.get(m)])
    ylabel = metric_label(m, summary.get("normalization", "none"), summary.get("split", ""))
    source = os.path.basename(os.path.normpath(summary.get("source", ""))) or "the source run"
    title = (f"{SHORT.get(m, m)} of the checkpoints of run '{source}'\n"
             f"mean {PM} std {seeds} per checkpoint epoch")
    epochs = sorted({g["epoch"] for g in summary["grid"]})
    panels = [None] if not names else subsets
    width = 7.5 if not names else 4.6 * len(panels) + 1.2
    fig, axes = subplots(len(panels), figsize=(width, 4.6), sharey=True)
    for ax, panel in zip(axes, panels):
        shown = []
        for k, (g, rows) in enumerate(sorted(points.items())):
            rows = sorted(rows, key=lambda r: r["epoch"])
            for suffix, what, color, ls in (subsets if panel is None else [panel]):
                stats = [r.get(m + suffix) or {} for r in rows]
                ok = [s.get("mean") is not None for s in stats]
                if not any(ok):
                    continue
                x = np.array([r["epoch"] for r, o in zip(rows, ok) if o], float)
                mean = np.array([s["mean"] for s, o in zip(stats, ok) if o], float)
                std = np.array([s.get("std") or 0.0 for s, o in zip(stats, ok) if o], float)
                label = what if panel is None else ", ".join(f"{v:g}" for v in g)
                mean_std_band(ax, x, mean, std, label=label, ls=ls if panel is None else "-",
                              color=color if panel is None else f"C{k}")
                shown.append(mean)
        if not shown:
            empty_panel(ax, "no measured values")
        set_scale(ax, shown)
        ax.set_xlabel("epoch of the checkpoint")
        ax.xaxis.set_major_locator(ticker.FixedLocator(epochs) if len(epochs) <= 10
                                   else ticker.MaxNLocator(integer=True))
        if ax is axes[0]:
            ax.set_ylabel(ylabel)
        if panel is not None:
            ax.set_title(panel[1], fontsize=10)
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(fontsize=7, title=", ".join(names) or None, title_fontsize=7)
    fig.suptitle(title, fontsize=11)
    return fig


def measures_run_figures(workdir: str, summary: dict, history: list[dict]) -> None:
    """plots/<metric>.png of a measures run (``measures_figure``)."""
    del history  # the per-batch rows; the figure reads the summary's per-checkpoint stats
    save_figure(measures_figure(summary),
                os.path.join(workdir, "plots", f"{summary['metric']}.png"))


def double_descent_figure_object(rows: list[dict], num_seeds: int | None = None):
    """Test error and Jacobian operator norm (mean +- std over seeds) against model width."""
    rows = sorted(rows, key=lambda r: r["width"])
    widths = np.array([r["width"] for r in rows], float)
    num_seeds = num_seeds or next((r["num_seeds"] for r in rows if "num_seeds" in r), None)
    seeds = seeds_phrase(num_seeds or 0)
    fig, axes = subplots(2, figsize=(11, 4.0))
    panels = ((axes[0], "test_error", "test error", "test error (fraction misclassified)"),
              (axes[1], "jacobian_operator_norm", SHORT["jacobian_operator_norm"],
               metric_label("jacobian_operator_norm", "none", "training")))
    for ax, key, short, label in panels:
        mean = np.array([r[key] for r in rows], float)
        std = np.array([r.get(key + "_std", 0.0) for r in rows], float)
        mean_std_band(ax, widths, mean, std)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(ticker.FixedLocator(widths))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        set_scale(ax, [mean])
        ax.set_xlabel("hidden width (units, log scale)")
        ax.set_ylabel(label)
        ax.set_title(f"{short}, mean {PM} std {seeds}".strip(), fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle("Double descent: one-hidden-layer MLPs on noisy labels", fontsize=11)
    return fig


def double_descent_figure(path: str, rows: list[dict], num_seeds: int | None = None) -> None:
    """Write ``double_descent_figure_object(rows)`` to ``path``."""
    save_figure(double_descent_figure_object(rows, num_seeds), path)
