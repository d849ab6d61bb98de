"""Figure helpers every family's figures use (matplotlib ``Figure``, no pyplot; PNGs written
atomically). The figures themselves live with their family (``irmx/irm/plots.py``, ...)."""

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
