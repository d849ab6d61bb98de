"""The noisy-label trainer (``irmx.experiments.classify``) and the measures driver
(``irmx.experiments.measures``) end to end at smoke size.

One module-scoped smoke training run (2 seeds, mlp_32 on the embedded digits, 4 epochs,
checkpoint epochs (0, 2, 4)) is reused by every test. References are independent of the code
under test: a hand-written SGD update in numpy, the split/noise contract checked against the raw
labels, dense per-sample ``jax.jacfwd`` Jacobians reduced by ``numpy.linalg.svd`` in float64,
and plain-numpy accuracy / cross-entropy / confidence on the restored parameters.

Compilation dominates at this size, and every measures run rebuilds the trainer's ``init``
program (identical HLO), so the module turns on JAX's persistent compilation cache in a temp dir
(the CLI subprocesses share it, as ``launch/*.py`` would share ~/.cache/irmx/jax).
"""

import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from irmx import classify as classify_lib
from irmx import optim as optim_lib
from irmx import rng
from irmx.config_checks import ConfigError
from irmx.configs.measures import jacobian as jacobian_configs
from irmx.configs.measures import noisy_classification
from irmx.data import images as images_lib
from irmx.experiments import classify, measures
from irmx.io import runs
from irmx.io import workdir as wd
from irmx.nets.classifiers import make_classifier
from irmx.train import init_state, make_step, make_update

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = (42, 43)
SETTING = "no-augmentation_noise-0.2"  # the seed's TRAINING_SETTING folder of the smoke run


def train_config(**overrides):
    c = noisy_classification.get_config("smoke")
    # A resume checkpoint every epoch (steps 4, 8, 12, 16) with orbax keeping the 2 latest: only
    # the numbered checkpoints (epochs 0, 2, 4 = steps 0, 8, 16) and the latest survive.
    c.checkpoint_every = 1
    c.update_from_flattened_dict(overrides)
    return c


def measures_config(source_dir, **overrides):
    m = jacobian_configs.get_config("smoke")  # 40 points, batches of 20, checkpoint 1
    m.source = source_dir
    if overrides.get("metric", m.metric) == "jacobian_operator_norm":
        m.mode = "matrix_free"  # Lanczos (the default "" picks exact at K=10)
    m.update_from_flattened_dict(overrides)
    return m


def learner_params(state, n):
    return jax.tree.map(lambda a: a[n], state.params)


def assert_trees_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@contextlib.contextmanager
def jax_compilations():
    """Names of JAX trace/lower/compile events while the block runs (empty: nothing traced)."""
    events = []

    def listener(name, duration, **kwargs):
        if name.startswith("/jax/core/compile/"):
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


# ---------------------------------------------------------------------------------------------
# Fixtures: one training run, one default measures run


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("jax_cache"))
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()  # take the new folder even if another module compiled
    yield folder
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, jax_cache):
    """The smoke run, trained once; its program's fresh init and the restored checkpoints."""
    config = train_config()
    workdir = str(tmp_path_factory.mktemp("train") / "run")
    summary = classify.run(config, workdir, progress=False)
    program = classify.build_program(config)
    state, data = program.init()
    steps = classify.checkpoint_steps(config)
    run = runs.load(workdir)
    ckpt_states = [types.SimpleNamespace(**run.restore(s, items=("step", "params")))
                   for s in steps]

    def one(params, x):
        return jax.jacfwd(lambda z: program.model.apply(params, z[None])[0])(x).reshape(10, -1)

    return types.SimpleNamespace(
        config=config, workdir=workdir, summary=summary, program=program, state=state,
        data=jax.tree.map(np.asarray, data), steps=steps, ckpt_states=ckpt_states,
        jacobians=jax.jit(jax.vmap(one, in_axes=(None, 0))),
    )


def split_points(trained, n, indices):
    """Images, trained-on (noisy) labels and corruption flags of training points ``indices``
    (positions in learner n's train split, as the per-batch JSON stores them)."""
    d = trained.data
    rows = d["train_idx"][n, indices]
    return d["images"][rows], d["train_labels"][n, indices], d["corrupted"][n, indices]


def dense_norms(trained, params, x):
    """(operator norm, Frobenius norm) per sample from dense Jacobians, SVD in float64."""
    jac = np.asarray(trained.jacobians(params, x), np.float64)
    return np.linalg.svd(jac, compute_uv=False)[:, 0], np.linalg.norm(jac, axis=(1, 2))


def batch_files(workdir, metric="jacobian_operator_norm", normalization="none", split="train"):
    """{(seed, ckpt, batch): record} of every per-batch JSON under ``workdir``, parsed from the
    seed's layout <name>/<model>/<data>/<setting>/seed-<seed>/<out_name>-<batch>.json
    (out_name = <metric>_<normalization>_<split>_ckpt-<i>_<settings digest>)."""
    pattern = os.path.join(workdir, "stats", "mlp_32", "digits", SETTING, "seed-*", "*.json")
    out = {}
    for path in glob.glob(pattern):
        seed = int(os.path.basename(os.path.dirname(path)).removeprefix("seed-"))
        stem = os.path.basename(path)[: -len(".json")]
        match = re.fullmatch(rf"{metric}_{normalization}_{split}_ckpt-(\d+)_[0-9a-f]{{10}}-(\d+)",
                             stem)
        assert match, path
        ckpt, batch = (int(s) for s in match.groups())
        out[(seed, ckpt, batch)] = wd.read_json(path)
    return out


@pytest.fixture(scope="module")
def measured(trained, tmp_path_factory):
    """measures.run with the smoke defaults and mode matrix_free: jacobian_operator_norm,
    checkpoint 1, 40 training points in 2 batches of 20, both seeds in one program."""
    config = measures_config(trained.workdir, mode="matrix_free")
    workdir = str(tmp_path_factory.mktemp("measures") / "stats")
    summary = measures.run(config, workdir, progress=False)
    return types.SimpleNamespace(config=config, workdir=workdir, summary=summary,
                                 files=batch_files(workdir))


