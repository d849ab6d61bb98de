r"""IRM family: ERM / ERM-oracle / IRMv1 / AdaReg on the linear chain SEM.

  python launch/irm.py --config=configs/irm/regression.py:study --workdir=runs/irm-regression
  python launch/irm.py --config=configs/irm/regression.py:irmv1 --workdir=runs/irmv1 \
      --config.optim.lr=3e-3
  python launch/irm.py --config=configs/irm/regression.py:adareg --print_config
"""

from irmx.experiments import cli, irm

DEFAULT_CONFIG = cli.config_file("irm/regression.py")


def main():
    cli.run_main(irm.run, DEFAULT_CONFIG, __doc__, irm.unused_keys)


if __name__ == "__main__":
    main()
