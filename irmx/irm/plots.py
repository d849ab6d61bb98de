"""The IRM family's standard figures: training curves and final errors of a run, the study's
errors per experiment and the study beside the IRM reference's published numbers (written into
the run's workdir by the runner and by ``irmx.experiments.irm.run_study``).

Each ``*_figure`` function returns a matplotlib ``Figure`` (tests read its labels and scales);
``irm_run_figures``, ``irm_study_figure`` and ``irm_reference_figure`` save PNGs."""

import os

import numpy as np
from matplotlib.figure import Figure

from irmx.io import workdir as wd
from irmx.io.plots import (
    PM,
    category_ticks,
    curves,
    empty_panel,
    grid_label,
    grid_names,
    groups,
    mean_std_band,
    run_config,
    save_figure,
    seeds_phrase,
    set_scale,
    subplots,
)

# What each metric is, as an axis label (irmx.irm.metrics, irmx.irm.criteria).
SHORT = {
    "risk": "training risk",
    "penalty": "IRMv1 penalty",
    "causal_error": "causal error",
    "noncausal_error": "non-causal error",
    "heldout_mse": "held-out MSE",
}
LABELS = {
    "risk": "training risk (MSE, {reduction} over training envs)",
    "penalty": "IRMv1 penalty (squared dummy-scale\ngradient, summed over envs)",
    "causal_error": "causal error\n(MSE to the invariant weights on X)",
    "noncausal_error": "non-causal error\n(MSE of the weights on Z; invariant: 0)",
    "heldout_mse": "held-out MSE\n(test environment, unseen noise scale)",
}
ERRORS = ("causal_error", "noncausal_error", "heldout_mse")


def _run_info(workdir: str) -> dict:
    """The run's setting and criterion from its config.json (empty when there is none)."""
    c = run_config(workdir)
    crit = c.get("criterion", {})
    return {"setting": c.get("data", {}).get("setting", ""), "criterion": crit.get("name", ""),
            "reduction": crit.get("risk_reduction", "mean")}


def _what(summary: dict, info: dict) -> str:
    """"irmv1 on FEU" (the run's name and SEM setting)."""
    name = summary.get("name", "") or info.get("criterion", "")
    setting = info.get("setting")
    return f"{name} on {setting}" if setting else name


def _label(metric: str, info: dict) -> str:
    return LABELS.get(metric, metric).format(reduction=info.get("reduction", "mean"))


def irm_curves_figure(summary: dict, history: list[dict], info: dict | None = None) -> Figure:
    """Training risk and IRMv1 penalty against the training step: mean +- std over seeds, one
    curve per grid point of the vmapped values."""
    info = info or {}
    names = grid_names(summary)
    metrics = ("risk", "penalty")
    data = curves(history, metrics, names)
    fig, axes = subplots(2, figsize=(11, 4.0))
    for ax, m in zip(axes, metrics):
        panel = data[m]
        if not panel:
            empty_panel(ax, "no finite values (every learner diverged?)")
        for g, (steps, mean, std, _) in panel.items():
            mean_std_band(ax, steps, mean, std, label=", ".join(f"{v:g}" for v in g) or None,
                          log=True, marker="")
        scale = set_scale(ax, [mean for _, mean, _, _ in panel.values()])
        if scale != "log":  # the band (mean - std) stays at or above 0 on a linear axis
            ax.set_ylim(bottom=max(ax.get_ylim()[0], 0.0))
        ax.set_xlabel("training step")
        label = _label(m, info)
        if m == "penalty" and info.get("criterion") not in ("", "irmv1"):
            label += "\n(monitored, not trained on)"
        ax.set_ylabel(label)
        seeds = seeds_phrase([n.max() for _, _, _, n in panel.values()])
        ax.set_title(f"{_what(summary, info)}: {SHORT[m]},\nmean {PM} std {seeds}", fontsize=10)
        ax.grid(alpha=0.3)
        if names and panel:
            ax.legend(fontsize=7, title=", ".join(names), title_fontsize=7)
    return fig


def irm_errors_figure(summary: dict, info: dict | None = None) -> Figure:
    """Causal error, non-causal error and held-out MSE of every learner at the end: per grid
    point a box (quartiles, whiskers 1.5 IQR) with one dot per seed. A log axis where the values
    span a decade, symlog where some are exactly 0 (the oracle's non-causal error)."""
    info = info or {}
    names = grid_names(summary)
    rows = [r for r in summary["learners"] if not r["diverged"]]
    by_point = groups(rows, names)
    fig, axes = subplots(3, figsize=(12, 4.2))
    for ax, m in zip(axes, ERRORS):
        ax.set_ylabel(_label(m, info))
        ax.set_title(SHORT[m], fontsize=10)
        if not rows:  # every learner diverged: say so instead of an empty box plot
            empty_panel(ax, "every learner diverged")
            continue
        vals = [np.array([r[m] for r in rs], float) for rs in by_point.values()]
        _boxes(ax, vals)
        set_scale(ax, vals)
        if names:
            category_ticks(ax, [grid_label((), g) or ",".join(f"{v:g}" for v in g)
                                for g in by_point])
            ax.set_xlabel(", ".join(names) + " (vmapped)")
        else:
            category_ticks(ax, [summary.get("name", "")])
        ax.grid(axis="y", alpha=0.3)
    seeds = seeds_phrase([len(rs) for rs in by_point.values()])
    fig.suptitle(f"{_what(summary, info)}: final errors per learner "
                 f"(box: quartiles, dots: {seeds.replace('over ', '')})", fontsize=11)
    return fig