# ---------------------------------------------------------------------------------------------
# Training: workdir, numbered checkpoints, per-learner data


def test_training_workdir_summary_and_status(trained):
    d = trained.workdir
    for name in ("config.json", "status.json", "metrics.jsonl", "summary.json"):
        assert os.path.exists(os.path.join(d, name)), name
    assert os.listdir(os.path.join(d, "tb"))
    status = wd.read_json(os.path.join(d, "status.json"))
    assert status["state"] == "done" and status["step"] == 16 and status["num_diverged"] == 0
    summary = wd.read_json(os.path.join(d, "summary.json"))
    assert [r["seed"] for r in summary["learners"]] == list(SEEDS)
    for row in summary["learners"]:
        for split in ("train", "train_clean", "val", "test"):
            assert 0.0 <= row[f"{split}_accuracy"] <= 1.0 and np.isfinite(row[f"{split}_loss"])
        assert not row["diverged"]
    # Final accuracies against the restored final parameters, evaluated here with numpy.
    final = trained.ckpt_states[-1]
    pool_x, pool_y = images_lib.load_image_data("digits")["train"]
    test_x, test_y = images_lib.load_image_data("digits")["test"]
    for n, row in enumerate(summary["learners"]):
        params = learner_params(final, n)
        predict = lambda x, p=params: np.argmax(np.asarray(trained.program.model.apply(p, x)), -1)
        train_x = pool_x[trained.data["train_idx"][n]]
        train_pred = predict(train_x)
        np.testing.assert_allclose(
            row["train_clean_accuracy"], np.mean(train_pred == trained.data["clean_labels"][n]),
            atol=1e-6)
        np.testing.assert_allclose(
            row["train_accuracy"], np.mean(train_pred == trained.data["train_labels"][n]),
            atol=1e-6)
        np.testing.assert_allclose(
            row["val_accuracy"], np.mean(predict(pool_x[trained.data["val_idx"][n]])
                                         == pool_y[trained.data["val_idx"][n]]), atol=1e-6)
        np.testing.assert_allclose(row["test_accuracy"], np.mean(predict(test_x) == test_y),
                                   atol=1e-6)
    rows = wd.read_metrics(os.path.join(d, "metrics.jsonl"))
    assert sorted({r["step"] for r in rows}) == [4, 8, 12, 16] and len(rows) == 2 * 4


