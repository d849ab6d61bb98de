r"""The hypergrad family on Penn Treebank (Clarke et al., ICLR 2022, configs/penn_treebank.yaml):
a 2-layer LSTM (650 embedding, 650 hidden, 10000 tokens), BPTT batches of 70 time rows over 40
parallel streams, the weight gradient's global norm clipped at 0.25, 23910 network steps
(2391 hyperparameter steps of T = 10), initial lr 10^-1.35 and weight decay 10^-9.

  python launch/hypergrad.py --config=configs/hypergrad/penn_treebank.py:ours_lr \
      --workdir=runs/ptb --config.data.data_dir=~/data/ptb

``data.data_dir`` holds ``ptb.{train,valid,test}.txt`` (or the unpacked ``simple-examples/``);
irmx never downloads them. Final metric: the test perplexity. The Diff-through-Opt horizons
are not in the paper for this set; they follow the Fashion-MNIST ones.
"""

import ml_collections

from irmx.config_args import parse_arg
from irmx.configs.hypergrad import algorithms

VARIANTS = algorithms.VARIANTS
# Diff-through-Opt horizons: (interval, hyperparameter steps, reset). The reference ran no
# Long / Medium / Full on Penn Treebank; these carry Fashion-MNIST's over (Long 1000 steps
# with reset, Medium 200-step intervals without, at about this run's 23,910-step budget; Full
# the whole run per interval, 30 times).
HORIZONS = {"long": (1000, 24, True), "medium": (200, 120, False), "full": (23910, 30, True)}
HYPER_STEPS = 2391


def get_config(arg=None):
    a = parse_arg(arg or "ours_hdlr_momentum", variants=VARIANTS)
    c = ml_collections.ConfigDict()
    # penn_treebank.yaml network_weight
    algorithms.common(c, initial_raw=(-1.3534718751907349, -9.0, 0.0))
    c.data = ml_collections.ConfigDict()
    c.data.name = "penn_treebank"
    c.data.data_dir = ""  # the folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt
    c.data.source = "auto"  # (regression sets only)
    c.data.val_fraction = -1.0  # -1: ptb.valid.txt's share (irmx.data.ptb.PTB_VAL_FRACTION)
    c.data.data_seed = 0
    c.data.seq_len = 70  # BPTT time rows per batch (the config's batch_size)
    c.data.parallel_sequences = 40  # streams side by side (batchify)
    c.model = ml_collections.ConfigDict({"name": "lstm", "embed_size": 650, "hidden_size": 650,
                                         "num_layers": 2})
    c.clip_norm = 0.25  # network_weight_grad_clipping
    c.eval_every = 100
    c.name = ""
    c.algorithm = ml_collections.ConfigDict()
    algorithms.apply(c, a.variants, HORIZONS, HYPER_STEPS, num_inits=50)
    if "smoke" in a.variants:
        c.data.seq_len, c.data.parallel_sequences = 5, 2
        c.model.embed_size = c.model.hidden_size = 8
    return c
