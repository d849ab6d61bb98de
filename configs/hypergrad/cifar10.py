r"""The hypergrad family on CIFAR-10 (Clarke et al., ICLR 2022, configs/cifar10.yaml): ResNet-18,
batch 100, a tenth of the training set for validation, 32400 network steps (3240
hyperparameter steps of T = 10).

  python launch/hypergrad.py --config=configs/hypergrad/cifar10.py:ours_hdlr_momentum \
      --workdir=runs/c10 --config.data.data_dir=~/tensorflow_datasets

CIFAR-10 comes from tensorflow-datasets' prepared set in ``data.data_dir`` (``tfds build cifar10
--file_format=array_record`` once); irmx never downloads it. Final metric: the test
cross-entropy. The Diff-through-Opt horizons follow the Fashion-MNIST ones.
"""

import ml_collections

from irmx.config_args import parse_arg
from irmx.configs.hypergrad import algorithms

VARIANTS = algorithms.VARIANTS
# Diff-through-Opt horizons: (interval, hyperparameter steps, reset). The reference ran no
# Long / Medium / Full on CIFAR-10; these carry Fashion-MNIST's over (Long 1000 steps with
# reset, Medium 200-step intervals without, at this run's 32,400-step budget; Full the whole
# run per interval, 30 times).
HORIZONS = {"long": (1000, 50, True), "medium": (200, 162, False), "full": (32400, 30, True)}
HYPER_STEPS = 3240


def get_config(arg=None):
    a = parse_arg(arg or "ours_hdlr_momentum", variants=VARIANTS)
    c = ml_collections.ConfigDict()
    # cifar10.yaml network_weight
    algorithms.common(c, initial_raw=(-3.3534718751907349, -6.2753795385360718, 1.212821931))
    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"  # tfds; the embedded digits work too (data.name=digits)
    c.data.data_dir = ""  # tensorflow-datasets data_dir
    c.data.source = "auto"  # (regression sets only)
    c.data.val_fraction = 0.1
    c.data.data_seed = 0
    c.data.batch_size = 100
    c.data.num_train = 0
    c.model = ml_collections.ConfigDict({"name": "resnet18_64"})
    c.eval_every = 100
    c.eval_batch_size = 500
    c.name = ""
    c.algorithm = ml_collections.ConfigDict()
    algorithms.apply(c, a.variants, HORIZONS, HYPER_STEPS, num_inits=50)
    if "smoke" in a.variants:
        c.data.name, c.data.num_train, c.data.batch_size = "digits", 200, 50
        c.model.name = "resnet18_4"
        c.eval_every = 5
    return c