def test_numbered_checkpoints_are_kept_and_zero_is_the_initialisation(trained):
    assert trained.steps == classify.checkpoint_steps(trained.config) == (0, 8, 16)
    (cohort,) = runs.load(trained.workdir).cohorts()  # one cohort: both seeds trained together
    saved = sorted(int(n) for n in os.listdir(cohort.directory) if n.isdigit())
    # Resume checkpoints were written at steps 4, 8, 12, 16; orbax keeps the 2 latest (12, 16)
    # and, for good, the numbered ones: step 4 is gone, step 0 (never "latest") survives.
    assert saved == [0, 8, 12, 16]
    init, mid, final = trained.ckpt_states
    assert np.all(np.asarray(init.step) == 0) and np.all(np.asarray(mid.step) == 8)
    assert np.all(np.asarray(final.step) == 16)
    for a, b in zip(jax.tree.leaves(init.params), jax.tree.leaves(trained.state.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(jax.tree.leaves(final.params)[0]),
                           np.asarray(jax.tree.leaves(init.params)[0]))


def test_per_learner_split_and_exact_label_noise(trained):
    d = trained.data
    pool_x, pool_y = images_lib.load_image_data("digits")["train"]
    np.testing.assert_array_equal(d["images"], pool_x)
    n_train, n_val = trained.config.data.train_split, trained.config.data.val_split
    for n in range(len(SEEDS)):
        train_idx, val_idx = d["train_idx"][n], d["val_idx"][n]
        assert train_idx.shape == (n_train,) and val_idx.shape == (n_val,)
        assert len(set(train_idx)) == n_train and len(set(val_idx)) == n_val
        assert not set(train_idx) & set(val_idx)
        assert 0 <= min(train_idx.min(), val_idx.min()) and max(train_idx.max(),
                                                                val_idx.max()) < len(pool_y)
        np.testing.assert_array_equal(d["clean_labels"][n], pool_y[train_idx])
        np.testing.assert_array_equal(d["val_labels"][n], pool_y[val_idx])  # val stays clean
        corrupted = d["corrupted"][n]
        assert corrupted.sum() == round(n_train * trained.config.data.label_noise) == 40
        np.testing.assert_array_equal(corrupted, d["train_labels"][n] != d["clean_labels"][n])
        assert 0 <= d["train_labels"][n].min() and d["train_labels"][n].max() < 10
    # Default data_seed=-1: each learner's own split and noise.
    assert not np.array_equal(d["train_idx"][0], d["train_idx"][1])
    assert not np.array_equal(d["corrupted"][0], d["corrupted"][1])


def test_data_is_deterministic_and_data_seed_shares_it(trained):
    state, data = classify.build_program(train_config()).init()
    for k, v in trained.data.items():
        np.testing.assert_array_equal(np.asarray(data[k]), v, err_msg=k)
    assert_trees_close(state.params, trained.state.params, rtol=0, atol=0)

    state7, shared = classify.build_program(train_config(**{"data.data_seed": 7})).init()
    shared = jax.tree.map(np.asarray, shared)
    for k in ("train_idx", "val_idx", "train_labels", "clean_labels", "corrupted"):
        np.testing.assert_array_equal(shared[k][0], shared[k][1], err_msg=k)
        assert not np.array_equal(shared[k][0], trained.data[k][0]), k
    assert shared["corrupted"][0].sum() == 40
    # Only the data streams come from data_seed: shuffling and initialisation stay per seed.
    assert not np.array_equal(shared["shuffle_key"][0], shared["shuffle_key"][1])
    np.testing.assert_array_equal(shared["shuffle_key"], trained.data["shuffle_key"])
    assert_trees_close(state7.params, trained.state.params, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Optimiser: warm-up schedule, SGD momentum with coupled weight decay


def test_warmup_schedule_is_linear_per_epoch():
    lr, initial, warmup, spe = 0.1, 0.001, 4, 3
    schedule = jax.jit(optim_lib.warmup_schedule(lr, initial, warmup, spe))
    for count in range(20):
        epoch = count // spe
        expected = initial + (lr - initial) * min(epoch / warmup, 1.0)
        np.testing.assert_allclose(float(schedule(jnp.int32(count))), expected, rtol=1e-6)
    assert optim_lib.warmup_schedule(lr, initial, 0, spe)(jnp.int32(5)) == lr


def test_sgd_with_warmup_and_coupled_weight_decay_matches_hand_written_update():
    """torch.optim.SGD(momentum, weight_decay) under a per-epoch linear warm-up:
    d = g + wd p;  buf = d (first step) else mom buf + d;  p -= lr_t buf."""
    optim = train_config().optim
    optim.momentum, optim.warmup_epochs, optim.warmup_initial = 0.9, 2, 0.02
    spe = 1  # one step per epoch: the learning rate changes every step
    optimizer = optim_lib.make_optimizer(
        optim.name, optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
        warmup_epochs=optim.warmup_epochs, warmup_initial=optim.warmup_initial,
        steps_per_epoch=spe)
    names = ("learning_rate", "weight_decay")  # per-learner values the update map injects
    model = make_classifier("mlp_5", 10)
    gen = np.random.default_rng(3)
    x = jnp.asarray(gen.uniform(size=(16, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(gen.integers(0, 10, 16), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(3), x[:1])
    step = jax.jit(make_step(make_update(classify_lib.make_loss(model.apply), optimizer,
                                         hyperparams=names)))

    def ce(p):  # written out here, not irmx's loss
        logits = model.apply(p, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    grad = jax.jit(jax.grad(ce))
    for lr, wd_ in ((0.2, 0.01), (0.4, 0.0)):  # the second as a learner's injected values
        state = init_state(params, optimizer, jax.random.key(0),
                           {"learning_rate": lr, "weight_decay": wd_}, hyperparams=names)
        p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        buf = None
        for t in range(4):
            g = jax.tree.map(lambda a: np.asarray(a, np.float64),
                             grad(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)))
            lr_t = optim.warmup_initial + (lr - optim.warmup_initial) * min(
                t / optim.warmup_epochs, 1.0)
            d = jax.tree.map(lambda gi, pi, wd_=wd_: gi + wd_ * pi, g, p)
            buf = d if buf is None else jax.tree.map(lambda b, di: optim.momentum * b + di,
                                                     buf, d)
            p = jax.tree.map(lambda pi, b, lr_t=lr_t: pi - lr_t * b, p, buf)
            state, metrics = step(state, (x, y))
            assert not bool(metrics["diverged"])
            assert_trees_close(state.params, p, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Learner axis


def test_vmapped_learner_equals_single_run_and_compiles_once(trained):
    # The vmapped program again from init: bit-identical to the stored run, one trace.
    program = classify.build_program(train_config())
    state, data = program.init()
    for _ in range(trained.config.epochs):
        state, _ = program.chunk(state, data)
    assert program.trace_counter.num_traces == 1
    assert_trees_close(state.params, trained.ckpt_states[-1].params, rtol=0, atol=0)

    single = classify.build_program(train_config(seeds=(SEEDS[1],)))
    s_state, s_data = single.init()
    np.testing.assert_array_equal(np.asarray(s_data["train_idx"][0]), trained.data["train_idx"][1])
    np.testing.assert_array_equal(np.asarray(s_data["train_labels"][0]),
                                  trained.data["train_labels"][1])
    for _ in range(trained.config.epochs):
        s_state, _ = single.chunk(s_state, s_data)
    assert single.trace_counter.num_traces == 1
    assert int(s_state.step[0]) == 16
    assert_trees_close(learner_params(s_state, 0), learner_params(trained.ckpt_states[-1], 1),
                       rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Measures driver


def test_measures_writes_per_batch_json_in_the_seed_layout(trained, measured):
    files = measured.files
    assert set(files) == {(s, 1, b) for s in SEEDS for b in (0, 1)}
    for (seed, ckpt, b), rec in files.items():
        path = measures.batch_path(measured.workdir, measured.config, trained.config, seed, ckpt,
                                   b)
        folder = os.path.join(measured.workdir, "stats", "mlp_32", "digits", SETTING,
                              f"seed-{seed}")
        assert os.path.dirname(path) == folder and os.path.exists(path)
        assert re.fullmatch(rf"jacobian_operator_norm_none_train_ckpt-1_[0-9a-f]{{10}}-{b}\.json",
                            os.path.basename(path))
        assert rec["seed"] == seed and rec["checkpoint"] == 1 and rec["batch_id"] == b
        assert rec["mode"] == "matrix_free" and all(rec["converged"])
        assert len(rec["values"]) == len(rec["indices"]) == len(rec["corrupted"]) == 20
    # The points: the first 40 of a fixed random order of the 200 training positions (stream
    # mc_sample of mc_sample_seed), the same for every seed.
    order = np.asarray(jax.random.permutation(rng.stream(0, "mc_sample"), 200))[:40]
    for seed in SEEDS:
        got = files[(seed, 1, 0)]["indices"] + files[(seed, 1, 1)]["indices"]
        np.testing.assert_array_equal(got, order)
    status = wd.read_json(os.path.join(measured.workdir, "status.json"))
    assert status["state"] == "done"


def test_measures_values_match_dense_jacobian_svd(trained, measured):
    for (seed, ckpt, _), rec in measured.files.items():
        n = SEEDS.index(seed)
        x, _, corrupted = split_points(trained, n, rec["indices"])
        op, _ = dense_norms(trained, learner_params(trained.ckpt_states[ckpt], n), x)
        np.testing.assert_allclose(rec["values"], op, rtol=1e-3)
        np.testing.assert_array_equal(rec["corrupted"], corrupted)
        np.testing.assert_allclose(rec["mean"], np.mean(rec["values"]), rtol=1e-6)


SEED_METADATA_KEYS = ["model", "dataset", "split", "seed", "label-noise", "augmentation",
                      "checkpoint", "nsamples", "label-noise-seed", "data-split-seed",
                      "mc-sample-seed", "metric", "normalization", "sampling-strategy"]


def test_per_batch_json_has_the_seed_codes_fields(trained, measured):
    """The fields the seed's compute_stats.py writes (and its analysis scripts read): stats as
    stat.view(batch_size, -1).tolist(), sample_ids = data-set indices (rows of the digits' train
    pool), targets = the noisy labels trained on, ground_truths = the clean ones, metadata."""
    pool_x, pool_y = images_lib.load_image_data("digits")["train"]
    corrupted_seen = 0
    for (seed, ckpt, _), rec in measured.files.items():
        n = SEEDS.index(seed)
        assert rec["stats"] == [[v] for v in rec["values"]]
        ids = rec["sample_ids"]
        assert all(type(i) is int for i in ids + rec["targets"] + rec["ground_truths"])
        np.testing.assert_array_equal(ids, trained.data["train_idx"][n][rec["indices"]])
        x, labels, corrupted = split_points(trained, n, rec["indices"])
        np.testing.assert_array_equal(pool_x[ids], x)  # the images measured
        assert rec["targets"] == labels.tolist()  # noisy where corrupted
        assert rec["ground_truths"] == pool_y[ids].tolist()
        assert rec["ground_truths"] == trained.data["clean_labels"][n][rec["indices"]].tolist()
        differs = np.array(rec["targets"]) != np.array(rec["ground_truths"])
        np.testing.assert_array_equal(differs, corrupted)
        corrupted_seen += differs.sum()
        assert list(rec["metadata"]) == SEED_METADATA_KEYS
        assert rec["metadata"] == {
            "model": "mlp_32", "dataset": "digits", "split": "train", "seed": seed,
            "label-noise": 0.2, "augmentation": False, "checkpoint": ckpt, "nsamples": 40,
            "label-noise-seed": seed, "data-split-seed": seed, "mc-sample-seed": 0,
            "metric": "jacobian_operator_norm", "normalization": None,
            "sampling-strategy": "none"}
    assert corrupted_seen > 0


@pytest.mark.parametrize("split", ["val", "test"])
def test_sample_ids_of_val_and_test_index_the_data_set(trained, split, tmp_path):
    out = str(tmp_path / split)
    measures.run(measures_config(trained.workdir, metric="accuracy", dataset_split=split,
                                 num_samples=20), out, progress=False)
    files = batch_files(out, metric="accuracy", split=split)
    assert set(files) == {(s, 1, 0) for s in SEEDS}
    x_all, y_all = images_lib.load_image_data("digits")["train" if split == "val" else "test"]
    for (seed, _, _), rec in files.items():
        n = SEEDS.index(seed)
        ids = np.asarray(rec["sample_ids"])
        positions = (trained.data["val_idx"][n][rec["indices"]] if split == "val"
                     else np.asarray(rec["indices"]))
        np.testing.assert_array_equal(ids, positions)
        assert rec["targets"] == rec["ground_truths"] == y_all[ids].tolist()  # clean labels
        params = learner_params(trained.ckpt_states[1], n)
        pred = np.argmax(np.asarray(trained.program.model.apply(params, x_all[ids])), -1)
        np.testing.assert_array_equal(rec["values"], (pred == y_all[ids]).astype(float))
        assert rec["metadata"]["split"] == split and not any(rec["corrupted"])


def test_seed_metadata_names_the_data_seed_that_reproduces_the_data(trained):
    """label-noise-seed = data-split-seed = the learner's data seed: its data_seed coordinate,
    else data.data_seed >= 0, else its seed; a learner given that seed as data_seed gets the
    same split and noise."""
    m = measures_config(trained.workdir)
    row = {"seed": 43, "checkpoint": 1, "epoch": 2}
    meta = measures.seed_metadata(m, trained.config, row)
    assert (meta["label-noise-seed"], meta["data-split-seed"], meta["mc-sample-seed"]) == (
        43, 43, 0)
    shared = train_config(**{"data.data_seed": 7})
    assert measures.seed_metadata(m, shared, row)["data-split-seed"] == 7
    own = measures.seed_metadata(m, shared, {**row, "data_seed": 9, "label_noise": 0.4})
    assert (own["label-noise-seed"], own["data-split-seed"], own["label-noise"]) == (9, 9, 0.4)
    pool_y = jnp.asarray(images_lib.load_image_data("digits")["train"][1])
    as_seed = classify.learner_data(trained.config, {"seed": jnp.uint32(43)}, pool_y, 10)
    as_data_seed = classify.learner_data(
        trained.config, {"seed": jnp.uint32(0), "data_seed": jnp.uint32(43)}, pool_y, 10)
    for k in ("train_idx", "val_idx", "train_labels", "corrupted"):
        np.testing.assert_array_equal(as_seed[k], as_data_seed[k], err_msg=k)
        np.testing.assert_array_equal(as_seed[k], trained.data[k][1], err_msg=k)


def test_adaptive_hutchinson_through_the_driver(trained, tmp_path, capsys):
    """mode matrix_free for the Frobenius norm: per point as many probes as reach rel_error, the
    standard error in each record, the mean's in the summary and the printed table."""
    out = str(tmp_path / "hutchinson")
    rel_error = 0.05
    summary = measures.run(measures_config(trained.workdir, metric="jacobian",
                                           mode="matrix_free", rel_error=rel_error,
                                           num_samples=20), out, progress=True)
    printed = capsys.readouterr().out
    files = batch_files(out, metric="jacobian")
    assert set(files) == {(s, 1, 0) for s in SEEDS}
    for n, seed in enumerate(SEEDS):
        rec = files[(seed, 1, 0)]
        values, stderr = np.array(rec["values"]), np.array(rec["stderr"])
        x, _, _ = split_points(trained, n, rec["indices"])
        _, exact = dense_norms(trained, learner_params(trained.ckpt_states[1], n), x)
        assert all(rec["converged"]) and (stderr <= rel_error * values).all()
        assert min(rec["probes"]) >= 32
        assert (np.abs(values - exact) < 4.5 * stderr).all()
        row = summary["learners"][n]
        np.testing.assert_allclose(row["jacobian_stderr"], np.sqrt(np.sum(stderr**2)) / 20,
                                   rtol=1e-6)
        np.testing.assert_allclose(row["probes"], np.mean(rec["probes"]))
        assert row["converged_fraction"] == 1.0
    table = measures.format_summary(summary)
    assert table.splitlines()[1].split() == ["seed", "ckpt", "epoch", "jacobian", "stderr",
                                             "probes", "clean", "corrupted"]
    assert table in printed


def test_measures_summary_means_clean_and_corrupted(measured):
    summary = wd.read_json(os.path.join(measured.workdir, "summary.json"))
    assert summary["metric"] == "jacobian_operator_norm" and summary["split"] == "train"
    assert [(r["seed"], r["checkpoint"], r["epoch"]) for r in summary["learners"]] == [
        (42, 1, 2), (43, 1, 2)]
    means = []
    for row in summary["learners"]:
        recs = [measured.files[(row["seed"], 1, b)] for b in (0, 1)]
        values = np.concatenate([r["values"] for r in recs])
        corrupted = np.concatenate([r["corrupted"] for r in recs]).astype(bool)
        assert row["num_points"] == 40 and 0 < corrupted.sum() < 40
        np.testing.assert_allclose(row["jacobian_operator_norm"], values.mean(), rtol=1e-6)
        np.testing.assert_allclose(row["jacobian_operator_norm_clean"],
                                   values[~corrupted].mean(), rtol=1e-6)
        np.testing.assert_allclose(row["jacobian_operator_norm_corrupted"],
                                   values[corrupted].mean(), rtol=1e-6)
        assert row["converged_fraction"] == 1.0
        means.append(values.mean())
    # the grid: per checkpoint, the statistics over seeds (the shared summarize of every family)
    (point,) = summary["grid"]
    assert (point["checkpoint"], point["epoch"], point["num_seeds"]) == (1, 2, 2)
    np.testing.assert_allclose(point["jacobian_operator_norm"]["mean"], np.mean(means),
                               rtol=1e-6)
    assert point["jacobian_operator_norm"]["n"] == 2
    status = wd.read_json(os.path.join(measured.workdir, "status.json"))
    assert status["state"] == "done" and status["num_learners"] == 2


def test_two_workers_cover_each_point_once_and_match_one_run(trained, measured, tmp_path):
    """Worker 0 measures the first batch (skip=0, num_samples=20), worker 1 the rest (skip=20,
    num_samples=40): each point once, together the single 40-point run, value for value."""
    first = str(tmp_path / "worker0")
    second = str(tmp_path / "worker1")
    measures.run(measures_config(trained.workdir, num_samples=20), first, progress=False)
    measures.run(measures_config(trained.workdir, skip=20), second, progress=False)
    a, b = batch_files(first), batch_files(second)
    assert set(a) == {(s, 1, 0) for s in SEEDS} and set(b) == {(s, 1, 1) for s in SEEDS}
    for seed in SEEDS:
        assert not set(a[(seed, 1, 0)]["indices"]) & set(b[(seed, 1, 1)]["indices"])
    union = {**a, **b}
    assert set(union) == set(measured.files)
    for k, rec in union.items():
        assert rec["indices"] == measured.files[k]["indices"]
        assert rec["values"] == measured.files[k]["values"]  # identical, not just close
        assert rec["corrupted"] == measured.files[k]["corrupted"]


@pytest.fixture(scope="module")
def rerun(measured):
    """The default measures run repeated in its own workdir: before/after snapshots."""
    paths = sorted(glob.glob(os.path.join(measured.workdir, "stats", "**", "*.json"),
                             recursive=True))

    def snapshot():
        with open(os.path.join(measured.workdir, "metrics.jsonl")) as f:
            metrics = f.read()
        return {p: os.stat(p).st_mtime_ns for p in paths}, metrics

    before = snapshot()
    summary = measures.run(measured.config, measured.workdir, progress=False)
    return types.SimpleNamespace(paths=paths, before=before, after=snapshot(), summary=summary)


def test_rerun_skips_batches_already_written(measured, rerun):
    assert len(rerun.paths) == 4
    assert rerun.after[0] == rerun.before[0]  # no per-batch file rewritten
    assert rerun.summary == wd.read_json(os.path.join(measured.workdir, "summary.json"))
    assert rerun.summary == wd.to_json(measured.summary)


def test_rerun_keeps_the_metrics_log(rerun):
    # metrics.jsonl of the first run holds one row per batch and learner; a re-run that
    # computes nothing must leave it as it was.
    assert rerun.before[1].count("\n") == 4
    assert rerun.after[1] == rerun.before[1]


def test_all_checkpoints_and_seeds_in_one_run(trained, measured, tmp_path):
    workdir = str(tmp_path / "all")
    summary = measures.run(measures_config(trained.workdir, checkpoint=-1, num_samples=20),
                           workdir, progress=False)
    # one learner per (seed, checkpoint), the seed slowest as on every learner axis
    assert [(r["seed"], r["checkpoint"], r["epoch"]) for r in summary["learners"]] == [
        (s, c, e) for s in SEEDS for c, e in zip((0, 1, 2), (0, 2, 4), strict=True)]
    per_ckpt = {g["checkpoint"]: g["jacobian_operator_norm"] for g in summary["grid"]}
    assert set(per_ckpt) == {0, 1, 2} and all(g["n"] == 2 for g in per_ckpt.values())
    files = batch_files(workdir)
    assert set(files) == {(s, c, 0) for s in SEEDS for c in (0, 1, 2)}
    for seed in SEEDS:  # the same numbers as the single-checkpoint run
        np.testing.assert_allclose(files[(seed, 1, 0)]["values"],
                                   measured.files[(seed, 1, 0)]["values"], rtol=1e-5)
    # Checkpoint 0 is the initialisation: its values are those of program.init()'s params.
    for n, seed in enumerate(SEEDS):
        rec = files[(seed, 0, 0)]
        x, _, _ = split_points(trained, n, rec["indices"])
        op, _ = dense_norms(trained, learner_params(trained.state, n), x)
        np.testing.assert_allclose(rec["values"], op, rtol=1e-3)
    assert per_ckpt[0]["mean"] != per_ckpt[2]["mean"]


def test_the_three_modes_agree_through_the_driver(trained, measured, tmp_path):
    values = {"matrix_free": {s: measured.files[(s, 1, 0)]["values"] for s in SEEDS}}
    for mode in ("per_output", "bigmem"):
        out = str(tmp_path / mode)
        measures.run(measures_config(trained.workdir, mode=mode, num_samples=20), out,
                     progress=False)
        files = batch_files(out)
        assert set(files) == {(s, 1, 0) for s in SEEDS}
        assert all(files[(s, 1, 0)]["mode"] == mode for s in SEEDS)
        values[mode] = {s: files[(s, 1, 0)]["values"] for s in SEEDS}
    for s in SEEDS:
        np.testing.assert_allclose(values["per_output"][s], values["bigmem"][s], rtol=1e-5)
        np.testing.assert_allclose(values["matrix_free"][s], values["per_output"][s], rtol=1e-3)


def test_seed_compat_through_the_driver(trained, measured, tmp_path):
    """seed_compat: the seed's power iteration on its reshaped Jacobian, from the driver's key
    (mc_sample stream, batch 0), mode "" = per_output; its identity has no tolerances."""
    from irmx import measures as measures_lib

    out = str(tmp_path / "seed")
    measures.run(measures_config(trained.workdir, seed_compat=True, mode="", num_samples=20),
                 out, progress=False)
    files = batch_files(out)
    key = jax.random.fold_in(rng.stream(0, "mc_sample"), 0)
    for n, seed in enumerate(SEEDS):
        rec = files[(seed, 1, 0)]
        assert rec["mode"] == "per_output" and rec["identity"]["measure"]["seed_compat"]
        assert "tol" not in rec["identity"]["measure"]
        x, _, _ = split_points(trained, n, rec["indices"])
        jac = trained.jacobians(learner_params(trained.ckpt_states[1], n), x)
        m = measures_lib.seed_layout(jac, x.shape)
        want, _, _ = measures_lib.seed_power_iteration(
            m, measures_lib.seed_start(key, m.shape[0], m.shape[2]))
        np.testing.assert_allclose(rec["values"], want, rtol=1e-4, atol=1e-6)
        exact = np.asarray(measured.files[(seed, 1, 0)]["values"])
        assert np.mean(np.asarray(rec["values"]) / exact) < 0.95  # not sigma_max


def _numpy_metric(metric, logits, labels):
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    if metric == "accuracy":
        return (logits.argmax(-1) == labels).astype(float)
    if metric == "crossentropy":
        return -logp[np.arange(len(labels)), labels]
    onehot = np.eye(logits.shape[-1])[labels]
    return np.linalg.norm(onehot - np.exp(logp), axis=-1)  # confidence


@pytest.mark.parametrize("metric", ["jacobian", "accuracy", "crossentropy", "confidence"])
def test_other_metrics_run_through_the_driver(trained, metric, tmp_path):
    out = str(tmp_path / metric)
    summary = measures.run(measures_config(trained.workdir, metric=metric, num_samples=20),
                           out, progress=False)
    files = batch_files(out, metric=metric)
    assert set(files) == {(s, 1, 0) for s in SEEDS}
    for n, seed in enumerate(SEEDS):
        rec = files[(seed, 1, 0)]
        assert rec["mode"] == "per_output"
        params = learner_params(trained.ckpt_states[1], n)
        x, labels, _ = split_points(trained, n, rec["indices"])
        if metric == "jacobian":
            expected = dense_norms(trained, params, x)[1]
        else:  # on the labels the learner was trained on (noisy for corrupted points)
            expected = _numpy_metric(metric, trained.program.model.apply(params, x), labels)
        np.testing.assert_allclose(rec["values"], expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(summary["learners"][n][metric], np.mean(expected), rtol=1e-4,
                                   atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad values: ConfigError naming key and value, before anything is traced or compiled


TRAIN_ERRORS = [
    ({"data.label_noise": 1.5}, "data.label_noise", 1.5),
    ({"data.label_noise": -0.1}, "data.label_noise", -0.1),
    ({"model.name": "mlp_wide"}, "model.name", "mlp_wide"),
    ({"data.name": "imagenet"}, "data.name", "imagenet"),
    ({"data.train_split": 1400, "data.val_split": 200}, "data.train_split", 1400),
]


@pytest.mark.parametrize("overrides,key,value", TRAIN_ERRORS)
def test_bad_training_values_fail_before_compiling(overrides, key, value, tmp_path):
    workdir = tmp_path / "run"
    with jax_compilations() as events, pytest.raises(ConfigError) as err:
        classify.run(train_config(**overrides), str(workdir), progress=False)
    assert f"config.{key}={value!r} is invalid" in str(err.value)
    assert not events, f"traced/compiled before failing: {events}"
    assert not workdir.exists()


MEASURES_ERRORS = [
    ({"batch_size": 15}, "batch_size", 15),  # does not divide num_samples=40
    ({"checkpoint": 3}, "checkpoint", 3),  # the run has checkpoints 0, 1, 2
    ({"metric": "hessian"}, "metric", "hessian"),
    ({"normalization": "l2"}, "normalization", "l2"),
    ({"mode": "dense"}, "mode", "dense"),
    ({"skip": 10}, "skip", 10),  # not a multiple of batch_size=20
    ({"num_samples": 220}, "num_samples", 220),  # the train split has 200 points
    ({"num_samples": 120, "dataset_split": "val"}, "num_samples", 120),  # val: 100
    ({"num_samples": 300, "dataset_split": "test"}, "num_samples", 300),  # test: 297
    ({"source": "/nonexistent/irmx-run"}, "source", "/nonexistent/irmx-run"),
    ({"seed_compat": True, "mode": "", "normalization": "crossentropy"}, "seed_compat", True),
    ({"seed_compat": True}, "seed_compat", True),  # with mode matrix_free
    ({"seed_compat": True, "metric": "jacobian"}, "seed_compat", True),
]


@pytest.mark.parametrize("overrides,key,value", MEASURES_ERRORS)
def test_bad_measures_values_fail_before_compiling(trained, overrides, key, value, tmp_path):
    workdir = tmp_path / "stats"
    config = measures_config(trained.workdir, **overrides)
    with jax_compilations() as events, pytest.raises(ConfigError) as err:
        measures.run(config, str(workdir), progress=False)
    assert f"config.{key}={value!r} is invalid" in str(err.value)
    assert not events, f"traced/compiled before failing: {events}"
    assert not workdir.exists()


def _irm_workdir(tmp_path):
    """A workdir as the IRM runner leaves it (its config.json is all a measures run reads)."""
    from irmx.configs.irm import regression

    source = tmp_path / "irm-run"
    source.mkdir()
    wd.write_json_atomic(str(source / "config.json"), {
        "irmx_version": "0", "config": regression.get_config("irmv1,smoke").to_dict()})
    return str(source)


@pytest.mark.parametrize("kind", ["irm", "measures"])
def test_a_source_that_is_not_a_classifier_run_fails_in_one_line(kind, measured, tmp_path):
    source = _irm_workdir(tmp_path) if kind == "irm" else measured.workdir
    workdir = tmp_path / "stats"
    with jax_compilations() as events, pytest.raises(ConfigError) as err:
        measures.run(measures_config(source), str(workdir), progress=False)
    message = str(err.value)
    assert message.startswith(f"config.source={source!r} is invalid"), message
    assert f"holds an {kind!r} run, not a classifier training run" in message
    assert "\n" not in message
    assert not events and not workdir.exists()


def test_a_missing_source_checkpoint_fails_before_compiling(trained, tmp_path):
    source = tmp_path / "partial"
    shutil.copytree(trained.workdir, source)
    (cohort,) = runs.load(str(source)).cohorts()
    shutil.rmtree(os.path.join(cohort.directory, "8"))  # checkpoint 1 (epoch 2 = step 8) is gone
    workdir = tmp_path / "stats"
    with jax_compilations() as events, pytest.raises(ConfigError) as err:
        measures.run(measures_config(str(source)), str(workdir), progress=False)
    message = str(err.value)
    assert message.startswith("config.checkpoint=1 is invalid"), message
    assert "missing: [1], at steps [8]; saved steps: 0, 12, 16" in message
    assert not events, f"traced/compiled before failing: {events}"
    assert not workdir.exists()


def test_every_setting_that_changes_a_number_has_its_own_file(trained):
    """The per-batch file's identity: a change of any setting that changes a value (or which
    points a batch holds) gives another file name; what changes no number keeps it."""
    base = measures_config(trained.workdir, mode="")
    path = lambda m=base, t=trained.config, coords=None: measures.batch_path(
        "/w", m, t, 42, 1, 0, coords)

    def changed(**overrides):
        m = measures_config(trained.workdir, mode="")
        m.update_from_flattened_dict(overrides)
        return path(m)

    for overrides in ({"target_logit_only": True}, {"mode": "per_output"},
                      {"mode": "matrix_free"}, {"mc_sample_seed": 1}, {"tol": 1e-3},
                      {"atol": 1e-2}, {"max_iters": 10}, {"batch_size": 10},
                      {"normalization": "softmax"}, {"dataset_split": "val"}):
        assert changed(**overrides) != path(), overrides
    for overrides in ({"skip": 20}, {"num_samples": 20}):  # which batches, not their numbers
        assert changed(**overrides) == path(), overrides
    frobenius = measures_config(trained.workdir, metric="jacobian", mode="matrix_free")
    more_probes = measures_config(trained.workdir, metric="jacobian", mode="matrix_free",
                                  num_probes=3)
    assert path(frobenius) != path(more_probes)
    adaptive = measures_config(trained.workdir, metric="jacobian", mode="matrix_free")
    for overrides in ({"rel_error": 0.02}, {"max_probes": 1024}, {"probe_space": "input"},
                      {"num_probes": 64}):
        changed_ = measures_config(trained.workdir, metric="jacobian", mode="matrix_free",
                                   **overrides)
        assert path(changed_) != path(adaptive), overrides
    fixed = measures_config(trained.workdir, metric="jacobian", mode="matrix_free", num_probes=3)
    assert path(fixed) == path(measures_config(trained.workdir, metric="jacobian",
                                               mode="matrix_free", num_probes=3,
                                               rel_error=0.5))  # fixed count: unused
    exact = measures_config(trained.workdir, metric="jacobian", mode="per_output")
    assert path(exact) == path(measures_config(trained.workdir, metric="jacobian", mode="",
                                               num_probes=3, rel_error=0.5,
                                               probe_space="input"))  # exact: probes unused
    # the source run's training settings and the learner's vmapped coordinates count too
    assert path(t=train_config(**{"optim.lr": 0.1})) != path()
    assert path(t=train_config(eval_every=1, checkpoint_every=2)) == path()
    assert path(coords={"seed": 42, "lr": 0.1}) != path(coords={"seed": 42, "lr": 0.2})
    assert path(coords={"seed": 42}) == path()


FROBENIUS = {"metric": "jacobian", "mode": "matrix_free"}


@pytest.mark.parametrize("base_overrides, overrides", [
    ({}, {"target_logit_only": True}),
    ({}, {"mc_sample_seed": 1}),
    ({}, {"mode": "matrix_free", "tol": 0.0, "atol": 0.5, "max_iters": 2}),
    ({**FROBENIUS, "num_probes": 8}, {"num_probes": 0, "rel_error": 0.05}),
])
def test_runs_sharing_an_output_dir_keep_their_own_numbers(trained, base_overrides, overrides,
                                                           tmp_path, capsys):
    """Two measures runs that differ in one setting, writing to one output_dir: the second
    computes and prints its own numbers (those of the same run alone) instead of reusing the
    first's (the bug: a target_logit_only run printing the full Jacobian's mean)."""
    shared, alone = str(tmp_path / "shared"), str(tmp_path / "alone")
    base = {"num_samples": 20, "mode": "per_output", "output_dir": shared, **base_overrides}

    def run(name, **settings):
        summary = measures.run(measures_config(trained.workdir, **settings),
                               str(tmp_path / name), progress=True)
        table = measures.format_summary(summary)
        assert table in capsys.readouterr().out  # what it printed
        return summary, table.splitlines()[2:2 + len(SEEDS)]  # the per-seed rows

    first, first_rows = run("w0", **base)
    second, second_rows = run("w1", **{**base, **overrides})
    reference, reference_rows = run("w2", **{**base, **overrides, "output_dir": alone})
    metric = base.get("metric", "jacobian_operator_norm")
    assert [r[metric] for r in second["learners"]] == [r[metric] for r in reference["learners"]]
    assert [r[metric] for r in second["learners"]] != [r[metric] for r in first["learners"]]
    assert second_rows == reference_rows and second_rows != first_rows
    files = glob.glob(os.path.join(shared, "**", "*.json"), recursive=True)
    assert len(files) == 2 * len(SEEDS)  # both runs' files, side by side


def test_missing_tfds_data_set_says_how_to_build_it(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def forbid(*args, **kwargs):
        raise AssertionError("irmx tried to download or read tfds data")

    dm = tfds.download.DownloadManager
    for method in ("download", "download_and_extract"):
        monkeypatch.setattr(dm, method, forbid)
    monkeypatch.setattr(tfds, "data_source", forbid)
    monkeypatch.setattr(tfds, "load", forbid)
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    workdir = tmp_path / "run"
    config = train_config(**{"data.name": "mnist", "data.data_dir": str(data_dir)})
    with jax_compilations() as events, pytest.raises(images_lib.DatasetNotFoundError) as err:
        classify.run(config, str(workdir), progress=False)
    assert f"tfds build mnist --data_dir={data_dir}" in str(err.value)
    assert not events and not workdir.exists()
    assert os.listdir(data_dir) == []


# ---------------------------------------------------------------------------------------------
# Command line


def _cli(args, jax_cache, timeout=300):
    env = dict(os.environ, IRMX_JAX_CACHE=jax_cache, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args, "--progress=false"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# slow: the command-line path of both mains end to end (the in-process runs above cover the
# numbers; tests/test_user_experience.py covers a command-line run)
@pytest.mark.slow
def test_cli_train_then_measures(trained, measured, jax_cache, tmp_path):
    train_dir, stats_dir = tmp_path / "train", tmp_path / "stats"
    r = _cli(["launch/train.py", "--config=configs/measures/noisy_classification.py:smoke",
              f"--workdir={train_dir}"], jax_cache)
    assert r.returncode == 0, r.stderr
    assert wd.read_json(str(train_dir / "status.json"))["state"] == "done"
    assert runs.load(str(train_dir)).checkpoint_steps() == (0, 8, 16)
    # The same config in another process: the same numbers (checkpoint_every changes none;
    # it is part of the learner ids' config hash).
    no_id = lambda rows: [{k: v for k, v in r.items() if k != "learner_id"} for r in rows]
    assert no_id(wd.read_json(str(train_dir / "summary.json"))["learners"]) == no_id(
        wd.to_json(trained.summary["learners"]))
    r = _cli(["launch/measures.py", "--config=configs/measures/jacobian.py:smoke",
              f"--config.source={train_dir}", "--config.mode=matrix_free",
              f"--workdir={stats_dir}"], jax_cache)
    assert r.returncode == 0, r.stderr
    assert set(batch_files(str(stats_dir))) == set(measured.files)
    summary = wd.read_json(str(stats_dir / "summary.json"))
    for got, want in zip(summary["learners"], measured.summary["learners"], strict=True):
        np.testing.assert_allclose(got["jacobian_operator_norm"],
                                   want["jacobian_operator_norm"], rtol=1e-6)


def test_cli_bad_value_exits_2_with_one_line(jax_cache, tmp_path):
    workdir = tmp_path / "run"
    r = _cli(["launch/train.py", "--config=configs/measures/noisy_classification.py:smoke",
              "--config.data.label_noise=1.5", f"--workdir={workdir}"], jax_cache)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: config.data.label_noise=1.5 is invalid"), lines[0]
    assert not workdir.exists()


def test_default_mode_is_exact_at_ten_outputs(trained, measured, tmp_path):
    """mode "" picks the cheaper computation: K=10 -> exact per_output (10 vjps beat ~15 power
    iterations of a jvp + vjp), equal to the matrix_free values within its tolerance."""
    out = str(tmp_path / "default")
    measures.run(measures_config(trained.workdir, num_samples=20, mode=""), out, progress=False)
    files = batch_files(out)
    for s in SEEDS:
        assert files[(s, 1, 0)]["mode"] == "per_output"
        np.testing.assert_allclose(files[(s, 1, 0)]["values"], measured.files[(s, 1, 0)]["values"],
                                   rtol=1e-3)
    seed_cfg = jacobian_configs.get_config("seed_compat")
    assert (seed_cfg.mode, seed_cfg.seed_compat) == ("", True)
