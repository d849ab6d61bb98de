r"""IRM synthetic regression (linear chain SEM, Arjovsky et al. 2019 section 5.1).

The seed's five experiments, each over seeds 100..131 as one vmapped program::

  python launch/irm.py --config=configs/irm/regression.py:study --workdir=runs/irm-regression
  python launch/irm.py --config=configs/irm/regression.py:irmv1 --workdir=runs/irmv1

Variants: base_erm, base_erm_oracle, irmv1, adareg_simple, adareg, soft_adareg (one experiment
each); study (the first five, one table: ``make run``, about a minute on 2 CPU cores); smoke
(tiny, seconds); paper (the IRM reference's synthetic protocol exactly: ERM by least squares,
ICP, IRM with the reference's vector-dummy penalty; see ``_paper``), paper,scalar_dummy (its IRM
with the paper's scalar-dummy penalty), paper,all_settings (the reference's eight-setting table
with its published numbers beside irmx's)::

  python launch/irm.py --config=configs/irm/regression.py:paper,all_settings \
      --workdir=runs/irm-paper

Any field can be overridden, e.g. ``--config.data.setting=PES --config.num_seeds=4``.

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
PAPER_ERM_WEIGHTS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # the reference's reg grid r
# the SEM settings in the reference's order (F/P, O/E, U/S)
SETTINGS = ("FOU", "FOS", "FEU", "FES", "POU", "POS", "PEU", "PES")


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
    c.data.erm_on_all_envs = False  # True: train on the held-out environment too (the
    #                                 reference's ERM and ICP)
    c.data.compress = False  # each training environment as dim+1 exact rows (models linear in
    #                          x without intercept: phi_w, linear with use_bias=False)

    c.model = ml_collections.ConfigDict()
    c.model.name = "linear"  # linear | phi_w | mlp
    c.model.use_bias = True  # linear: learn an intercept (gives AdaReg two tensors)
    c.model.hidden = (64,)  # mlp: hidden widths

    c.criterion = ml_collections.ConfigDict()
    c.criterion.name = "erm"  # erm | erm_oracle | irmv1
    c.criterion.penalty_weight = 100.0  # irmv1, additive mixing: lambda after annealing
    c.criterion.anneal_steps = 500  # irmv1, additive: steps with lambda = 1 before lambda applies
    c.criterion.mixing = "additive"  # additive: g_e + lambda g_p | convex: r g_e + (1-r) g_p
    c.criterion.erm_weight = 0.5  # irmv1, convex mixing: r, the weight of the risk (reference's
    #                               reg; the penalty gets 1 - r)
    c.criterion.penalty = "scalar_dummy"  # irmv1: scalar_dummy (paper) | vector_dummy (the
    #                                       reference code's; model phi_w)
    c.criterion.risk_reduction = "mean"  # of the training environments' risks: mean | sum

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

    c.solver = "gradient"  # gradient (the optimizer, num_steps) | least_squares (closed-form
    #                        ERM) | icp (Invariant Causal Prediction); closed forms need model
    #                        linear with use_bias=False
    c.icp_alpha = 0.05  # icp: significance level of the invariance tests
    c.reference_method = ""  # ERM | ICP | IRM: print the IRM reference's published numbers for
    #                          this setting beside this experiment's (irmx.irm.reference)
    c.num_steps = 3000  # full-batch optimizer steps
    c.chunk_steps = 100  # steps per lax.scan chunk (one host sync and one metrics point)
    c.checkpoint_every = 1000  # steps between checkpoints (a multiple of chunk_steps)

    # the learner axis beyond the seeds: vmapped.<name> = (v1, ...) as a product grid, or
    # sampled.num draws per seed from sampled.<name> = (low, high[, "log"]); learners_per_group
    learner_axis_fields(c, ("lr", "penalty_weight", "erm_weight", "alpha", "beta"))
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
    """The IRM reference's synthetic protocol exactly (facebookresearch/InvariantRiskMinimization,
    code/experiment_synthetic main.py and models.py), one setting (``data.setting``):

    - ERM: least squares without intercept on all three environments pooled;
    - ICP: Invariant Causal Prediction on all three environments, alpha = 0.05;
    - IRM: x Phi w with Phi from the identity and w = 1 fixed, Adam lr 1e-3 for 100000 full-batch
      steps on the two training environments, loss r * sum_e R^e + (1 - r) * sum_e
      mean_k (d R^e / d w_k)^2 (the vector dummy), r (``erm_weight``, the reference's ``reg``)
      in {0, 1e-5, ..., 1e-1} vmapped and picked per seed by MSE on the third environment.

    Each environment's 1000 samples are replaced by their exact 11-row least-squares stand-in
    (``data.compress``), so 100000 steps of 192 learners take minutes. ``scalar_dummy`` switches
    the IRM penalty to the paper's scalar dummy and the risk to the mean over environments (the
    stronger one on these settings: see the README)."""
    closed_form = {"model": {"name": "linear", "use_bias": False},
                   "data": {"erm_on_all_envs": True}}
    c.study = ml_collections.ConfigDict({
        "erm": {"solver": "least_squares", "reference_method": "ERM", **closed_form},
        "icp": {"solver": "icp", "reference_method": "ICP", **closed_form},
        "irm": {
            "criterion": {"name": "irmv1", "mixing": "convex", "anneal_steps": 0,
                          "penalty": "vector_dummy", "risk_reduction": "sum"},
            "model": {"name": "phi_w"},
            "data": {"compress": True},
            "optim": {"lr": 1e-3},
            "vmapped": {"erm_weight": PAPER_ERM_WEIGHTS},
            "select_by": "heldout_mse",
            "reference_method": "IRM",
        },
    })
    c.study_order = ("erm", "icp", "irm")
    c.num_steps = 100000
    c.chunk_steps = 5000
    c.checkpoint_every = 20000
    return c


def _scalar_dummy(c):
    """The paper variant's IRM with the paper's scalar-dummy penalty, summed over environments,
    and the risks' mean (irmx's form before it followed the reference)."""
    for exp in c.study.values():
        if exp.get("reference_method") == "IRM":
            exp.criterion.penalty = "scalar_dummy"
            exp.criterion.risk_reduction = "mean"
            exp.reference_method = ""
    return c


def _all_settings(c):
    """The paper study on each of the eight SEM settings, one group: the reference's
    synthetic_results.txt table (experiments named <setting>_<method>)."""
    study = c.study.to_dict()
    c.study = ml_collections.ConfigDict({
        f"{s}_{name}": {**exp, "data": {**exp.get("data", {}), "setting": s}}
        for s in SETTINGS for name, exp in study.items()})
    c.study_order = tuple(f"{s}_{name}" for s in SETTINGS for name in c.study_order)
    return c


def get_config(arg=None):
    """``arg``: an experiment name, ``study``, ``paper`` (+ ``,scalar_dummy``,
    ``,all_settings``), or any of them + ``,smoke``."""
    a = parse_arg(arg or "irmv1", variants=(*OVERRIDES, "study", "paper", "scalar_dummy",
                                             "all_settings", "smoke"))
    if not set(a.variants) & {*OVERRIDES, "study", "paper"}:
        a.variants = ("irmv1", *a.variants)  # modifiers alone apply to the default experiment
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
        elif part in ("scalar_dummy", "all_settings"):
            if c.name != "paper":
                raise ValueError(f"config variant {part!r} modifies the paper variant; use "
                                 f"paper,{part}")
            c = _scalar_dummy(c) if part == "scalar_dummy" else _all_settings(c)
        elif part == "smoke":
            c = _smoke(c)
    if "study" not in c:
        c.study = ml_collections.ConfigDict()  # experiment name -> overrides (study variants)
        c.study_order = ()  # the order of the study's experiments in its table
    return c
