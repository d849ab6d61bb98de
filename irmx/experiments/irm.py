"""IRM family driver: ERM / ERM-oracle / IRMv1 / AdaReg on the linear chain SEM.

``run(config, workdir)`` trains every learner of the config (seeds x vmapped values) as one
jit(vmap) program and writes the workdir contract; ``run_study`` runs several such experiments
(the seed's five) and prints one comparison table.
"""

import copy
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from irmx import config_checks as cc
from irmx import optim
from irmx.data import sem as sem_lib
from irmx.experiments.loop import Program, run_group, run_program
from irmx.io import tables
from irmx.io import workdir as wd
from irmx.irm import criteria, icp, plots, reference
from irmx.irm import gradient_managers as gm
from irmx.irm import metrics as irm_metrics
from irmx.learners import axis_from_config, learner_stream, make_init, map_learners
from irmx.nets import MODELS, make_model
from irmx.train import init_state, make_chunk, make_step, make_update, sum_terms

OPTIMIZERS = ("adam", "sgd")
SOLVERS = ("gradient", "least_squares", "icp")
REFERENCE_METHODS = ("", "ERM", "ICP", "IRM")
MIXINGS = ("additive", "convex")
# config.vmapped.<name> -> the injected optimizer hyperparameter it sets
VMAPPABLE = {"lr": "learning_rate", "penalty_weight": "penalty_weight",
             "erm_weight": "erm_weight", "alpha": "alpha", "beta": "beta"}
# (low, high, low_open) of each vmappable (or sampled) value
AXIS_RANGES = {"lr": (0.0, math.inf, True), "penalty_weight": (0.0, math.inf, False),
               "erm_weight": (0.0, 1.0, False), "alpha": (0.0, math.inf, False),
               "beta": (0.0, 0.999999, False)}
TABLE_METRICS = ("causal_error", "noncausal_error", "heldout_mse")
REFERENCE_METRICS = ("causal_error", "noncausal_error")


