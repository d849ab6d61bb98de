r"""Noisy-label classifier training (the seed's train.py; Gamba et al. 2023).

  python launch/train.py --config=configs/measures/noisy_classification.py --workdir=runs/digits
  python launch/train.py --config=configs/measures/noisy_classification.py:cifar10_resnet18 \
      --workdir=runs/c10-r18 --config.data.label_noise=0.2 --config.seeds='(42,43,44,45)' \
      --config.data.data_dir=~/tensorflow_datasets

Default: scikit-learn's 8x8 handwritten digits (1797 real images shipped with the package:
1500 train pool + 297 test; no download), a 256x256 MLP, 4 seeds as one vmapped program, 20%
symmetric label noise; about a minute on 2 CPU cores. ``cifar10_resnet18`` is the seed's
command (CIFAR-10 through tensorflow-datasets from ``data.data_dir``, prepared once with
``tfds build cifar10 --file_format=array_record``); ``smoke`` shrinks anything for tests.
Checkpoint i is the model after ``checkpoint_epochs[i]`` epochs (0 = initialisation).
"""

import ml_collections

from irmx.config_args import learner_axis_fields, parse_arg


def get_config(arg=None):
    a = parse_arg(arg or "digits", variants=("digits", "cifar10_resnet18", "smoke"))
    c = ml_collections.ConfigDict()
    c.name = "noisy_classification"  # label in tables and paths
    c.seed = 42  # first root seed
    c.num_seeds = 4  # seeds seed..seed+num_seeds-1
    c.seeds = ()  # explicit seed list (overrides seed/num_seeds)

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # digits (embedded) | mnist | fashion_mnist | cifar10 (tfds)
    c.data.data_dir = ""  # tensorflow-datasets data_dir for real data sets
    c.data.label_noise = 0.2  # fraction of training labels moved to another class, in [0, 1]
    c.data.train_split = 1300  # training points taken from the train pool
    c.data.val_split = 200  # validation points (disjoint from training)
    c.data.data_seed = -1  # >= 0: split and noise from this seed for every learner
    c.data.augmentation = False  # random crop (zero padding) + horizontal flip
    c.data.padding = 1  # crop padding in pixels (the seed: 4 on 32x32 images)

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp_256x256"  # resnet18_<k> | the seed's conv nets | mlp_<w>x<w>...
    c.model.batchnorm = False  # resnet: BatchNorm (the seed: off unless asked)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # sgd | adam
    c.optim.lr = 0.05  # peak learning rate (vmappable: vmapped.lr)
    c.optim.momentum = 0.9  # sgd momentum
    c.optim.weight_decay = 0.0  # coupled L2 (torch.optim style; vmappable)
    c.optim.warmup_epochs = 2  # linear warm-up epochs
    c.optim.warmup_initial = 0.001  # learning rate at epoch 0 of the warm-up

    c.batch_size = 100  # per learner; drop-last
    c.epochs = 60  # training epochs
    c.eval_every = 10  # epochs between evaluations (an evaluator's own "every" overrides)
    c.eval_batch_size = 500  # batch size of evaluation passes
    # Evaluators (irmx.registry, configured as data): <name>_loss and <name>_accuracy of the
    # split each names, every eval_every epochs and at the end; "train" scores the (noisy)
    # labels trained on, "train_clean" the originals; "val" needs data.val_split > 0.
    c.evals = ml_collections.ConfigDict()
    for split in ("train", "train_clean", "val", "test"):
        c.evals[split] = ml_collections.ConfigDict({"type": "classification", "split": split})
    c.checkpoint_epochs = (0, 60)  # numbered checkpoints: checkpoint i = after these epochs
    c.checkpoint_every = 10  # epochs between resume checkpoints

    # the learner axis beyond the seeds: vmapped.<name> = (v1, ...) as a product grid, or
    # sampled.num draws per seed from sampled.<name> = (low, high[, "log"]); learners_per_group
    learner_axis_fields(c, ("lr", "weight_decay", "momentum", "label_noise"))

    for part in a.variants:
        if part == "digits":
            pass
        elif part == "cifar10_resnet18":
            c.name = "cifar10_resnet18"
            c.data.name = "cifar10"
            c.data.train_split, c.data.val_split = 49000, 1000
            c.data.augmentation, c.data.padding = True, 4
            c.model.name = "resnet18_64"
            c.optim.lr, c.optim.warmup_epochs, c.optim.warmup_initial = 0.005, 5, 0.001
            c.batch_size, c.epochs, c.eval_every = 128, 300, 10
            c.checkpoint_epochs = (0, 300)
            c.num_seeds = 1
        elif part == "smoke":
            c.num_seeds = 2
            c.data.train_split, c.data.val_split = 200, 100
            c.model.name = "mlp_32"
            c.batch_size, c.epochs, c.eval_every = 50, 4, 2
            c.checkpoint_epochs = (0, 2, 4)
            c.checkpoint_every = 2
            c.optim.warmup_epochs = 1
    return c


def get_sweep(arg=None):
    """Model-width sweep (separate programs: width changes shapes) for the double-descent
    figure: one-hidden-layer MLPs on the embedded digits with 20% label noise."""
    widths = (2, 4, 8, 16, 32, 64, 128, 256, 512)
    if "smoke" in parse_arg(arg, variants=("smoke",)).variants:
        widths = (4, 32)
    return [{"model.name": f"mlp_{w}"} for w in widths]
