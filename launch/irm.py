"""IRM family: ERM / ERM-oracle / IRMv1 / AdaReg on the linear chain SEM.

  python launch/irm.py --config=configs/irm/regression.py:study --workdir=runs/irm-regression
  python launch/irm.py --config=configs/irm/regression.py:irmv1 --workdir=runs/irmv1 \
      --config.optim.lr=3e-3
  python launch/irm.py --config=configs/irm/regression.py:adareg --print_config
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from irmx.experiments import cli, irm  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "irm", "regression.py")


def main():
    cli.run_main(irm.run, DEFAULT_CONFIG)


if __name__ == "__main__":
    main()
