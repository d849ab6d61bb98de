"""The IRM family's standard figures: training curves and errors of a run, and the study's
errors per experiment (written into the run's workdir by the runner)."""

import os

import numpy as np
from matplotlib.figure import Figure

from irmx.io.plots import curves, log_if_positive, save_figure, subplots


def irm_run_figures(workdir: str, summary: dict, history: list[dict]) -> None:
    """plots/curves.png: training risk and IRMv1 penalty over steps (mean +- std over seeds);
    plots/errors.png: causal / non-causal error and held-out MSE of every learner."""
    group_by = tuple(n for n in summary["axis"] if n != "seed")
    metrics = ("risk", "penalty")
    data = curves(history, metrics, group_by)
    fig, axes = subplots(2, figsize=(10, 3.6))
    for ax, m in zip(axes, metrics):
        for g, (steps, mean, std) in sorted(data[m].items()):
            label = ", ".join(f"{k}={v:g}" for k, v in zip(group_by, g)) or "mean over seeds"
            ax.plot(steps, mean, label=label)
            # the band's lower edge is kept positive so a log axis does not clip it
            ax.fill_between(steps, np.maximum(mean - std, mean * 0.05), mean + std, alpha=0.2)
        log_if_positive(ax, [mean for _, mean, _ in data[m].values()])
        ax.set_xlabel("step")
        ax.set_title(f"{m} ({summary.get('name', '')})")
        if data[m]:
            ax.legend(fontsize=7)
    save_figure(fig, os.path.join(workdir, "plots", "curves.png"))

    names = ("causal_error", "noncausal_error", "heldout_mse")
    fig, axes = subplots(3, figsize=(11, 3.4))
    rows = [r for r in summary["learners"] if not r["diverged"]]
    for ax, m in zip(axes, names):
        ax.set_title(m)
        if not rows:  # every learner diverged: say so instead of an empty box plot
            ax.text(0.5, 0.5, "every learner diverged", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        if group_by:
            labels = sorted({tuple(r[k] for k in group_by) for r in rows})
            vals = [[r[m] for r in rows if tuple(r[k] for k in group_by) == g] for g in labels]
            ax.boxplot(vals, tick_labels=[",".join(f"{v:g}" for v in g) for g in labels])
            ax.set_xlabel(",".join(group_by))
        else:
            vals = [[r[m] for r in rows]]
            ax.boxplot(vals, tick_labels=[summary.get("name", "")])
        log_if_positive(ax, vals)
    save_figure(fig, os.path.join(workdir, "plots", "errors.png"))


def irm_study_figure(path: str, per_seed: dict) -> None:
    """Errors per experiment over seeds: one panel per metric, one box + points per experiment."""
    names = list(per_seed)
    metrics = list(next(iter(per_seed.values())))
    fig, axes = subplots(len(metrics), figsize=(4 * len(metrics), 3.8))
    for ax, m in zip(axes, metrics):
        vals = [np.array([v for v in per_seed[n][m] if v is not None], float) for n in names]
        ax.boxplot(vals, tick_labels=names, showfliers=False)
        for k, v in enumerate(vals):
            jitter = np.linspace(-0.12, 0.12, len(v)) if len(v) > 1 else np.zeros(len(v))
            ax.plot(k + 1 + jitter, v, ".", alpha=0.5, ms=4)
        log_if_positive(ax, vals)
        ax.set_title(m)
        ax.tick_params(axis="x", labelrotation=30)
    save_figure(fig, path)


def irm_reference_figure(path: str, per_seed: dict, experiments: dict, references: dict,
                         num_seeds: int, repetitions: int) -> None:
    """The IRM reference's synthetic figure with irmx beside it: per setting, the causal and
    the non-causal error of each method (bar = mean, whisker = std), irmx solid, the reference's
    published numbers hatched. ``experiments``: name -> (setting, method); ``references``:
    name -> ``irmx.irm.reference.reference_row``."""
    settings = list(dict.fromkeys(s for s, _ in experiments.values()))
    methods = list(dict.fromkeys(m for _, m in experiments.values()))
    metrics = (("causal_error", "causal error"), ("noncausal_error", "non-causal error"))
    fig = Figure(figsize=(max(7.0, 1.5 * len(settings) + 2), 6.4))
    axes = fig.subplots(2, 1, sharex=True)
    width = 0.8 / (2 * len(methods))
    floor = 1e-5  # the log axis starts here; smaller means are marked "~0"
    for ax, (m, label) in zip(axes, metrics):
        for k, method in enumerate(methods):
            color = f"C{k}"
            for j, setting in enumerate(settings):
                name = next((n for n, sm in experiments.items() if sm == (setting, method)), None)
                if name is None:
                    continue
                x = j - 0.4 + (2 * k + 0.5) * width
                vals = np.array([v for v in per_seed[name][m] if v is not None], float)
                bars = [(x, vals.mean(), vals.std(), 0.8, None, "irmx")]
                if name in references:
                    bars.append((x + width, *references[name][m], 0.35, "//", "reference"))
                for xb, mean, std, alpha, hatch, who in bars:
                    ax.bar(xb, max(mean, floor), width, yerr=std, color=color, alpha=alpha,
                           hatch=hatch, capsize=2,
                           label=f"{method} ({who})" if j == 0 else None)
                    if mean < floor:  # an exact zero (ICP keeps no effect) has no log bar
                        ax.text(xb, floor * 1.3, "~0", ha="center", fontsize=6)
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        ax.set_ylabel(f"{label} (log)")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(settings)), settings)
    axes[-1].set_xlabel("SEM setting (F/P observed, O/E homo/heteroskedastic, U/S scrambled)")
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"IRM synthetic regression: irmx ({num_seeds} seeds) vs the IRM reference "
                 f"({repetitions} repetitions), mean +- std")
    save_figure(fig, path)