def validate(config) -> None:
    """Every value checked before compilation (one line naming key, value and what is allowed)."""
    if config.get("study_order") and not config.get("study"):
        cc.fail("study_order", tuple(config.study_order),
                "() unless config.study names the experiments it orders")
    cc.choice(config, "data.setting", sem_lib.SETTINGS)
    cc.number(config, "data.dim", 2, 10_000, integer=True)
    if config.data.dim % 2:
        cc.fail("data.dim", config.data.dim, "an even integer (half causes, half effects)")
    cc.number(config, "data.num_samples", 1, 10_000_000, integer=True)
    cc.numbers(config, "data.train_sigmas", 0.0, 1e6, low_open=True, min_len=1)
    cc.number(config, "data.heldout_sigma", 0.0, 1e6, low_open=True)
    cc.choice(config, "data.erm_on_all_envs", (True, False))
    cc.choice(config, "data.compress", (True, False))
    cc.choice(config, "model.name", MODELS)
    cc.choice(config, "model.use_bias", (True, False))
    linear_in_x = config.model.name == "phi_w" or (
        config.model.name == "linear" and not config.model.use_bias)
    if config.data.compress and not linear_in_x:
        cc.fail("data.compress", True, "False unless config.model.name is 'phi_w', or 'linear' "
                "with config.model.use_bias=False (exact only for models linear in x)")
    cc.choice(config, "solver", SOLVERS)
    cc.number(config, "icp_alpha", 0.0, 1.0, low_open=True, high_open=True)
    cc.choice(config, "reference_method", REFERENCE_METHODS)
    if config.solver != "gradient":
        if not (config.model.name == "linear" and not config.model.use_bias):
            cc.fail("solver", config.solver, "'gradient' unless config.model.name='linear' with "
                    "config.model.use_bias=False (a closed form gives one weight vector)")
        if config.solver == "least_squares" and config.criterion.name not in ("erm",
                                                                               "erm_oracle"):
            cc.fail("solver", config.solver, "'gradient' unless config.criterion.name is 'erm' "
                    "or 'erm_oracle' (least squares minimises the risk alone)")
        if config.gradient_manager.name != "none":
            cc.fail("gradient_manager.name", config.gradient_manager.name,
                    f"'none' with config.solver={config.solver!r}")
    if config.model.name == "mlp":
        cc.numbers(config, "model.hidden", 1, 1_000_000, min_len=1)
    cc.choice(config, "criterion.name", criteria.CRITERIA)
    cc.number(config, "criterion.penalty_weight", 0.0)
    cc.number(config, "criterion.anneal_steps", 0, integer=True)
    cc.choice(config, "criterion.mixing", MIXINGS)
    cc.choice(config, "criterion.penalty", criteria.PENALTIES)
    if config.criterion.penalty == "vector_dummy" and config.model.name != "phi_w":
        cc.fail("criterion.penalty", "vector_dummy",
                "'scalar_dummy' unless config.model.name='phi_w' (the dummy w of x Phi w)")
    cc.choice(config, "criterion.risk_reduction", criteria.RISK_REDUCTIONS)
    cc.number(config, "criterion.erm_weight", 0.0, 1.0)
    cc.choice(config, "gradient_manager.name", gm.MANAGERS)
    if config.gradient_manager.name != "none" and config.criterion.name != "irmv1":
        cc.fail("gradient_manager.name", config.gradient_manager.name,
                "'none' unless config.criterion.name='irmv1' (a manager needs a penalty term)")
    cc.number(config, "gradient_manager.alpha", 0.0)
    cc.number(config, "gradient_manager.beta", 0.0, 1.0, high_open=True)
    cc.number(config, "gradient_manager.eps", 0.0, low_open=True)
    cc.choice(config, "gradient_manager.per_tensor", (True, False))
    cc.choice(config, "optim.name", OPTIMIZERS)
    cc.number(config, "optim.lr", 0.0, low_open=True)
    cc.number(config, "optim.momentum", 0.0, 1.0, high_open=True)
    cc.number(config, "num_steps", 1, integer=True)
    cc.number(config, "chunk_steps", 1, integer=True)
    cc.multiple_of(config, "num_steps", "chunk_steps")
    cc.number(config, "checkpoint_every", 1, integer=True)
    cc.multiple_of(config, "checkpoint_every", "chunk_steps")
    cc.learner_axis(config, AXIS_RANGES)
    for name, section in axis_values(config):
        why = _no_effect(config, name)
        if why:
            cc.fail(f"{section}.{name}", tuple(config[section][name]),
                    f"() here: {name} has no effect {why} (every learner would train alike)")
    if config.select_by and config.select_by not in TABLE_METRICS + ("risk", "penalty"):
        cc.fail("select_by", config.select_by, "'' or one of " + ", ".join(TABLE_METRICS))


def unused_keys(config) -> dict:
    """Config keys that change nothing under ``config``, with why (``--print_config`` marks
    them): key -> reason."""
    c, m, unused = config.criterion, config.gradient_manager, {}

    def mark(keys, why):
        unused.update({k: why for k in keys})

    if config.get("study"):
        return {}  # each experiment applies its own overrides
    if config.solver != "gradient":
        mark(("optim.name", "optim.lr", "optim.momentum", "num_steps", "chunk_steps",
              "checkpoint_every", "criterion.penalty_weight", "criterion.anneal_steps",
              "criterion.mixing", "criterion.erm_weight", "criterion.penalty",
              "criterion.risk_reduction"), f"solver={config.solver!r}")
    elif c.name != "irmv1":
        mark(("criterion.penalty_weight", "criterion.anneal_steps", "criterion.mixing",
              "criterion.erm_weight", "criterion.penalty"), f"criterion.name={c.name!r}")
    elif c.mixing == "convex":
        mark(("criterion.penalty_weight", "criterion.anneal_steps"), "criterion.mixing='convex'")
    else:
        mark(("criterion.erm_weight",), "criterion.mixing='additive'")
    if config.solver != "icp":
        mark(("icp_alpha",), f"solver={config.solver!r}")
    if m.name == "none":
        mark(("gradient_manager.alpha", "gradient_manager.beta", "gradient_manager.eps",
              "gradient_manager.per_tensor"), "gradient_manager.name='none'")
    elif m.name == "adareg":
        mark(("gradient_manager.beta",), "gradient_manager.name='adareg'")
    if config.optim.name != "sgd":
        mark(("optim.momentum",), f"optim.name={config.optim.name!r}")
    if config.model.name != "mlp":
        mark(("model.hidden",), f"model.name={config.model.name!r}")
    if config.model.name != "linear":
        mark(("model.use_bias",), f"model.name={config.model.name!r}")
    return unused


