"""Generic classifier trainer: noisy-label training of every learner as one vmapped program.

``run(config, workdir)`` writes the workdir contract; checkpoint i (for ``launch/measures.py``)
is the model after ``config.checkpoint_epochs[i]`` epochs, kept for good in ``ckpt/``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from irmx import classify as classify_lib
from irmx import classify_plots, optim, registry
from irmx import config_checks as cc
from irmx.data import images as images_lib
from irmx.experiments.loop import Program, run_program
from irmx.io import tables
from irmx.learners import axis_from_config, learner_stream, make_init, map_learners
from irmx.nets.classifiers import make_classifier
from irmx.train import init_state, make_chunk, make_step, make_update

# config.vmapped.<name> -> the learner value it sets; optimizer hyperparameters go into the
# optimizer state (tree_set), label_noise into the learner's data.
VMAPPABLE = {"lr": "learning_rate", "weight_decay": "weight_decay", "momentum": "momentum",
             "label_noise": "label_noise"}
HYPERPARAMS = ("learning_rate", "weight_decay", "momentum")
# (low, high, low_open) of each vmappable (or sampled) value
AXIS_RANGES = {"lr": (0.0, math.inf, True), "weight_decay": (0.0, math.inf, False),
               "momentum": (0.0, 0.999999, False), "label_noise": (0.0, 1.0, False)}
SHARED = ("images", "test_images", "test_labels")  # data every learner reads (vmap in_axes None)


def unused_keys(config) -> dict:
    """Config keys that change nothing under ``config``, with why (``--print_config``)."""
    unused = {}
    if config.optim.name != "sgd":
        unused["optim.momentum"] = f"optim.name={config.optim.name!r}"
    if not config.data.augmentation:
        unused["data.padding"] = "data.augmentation=False"
    if config.data.name in images_lib.EMBEDDED:
        unused["data.data_dir"] = f"data.name={config.data.name!r} (embedded)"
    if config.optim.warmup_epochs == 0:
        unused["optim.warmup_initial"] = "optim.warmup_epochs=0"
    if not config.model.name.startswith("resnet"):
        unused["model.batchnorm"] = f"model.name={config.model.name!r}"
    return unused


def validate(config, num_pool=None) -> None:
    """Every value checked before any compilation; ``num_pool`` = size of the train pool."""
    cc.choice(config, "data.name", images_lib.DATASETS)
    cc.number(config, "data.label_noise", 0.0, 1.0)
    cc.number(config, "data.train_split", 1, integer=True)
    cc.number(config, "data.val_split", 0, integer=True)
    cc.number(config, "data.data_seed", -1, 2**32 - 1, integer=True)
    cc.choice(config, "data.augmentation", (True, False))
    cc.number(config, "data.padding", 0, 64, integer=True)
    if num_pool is not None and config.data.train_split + config.data.val_split > num_pool:
        cc.fail("data.train_split", config.data.train_split,
                f"train_split + val_split (= {config.data.train_split + config.data.val_split})"
                f" at most the {num_pool} training images of {config.data.name}")
    cc.choice(config, "model.batchnorm", (True, False))
    with cc.config_keys(name="model.name", batchnorm="model.batchnorm"):
        make_classifier(config.model.name, 10, batchnorm=config.model.batchnorm)
    cc.choice(config, "optim.name", ("sgd", "adam"))
    cc.number(config, "optim.lr", 0.0, low_open=True)
    cc.number(config, "optim.momentum", 0.0, 1.0, high_open=True)
    cc.number(config, "optim.weight_decay", 0.0)
    cc.number(config, "optim.warmup_epochs", 0, integer=True)
    cc.number(config, "optim.warmup_initial", 0.0)
    cc.number(config, "batch_size", 1, integer=True)
    if config.batch_size > config.data.train_split:
        cc.fail("batch_size", config.batch_size,
                f"at most data.train_split={config.data.train_split}")
    cc.number(config, "epochs", 1, integer=True)
    cc.number(config, "eval_every", 1, integer=True)
    cc.number(config, "eval_batch_size", 1, integer=True)
    with cc.config_keys(specs="evals"):  # types, options and splits (built, not traced)
        registry.make_evaluators(evaluator_specs(config), apply_fn=None, splits=SPLITS,
                                 batch_size=config.eval_batch_size)
    cc.numbers(config, "checkpoint_epochs", 0, config.epochs, min_len=1, integer=True)
    if list(config.checkpoint_epochs) != sorted(set(config.checkpoint_epochs)):
        cc.fail("checkpoint_epochs", config.checkpoint_epochs, "strictly increasing epochs")
    cc.number(config, "checkpoint_every", 1, integer=True)
    cc.learner_axis(config, AXIS_RANGES)
    if config.vmapped.get("momentum") and not (config.optim.name == "sgd"
                                               and config.optim.momentum > 0):
        cc.fail("vmapped.momentum", tuple(config.vmapped.momentum),
                "() unless config.optim.name='sgd' with config.optim.momentum > 0")


def data_coords(config, coords):
    """``coords`` with the seed role of the learner's data streams (data_split, label_noise):
    its ``data_seed`` coordinate, else ``config.data.data_seed`` when >= 0; without either the
    streams come from its ``seed`` (``irmx.learners.learner_stream``)."""
    if "data_seed" not in coords and config.data.data_seed >= 0:
        return {**coords, "data_seed": jnp.uint32(config.data.data_seed)}
    return coords


def learner_data(config, coords, pool_labels, num_classes: int):
    """A learner's split, noisy training labels and shuffle key (pure; vmapped over learners).

    ``coords`` are the learner's coordinates (``seed``; optionally ``data_seed`` and a vmapped
    ``label_noise``). The split and noise streams come from ``data_seed`` when the learner has
    that coordinate, else from ``config.data.data_seed`` when >= 0 (shared by every learner),
    else from the learner's seed."""
    d = config.data
    coords = data_coords(config, coords)
    train_idx, val_idx = images_lib.split_train_val(
        pool_labels.shape[0], d.train_split, d.val_split, learner_stream(coords, "data_split"))
    clean = pool_labels[train_idx]
    noisy, corrupted = images_lib.symmetric_label_noise(
        clean, coords.get("label_noise", d.label_noise), num_classes,
        learner_stream(coords, "label_noise"))
    return {
        "train_idx": train_idx,
        "val_idx": val_idx,
        "train_labels": noisy,
        "clean_labels": clean,
        "val_labels": pool_labels[val_idx],
        "corrupted": corrupted,
        "shuffle_key": jax.random.key_data(learner_stream(coords, "shuffle")),
    }


