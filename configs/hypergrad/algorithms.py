r"""The algorithm part of every hypergrad config (the reference's ``configs/*.yaml`` algorithm
files), shared by the data-set files ``uci.py`` and ``fashion_mnist.py``.

Clarke, Oldewage & Hernandez-Lobato (ICLR 2022), rmclarke/OptimisingWeightUpdateHyperparameters:

  ours_lr              Ours_LR.yaml: IFT + Neumann (5 terms), weight decay and learning rate,
                       T = 10 network steps per hyperparameter step, Adam(0.05)
  ours_lr_momentum     Ours_LR_Momentum.yaml: the same on lr, weight decay and momentum
  ours_hdlr_momentum   Ours_HDLR_Momentum.yaml: one learning rate per weight + wd + momentum
  diff_through_opt     DiffThroughOpt.yaml (Table 2's row): exact gradient through the last 5
                       of every 10 steps (reset_loop_before_hyperparameter_step: 5)
  diff_through_opt_long    LongDiffThroughOpt_*_Standalone: exact through whole intervals
                       (UCI 200 steps x 20, Fashion-MNIST 1000 x 100: run_all.py's
                       --hyperparameter_steps), weights reset after each hyperparameter step
                       but the last
  diff_through_opt_medium  LongDiffThroughOpt_Fashion-MNIST_Medium: 200-step intervals, no
                       reset, the run's step budget (UCI 200 x 20: not a reference config)
  diff_through_opt_full    LongDiffThroughOpt_UCI_Full: the whole run (UCI 4000 steps) per
                       interval, reset, 30 times
  (each data-set file's HORIZONS says which of its horizons are the reference's and which
  are carried over from another data set)
  lorraine             Lorraine.yaml: the IFT machinery on weight decay only
  baydin               Baydin.yaml: hypergradient descent on the lr, one step interval, SGD
                       lr 0.001, no validation split (the training data)
  random               Random.yaml: fixed initial hyperparameters, no validation split
  random_validation    the split kept, the full validation loss at every logged step
  random_3batched      Random_Validation runs in triples, the best validation loss of each
  bayesopt             Random_Validation_BayesOpt: 5 random + 25 GP-UCB points over the
                       initial hyperparameters, asked in batches
  compare              every algorithm above on the same initialisations, one table
  smoke                (combine: ``:ours_lr,smoke``) seconds on 2 CPU cores
"""

import ml_collections

ALGORITHMS = ("ours_lr", "ours_lr_momentum", "ours_hdlr_momentum", "diff_through_opt",
              "diff_through_opt_long", "diff_through_opt_medium", "diff_through_opt_full",
              "lorraine", "baydin", "random", "random_validation", "random_3batched", "bayesopt")
# the rows of the paper's Table 2, in its order (compare)
COMPARE = ("random", "random_validation", "random_3batched", "bayesopt", "lorraine", "baydin",
           "ours_lr", "ours_lr_momentum", "ours_hdlr_momentum", "diff_through_opt")
VARIANTS = (*ALGORITHMS, "compare", "smoke")
ALL = ("lr", "weight_decay", "momentum")


def algorithm(name: str, horizons: dict, hyper_steps: int) -> ml_collections.ConfigDict:
    """The algorithm section of ``name``. ``horizons``: the data set's Diff-through-Opt
    (interval, hyperparameter steps, reset) per ``long`` / ``medium`` / ``full``;
    ``hyper_steps``: its hyperparameter steps at T = 10 (UCI 400, Fashion-MNIST 1000)."""
    a = ml_collections.ConfigDict()
    a.kind = "neumann"  # neumann | exact | baydin | fixed (irmx.hypergrad.algorithms)
    a.optimised = ALL  # raw values the hyperparameter optimizer changes
    a.per_parameter_lr = False  # one learning rate per weight (HDLR)
    a.interval = 10  # T: network steps per hyperparameter step (network_weight_steps)
    a.hyper_steps = hyper_steps  # hyperparameter steps (total network steps = T x this)
    a.neumann_terms = 5  # K: Neumann terms i = 0..K-1 (hyperparameter_rollback_distance)
    a.lookback = 0  # exact: steps differentiated through, the last of each interval (0 = all)
    a.remat_block = 1  # exact: steps per checkpointed block (1: none; 0: ceil(sqrt(lookback)))
    a.reset = False  # exact: weights back to their initial values after each hyper step
    a.hyper_optimizer = "adam"  # adam | sgd: the hyperparameter optimizer
    a.hyper_lr = 0.05  # its learning rate
    a.lr_clip = (-10.0, 0.0)  # log10 learning-rate bounds after each hyper step
    a.val_fraction = -1.0  # -1: the data config's split; 0: no validation (Random, Baydin)
    a.batched = 1  # > 1: also report the best-validation run of each group of this many
    a.search = ""  # "bayesopt": BayesOpt over the initial hyperparameters
    if name == "ours_lr":
        a.optimised = ("lr", "weight_decay")
    elif name == "ours_lr_momentum":
        pass
    elif name == "ours_hdlr_momentum":
        a.per_parameter_lr = True
    elif name == "diff_through_opt":
        a.kind, a.lookback = "exact", 5
    elif name.startswith("diff_through_opt_"):
        a.kind = "exact"
        a.interval, a.hyper_steps, a.reset = horizons[name[len("diff_through_opt_"):]]
        if a.interval > 200:  # Long / Full: O(sqrt(T)) memory for the long windows
            a.remat_block = 0
    elif name == "lorraine":
        a.optimised = ("weight_decay",)
    elif name == "baydin":
        a.kind, a.optimised = "baydin", ("lr",)
        a.interval, a.hyper_steps = 1, hyper_steps * 10
        a.hyper_optimizer, a.hyper_lr = "sgd", 0.001
        a.val_fraction = 0.0
    elif name in ("random", "random_validation", "random_3batched", "bayesopt"):
        a.kind, a.optimised = "fixed", ()
        a.val_fraction = 0.0 if name == "random" else -1.0
        a.batched = 3 if name == "random_3batched" else 1
        a.search = "bayesopt" if name == "bayesopt" else ""
    else:
        raise ValueError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}")
    return a


