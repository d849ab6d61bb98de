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
HORIZONS = {"long": (1000, 50, True), "medium": (200, 50, False), "full": (32400, 30, True)}
HYPER_STEPS = 3240


def get_config(arg=None):
    a = parse_arg(arg or "ours_hdlr_momentum", variants=VARIANTS)
    c = ml_collections.ConfigDict()
    algorithms.common(c)
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
