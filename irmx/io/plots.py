"""Figure helpers every family's figures use (matplotlib ``Figure``, no pyplot; PNGs written
atomically). The figures themselves live with their family (``irmx/irm/plots.py``,
``irmx/classify_plots.py``, ``irmx/measures/plots.py``); each is built by a function that
returns the ``Figure`` (tests read its labels and scales) and saved by a thin wrapper.

The helpers: ``mean_std_band`` (mean line and a +-std band over seeds), ``set_scale`` (linear,
log or symlog from the values, with readable ticks on narrow log ranges), ``category_ticks``
(tick labels that do not overlap), ``grid_label`` / ``groups`` (one curve per grid point) and
``curves`` (history rows -> mean and std over seeds per step).
"""

import math
import os
import tempfile

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from irmx.io import workdir as wd

# Figures are built with matplotlib.figure.Figure, not pyplot: no global backend is set, so
# importing irmx leaves a notebook's inline plotting alone, and nothing leaks between figures.

PM = "\u00b1"  # the ± of "mean ± std" in titles and legends


def subplots(ncols: int, figsize, nrows: int = 1, **kwargs):
    """A ``Figure`` and its axes as a flat array (row-major), constrained layout."""
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes.ravel()


def save_figure(fig, path: str) -> None:
    """Save ``fig`` as PNG via a temp file and an atomic rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run_config(workdir: str) -> dict:
    """The resolved config in ``workdir/config.json`` (titles name the model, the setting ...);
    {} when there is none."""
    try:
        return wd.read_json(os.path.join(workdir, "config.json"))["config"]
    except (OSError, KeyError, ValueError):
        return {}


def seeds_phrase(n) -> str:
    """"over 32 seeds", "over 2-4 seeds" (when grid points differ), "" when unknown."""
    ns = sorted({int(x) for x in np.atleast_1d(n) if x})
    if not ns:
        return ""
    count = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return f"over {count} seed{'s' if ns[-1] != 1 else ''}"


def _finite(values) -> np.ndarray:
    parts = [np.ravel(np.asarray(v, float)) for v in values if v is not None]
    v = np.concatenate(parts) if parts else np.zeros(0)
    return v[np.isfinite(v)]


def _plain(x, _pos=None) -> str:
    """Tick label without scientific notation where it is short: 0.02, 0.5, 3, 200, 1e-05."""
    if x == 0:
        return "0"
    s = f"{x:.3g}"
    return s.replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")


def set_scale(ax, values, axis: str = "y") -> str:
    """Choose and set the scale of ``axis`` from the plotted ``values`` (arrays; NaN ignored).

    log when every value is positive and they span at least a decade. symlog when some are 0
    (a millionth of the largest or less, or negative) and the positive ones span a decade or
    sit far above 0 (the oracle's exact-zero non-causal error beside 1e-2 and 1e-1: a linear
    axis would press the small ones onto the zero line), linear below the smallest positive
    value's decade. Linear otherwise (also under a decade: a log axis there has one labelled
    tick or none). Log axes over one to two (two to three) decades get 1-2-5 (1-3) ticks, in
    plain notation (0.02, 0.5, 200) where that is short. Returns the scale's name."""
    v = _finite(values)
    if not v.size:
        return "linear"
    if not v.any():  # every value exactly 0: one labelled tick, no meaningless +-0.04
        (ax.set_yticks if axis == "y" else ax.set_xticks)([0.0])
        ax.text(0.5, 0.9, "every value is exactly 0", ha="center", transform=ax.transAxes,
                fontsize=8)
        return "linear"
    if v.max() <= 0:
        return "linear"
    # values a millionth of the largest or less count as zeros (a float32 round-off of 0
    # would otherwise stretch a log axis over decades of nothing)
    zero = v <= v.max() * 1e-6
    pos = v[~zero]
    set_scale_fn = ax.set_yscale if axis == "y" else ax.set_xscale
    target = ax.yaxis if axis == "y" else ax.xaxis
    span = math.log10(pos.max() / pos.min())
    if not zero.any() and span >= 1:
        set_scale_fn("log")
        if span < 3:  # one to three decades: one major tick per decade would leave 1-3
            subs = (1.0, 2.0, 5.0) if span < 2 else (1.0, 3.0)
            target.set_major_locator(ticker.LogLocator(subs=subs))
        if 1e-4 <= pos.min() and pos.max() <= 1e5:  # 0.001, 0.5, 200 rather than 10^-3 ...
            target.set_major_formatter(ticker.FuncFormatter(_plain))
        target.set_minor_formatter(ticker.NullFormatter())
        return "log"
    if zero.any() and (span >= 1 or pos.min() < 0.05 * pos.max()):
        linthresh = 10.0 ** math.floor(math.log10(pos.min()))
        set_scale_fn("symlog", linthresh=linthresh, linscale=0.4)
        target.set_major_locator(ticker.SymmetricalLogLocator(linthresh=linthresh, base=10))
        target.set_major_formatter(ticker.FuncFormatter(_plain))
        target.set_minor_locator(ticker.SymmetricalLogLocator(
            linthresh=linthresh, base=10, subs=np.arange(2, 10)))
        target.set_minor_formatter(ticker.NullFormatter())
        return "symlog"
    return "linear"


