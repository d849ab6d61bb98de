"""The hypergrad family's driver: every algorithm of Clarke et al. (ICLR 2022) over a learner axis
of initialisations, one vmapped program per algorithm.

``run(config, workdir)`` trains ``config.algorithm`` (one ``irmx.hypergrad.algorithms`` kind)
for every learner of the axis (seeds x initial hyperparameters: ``sampled`` draws from the
paper's ``natural_sgd_generator`` ranges, or ``vmapped`` values, or ``config.init``); with
``config.compare`` it runs every named algorithm on the same initialisations under one workdir
and prints one table (the paper's Table 2 layout); with ``config.algorithm.search =
"bayesopt"`` it runs ask/tell rounds of Bayesian optimisation over the initial hyperparameters,
each round one vmapped program.

Data: a regression set of ``irmx.data.uci`` (MSE of normalised targets; the unnormalised test
MSE is the paper's ``Unnormalised_Loss/Test``) or an image set of ``irmx.data.images``
(cross-entropy; inputs standardised per pixel with the training statistics, as torchvision's
``Normalize`` in the reference's ``datasets.py``). The split is shared by every learner
(``data.data_seed``; the paper's ``permutation_indices.txt`` when present), so all algorithms
see the same data.
"""

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from irmx import classify as classify_lib
from irmx import config_checks as cc
from irmx import rng
from irmx.data import images as images_lib
from irmx.data import ptb as ptb_lib
from irmx.data import uci
from irmx.experiments.loop import Program, run_group, run_program
from irmx.hypergrad import algorithms, rule
from irmx.io import tables
from irmx.io import workdir as wd
from irmx.learners import axis_from_config, learner_stream, make_init, map_learners
from irmx.nets import lstm as lstm_lib
from irmx.nets.classifiers import make_classifier
from irmx.train import init_state, make_step, make_update

REGRESSION = uci.DATASETS
CLASSIFICATION = images_lib.DATASETS
LANGUAGE = ("penn_treebank",)
DATASETS = REGRESSION + CLASSIFICATION + LANGUAGE
# (low, high, low_open) of each value a learner may vary (vmapped / zipped / sampled; natural)
# (coordinates ``initial_<name>``: the final and logged metrics lr / weight_decay / momentum are
# the current values, and a coordinate may not share a metric's name)
AXIS_RANGES = {"initial_lr": (0.0, math.inf, True),
               "initial_weight_decay": (0.0, math.inf, True),
               "initial_momentum": (0.0, 1.0, False), "bo_repeat": (0.0, math.inf, False)}
HYPER_OPTIMIZERS = ("adam", "sgd")
SEARCHES = ("", "bayesopt")
MOMENTUM_EPS = 1e-6  # natural momentum kept in [eps, 1 - eps]: finite logit (reference bayesopt)


def is_regression(config) -> bool:
    return config.data.name in REGRESSION


def is_language(config) -> bool:
    return config.data.name in LANGUAGE


def val_fraction(config) -> float | None:
    """The validation fraction in use: the algorithm's (Random/Baydin: 0), else the data
    config's, else None (the data set's own: ``uci.SIZES``; images 1/6 as the reference's
    FashionMNIST ``validation_proportion``)."""
    for v in (config.algorithm.val_fraction, config.data.val_fraction):
        if v >= 0:
            return float(v)
    return None