def build_program(config, dataset=None) -> Program:
    """Validate, load the data set (host), and close over it: pure learner-vmapped training."""
    validate(config)
    if dataset is None:
        dataset = images_lib.load_image_data(config.data.name, config.data.data_dir or None)
    pool_x, pool_y = dataset["train"]
    test_x = dataset["test"][0]
    validate(config, num_pool=pool_x.shape[0])
    if config.data.name in images_lib.CHANNEL_STATS:
        # The seed's transforms.Normalize, applied once to the stored images (so crops pad with
        # the standardized 0 rather than raw black: a negligible difference at padding 4).
        mean, std = images_lib.CHANNEL_STATS[config.data.name]
        pool_x = np.asarray(images_lib.standardize(pool_x, mean, std))
        test_x = np.asarray(images_lib.standardize(test_x, mean, std))
    num_classes = dataset["num_classes"]
    axis = axis_from_config(config)
    model = make_classifier(config.model.name, num_classes, batchnorm=config.model.batchnorm)
    apply_fn = model.apply
    spe = config.data.train_split // config.batch_size
    o = config.optim
    optimizer = optim.make_optimizer(
        o.name, o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
        warmup_epochs=o.warmup_epochs, warmup_initial=o.warmup_initial, steps_per_epoch=spe)
    augment = None
    if config.data.augmentation:
        augment = lambda key, x: images_lib.random_crop_flip(key, x, config.data.padding)
    batch_fn = classify_lib.make_batch_fn(config.batch_size, spe, augment)
    hparams = tuple(VMAPPABLE[n] for n in axis.hparam_names if VMAPPABLE[n] in HYPERPARAMS)
    update = make_update(classify_lib.make_loss(apply_fn), optimizer, hyperparams=hparams,
                         canonical_convs=True)
    epoch = make_chunk(make_step(update, batch_fn), spe)
    evaluators = make_evaluators(config, apply_fn)

    def evaluate_one(state, data):
        variables = {**state.params, **state.model_state}
        return {k: v for ev in evaluators for k, v in ev.fn(variables, data).items()}

    def chunk_one(state, data):
        state, metrics = epoch(state, data)
        ep = state.step // spe
        variables = {**state.params, **state.model_state}
        metrics.update(registry.evaluate_due(evaluators, ep, config.epochs, variables, data))
        metrics["epoch"] = ep
        return state, metrics

    shared = {
        "images": jnp.asarray(pool_x),
        "test_images": jnp.asarray(test_x),
        "test_labels": jnp.asarray(dataset["test"][1]),
    }

    def init_one(coords):
        per = learner_data(config, coords, jnp.asarray(pool_y), num_classes)
        variables = model.init(learner_stream(coords, "init"), shared["images"][:1])
        params = {"params": variables["params"]}  # trained; the rest (batch_stats) is state
        model_state = {k: v for k, v in variables.items() if k != "params"}
        values = {VMAPPABLE[n]: coords[n] for n in axis.hparam_names}
        state = init_state(params, optimizer, learner_stream(coords, "step"), values,
                           model_state, hyperparams=hparams)
        return state, per

    per_learner = ("train_idx", "val_idx", "train_labels", "clean_labels", "val_labels",
                   "corrupted", "shuffle_key")
    axes = (0, {**{k: 0 for k in per_learner}, **{k: None for k in SHARED}})
    group = config.get("learners_per_group", 0)
    return Program(
        name=config.name,
        family="classify",
        axis=axis,
        init=make_init(init_one, axis, shared),
        chunk=jax.jit(map_learners(chunk_one, axes, group)),
        evaluate=jax.jit(map_learners(evaluate_one, axes, group)),
        num_steps=config.epochs * spe,
        chunk_steps=spe,
        checkpoint_every=config.checkpoint_every * spe,
        keep_steps=tuple(e * spe for e in config.checkpoint_epochs),
        model=model,
        steps_per_epoch=spe,
        trace_counter=epoch,
        progress_metrics=("loss", "accuracy"),
        report=format_summary,
        plot=classify_plots.classify_run_figures,
    )