def mean_std_band(ax, x, mean, std, label=None, color=None, marker=None, log=False, **kw):
    """Mean as a line (markers when there are few points) and mean +- std as a shaded band;
    a single x gets an error bar instead. ``log``: the band's lower edge is kept positive
    (mean / 10 at worst) so a log axis does not clip it."""
    x, mean = np.asarray(x, float), np.asarray(mean, float)
    std = np.nan_to_num(np.asarray(std, float))
    if marker is None and len(x) <= 12:
        marker = "o"
    (line,) = ax.plot(x, mean, label=label, color=color, marker=marker, ms=4, **kw)
    lo, hi = mean - std, mean + std
    if log:
        lo = np.maximum(lo, mean / 10)
    if len(x) == 1:
        ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], color=line.get_color(), capsize=3)
    else:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
    return line


def category_ticks(ax, labels, axis: str = "x", width_chars: float | None = None) -> None:
    """Categorical tick labels at 1..n that do not overlap: rotated 30 degrees (anchored at
    their right end) when their total length exceeds what the axis holds (``width_chars``:
    characters the axis fits at the tick font size; default from the axes' width)."""
    labels = [str(s) for s in labels]
    if axis == "y":
        ax.set_yticks(range(1, len(labels) + 1), labels)
        return
    ax.set_xticks(range(1, len(labels) + 1), labels)
    if width_chars is None:
        fig_w = ax.figure.get_figwidth() * ax.get_position().width
        width_chars = fig_w * 72 / 6.5  # about 6.5 pt per character at 10 pt
    longest = max((len(s) for s in labels), default=0)
    if (longest + 1) * len(labels) > width_chars:
        ax.tick_params(axis="x", labelrotation=30)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
            t.set_rotation_mode("anchor")


def grid_label(names, values) -> str:
    """"penalty_weight=10, lr=0.1" for a grid point; "" without grid coordinates."""
    return ", ".join(f"{n}={v:g}" if isinstance(v, (int, float)) else f"{n}={v}"
                     for n, v in zip(names, values))


def grid_names(summary: dict, skip=("seed",)) -> tuple:
    """The summary's learner-axis coordinates other than ``skip`` (the grid's, in order)."""
    return tuple(n for n in summary["axis"] if n not in skip)


def groups(rows, names) -> dict:
    """Rows grouped by their ``names`` coordinates: {values tuple: [rows]}, sorted."""
    out = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in names), []).append(r)
    return dict(sorted(out.items()))


def curves(history: list[dict], metrics, group_by=(), x="step"):
    """{metric: {group: (x, mean, std, n)}} over learners, grouped by the ``group_by`` coords:
    per value of ``x`` ("step", "epoch") the mean, std and number of learners (seeds) with a
    finite value; diverged learners' rows and non-finite values are left out."""
    out = {}
    for m in metrics:
        by_group = {}
        for r in history:
            v = r.get(m)
            if v is None or r.get("diverged") or not np.isfinite(np.asarray(v, float)).all():
                continue
            if np.ndim(v):  # e.g. per-environment risks: not a curve of this helper
                continue
            g = tuple(r[k] for k in group_by)
            by_group.setdefault(g, {}).setdefault(r[x], []).append(float(v))
        out[m] = {}
        for g, d in sorted(by_group.items()):
            xs = sorted(d)
            out[m][g] = (np.array(xs, float), np.array([np.mean(d[s]) for s in xs]),
                         np.array([np.std(d[s]) for s in xs]),
                         np.array([len(d[s]) for s in xs]))
    return out


def empty_panel(ax, text: str) -> None:
    """A panel with nothing to draw says why (ticks kept when the axes share them)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    if len(ax.get_shared_x_axes().get_siblings(ax)) == 1:
        ax.set_xticks([])
    if len(ax.get_shared_y_axes().get_siblings(ax)) == 1:
        ax.set_yticks([])