def hypers_per_chunk(config) -> int:
    """Hyperparameter steps per chunk: a chunk ends at a logged point (full-split evaluation),
    every ``eval_every`` network steps rounded to whole intervals."""
    return max(1, config.eval_every // config.algorithm.interval)


def num_steps(config) -> int:
    return config.algorithm.interval * config.algorithm.hyper_steps


# ---------------------------------------------------------------------------------------------
# Validation (before anything compiles)


def validate(config) -> None:
    cc.choice(config, "data.name", DATASETS)
    cc.number(config, "data.data_seed", 0, 2**32 - 1, integer=True)
    cc.number(config, "data.val_fraction", -1.0, 1.0, high_open=True)
    if 0 > config.data.val_fraction > -1:
        cc.fail("data.val_fraction", config.data.val_fraction, "-1 (the data set's) or [0, 1)")
    if is_regression(config):
        cc.choice(config, "data.source", uci.SOURCES)
    if not is_language(config):
        cc.number(config, "data.batch_size", 0, integer=True)
        cc.number(config, "data.num_train", 0, integer=True)
    if is_language(config):
        for key in ("data.seq_len", "data.parallel_sequences", "model.embed_size",
                    "model.hidden_size", "model.num_layers"):
            cc.number(config, key, 1, integer=True)
        if not config.data.data_dir:
            cc.fail("data.data_dir", "", "the folder holding ptb.{train,valid,test}.txt "
                    "(irmx never downloads Penn Treebank)")
    else:
        with cc.config_keys(name="model.name"):
            make_classifier(config.model.name, 10, weight_init="pytorch")
    a = config.algorithm
    cc.choice(config, "algorithm.kind", algorithms.KINDS)
    cc.choice(config, "algorithm.search", SEARCHES)
    cc.number(config, "algorithm.interval", 1, integer=True)
    cc.number(config, "algorithm.hyper_steps", 1, integer=True)
    cc.number(config, "algorithm.neumann_terms", 1, integer=True)
    cc.number(config, "algorithm.lookback", 0, integer=True)
    cc.number(config, "algorithm.remat_block", 0, integer=True)
    cc.choice(config, "algorithm.per_parameter_lr", (True, False))
    cc.choice(config, "algorithm.reset", (True, False))
    cc.choice(config, "algorithm.hyper_optimizer", HYPER_OPTIMIZERS)
    cc.number(config, "algorithm.hyper_lr", 0.0, low_open=True)
    cc.number(config, "algorithm.val_fraction", -1.0, 1.0, high_open=True)
    cc.number(config, "algorithm.batched", 1, integer=True)
    cc.numbers(config, "algorithm.lr_clip", -math.inf, math.inf, min_len=2)
    if len(a.lr_clip) != 2 or not a.lr_clip[0] < a.lr_clip[1]:
        cc.fail("algorithm.lr_clip", tuple(a.lr_clip),
                "(low, high) log10 learning-rate bounds with low < high")
    unknown = [n for n in a.optimised if n not in rule.NAMES]
    if unknown or len(set(a.optimised)) != len(a.optimised):
        cc.fail("algorithm.optimised", tuple(a.optimised),
                "distinct names among " + ", ".join(rule.NAMES))
    if a.kind == "fixed" and a.optimised:
        cc.fail("algorithm.optimised", tuple(a.optimised), "() for algorithm.kind='fixed'")
    if a.kind != "fixed" and not a.optimised:
        cc.fail("algorithm.optimised", tuple(a.optimised),
                f"at least one of {', '.join(rule.NAMES)} for algorithm.kind={a.kind!r}")
    if a.kind == "baydin" and tuple(a.optimised) != ("lr",):
        cc.fail("algorithm.optimised", tuple(a.optimised), "('lr',) for algorithm.kind='baydin'")
    if a.kind == "baydin" and a.per_parameter_lr:
        cc.fail("algorithm.per_parameter_lr", True, "False for algorithm.kind='baydin'")
    if a.kind in ("neumann", "baydin") and a.reset:
        cc.fail("algorithm.reset", True, f"False for algorithm.kind={a.kind!r}")
    cc.number(config, "init.lr", 0.0, low_open=True)
    cc.number(config, "init.weight_decay", 0.0, low_open=True)
    cc.number(config, "init.momentum", 0.0, 1.0)
    cc.number(config, "clip_norm", 0.0)
    cc.number(config, "eval_every", 1, integer=True)
    cc.number(config, "eval_batch_size", 1, integer=True)
    cc.number(config, "checkpoint_every", 0, integer=True)
    cc.learner_axis(config, AXIS_RANGES)
    if a.batched > 1 and a.search != "bayesopt":
        n = axis_from_config(config).size
        if a.batched > n:
            cc.fail("algorithm.batched", a.batched,
                    f"at most the number of learners ({n}; raise num_inits)")
    b = config.bayesopt
    cc.number(config, "bayesopt.init_points", 1, integer=True)
    cc.number(config, "bayesopt.n_iter", 0, integer=True)
    cc.number(config, "bayesopt.batch", 1, integer=True)
    cc.number(config, "bayesopt.repeats", 1, integer=True)
    cc.number(config, "bayesopt.nonfinite_loss", 0.0, low_open=True)
    for key in ("lr", "weight_decay", "momentum"):
        cc.numbers(config, f"bayesopt.bounds.{key}", min_len=2)
        lo, hi = b.bounds[key][:2]
        if len(b.bounds[key]) != 2 or not lo < hi:
            cc.fail(f"bayesopt.bounds.{key}", tuple(b.bounds[key]), "(low, high) with low < high")
    if not 0 < b.bounds.momentum[0] < b.bounds.momentum[1] < 1:
        cc.fail("bayesopt.bounds.momentum", tuple(b.bounds.momentum),
                "(low, high) inside (0, 1) (natural momentum)")


def check_data(config, num_train_pool: int) -> None:
    """Checks that need the data set's size (images: batch size, training points)."""
    if is_regression(config) or is_language(config):
        return
    frac = val_fraction(config)
    frac = 1 / 6 if frac is None else frac
    n_val = int(round(num_train_pool * frac))
    n_train = config.data.num_train or num_train_pool - n_val
    if n_train + n_val > num_train_pool:
        cc.fail("data.num_train", config.data.num_train,
                f"at most {num_train_pool - n_val} (the {num_train_pool} training images of "
                f"{config.data.name} less {n_val} for validation)")
    if not 1 <= config.data.batch_size <= n_train:
        cc.fail("data.batch_size", config.data.batch_size,
                f"an integer in [1, {n_train}] for {config.data.name} (0 = full batch is for "
                "the regression sets)")


# ---------------------------------------------------------------------------------------------
# Data (host, once per program; shared by every learner)


def load_data(config) -> dict:
    """The shared split as arrays: x_/y_ train, val, test (+ y_std for regression). With no
    validation split (fraction 0) validation is the training set (the reference's Random and
    Baydin configs: ``validation_proportion: 0``, the validation loader is the training one)."""
    d = config.data
    frac = val_fraction(config)
    if is_language(config):
        raw = ptb_lib.load_ptb(d.data_dir or ".")
        tr, va, te = ptb_lib.split_ptb(raw, ptb_lib.PTB_VAL_FRACTION if frac is None else frac)
        va = va if len(va) else tr  # no validation split: validate on the training stream
        p = d.parallel_sequences
        out = {"x_train": ptb_lib.batchify(tr, p), "x_val": ptb_lib.batchify(va, p),
               "x_test": ptb_lib.batchify(te, p), "num_tokens": raw["num_tokens"],
               "source": "files"}
        for split in ("train", "val", "test"):
            if ptb_lib.num_bptt_batches(out[f"x_{split}"].shape[0], d.seq_len) < 1:
                cc.fail("data.seq_len", d.seq_len, f"fewer time rows than the {split} split's "
                        f"{out[f'x_{split}'].shape[0] - 1} (tokens / parallel_sequences - 1)")
        return out
    if is_regression(config):
        with cc.config_keys(name="data.name", source="data.source"):
            raw = uci.load_regression(d.name, d.data_dir or None, d.source)
        split = uci.split_regression(raw["x"], raw["y"], d.name, d.data_seed, frac,
                                     raw["permutation"])
        out = {k: split[k] for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        out["y_std"] = np.float32(split["y_std"])
        out["source"] = raw["source"]
    else:
        ds = images_lib.load_image_data(d.name, d.data_dir or None)
        pool_x, pool_y = ds["train"]
        check_data(config, len(pool_y))
        frac = 1 / 6 if frac is None else frac
        n_val = int(round(len(pool_y) * frac))
        n_train = d.num_train or len(pool_y) - n_val
        order = np.asarray(jax.random.permutation(rng.stream(d.data_seed, "data_split"),
                                                  len(pool_y)))
        tr, va = order[:n_train], order[len(order) - n_val:]
        # per pixel over train + validation, unbiased std (torch.std), a constant pixel's std
        # 1: the reference's make_split_datasets, so every algorithm (with its validation
        # split or without) sees the same inputs
        train_val = pool_x[np.concatenate([tr, va])]
        mean = train_val.mean(0)
        std = train_val.std(0, ddof=1) if len(train_val) > 1 else np.zeros_like(mean)
        std = np.where(std > 0, std, 1.0).astype(np.float32)
        norm = lambda x: ((x - mean) / std).astype(np.float32)
        out = {"x_train": norm(pool_x[tr]), "y_train": pool_y[tr].astype(np.int32),
               "x_val": norm(pool_x[va]), "y_val": pool_y[va].astype(np.int32),
               "x_test": norm(ds["test"][0]), "y_test": ds["test"][1].astype(np.int32),
               "num_classes": ds["num_classes"], "source": d.name}
    if not len(out["y_val"]):
        out["x_val"], out["y_val"] = out["x_train"], out["y_train"]
    return out


# ---------------------------------------------------------------------------------------------
# The program


def initial_values(config, coords, params) -> dict:
    """Raw values of one learner: natural lr / weight_decay / momentum from its coordinates
    ``initial_<name>`` (else ``config.init``), through ``rule.raw_values`` (log10, log10, logit)."""
    get = lambda n: coords[f"initial_{n}"] if f"initial_{n}" in coords else config.init[n]
    mom = jnp.clip(get("momentum"), MOMENTUM_EPS, 1 - MOMENTUM_EPS)
    return rule.raw_values(get("lr"), get("weight_decay"), mom, params,
                           per_parameter_lr=config.algorithm.per_parameter_lr)


def _hyper_optimizer(config):
    a = config.algorithm
    return (optax.adam(a.hyper_lr) if a.hyper_optimizer == "adam" else optax.sgd(a.hyper_lr))


def _supervised_task(config, data) -> dict:
    """Regression (MSE of normalised targets) or classification (cross-entropy) with an MLP /
    conv net of ``irmx.nets.classifiers`` (torch's initialisation, as the reference)."""
    regression = is_regression(config)
    model = make_classifier(config.model.name, 1 if regression else data["num_classes"],
                            weight_init="pytorch")
    n_train = len(data["y_train"])
    bs = min(config.data.batch_size or n_train, n_train)
    full_batch = bs == n_train
    spe = max(1, n_train // bs)

    def predict(params, x):
        out = model.apply(params, x)
        return out[..., 0] if regression else out

    def loss_on(params, batch):
        x, y = batch
        out = predict(params, x)
        if regression:
            return jnp.mean(jnp.square(out - y))
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))

    def batch_fn(data, step, key):
        if full_batch:
            return data["x_train"], data["y_train"]
        idx = rng.epoch_batch(jax.random.wrap_key_data(data["shuffle_key"]), step, spe, bs,
                              n_train)
        return data["x_train"][idx], data["y_train"][idx]

    n_val = len(data["y_val"])
    val_bs = n_val if regression or n_val < bs else bs

    def val_batch_fn(data, step, key):
        if val_bs == n_val:
            return data["x_val"], data["y_val"]
        idx = jax.random.choice(key, n_val, (val_bs,), replace=False)
        return data["x_val"][idx], data["y_val"][idx]

    def evaluate(params, model_state, data, splits):
        out = {}
        for split in splits:
            x, y = data[f"x_{split}"], data[f"y_{split}"]
            if regression:
                out[f"{split}_loss"] = loss_on(params, (x, y))
            else:
                ev = classify_lib.evaluate_split(predict, params, x, y,
                                                 min(config.eval_batch_size, len(y)))
                out[f"{split}_loss"], out[f"{split}_accuracy"] = ev["loss"], ev["accuracy"]
        if regression and "test" in splits:
            out["unnormalised_test_loss"] = out["test_loss"] * data["y_std"] ** 2
        return out

    keys = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test") + (
        ("y_std",) if regression else ())
    sample = jnp.asarray(data["x_train"][:1])
    return dict(
        model=model, init=lambda key: (model.init(key, sample), {}),
        loss=lambda p, ms, b, k, v: (loss_on(p, b), {}), val_loss=lambda p, ms, b: loss_on(p, b),
        batch_fn=batch_fn, val_batch_fn=val_batch_fn, evaluate=evaluate,
        chunk_splits=("train", "val", "test") if regression else ("val", "test"),
        shared={k: jnp.asarray(data[k]) for k in keys})