def axis_values(config) -> list[tuple[str, str]]:
    """(name, section) of every value on the learner axis beyond the seeds (vmapped, zipped
    or sampled)."""
    out = []
    for section in ("vmapped", "zipped", "sampled"):
        for name, values in (config.get(section, {}) or {}).items():
            if name not in ("num", "seed") and values:
                out.append((name, section))
    return out


def _no_effect(config, name: str) -> str:
    """Why the hyperparameter ``name`` changes nothing under ``config`` ('' when it does)."""
    c, m = config.criterion, config.gradient_manager
    if config.solver != "gradient":
        return f"with config.solver={config.solver!r} (a closed form, no optimizer)"
    needs = {
        "penalty_weight": (c.name == "irmv1" and m.name == "none" and c.mixing == "additive",
                           "unless config.criterion.name='irmv1', config.criterion.mixing="
                           "'additive' and config.gradient_manager.name='none'"),
        "erm_weight": (c.name == "irmv1" and m.name == "none" and c.mixing == "convex",
                       "unless config.criterion.name='irmv1', config.criterion.mixing='convex' "
                       "and config.gradient_manager.name='none'"),
        "alpha": (c.name == "irmv1" and m.name in ("adareg", "soft_adareg"),
                  "unless config.gradient_manager.name is 'adareg' or 'soft_adareg'"),
        "beta": (c.name == "irmv1" and m.name == "soft_adareg",
                 "unless config.gradient_manager.name='soft_adareg'"),
    }
    effective, why = needs.get(name, (True, ""))
    return "" if effective else why


def make_optimizer(config) -> optax.GradientTransformation:
    """The shared optimizer factory with IRM's term combiner first (``irmx.optim``); the
    learning rate and the combiner's scalars are injected (vmappable) hyperparameters."""
    c, m, o = config.criterion, config.gradient_manager, config.optim

    def combiner(penalty_weight, erm_weight, alpha, beta):
        if c.name != "irmv1":
            return sum_terms()
        if m.name == "none" and c.mixing == "convex":
            return gm.convex_mix(erm_weight)
        if m.name == "none":
            return gm.weighted_sum(penalty_weight, c.anneal_steps, rescale=True)
        soft_beta = beta if m.name == "soft_adareg" else 0.0
        return gm.adareg(alpha, soft_beta, m.eps, per_tensor=m.per_tensor)

    return optim.make_optimizer(
        o.name, o.lr, momentum=o.momentum, combiner=combiner,
        combiner_hparams=dict(penalty_weight=c.penalty_weight, erm_weight=c.erm_weight,
                              alpha=m.alpha, beta=m.beta))


def make_data(config, key):
    """The learner's SEM and environments from its ``data`` stream key."""
    d = config.data
    k_sem, k_env = jax.random.split(key)
    sem = sem_lib.make_chain_sem(k_sem, d.dim, d.setting)
    sigmas = tuple(d.train_sigmas) + (d.heldout_sigma,)
    x, y = sem_lib.make_environments(k_env, sem, d.num_samples, sigmas)
    n_train = len(sigmas) if d.erm_on_all_envs else len(sigmas) - 1
    train = (x[:n_train], y[:n_train])
    if d.compress:
        train = jax.vmap(sem_lib.compress_environment)(*train)
    if config.criterion.name == "erm_oracle":
        # Projector on the causal coordinates of the unscrambled basis: S^T diag(mask) S.
        mask = sem_lib.causal_mask(d.dim)
        projection = sem.scramble.T @ (mask[:, None] * sem.scramble)
    else:
        projection = jnp.eye(d.dim)
    return {
        "sem": sem,
        "train": train,
        "heldout": (x[-1], y[-1]),
        "projection": projection,
    }


