r"""Hypergrad family: one-pass optimisation of weight-update hyperparameters (Clarke et al. 2022).

  python launch/hypergrad.py --config=configs/hypergrad/uci.py:ours_hdlr_momentum --workdir=runs/hg
  python launch/hypergrad.py --config=configs/hypergrad/uci.py:compare --workdir=runs/hg-compare
"""

from irmx.experiments import cli, hypergrad

DEFAULT_CONFIG = cli.config_file("hypergrad/uci.py")


def main():
    cli.run_main(hypergrad.run, DEFAULT_CONFIG, __doc__, hypergrad.unused_keys)


if __name__ == "__main__":
    main()