def _language_task(config, data) -> dict:
    """Penn Treebank: the 2-layer LSTM (``irmx.nets.lstm``), BPTT batches of ``data.seq_len``
    time rows over ``data.parallel_sequences`` streams with the hidden state carried (model
    state) and reset each epoch; the hypergradient's validation batch is a random BPTT batch of
    the validation stream from a zero state; full evaluations pass the state along the whole
    split (``evaluate_lm``)."""
    m = config.model
    model = lstm_lib.LSTMLanguageModel(data["num_tokens"], m.embed_size, m.hidden_size,
                                       m.num_layers)
    seq = config.data.seq_len
    loss = lstm_lib.make_lm_loss(model)
    batch_fn = lstm_lib.make_lm_batch_fn(data["x_train"], seq)
    n_val = ptb_lib.num_bptt_batches(data["x_val"].shape[0], seq)
    carry0 = model.initial_carry(data["x_train"].shape[1])

    def batch(data, step, key):
        return batch_fn(data["x_train"], step, key)

    def val_batch_fn(data, step, key):
        index = jax.random.randint(key, (), 0, n_val)
        return ptb_lib.bptt_batch(data["x_val"], index, seq)

    def val_loss(params, model_state, b):
        inputs, targets = b
        value, _ = loss(params, {"carry": carry0}, (inputs, targets, jnp.array(True)), None, None)
        return value

    def evaluate(params, model_state, data, splits):
        out = {}
        for split in splits:
            value, ppl = lstm_lib.evaluate_lm(model, params, data[f"x_{split}"], seq)
            out[f"{split}_loss"], out[f"{split}_perplexity"] = value, ppl
        return out

    def init(key):
        tokens = jnp.zeros((seq, data["x_train"].shape[1]), jnp.int32)
        return model.init(key, tokens, carry0)["params"], {"carry": carry0}

    return dict(
        model=model, init=init, loss=loss, val_loss=val_loss, batch_fn=batch,
        val_batch_fn=val_batch_fn, evaluate=evaluate, chunk_splits=("val",),
        shared={k: jnp.asarray(data[k]) for k in ("x_train", "x_val", "x_test")})


