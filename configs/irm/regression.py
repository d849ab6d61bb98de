r"""IRM synthetic regression (linear chain SEM, Arjovsky et al. 2019 section 5.1).

The seed's five experiments, each over seeds 100..131 as one vmapped program::

  python launch/irm.py --config=configs/irm/regression.py:study --workdir=runs/irm-regression
  python launch/irm.py --config=configs/irm/regression.py:irmv1 --workdir=runs/irmv1

Variants: base_erm, base_erm_oracle, irmv1, adareg_simple, adareg, soft_adareg (one experiment
each); study (the first five, one table: ``make run``, about a minute on 2 CPU cores); smoke
(tiny, seconds); paper (the IRM reference's protocol, see ``_paper``). Any field can be
overridden, e.g. ``--config.data.setting=PES --config.num_seeds=4``.

Expected on FEU (32 seeds, study; measured): ERM puts weight on the effects Z (causal and
non-causal error ~0.45); the oracle recovers the causal weights (causal error ~2e-3, non-causal
0); IRMv1 cuts the non-causal error ~100x (~0.005), AdaReg ~30x (~0.015). On heteroskedastic
settings Z is a near-noiseless copy of Y, so the held-out MSE rewards using Z: the causal model
pays the noise on Y, 5 sigma^2 = 125, ERM ~16. Held-out MSE does not measure invariance there,
and ``select_by=heldout_mse`` picks the smallest penalty weight on FEU.
"""

import ml_collections

from irmx.config_args import learner_axis_fields, parse_arg

EXPERIMENTS = ("base_erm", "base_erm_oracle", "irmv1", "adareg_simple", "adareg")


def _base():
    c = ml_collections.ConfigDict()
    c.name = "irm"  # label in tables and progress lines
    c.seed = 100  # first root seed
    c.num_seeds = 32  # seeds seed..seed+num_seeds-1, one learner each (x vmapped grid)
    c.seeds = ()  # explicit seed list; overrides seed/num_seeds when non-empty

    c.data = ml_collections.ConfigDict()
    c.data.setting = "FEU"  # SEM: [F|P] fully/partially observed, h[O]mo/h[E]tero, [U|S]crambled
    c.data.dim = 10  # input dimension (half causes X, half effects Z)
    c.data.num_samples = 1000  # samples per environment
    c.data.train_sigmas = (0.2, 2.0)  # noise scale of each training environment
    c.data.heldout_sigma = 5.0  # noise scale of the held-out (validation) environment
    c.data.erm_on_all_envs = False  # True: train on the held-out environment too (paper's ERM)

    c.model = ml_collections.ConfigDict()
    c.model.name = "linear"  # linear | phi_w | mlp
    c.model.use_bias = True  # linear: learn an intercept (gives AdaReg two tensors)
    c.model.hidden = (64,)  # mlp: hidden widths

    c.criterion = ml_collections.ConfigDict()
    c.criterion.name = "erm"  # erm | erm_oracle | irmv1
    c.criterion.penalty_weight = 100.0  # irmv1: lambda after annealing (convex mixing: r in [0,1])
    c.criterion.anneal_steps = 500  # irmv1: steps with lambda = 1 before lambda applies
    c.criterion.mixing = "additive"  # additive: g_e + lambda g_p | convex: r g_e + (1-r) g_p

    c.gradient_manager = ml_collections.ConfigDict()
    c.gradient_manager.name = "none"  # none | adareg | soft_adareg
    c.gradient_manager.alpha = 30.0  # AdaReg: ||lambda_t g_p|| = alpha ||g_e||
    c.gradient_manager.beta = 0.9  # soft_adareg: EMA decay of the two norms
    c.gradient_manager.eps = 1e-8  # AdaReg: lambda_t = alpha ||g_e|| / (||g_p|| + eps)
    c.gradient_manager.per_tensor = False  # one lambda per parameter tensor (adareg) or global

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # adam | sgd
    c.optim.lr = 0.1  # learning rate (per learner; vmappable as vmapped.lr)
    c.optim.momentum = 0.0  # sgd only

    c.num_steps = 3000  # full-batch optimizer steps
    c.chunk_steps = 100  # steps per lax.scan chunk (one host sync and one metrics point)
    c.checkpoint_every = 1000  # steps between checkpoints (a multiple of chunk_steps)

    # the learner axis beyond the seeds: vmapped.<name> = (v1, ...) as a product grid, or
    # sampled.num draws per seed from sampled.<name> = (low, high[, "log"]); learners_per_group
    learner_axis_fields(c, ("lr", "penalty_weight", "alpha", "beta"))
    c.select_by = ""  # per seed, pick the grid point with the lowest of this metric
    return c


