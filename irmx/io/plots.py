"""The families' standard figures (matplotlib, Agg backend, written atomically)."""

import os
import tempfile

import numpy as np
from matplotlib.figure import Figure

# Figures are built with matplotlib.figure.Figure, not pyplot: no global backend is set, so
# importing irmx leaves a notebook's inline plotting alone, and nothing leaks between figures.


def subplots(ncols: int, figsize):
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols)
    return fig, np.atleast_1d(axes)


def save_figure(fig, path: str) -> None:
    """Save ``fig`` as PNG via a temp file and an atomic rename, then close it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    os.replace(tmp, path)


def log_if_positive(ax, values) -> None:
    """Log y-axis when every plotted value is positive (an exact zero, e.g. the oracle's
    non-causal error, would be dropped from a log axis)."""
    v = np.concatenate([np.ravel(np.asarray(x, float)) for x in values]) if values else []
    if len(v) and np.all(v[np.isfinite(v)] > 0):
        ax.set_yscale("log")


def curves(history: list[dict], metrics, group_by=()):
    """{metric: {group: (steps, mean, std)}} over learners, grouped by the vmapped coords."""
    out = {}
    for m in metrics:
        groups = {}
        for r in history:
            if r.get(m) is None or r.get("diverged"):
                continue
            g = tuple(r[k] for k in group_by)
            groups.setdefault(g, {}).setdefault(r["step"], []).append(r[m])
        out[m] = {
            g: (np.array(sorted(d)), np.array([np.mean(d[s]) for s in sorted(d)]),
                np.array([np.std(d[s]) for s in sorted(d)]))
            for g, d in groups.items()
        }
    return out


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
        ax.legend(fontsize=7)
    save_figure(fig, os.path.join(workdir, "plots", "curves.png"))

    names = ("causal_error", "noncausal_error", "heldout_mse")
    fig, axes = subplots(3, figsize=(11, 3.4))
    rows = [r for r in summary["learners"] if not r["diverged"]]
    for ax, m in zip(axes, names):
        if group_by:
            labels = sorted({tuple(r[k] for k in group_by) for r in rows})
            vals = [[r[m] for r in rows if tuple(r[k] for k in group_by) == g] for g in labels]
            ax.boxplot(vals, tick_labels=[",".join(f"{v:g}" for v in g) for g in labels])
            ax.set_xlabel(",".join(group_by))
        else:
            vals = [[r[m] for r in rows]]
            ax.boxplot(vals, tick_labels=[summary.get("name", "")])
        log_if_positive(ax, vals)
        ax.set_title(m)
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


def double_descent_figure(path: str, rows: list[dict]) -> None:
    """Test error and Jacobian operator norm (mean +- std over seeds) against model width."""
    widths = np.array([r["width"] for r in rows])
    fig, axes = subplots(2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "test_error", "test error"),
                           (axes[1], "jacobian_operator_norm", "Jacobian operator norm")):
        mean = np.array([r[key] for r in rows])
        std = np.array([r[key + "_std"] for r in rows])
        ax.errorbar(widths, mean, yerr=std, marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden width")
        ax.set_title(label)
    save_figure(fig, path)