def build_program(config, data=None, name: str | None = None) -> Program:
    """Validate, load the shared split, close over it: pure learner-vmapped training of
    ``config.algorithm`` over the axis of ``config``."""
    validate(config)
    data = load_data(config) if data is None else data
    a = config.algorithm
    axis = axis_from_config(config)
    task = (_language_task if is_language(config) else _supervised_task)(config, data)
    optimizer = rule.make_rule(config.clip_norm)
    hyper_opt = _hyper_optimizer(config)
    total = num_steps(config)
    per_chunk = hypers_per_chunk(config)
    update = make_update(task["loss"], optimizer)
    step = make_step(update, task["batch_fn"])
    core = algorithms.make_chunk(
        a.kind, step=step, update=update, batch_fn=task["batch_fn"],
        val_batch_fn=task["val_batch_fn"], val_loss=task["val_loss"],
        train_loss=lambda p, ms, b, k, v: task["loss"](p, ms, b, k, v)[0],
        interval=a.interval, num_steps=total, optimised=tuple(a.optimised),
        hyper_optimizer=hyper_opt, neumann_terms=a.neumann_terms, lookback=a.lookback,
        lr_clip=tuple(a.lr_clip), reset=a.reset, remat_block=a.remat_block)

    def evaluate_one(state, data, splits=("train", "val", "test")):
        out = task["evaluate"](state.params, state.model_state, data, splits)
        hp = rule.natural(state.values)
        out.update(rule.summarize_lr(state.values["lr"]))
        out.update(weight_decay=hp["weight_decay"], momentum=hp["momentum"])
        return out

    def chunk_one(state, data):
        chunk_one.num_traces += 1
        state, metrics = jax.lax.scan(lambda s, _: core(s, data), state, None,
                                      length=per_chunk)
        metrics = jax.tree.map(lambda m: m[-1], metrics)
        metrics.update(evaluate_one(state, data, task["chunk_splits"]))
        return state, metrics

    chunk_one.num_traces = 0

    def init_one(coords):
        params, model_state = task["init"](learner_stream(coords, "init"))
        values = initial_values(config, coords, params)
        outer = algorithms.init_outer(a.kind, values, tuple(a.optimised), hyper_opt, params,
                                      model_state, reset=a.reset)
        state = init_state(params, optimizer, learner_stream(coords, "step"), values,
                           model_state, outer=outer)
        return state, {"shuffle_key": jax.random.key_data(learner_stream(coords, "shuffle"))}

    shared = task["shared"]
    axes = (0, {"shuffle_key": 0, **{k: None for k in shared}})
    group = config.get("learners_per_group", 0)
    every = config.checkpoint_every * a.interval * per_chunk
    return Program(
        name=name or config.name,
        family="hypergrad",
        axis=axis,
        init=make_init(init_one, axis, shared),
        chunk=jax.jit(map_learners(chunk_one, axes, group)),
        evaluate=jax.jit(map_learners(evaluate_one, axes, group)),
        num_steps=total,
        chunk_steps=a.interval * per_chunk,
        checkpoint_every=every if every and every < total else 0,
        model=task["model"],
        trace_counter=chunk_one,
        progress_metrics=("loss", "val_loss", "lr"),
        report=format_summary,
    )


