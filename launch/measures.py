r"""Measures of trained checkpoints (the seed's compute_stats.py).

  python launch/measures.py --config=configs/measures/jacobian.py --config.source=runs/digits \
      --config.checkpoint=1 --config.metric=jacobian_operator_norm --workdir=runs/digits-stats
"""

from irmx.experiments import cli, measures

DEFAULT_CONFIG = cli.config_file("measures/jacobian.py")


def main():
    cli.run_main(measures.run, DEFAULT_CONFIG, __doc__)


if __name__ == "__main__":
    main()