def shrink(a: ml_collections.ConfigDict) -> None:
    """The smoke size of an algorithm section: a few short intervals."""
    a.interval = min(a.interval, 5) if a.interval > 1 else 1
    a.hyper_steps = 4 if a.interval > 1 else 20
    a.lookback = min(a.lookback, a.interval)


def apply(c: ml_collections.ConfigDict, variants, horizons: dict, hyper_steps: int,
          num_inits: int) -> None:
    """Set ``c.algorithm`` / ``c.compare`` from the chosen variants (one algorithm or
    ``compare``, optionally ``smoke``). ``num_inits``: initialisations of ``compare`` and of
    ``random_3batched`` (triples of runs); the other variants train one learner at
    ``config.init`` unless ``num_inits`` is set."""
    chosen = [v for v in variants if v != "smoke"]
    if len(chosen) > 1:
        raise ValueError(f"config variants {chosen} name more than one algorithm; allowed: one "
                         f"of {', '.join((*ALGORITHMS, 'compare'))} (+ smoke)")
    name = chosen[0] if chosen else "ours_hdlr_momentum"
    c.name = name
    if name == "compare":
        c.compare = ml_collections.ConfigDict(
            {n: algorithm(n, horizons, hyper_steps) for n in COMPARE})
        c.compare_order = COMPARE  # (a ConfigDict lists its keys sorted)
        c.algorithm = algorithm("random_validation", horizons, hyper_steps)
        c.num_inits = num_inits
    else:
        c.algorithm = algorithm(name, horizons, hyper_steps)
        if name == "random_3batched":  # triples of Random_Validation runs: needs the spread
            c.num_inits = num_inits
    if "smoke" in variants:
        for a in [c.algorithm, *c.compare.values()]:
            shrink(a)
        c.eval_every = 5
        c.num_inits = min(c.num_inits, 3) if name != "compare" else 3
        c.bayesopt.init_points, c.bayesopt.n_iter, c.bayesopt.batch = 2, 2, 2
        c.bayesopt.repeats = 1


def common(c: ml_collections.ConfigDict, initial_raw: tuple) -> None:
    """The keys every data-set file shares (the axis, the initial values, BayesOpt).
    ``initial_raw``: the data set's yaml ``network_weight`` (lr, weight_decay, momentum) on the
    raw scales (log10, log10, logit): the hyperparameters of a learner that is not sampled."""
    import math

    from irmx.config_args import learner_axis_fields

    c.seed = 0  # root seed: network init, batches (the step stream)
    c.num_seeds = 1
    c.seeds = ()
    learner_axis_fields(c, [f"initial_{n}" for n in ALL])
    c.zipped.bo_repeat = ()  # set by BayesOpt's rounds
    # the paper's natural_sgd_generator ranges; num_inits draws (0: one learner at config.init)
    c.num_inits = ml_collections.FieldReference(0)
    c.sampled.num = c.get_ref("num_inits")
    c.sampled.initial_lr = (1e-6, 1e-1, "log")
    c.sampled.initial_weight_decay = (1e-7, 1e-2, "log")
    c.sampled.initial_momentum = (0.0, 1.0)
    # initial hyperparameters of a learner that is not sampled, on natural scales
    x_lr, x_wd, x_mu = initial_raw
    c.init = ml_collections.ConfigDict({"lr": 10.0 ** x_lr, "weight_decay": 10.0 ** x_wd,
                                        "momentum": 1.0 / (1.0 + math.exp(-x_mu))})
    c.clip_norm = 0.0  # global-norm clip of the weight gradient (0: off)
    c.eval_every = 10  # network steps between logged points (full train/val/test losses)
    c.eval_batch_size = 1000
    c.checkpoint_every = 50  # logged points between resume checkpoints (0: only at the end)
    c.compare = ml_collections.ConfigDict()  # algorithm name -> section (compare)
    c.compare_order = ()  # the table's row order (names of compare)
    c.bayesopt = ml_collections.ConfigDict({
        "init_points": 5, "n_iter": 25,  # the reference's maximize(init_points=5, n_iter=25)
        "batch": 5,  # points asked per round after the random ones (one vmapped program)
        "repeats": 32,  # independent searches (table rows are over them; run_all.py's 32)
        "nonfinite_loss": 10.0,  # validation loss told for a diverged run (normalised MSE)
        "bounds": ml_collections.ConfigDict({"lr": (-6.0, -1.0), "weight_decay": (-7.0, -2.0),
                                             "momentum": (1e-6, 1 - 1e-6)}),
    })