def build_program(config) -> Program:
    """Validate ``config`` and close over it: the IRM experiment as pure learner-vmapped code."""
    validate(config)
    axis = axis_from_config(config)
    model = make_model(
        config.model.name, hidden=tuple(config.model.hidden), use_bias=config.model.use_bias
    )
    apply_fn = model.apply
    optimizer = make_optimizer(config)
    loss_terms = criteria.make_loss_terms(apply_fn, config.criterion.name,
                                          penalty=config.criterion.penalty,
                                          risk_reduction=config.criterion.risk_reduction)

    def projected_loss_terms(params, data, key):
        x, y = data["train"]
        return loss_terms(params, (x @ data["projection"], y), key)

    hparams = tuple(VMAPPABLE[n] for n in axis.hparam_names)
    update = make_update(lambda p, ms, data, key, v: projected_loss_terms(p, data, key),
                         optimizer, multi_term=True, hyperparams=hparams)
    chunk = make_chunk(make_step(update), config.chunk_steps)

    def chunk_with_lambda(state, data):
        state, metrics = chunk(state, data)
        combiner_state = state.opt_state.inner_state[0]
        lam = getattr(combiner_state, "penalty_weight", jnp.zeros(()))
        metrics["penalty_weight_t"] = jnp.mean(jnp.stack(
            [jnp.mean(v) for v in jax.tree.leaves(lam)]))
        del metrics["terms"]
        return state, metrics

    def init_one(coords):
        data = make_data(config, learner_stream(coords, "data"))
        x0 = data["train"][0][0, :1]
        params = model.init(learner_stream(coords, "init"), x0)
        values = {VMAPPABLE[n]: coords[n] for n in axis.hparam_names}
        state = init_state(params, optimizer, learner_stream(coords, "step"), values,
                           hyperparams=hparams)
        return state, data

    def closed_form_one(coords):
        """A closed-form learner: its weight vector from the solver, no training steps."""
        data = make_data(config, learner_stream(coords, "data"))
        x, y = data["train"]
        x = x @ data["projection"]
        if config.solver == "least_squares":
            w = least_squares(x.reshape(-1, x.shape[-1]), y.reshape(-1))
        else:
            w = icp.icp_solution(x, y, alpha=config.icp_alpha)
        return {"params": {"Dense_0": {"kernel": w[:, None]}}}, data

    def evaluate_one(params, data):
        project = lambda p, x: apply_fn(p, x @ data["projection"])
        out = irm_metrics.evaluate(project, params, data["sem"], data["heldout"])
        terms, metrics = projected_loss_terms(params, data, None)
        out.update(risk=metrics["risk"], penalty=metrics["penalty"])
        return out

    group = config.get("learners_per_group", 0)
    common = dict(name=config.name, family="irm", axis=axis, select_by=config.select_by,
                  plot=plots.irm_run_figures, model=model)
    if config.solver != "gradient":
        return Program(init=make_init(closed_form_one, axis),
                       evaluate=jax.jit(map_learners(evaluate_one, 0, group)), **common)
    return Program(
        init=make_init(init_one, axis),
        chunk=jax.jit(map_learners(chunk_with_lambda, 0, group)),
        evaluate=jax.jit(map_learners(lambda state, data: evaluate_one(state.params, data), 0,
                                      group)),
        num_steps=config.num_steps,
        chunk_steps=config.chunk_steps,
        checkpoint_every=config.checkpoint_every,
        trace_counter=chunk,
        progress_metrics=("risk", "penalty") if config.criterion.name == "irmv1" else ("risk",),
        **common,
    )


def least_squares(x_NxD, y_N) -> jax.Array:
    """argmin_w ||x w - y||^2 without intercept (the reference's ERM: sklearn
    LinearRegression(fit_intercept=False)), through the SVD-based lstsq."""
    return jnp.linalg.lstsq(x_NxD, y_N)[0]


def run(config, workdir: str, progress: bool = True, max_chunks: int | None = None,
        report: bool = True) -> dict:
    """Train every learner of ``config`` in ``workdir``; returns summary.json's content.

    A config with a ``study`` runs each of its experiments (``run_study``). ``report`` prints
    the result table (with ``progress``)."""
    if config.get("study"):
        return run_study(config, workdir, progress=progress)
    program = build_program(config)
    summary = run_program(program, config.to_dict(), workdir, progress, max_chunks)
    if summary and report:
        print(f"\n{config.name}: {len(summary['axis']['seed'])} seeds, setting "
              f"{config.data.setting} (mean +- std over seeds)\n{format_table(grid_rows(summary))}")
    return summary


def grid_rows(summary: dict) -> dict:
    """Table rows of one run: each grid point, and the per-seed selection when there is one."""
    names = [n for n in summary["axis"] if n != "seed"]
    rows = {}
    for point in summary["grid"]:
        label = ",".join(f"{n}={point[n]:g}" for n in names) or summary.get("name", "run")
        rows[label] = {k: point[k] for k in TABLE_METRICS}
    if "selected" in summary:
        rows[f"selected by {summary['selected']['by']}"] = table_row(summary)
    return rows