# ---------------------------------------------------------------------------------------------
# Tables


def result_metric(config) -> str:
    """The final test metric of the paper's tables: UCI ``Unnormalised_Loss/Test``, images
    ``Loss/Test``, Penn Treebank the test perplexity."""
    if is_language(config):
        return "test_perplexity"
    return "unnormalised_test_loss" if is_regression(config) else "test_loss"


def final_losses(summary: dict, metric: str) -> np.ndarray:
    """Per learner, the final ``metric`` (NaN for diverged learners)."""
    return np.array([np.nan if r.get("diverged") or r.get(metric) is None else r[metric]
                     for r in summary["learners"]], np.float64)


def batched_losses(summary: dict, metric: str, size: int, seed: int) -> np.ndarray:
    """The paper's "Random (3-batched)" (reference ``figures.parse_data_by_algorithm``): the
    Random_Validation runs in a random order, cut into groups of ``size``; per group the run
    with the lowest final validation loss, and its final ``metric``."""
    test = final_losses(summary, metric)
    val = final_losses(summary, "val_loss")
    order = np.random.default_rng(seed).permutation(len(test))
    out = []
    for g in range(len(order) // size):
        idx = order[g * size:(g + 1) * size]
        v = np.where(np.isfinite(val[idx]), val[idx], np.inf)
        out.append(test[idx[int(np.argmin(v))]] if np.isfinite(v).any() else np.nan)
    return np.array(out, np.float64)


def table_row(losses) -> dict:
    """runs / diverged / mean / median / best (min) of the finite final losses."""
    v = np.asarray(losses, np.float64)
    ok = v[np.isfinite(v)]
    row = {"runs": int(v.size), "diverged": int(v.size - ok.size)}
    row.update(mean=float(ok.mean()) if ok.size else None,
               median=float(np.median(ok)) if ok.size else None,
               best=float(ok.min()) if ok.size else None)
    return row


def format_table(rows: dict, metric: str, title: str = "") -> str:
    header = ("algorithm", "runs", "diverged", f"mean {metric}", "median", "best")
    body = [(n, r["runs"], r["diverged"], r["mean"], r["median"], r["best"])
            for n, r in rows.items()]
    return tables.format_table(header, body, title=title)


def format_summary(summary: dict) -> str:
    metric = summary.get("result_metric", "test_loss")
    rows = {summary["name"]: table_row(final_losses(summary, metric))}
    return format_table(rows, metric, title=f"{summary['name']}: final {metric} over "
                        f"{summary['num_learners']} learners")


# ---------------------------------------------------------------------------------------------
# Runs


def _extend(config):
    metric = result_metric(config)

    def extend(summary):
        return {"result_metric": metric, "algorithm": config.algorithm.to_dict(),
                "table_row": table_row(final_losses(summary, metric))}

    return extend


def program_for(config, data=None, name=None) -> Program:
    import dataclasses

    return dataclasses.replace(build_program(config, data, name), extend_summary=_extend(config))


def member_config(config, name: str):
    """The config of algorithm ``name`` of ``config.compare``: ``config`` with its algorithm
    section replaced, no compare list."""
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.algorithm = ml_collections.ConfigDict(config.compare[name].to_dict())
    sub.compare = ml_collections.ConfigDict()
    sub.compare_order = ()
    sub.name = name
    return sub


def run(config, workdir: str, progress: bool = True, max_chunks=None) -> dict:
    """Train ``config`` (one algorithm, a ``compare`` group or a BayesOpt search) in
    ``workdir``; print its table."""
    if config.compare:
        return run_compare(config, workdir, progress)
    validate(config)
    if config.algorithm.search == "bayesopt":
        return run_bayesopt(config, workdir, progress)
    summary = run_program(program_for(config), config.to_dict(), workdir, progress, max_chunks)
    if summary:
        metric = result_metric(config)
        rows = {config.name: table_row(final_losses(summary, metric))}
        if config.algorithm.batched > 1:
            rows[f"{config.name} ({config.algorithm.batched}-batched)"] = table_row(
                batched_losses(summary, metric, config.algorithm.batched, config.seed))
        print(format_table(rows, metric, title=_title(config, summary["num_learners"])))
    return summary


def _title(config, n: int) -> str:
    return (f"hypergrad on {config.data.name}: final {result_metric(config)} over {n} "
            "initialisations")


def run_compare(config, workdir: str, progress: bool = True) -> dict:
    """Every algorithm of ``config.compare`` on the same initialisations (one program each,
    under ``workdir/<name>``; ``random_3batched`` is computed from ``random_validation``'s runs,
    BayesOpt runs its rounds under ``workdir/bayesopt``), one table."""
    names = list(config.compare_order or config.compare.keys())
    if sorted(names) != sorted(config.compare.keys()):
        cc.fail("compare_order", tuple(names), "a permutation of " + ", ".join(config.compare))
    subs = {n: member_config(config, n) for n in names}
    for sub in subs.values():
        validate(sub)
    derived = {n for n, s in subs.items() if s.algorithm.batched > 1
               and "random_validation" in subs}
    searched = [n for n, s in subs.items() if s.algorithm.search == "bayesopt"]
    trained = [n for n in names if n not in derived and n not in searched]
    cache = {}

    def data_of(sub):
        key = (val_fraction(sub), sub.data.name)
        if key not in cache:
            cache[key] = load_data(sub)
        return cache[key]

    members = [(program_for(subs[n], data_of(subs[n]), n), subs[n].to_dict()) for n in trained]
    metric = result_metric(config)
    searches = {n: run_bayesopt(subs[n], os.path.join(workdir, n), progress, quiet=True)
                for n in searched}

    def combine(summaries):
        rows = {}
        for n in names:
            if n in summaries:
                rows[n] = table_row(final_losses(summaries[n], metric))
            elif n in derived:
                rows[n] = table_row(batched_losses(summaries["random_validation"], metric,
                                                   subs[n].algorithm.batched, config.seed))
            else:
                rows[n] = table_row(searches[n]["final_losses"])
        n_init = members[0][0].axis.size if members else 0
        return ({"result_metric": metric, "rows": rows, "num_initialisations": n_init},
                format_table(rows, metric, title=_title(config, n_init)))

    group = run_group(members, config.to_dict(), workdir, combine, progress)
    print(group["table"])
    return group


# ---------------------------------------------------------------------------------------------
# BayesOpt (ask/tell rounds, each one vmapped program)


def _import_bayes_opt():
    try:
        import bayes_opt
    except ImportError:
        raise cc.ConfigError(
            "config.algorithm.search='bayesopt' needs the bayesian-optimization package; "
            "install it with: pip install 'irmx[bayesopt]'") from None
    return bayes_opt


def _optimizers(config):
    """One ``bayes_opt.BayesianOptimization`` per repeat (the reference's bayesopt.py: bounds
    log10 lr (-6, -1), log10 wd (-7, -2), natural momentum (1e-6, 1 - 1e-6), default UCB
    acquisition), with a constant liar so a batch of suggestions differs."""
    bo = _import_bayes_opt()
    b = config.bayesopt
    bounds = {"lr": tuple(b.bounds.lr), "weight_decay": tuple(b.bounds.weight_decay),
              "momentum": tuple(b.bounds.momentum)}
    out = []
    for r in range(b.repeats):
        seed = config.seed * 1000 + r
        acq = bo.acquisition.ConstantLiar(bo.acquisition.UpperConfidenceBound(kappa=2.576))
        out.append(bo.BayesianOptimization(f=None, pbounds=bounds, random_state=seed,
                                           acquisition_function=acq, verbose=0,
                                           allow_duplicate_points=True))
    return out


def bayesopt_rounds(config) -> list[int]:
    """Points per round: ``init_points`` random ones, then batches of ``batch`` up to
    ``init_points + n_iter`` (the reference's ``maximize(init_points=5, n_iter=25)``)."""
    b = config.bayesopt
    sizes = [b.init_points]
    left = b.n_iter
    while left > 0:
        sizes.append(min(b.batch, left))
        left -= sizes[-1]
    return sizes


def run_bayesopt(config, workdir: str, progress: bool = True, quiet: bool = False) -> dict:
    """BayesOpt over the initial hyperparameters (the reference's Random_Validation_BayesOpt:
    fixed hyperparameters, target = minus the final full validation loss, a non-finite loss
    replaced by ``bayesopt.nonfinite_loss``). Round k asks every repeat for its batch of points
    and trains all of them as one vmapped program in ``workdir/round_<k>``; the points of a
    round are stored before it trains, so a resumed search asks nothing twice. Final result per
    repeat: the test loss of the point with the best validation loss."""
    validate(config)
    optimizers = _optimizers(config)
    b = config.bayesopt
    metric = result_metric(config)
    data = load_data(config)
    with wd.Workdir(workdir, config.to_dict(), family="hypergrad") as w:
        points_path = w.file("points.json")
        stored = wd.read_json(points_path) if os.path.exists(points_path) else {"rounds": []}
        evaluated = []  # (repeat, raw point, val loss, test loss)
        w.set_status("running", 0, rounds=len(bayesopt_rounds(config)))
        for k, size in enumerate(bayesopt_rounds(config)):
            # asked again on a resumed search too, so each optimizer's random state and liar
            # bookkeeping advance exactly as in an uninterrupted one; the stored points win
            points = [[{n: float(v) for n, v in opt.suggest().items()}
                       for _ in range(size)] for opt in optimizers]
            if k < len(stored["rounds"]):
                points = stored["rounds"][k]
            else:
                stored["rounds"].append(points)
                wd.write_json_atomic(points_path, stored)
            sub = ml_collections.ConfigDict(config.to_dict())
            sub.algorithm.search = ""
            sub.num_inits = 0
            sub.sampled.num = 0
            for n in rule.NAMES:
                sub.sampled[f"initial_{n}"] = ()
                sub.vmapped[f"initial_{n}"] = ()
            flat = [(r, p) for r, pts in enumerate(points) for p in pts]
            sub.zipped.bo_repeat = tuple(float(r) for r, _ in flat)
            sub.zipped.initial_lr = tuple(10.0 ** p["lr"] for _, p in flat)
            sub.zipped.initial_weight_decay = tuple(10.0 ** p["weight_decay"] for _, p in flat)
            sub.zipped.initial_momentum = tuple(p["momentum"] for _, p in flat)
            sub.num_seeds, sub.seeds = 1, ()
            summary = run_program(program_for(sub, data, f"bayesopt_round_{k}"), sub.to_dict(),
                                  w.file(f"round_{k:02d}"), progress)
            for (r, p), row in zip(flat, summary["learners"]):
                val = row.get("val_loss")
                val = val if (val is not None and np.isfinite(val) and not row["diverged"]) \
                    else b.nonfinite_loss
                test = np.nan if row["diverged"] else row.get(metric, np.nan)
                optimizers[r].register(params=p, target=-float(val))
                evaluated.append((r, p, float(val), test))
        best = []
        for r in range(b.repeats):
            mine = [e for e in evaluated if e[0] == r]
            best.append(min(mine, key=lambda e: e[2]))
        result = {
            "result_metric": metric,
            "final_losses": [e[3] for e in best],
            "best_points": [{"lr": 10.0 ** e[1]["lr"], "weight_decay": 10.0 ** e[1][
                "weight_decay"], "momentum": e[1]["momentum"], "val_loss": e[2]} for e in best],
            "evaluations": len(evaluated),
        }
        result["table_row"] = table_row(result["final_losses"])
        wd.write_json_atomic(w.file("summary.json"), result)
        w.set_status("done", 0, rounds=len(bayesopt_rounds(config)))
    if not quiet:
        print(format_table({config.name: result["table_row"]}, metric,
                           title=f"BayesOpt on {config.data.name}: final {metric} of the best "
                                 f"of {len(evaluated) // b.repeats} evaluations, "
                                 f"{b.repeats} repeats"))
    return result


def unused_keys(config) -> dict:
    unused = {}
    if config.data.name in REGRESSION:
        unused["data.num_train"] = "regression sets use every train+val row"
    elif is_language(config):
        unused["data.source"] = "data.name='penn_treebank'"
    else:
        unused["data.source"] = f"data.name={config.data.name!r} (an image set)"
    if config.algorithm.kind != "neumann":
        unused["algorithm.neumann_terms"] = f"algorithm.kind={config.algorithm.kind!r}"
    if config.algorithm.kind != "exact":
        unused["algorithm.lookback"] = f"algorithm.kind={config.algorithm.kind!r}"
        unused["algorithm.remat_block"] = f"algorithm.kind={config.algorithm.kind!r}"
    if config.algorithm.search != "bayesopt" and not config.compare:
        unused["bayesopt"] = "algorithm.search=''"
    return unused