def _boxes(ax, vals, horizontal: bool = False) -> None:
    """Boxes of ``vals`` (one array per position 1..n) and every value as a jittered dot."""
    kept = [v[np.isfinite(v)] for v in vals]
    ax.boxplot(kept, showfliers=False, widths=0.5,
               orientation="horizontal" if horizontal else "vertical",
               medianprops={"color": "k"})
    for k, v in enumerate(kept):
        jitter = np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(len(v))
        pos = k + 1 + jitter
        ax.plot(*((v, pos) if horizontal else (pos, v)), ".", color=f"C{k % 10}", alpha=0.6,
                ms=4)


def irm_run_figures(workdir: str, summary: dict, history: list[dict]) -> None:
    """plots/curves.png (``irm_curves_figure``; not for a closed-form solver, which takes no
    training steps) and plots/errors.png (``irm_errors_figure``)."""
    info = _run_info(workdir)
    if history:
        save_figure(irm_curves_figure(summary, history, info),
                    os.path.join(workdir, "plots", "curves.png"))
    save_figure(irm_errors_figure(summary, info), os.path.join(workdir, "plots", "errors.png"))


def irm_study_figure_object(per_seed: dict, setting: str = "") -> Figure:
    """Errors per experiment over seeds, one panel per metric, one horizontal box (quartiles)
    with a dot per seed for each experiment: experiments read top to bottom, so a study of 24
    (``paper,all_settings``) stays legible."""
    names = list(per_seed)
    metrics = list(next(iter(per_seed.values())))
    height = max(3.2, 0.32 * len(names) + 1.6)
    fig, axes = subplots(len(metrics), figsize=(4.2 * len(metrics) + 1.5, height), sharey=True)
    counts = []
    for ax, m in zip(axes, metrics):
        vals = [np.array([v for v in per_seed[n][m] if v is not None], float) for n in names]
        counts += [len(v) for v in vals]
        _boxes(ax, vals, horizontal=True)
        set_scale(ax, vals, axis="x")
        ax.set_xlabel(LABELS.get(m, m).replace("\n", " ") if len(metrics) < 3
                      else LABELS.get(m, m))
        ax.set_title(SHORT.get(m, m), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    category_ticks(axes[0], names, axis="y")
    axes[0].invert_yaxis()  # the study's first experiment on top
    where = f" on {setting}" if setting else ""
    fig.suptitle(f"IRM study{where}: final errors per experiment "
                 f"(box: quartiles, dots: {seeds_phrase(counts).replace('over ', '')})",
                 fontsize=11)
    return fig


def irm_study_figure(path: str, per_seed: dict, setting: str = "") -> None:
    """plots/errors_by_experiment.png of a study (``irm_study_figure_object``)."""
    if not setting:
        try:
            setting = wd.read_json(os.path.join(os.path.dirname(os.path.dirname(path)),
                                                "summary.json")).get("setting", "")
        except (OSError, ValueError):
            setting = ""
    save_figure(irm_study_figure_object(per_seed, setting.replace(",", ", ")), path)


def irm_reference_figure_object(per_seed: dict, experiments: dict, references: dict,
                                num_seeds: int, repetitions: int) -> Figure:
    """The IRM reference's synthetic figure with irmx beside it: per setting, the causal and
    the non-causal error of each method (bar = mean, whisker = std), irmx solid, the reference's
    published numbers hatched. ``experiments``: name -> (setting, method); ``references``:
    name -> ``irmx.irm.reference.reference_row``."""
    settings = list(dict.fromkeys(s for s, _ in experiments.values()))
    methods = list(dict.fromkeys(m for _, m in experiments.values()))
    metrics = (("causal_error", "causal error\n(MSE to invariant weights on X)"),
               ("noncausal_error", "non-causal error\n(MSE of weights on Z)"))
    fig = Figure(figsize=(max(7.0, 1.5 * len(settings) + 2), 6.4), layout="constrained")
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
        ax.set_ylabel(f"{label}, log")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(settings)), settings)
    axes[-1].set_xlabel("SEM setting (F/P: fully / partially observed,\n"
                        "O/E: homo- / heteroskedastic, U/S: unscrambled / scrambled)")
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"IRM synthetic regression: irmx (mean {PM} std over {num_seeds} seeds)\n"
                 f"vs the IRM reference (mean {PM} std over {repetitions} repetitions)",
                 fontsize=11)
    return fig


def irm_reference_figure(path: str, per_seed: dict, experiments: dict, references: dict,
                         num_seeds: int, repetitions: int) -> None:
    """plots/errors_vs_reference.png (``irm_reference_figure_object``)."""
    save_figure(irm_reference_figure_object(per_seed, experiments, references, num_seeds,
                                            repetitions), path)
