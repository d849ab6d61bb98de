"""The measures family's standard figure: the double-descent panel (test error and Jacobian
operator norm against model width, mean +- std over seeds), written by
``scripts/double_descent.py`` and the measures notebook."""

import numpy as np

from irmx.io.plots import save_figure, subplots


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
