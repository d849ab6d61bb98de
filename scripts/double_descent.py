r"""The seed paper's central figure, small: test error and Jacobian operator norm vs model width.

Gamba, Azizpour & Björkman (BMVC 2023) find the empirical Lipschitz constant (the input-output
Jacobian's operator norm on training points) non-monotonic in model size, tracking the
double-descent test error. This trains the width sweep of
``configs/measures/noisy_classification.py:get_sweep`` (one-hidden-layer MLPs on the embedded
8x8 digits, 20% symmetric label noise; each width one vmapped program over its seeds), measures
the final checkpoint's ``jacobian_operator_norm`` on training points, and plots both vs width::

  python scripts/double_descent.py --workdir=runs/double-descent            # ~10 min, 2 CPUs
  python scripts/double_descent.py --workdir=/tmp/dd --smoke                # seconds

Writes <workdir>/width-<w>/ (training), <workdir>/width-<w>-stats/ (measures),
<workdir>/double_descent.json and <workdir>/double_descent.png.
"""

import argparse
import os

import numpy as np

from irmx.configs.measures import jacobian, noisy_classification
from irmx.experiments import classify, measures
from irmx.io import workdir as wd
from irmx.measures import plots


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/double-descent")
    parser.add_argument("--smoke", action="store_true", help="two widths, tiny budget")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--label_noise", type=float, default=0.2)
    args = parser.parse_args()

    rows = []
    for overrides in noisy_classification.get_sweep("smoke" if args.smoke else None):
        c = noisy_classification.get_config("digits,smoke" if args.smoke else "digits")
        c.update_from_flattened_dict(overrides)
        c.data.label_noise = args.label_noise
        if args.epochs:
            c.epochs = args.epochs
            c.checkpoint_epochs = (0, args.epochs)
        width = int(c.model.name.split("_")[1])
        train_dir = os.path.join(args.workdir, f"width-{width}")
        train = classify.run(c, train_dir, progress=False)
        m = jacobian.get_config("smoke" if args.smoke else None)
        m.source = train_dir
        m.checkpoint = len(c.checkpoint_epochs) - 1
        m.dataset_split = "train"
        m.num_samples = min(m.num_samples, c.data.train_split)
        stats = measures.run(m, os.path.join(args.workdir, f"width-{width}-stats"),
                             progress=False)
        test_err = [1 - r["test_accuracy"] for r in train["learners"]]
        norms = [r["jacobian_operator_norm"] for r in stats["learners"]]
        rows.append({"width": width, "num_seeds": len(test_err),
                     "test_error": float(np.mean(test_err)),
                     "test_error_std": float(np.std(test_err)),
                     "jacobian_operator_norm": float(np.mean(norms)),
                     "jacobian_operator_norm_std": float(np.std(norms))})
        print(f"width {width:>4}: test error {rows[-1]['test_error']:.4f}, "
              f"Jacobian operator norm {rows[-1]['jacobian_operator_norm']:.4f}", flush=True)
    wd.write_json_atomic(os.path.join(args.workdir, "double_descent.json"), rows)
    plots.double_descent_figure(os.path.join(args.workdir, "double_descent.png"), rows)
    print(f"wrote {os.path.join(args.workdir, 'double_descent.png')}")


if __name__ == "__main__":
    main()