OVERRIDES = {
    "base_erm": {"criterion": {"name": "erm"}},
    "base_erm_oracle": {"criterion": {"name": "erm_oracle"}},
    "irmv1": {"criterion": {"name": "irmv1"}},
    "adareg_simple": {
        "criterion": {"name": "irmv1"},
        "gradient_manager": {"name": "adareg", "per_tensor": False},
        "optim": {"lr": 0.03},
    },
    "adareg": {
        "criterion": {"name": "irmv1"},
        "gradient_manager": {"name": "adareg", "per_tensor": True},
        "optim": {"lr": 0.03},
    },
    "soft_adareg": {
        "criterion": {"name": "irmv1"},
        "gradient_manager": {"name": "soft_adareg", "per_tensor": True},
        "optim": {"lr": 0.03},
    },
}


def _apply(c, overrides):
    for section, values in overrides.items():
        if isinstance(values, dict):
            for k, v in values.items():
                c[section][k] = v
        else:
            c[section] = values
    return c


def _smoke(c):
    c.num_seeds = 4
    c.data.num_samples = 200
    c.num_steps = 200
    c.chunk_steps = 50
    c.checkpoint_every = 100
    c.criterion.anneal_steps = 50
    return c


def _paper(c):
    """The IRM reference's protocol (facebookresearch/InvariantRiskMinimization main.py, models.py):
    ERM on all three environments pooled; IRM with x Phi w (Phi from the identity, w = 1), Adam
    lr 1e-3, loss r * error + (1 - r) * penalty with r in {0, 1e-5, ..., 1e-1} vmapped, r picked
    per seed by MSE on the third environment. The reference trains 100000 iterations; this runs
    20000 by default (``--config.num_steps=100000`` for the full protocol). IRM is 192 learners
    (32 seeds x 6 weights): about 10 minutes on 2 CPU cores at 20000 steps."""
    c.study = ml_collections.ConfigDict({
        "erm": {"criterion": {"name": "erm"}, "data": {"erm_on_all_envs": True}},
        "irm": {
            "criterion": {"name": "irmv1", "mixing": "convex", "anneal_steps": 0,
                          "penalty_weight": 1e-3},
            "model": {"name": "phi_w"},
            "optim": {"lr": 1e-3},
            "vmapped": {"penalty_weight": (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)},
            "select_by": "heldout_mse",
        },
    })
    c.study_order = ("erm", "irm")
    c.num_steps = 20000
    c.chunk_steps = 500
    c.checkpoint_every = 5000
    return c


def get_config(arg=None):
    """``arg``: an experiment name, ``study``, ``paper``, or any of them + ``,smoke``."""
    a = parse_arg(arg or "irmv1", variants=(*OVERRIDES, "study", "paper", "smoke"))
    c = _base()
    for part in a.variants:
        if part in OVERRIDES:
            c = _apply(c, OVERRIDES[part])
            c.name = part
        elif part == "study":
            c.name = "study"
            c.study = ml_collections.ConfigDict({n: OVERRIDES[n] for n in EXPERIMENTS})
            c.study_order = EXPERIMENTS
        elif part == "paper":
            c.name = "paper"
            c = _paper(c)
        elif part == "smoke":
            c = _smoke(c)
    if "study" not in c:
        c.study = ml_collections.ConfigDict()  # experiment name -> overrides (study variants)
        c.study_order = ()  # the order of the study's experiments in its table
    return c
