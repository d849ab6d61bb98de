r"""Generic classifier trainer (noisy labels; the measures family's train.py).

  python launch/train.py --config=configs/measures/noisy_classification.py --workdir=runs/digits
  python launch/train.py --config=configs/measures/noisy_classification.py:cifar10_resnet18 \
      --workdir=runs/c10-r18 --config.data.label_noise=0.2 --config.seeds='(42,43,44,45)'
"""

from irmx.experiments import classify, cli

DEFAULT_CONFIG = cli.config_file("measures/noisy_classification.py")


def main():
    cli.run_main(classify.run, DEFAULT_CONFIG, __doc__, classify.unused_keys)


if __name__ == "__main__":
    main()
