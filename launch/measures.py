"""Measures of trained checkpoints (the seed's compute_stats.py).

  python launch/measures.py --config=configs/measures/jacobian.py --config.source=runs/digits \
      --config.checkpoint=1 --config.metric=jacobian_operator_norm --workdir=runs/digits-stats
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from irmx.experiments import cli, measures  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "measures", "jacobian.py")


def main():
    cli.run_main(measures.run, DEFAULT_CONFIG)


if __name__ == "__main__":
    main()