# Where each split's points and labels are in a learner's data (for "classification" evaluators).
SPLITS = {
    "train": lambda d: (d["images"][d["train_idx"]], d["train_labels"]),  # the noisy labels
    "train_clean": lambda d: (d["images"][d["train_idx"]], d["clean_labels"]),
    "val": lambda d: (d["images"][d["val_idx"]], d["val_labels"]),
    "test": lambda d: (d["test_images"], d["test_labels"]),
}


def evaluator_specs(config) -> dict:
    """``config.evals`` with ``every`` defaulting to ``config.eval_every`` (epochs); evaluators
    of the validation split are left out when ``data.val_split`` is 0 (there are no points)."""
    specs = {}
    for name, spec in config.evals.items():
        spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
        if spec.get("split") == "val" and not config.data.val_split:
            continue
        specs[name] = {"every": config.eval_every, **spec}
    return specs


def make_evaluators(config, apply_fn) -> tuple:
    """The registry's evaluators of ``config.evals``, in inference mode, per learner."""
    eval_apply = lambda v, x: apply_fn(v, x, train=False)
    return registry.make_evaluators(evaluator_specs(config), apply_fn=eval_apply, splits=SPLITS,
                                    batch_size=config.eval_batch_size)


def checkpoint_steps(config) -> tuple:
    """Step of each numbered checkpoint: checkpoint i = epoch checkpoint_epochs[i]."""
    spe = config.data.train_split // config.batch_size
    return tuple(e * spe for e in config.checkpoint_epochs)


def run(config, workdir: str, progress: bool = True, max_chunks=None) -> dict:
    program = build_program(config)
    summary = run_program(program, config.to_dict(), workdir, progress, max_chunks)
    if summary:
        print(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """Final accuracies and test loss per learner (its coordinates as the label)."""
    keys = [k for k in ("train_accuracy", "train_clean_accuracy", "val_accuracy",
                        "test_accuracy", "test_loss") if k in summary["learners"][0]]
    label = lambda r: ",".join(f"{n}={r[n]:g}" for n in summary["axis"])
    return tables.format_table(("learner", *keys),
                               [(label(r), *[r[k] for k in keys]) for r in summary["learners"]],
                               title=f"{summary['name']}: final metrics per learner")