def experiment_config(config, name: str):
    """The study's experiment ``name``: the shared config with its overrides applied."""
    sub = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
    overrides = sub.study[name].to_dict()
    del sub["study"]
    sub.study_order = ()
    sub.update_from_flattened_dict(wd.flatten(overrides))
    sub.name = name
    sub.study = ml_collections.ConfigDict()
    return sub


def table_row(summary: dict) -> dict:
    """mean/std per table metric: the selected grid point per seed when the run selects one."""
    stats = summary.get("selected") or summary["grid"][0]
    return {k: stats[k] for k in TABLE_METRICS}


def format_table(rows: dict, references: dict | None = None) -> str:
    """One line per experiment: mean +- std over seeds of each table metric; with
    ``references`` (experiment -> ``irmx.irm.reference.reference_row``), the IRM reference's
    published causal / non-causal errors beside them ("-" where an experiment has none)."""
    header = ["experiment", *TABLE_METRICS]
    if references:
        header += ["reference causal", "reference non-causal"]
    lines = []
    for name, row in rows.items():
        line = [name, *[tables.mean_std(row[m]) for m in TABLE_METRICS]]
        if references:
            ref = references.get(name)
            line += ([f"{ref[m][0]:.4f} +- {ref[m][1]:.4f}" for m in REFERENCE_METRICS]
                     if ref else ["-", "-"])
        lines.append(line)
    return tables.format_table(header, lines)


def run_study(config, workdir: str, progress: bool = True) -> dict:
    """Run each experiment of ``config.study`` in ``workdir/<name>`` (``run_group``); print one
    table."""
    names = list(config.get("study_order") or config.study.keys())
    unknown = [n for n in names if n not in config.study]
    if unknown or len(names) != len(config.study):
        cc.fail("study_order", tuple(names), "a permutation of " + ", ".join(config.study))
    subs = {name: experiment_config(config, name) for name in names}
    for sub in subs.values():
        validate(sub)  # every experiment's config is checked before the first compiles
    members = [(build_program(sub), sub.to_dict()) for sub in subs.values()]

    references = {name: reference.reference_row(sub.data.setting, sub.reference_method)
                  for name, sub in subs.items() if sub.reference_method}
    settings = sorted({sub.data.setting for sub in subs.values()},
                      key=sem_lib.SETTINGS.index)

    def combine(summaries):
        rows = {n: table_row(s) for n, s in summaries.items()}
        per_seed = {
            n: {m: [r[m] for r in _chosen_rows(s)] for m in TABLE_METRICS}
            for n, s in summaries.items()
        }
        group = {"setting": ",".join(settings), "experiments": rows, "per_seed": per_seed}
        if references:
            group["reference"] = {"source": reference.SOURCE, "repetitions":
                                  reference.NUM_REPETITIONS, "experiments": references}
        return group, format_table(rows, references)

    study = run_group(members, config.to_dict(), workdir, combine, progress)
    seeds = len(members[0][0].axis.seeds)
    where = "settings" if len(settings) > 1 else "setting"
    ref = (f"; reference: the IRM code's synthetic_results.txt, {reference.NUM_REPETITIONS} "
           "repetitions" if references else "")
    print(f"\nIRM regression study, {where} {', '.join(settings)}, {seeds} seeds "
          f"(mean +- std over seeds{ref}):\n{study['table']}")
    plots.irm_study_figure(os.path.join(workdir, "plots", "errors_by_experiment.png"),
                           study["per_seed"])
    if references:
        experiments = {name: (sub.data.setting, sub.reference_method or name)
                       for name, sub in subs.items()}
        plots.irm_reference_figure(os.path.join(workdir, "plots", "errors_vs_reference.png"),
                                   study["per_seed"], experiments, references, seeds,
                                   reference.NUM_REPETITIONS)
    return study


def _chosen_rows(summary: dict) -> list[dict]:
    learners = summary["learners"]
    if "selected" in summary:
        return [learners[i] for i in summary["selected"]["learners"]]
    per_point = len(learners) // len(summary["axis"]["seed"])
    return learners[::per_point]
