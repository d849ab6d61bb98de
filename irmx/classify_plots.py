"""The classifier family's standard figure (``launch/train.py``): loss and accuracy of each
evaluated split per epoch, mean +- std over seeds, written to ``DIR/plots/curves.png`` by the
runner (``Program.plot``).

Without a vmapped grid one panel per quantity holds every split (the noisy-label picture: the
accuracy on the noisy training labels climbs while the clean and test accuracies fall back);
with one, a panel per split and quantity holds one curve per grid point."""

import os

from matplotlib import ticker

from irmx.io.plots import (
    PM,
    curves,
    empty_panel,
    grid_names,
    mean_std_band,
    run_config,
    save_figure,
    seeds_phrase,
    set_scale,
    subplots,
)

# The evaluators' splits (irmx.experiments.classify.SPLITS) as legend entries.
SPLIT_LABELS = {
    "train": "training set, noisy labels (trained on)",
    "train_clean": "training set, clean labels",
    "val": "validation set",
    "test": "test set",
}
BATCH_LABEL = "last training batch of the epoch (noisy labels)"
QUANTITIES = (("loss", "cross-entropy loss (nats)"), ("accuracy", "accuracy (fraction correct)"))


def _run_info(workdir: str) -> dict:
    """The run's model, data set and label noise (titles)."""
    c = run_config(workdir)
    d = c.get("data", {})
    return {"model": c.get("model", {}).get("name", ""), "data": d.get("name", ""),
            "label_noise": d.get("label_noise")}


def evaluated_splits(history: list[dict]) -> list[str]:
    """Names ``s`` with ``s_loss`` or ``s_accuracy`` holding a value in some row, known splits
    first (the evaluators of ``config.evals``)."""
    found = {k.rsplit("_", 1)[0] for r in history for k, v in r.items()
             if v is not None and (k.endswith("_loss") or k.endswith("_accuracy"))}
    return [s for s in SPLIT_LABELS if s in found] + sorted(found - set(SPLIT_LABELS))


def _title(summary: dict, info: dict, what: str, seeds: str) -> str:
    parts = [summary.get("name", "")]
    if info.get("model"):
        on = f"{info['model']} on {info['data']}"
        if info.get("label_noise") is not None and "label_noise" not in summary["axis"]:
            on += f", {info['label_noise']:.0%} label noise"
        parts.append(on)
    return f"{': '.join(p for p in parts if p)}\n{what}, mean {PM} std {seeds}"


def classify_curves_figure(summary: dict, history: list[dict], info: dict | None = None):
    """Loss and accuracy per epoch of each evaluated split (and of the epoch's last training
    batch), mean +- std over seeds; one curve per grid point when the learner axis has vmapped
    values beyond the seeds."""
    info = info or {}
    names = grid_names(summary)
    splits = evaluated_splits(history)
    keys = [f"{s}_{q}" for s in splits for q, _ in QUANTITIES] + [q for q, _ in QUANTITIES]
    data = curves(history, keys, names, x="epoch")
    counts = [n.max() for m in data.values() for *_, n in m.values()]
    seeds = seeds_phrase(counts)
    if not names:
        fig, axes = subplots(2, figsize=(11.5, 4.2))
        for ax, (q, ylabel) in zip(axes, QUANTITIES):
            shown = []
            for k, s in enumerate(splits):
                for _, (x, mean, std, _) in data[f"{s}_{q}"].items():
                    mean_std_band(ax, x, mean, std, label=SPLIT_LABELS.get(s, s),
                                  color=f"C{k}", log=True)
                    shown.append(mean)
            for _, (x, mean, _, _) in data[q].items():
                ax.plot(x, mean, color="0.45", lw=1, ls="--", label=BATCH_LABEL)
                shown.append(mean)
            _finish(ax, q, ylabel, shown)
            ax.set_title(_title(summary, info, f"{q} per split", seeds), fontsize=10)
        if splits or data["loss"]:
            axes[1].legend(fontsize=7, loc="best")
        return fig
    cols = splits or ["(none)"]
    fig, axes = subplots(len(cols), figsize=(3.6 * len(cols) + 1.5, 6.8), nrows=2,
                         sharex=True, sharey="row")
    axes = axes.reshape(2, len(cols))
    for row, (q, ylabel) in enumerate(QUANTITIES):
        for col, s in enumerate(cols):
            ax = axes[row, col]
            panel = data.get(f"{s}_{q}", {})
            if not panel:
                empty_panel(ax, "not evaluated")
                continue
            for g, (x, mean, std, _) in panel.items():
                mean_std_band(ax, x, mean, std, label=", ".join(f"{v:g}" for v in g), log=True)
            _finish(ax, q, ylabel if col == 0 else "", [m for _, m, _, _ in panel.values()])
            ax.set_title(f"{q}: {SPLIT_LABELS.get(s, s)}", fontsize=9)
            if row == 0:
                ax.set_xlabel("")
    axes[0, -1].legend(fontsize=7, title=", ".join(names), title_fontsize=7, loc="best")
    fig.suptitle(_title(summary, info, "loss and accuracy per split", seeds), fontsize=11)
    return fig


def _finish(ax, quantity: str, ylabel: str, shown) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if quantity == "accuracy":
        ax.set_ylim(-0.02, 1.02)  # accuracies on one scale, comparable across panels
    elif shown:
        set_scale(ax, shown)
    ax.grid(alpha=0.3)


def classify_run_figures(workdir: str, summary: dict, history: list[dict]) -> None:
    """plots/curves.png of a classifier run (``classify_curves_figure``)."""
    if not history:
        return
    fig = classify_curves_figure(summary, history, _run_info(workdir))
    save_figure(fig, os.path.join(workdir, "plots", "curves.png"))

