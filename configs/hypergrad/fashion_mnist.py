r"""The hypergrad family on image classification (Clarke et al., ICLR 2022,
configs/fashion_mnist.yaml: an MLP 784-50-10, batch 50, 1/6 of the training set for validation).

  python launch/hypergrad.py --config=configs/hypergrad/fashion_mnist.py:ours_lr \
      --workdir=runs/hg-img
  python launch/hypergrad.py --config=configs/hypergrad/fashion_mnist.py:diff_through_opt_medium \
      --workdir=runs/fmnist-dto --config.data.name=fashion_mnist \
      --config.data.data_dir=~/tensorflow_datasets

Default data: scikit-learn's 8x8 digits (embedded, 1500 train pool + 297 test; no download);
``data.name=fashion_mnist`` reads tensorflow-datasets' prepared set from ``data.data_dir``
(``tfds build fashion_mnist --file_format=array_record`` once). 10000 network steps (1000
hyperparameter steps of T = 10). Final metric: the test cross-entropy.
"""

import ml_collections

from irmx.config_args import parse_arg
from irmx.configs.hypergrad import algorithms

VARIANTS = algorithms.VARIANTS
# Diff-through-Opt horizons: (interval, hyperparameter steps, reset). Long: the reference's
# LongDiffThroughOpt_Fashion-MNIST_Standalone (1000 steps, reset; its yaml says 50
# hyperparameter steps, run_all.py runs it with --hyperparameter_steps 100); Medium:
# LongDiffThroughOpt_Fashion-MNIST_Medium (200 x 50, no reset: the 10,000-step budget). Full
# (the whole 10,000-step run per interval, reset, 30 times) carries UCI's Full over; the
# reference ran Full on UCI Energy only.
HORIZONS = {"long": (1000, 100, True), "medium": (200, 50, False), "full": (10000, 30, True)}
HYPER_STEPS = 1000


def get_config(arg=None):
    a = parse_arg(arg or "ours_hdlr_momentum", variants=VARIANTS)
    c = ml_collections.ConfigDict()
    algorithms.common(c, initial_raw=(-3.0, -6.0, 0.0))  # fashion_mnist.yaml network_weight
    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # digits (embedded) | mnist_5k | fashion_mnist | mnist (tfds)
    c.data.data_dir = ""  # tensorflow-datasets data_dir
    c.data.source = "auto"  # (regression sets only)
    c.data.val_fraction = -1.0  # -1: 1/6 of the training images (validation_proportion)
    c.data.data_seed = 0
    c.data.batch_size = 50
    c.data.num_train = 0  # 0: the training pool less validation
    c.model = ml_collections.ConfigDict({"name": "mlp_50"})  # 784-50-10 on Fashion-MNIST
    c.name = ""
    c.algorithm = ml_collections.ConfigDict()
    algorithms.apply(c, a.variants, HORIZONS, HYPER_STEPS, num_inits=200)
    if "smoke" in a.variants:
        c.data.num_train = 300
    return c
