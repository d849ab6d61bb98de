"""The hypergrad family against independent references: ridge regression's analytic
hypergradient, a dense linear solve, central finite differences of an unrolled run, the
scalar-rate special case; the learner axis, compile-once, resume; one-line errors."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from irmx.config_checks import ConfigError
from irmx.errors import UserError
from irmx.experiments import cli, hypergrad
from irmx.experiments.loop import run_program
from irmx.hypergrad import algorithms, ift, rule
from irmx.io import workdir as wd
from irmx.learners import count_compilations
from irmx.train import init_state, make_step, make_update

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, IRMX_JAX_CACHE="", JAX_PLATFORMS="cpu")


def uci_config(arg="ours_lr,smoke", **overrides):
    config = cli.load_config(f"{ROOT}/configs/hypergrad/uci.py:{arg}")
    for key, value in overrides.items():
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return config


# ---------------------------------------------------------------------------------------------
# Ridge regression: the IFT hypergradient is the analytic derivative


def _ridge_problem(rng):
    x = rng.normal(size=(40, 5))
    w_true = rng.normal(size=5)
    y = x @ w_true + 0.3 * rng.normal(size=40)
    xv = rng.normal(size=(30, 5))
    yv = xv @ w_true + 0.3 * rng.normal(size=30)
    return x, y, xv, yv


def _ridge_update():
    """Full-batch GD on mean squared error through the paper's update rule (zero momentum
    buffer: one step of the rule is w - eta (g + wd w) whatever mu)."""

    def loss_fn(params, model_state, batch, key, values):
        x, y = batch
        return jnp.mean(jnp.square(x @ params["w"] - y)), {}

    return make_update(loss_fn, rule.make_rule())


def _ridge_analytic(x, y, xv, yv, wd):
    """w* = (A + wd I)^-1 2/n X^T y with A = 2/n X^T X, grad L_V(w*), and dL_V/dlog10(wd) =
    -grad L_V(w*)^T (A + wd I)^-1 w* * wd ln 10 (numpy, float64)."""
    a = 2 / len(y) * x.T @ x + wd * np.eye(x.shape[1])
    w_star = np.linalg.solve(a, 2 / len(y) * x.T @ y)
    g_val = 2 / len(yv) * xv.T @ (xv @ w_star - yv)
    return w_star, g_val, -g_val @ np.linalg.solve(a, w_star) * wd * np.log(10)


def test_ridge_ift_hypergradient_equals_analytic_derivative():
    """At the fixed point (2/n X^T X + wd I) w* = 2/n X^T y, dL_V/dlog10(wd) =
    -grad L_V(w*)^T (A + wd I)^-1 w* * wd ln 10; the IFT (dense solve) gives it."""
    rng = np.random.default_rng(0)
    x, y, xv, yv = _ridge_problem(rng)
    with jax.enable_x64(True):
        wd_, lr = 0.3, 0.05
        w_star, g_val, analytic = _ridge_analytic(x, y, xv, yv, wd_)

        update = _ridge_update()
        params = {"w": jnp.asarray(w_star)}
        values = {"lr": jnp.log10(jnp.float64(lr)), "weight_decay": jnp.log10(jnp.float64(wd_)),
                  "momentum": jnp.float64(0.0)}
        opt_state = rule.make_rule()(values).init(params)
        batch = (jnp.asarray(x), jnp.asarray(y))
        phi = lambda w, v: update(w, opt_state, {}, batch, jax.random.key(0), v)[0]
        np.testing.assert_allclose(phi(params, values)["w"], w_star, rtol=1e-10)  # fixed point
        v = {"w": jnp.asarray(g_val)}
        dense = ift.ift_hypergradient_dense(phi, params, values, v)
        rel = abs(float(dense["weight_decay"]) - analytic) / abs(analytic)
        assert rel < 1e-4, (float(dense["weight_decay"]), analytic)
        # at a fixed point, the learning rate does not move w*: its hypergradient is 0
        assert abs(float(dense["lr"])) < 1e-8 * abs(analytic) + 1e-12

        # the truncated Neumann series converges to the dense solve as the terms grow
        errors = []
        for k in (1, 5, 50, 400, 3000):
            approx = ift.neumann_hypergradient(phi, params, values, v, k)
            errors.append(abs(float(approx["weight_decay"]) - float(dense["weight_decay"])))
        assert all(b < a for a, b in zip(errors, errors[1:])), errors
        assert errors[-1] < 1e-6 * abs(analytic), errors
        assert errors[0] > 1e-2 * abs(analytic)  # one term is not the inverse


@pytest.mark.parametrize("momentum", [1e-6, 0.5])
def test_neumann_chunk_on_trained_ridge_equals_analytic_derivative(momentum):
    """The chunk Ours runs (kind="neumann"), on ridge regression *trained* to its fixed point by
    the training core's steps (not handed w*): with enough Neumann terms its weight-decay
    hypergradient (read off an SGD(1) hyperparameter step) is the analytic derivative; the
    learning rate's and momentum's are zero at the fixed point (the momentum buffer is 0)."""
    rng = np.random.default_rng(0)
    x, y, xv, yv = _ridge_problem(rng)
    with jax.enable_x64(True):
        wd_, lr = 0.3, 0.05
        w_star, g_val, analytic = _ridge_analytic(x, y, xv, yv, wd_)

        data = {k: jnp.asarray(v) for k, v in dict(x=x, y=y, xv=xv, yv=yv).items()}

        def loss_fn(p, ms, batch, key, values):
            return jnp.mean(jnp.square(batch["x"] @ p["w"] - batch["y"])), {}

        val_loss = lambda p, ms, b: jnp.mean(jnp.square(b["xv"] @ p["w"] - b["yv"]))
        update = make_update(loss_fn, rule.make_rule())
        step = make_step(update, None)
        params = {"w": jnp.zeros(5, jnp.float64)}
        values = {"lr": jnp.log10(jnp.float64(lr)), "weight_decay": jnp.log10(jnp.float64(wd_)),
                  "momentum": jnp.log(jnp.float64(momentum)) - jnp.log1p(-momentum)}
        names = ("lr", "weight_decay", "momentum")
        hyper_opt = optax.sgd(1.0)
        chunk = algorithms.make_chunk(
            "neumann", step=step, update=update, batch_fn=None, val_batch_fn=None,
            val_loss=val_loss, train_loss=None, interval=1, num_steps=10**6,
            optimised=names, hyper_optimizer=hyper_opt, neumann_terms=3000,
            lr_clip=(-100.0, 100.0))
        outer = algorithms.init_outer("neumann", values, names, hyper_opt)
        state = init_state(params, rule.make_rule(), jax.random.key(0), values, outer=outer)
        state, _ = jax.jit(lambda s: jax.lax.scan(lambda c, _: step(c, data), s, None,
                                                  length=3000))(state)
        np.testing.assert_allclose(state.params["w"], w_star, rtol=1e-9)  # trained to w*
        new_state, _ = jax.jit(chunk)(state, data)
        hypergrad = {n: float(values[n] - new_state.values[n]) for n in names}
        rel = abs(hypergrad["weight_decay"] - analytic) / abs(analytic)
        assert rel < 1e-4, (hypergrad, analytic)
        assert abs(hypergrad["lr"]) < 1e-6 * abs(analytic)
        assert abs(hypergrad["momentum"]) < 1e-6 * abs(analytic)
        # the paper's 5 terms are an approximation, not the inverse, on this problem
        chunk5 = algorithms.make_chunk(
            "neumann", step=step, update=update, batch_fn=None, val_batch_fn=None,
            val_loss=val_loss, train_loss=None, interval=1, num_steps=10**6,
            optimised=names, hyper_optimizer=hyper_opt, neumann_terms=5,
            lr_clip=(-100.0, 100.0))
        five = float(values["weight_decay"] - jax.jit(chunk5)(state, data)[0].values[
            "weight_decay"])
        assert abs(five - analytic) > 1e-2 * abs(analytic)
        assert np.sign(five) == np.sign(analytic)


def test_neumann_series_terms_are_powers_of_the_jacobian():
    """sum_{i<K} (J^T)^i v for an explicit matrix."""
    with jax.enable_x64(True):
        j = np.array([[0.5, 0.1], [-0.2, 0.3]])
        v = np.array([1.0, -2.0])
        got = ift.neumann_series(lambda u: jnp.asarray(j.T) @ u, jnp.asarray(v), 4)
        want = sum(np.linalg.matrix_power(j.T, i) @ v for i in range(4))
        np.testing.assert_allclose(got, want, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Diff-through-Opt is the derivative of the unrolled run


def _mlp_problem():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 3))
    y = np.sin(x @ np.array([1.0, -0.5, 0.3]))
    xv = rng.normal(size=(16, 3))
    yv = np.sin(xv @ np.array([1.0, -0.5, 0.3]))
    params = {"w1": rng.normal(size=(3, 8)) * 0.5, "b1": np.zeros(8),
              "w2": rng.normal(size=(8,)) * 0.5}
    return x, y, xv, yv, params


def _mlp_loss(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean(jnp.square(h @ params["w2"] - y))


def _exact_setup(interval, lookback, per_parameter_lr=False):
    x, y, xv, yv, params = _mlp_problem()
    params = jax.tree.map(jnp.asarray, params)
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y), "xv": jnp.asarray(xv),
            "yv": jnp.asarray(yv)}

    def loss_fn(p, ms, batch, key, values):
        return _mlp_loss(p, batch["x"], batch["y"]), {}

    update = make_update(loss_fn, rule.make_rule())
    step = make_step(update, None)
    val_loss = lambda p, ms, b: _mlp_loss(p, b["xv"], b["yv"])
    values = rule.raw_values(0.05, 1e-3, 0.7, params, per_parameter_lr)
    values = jax.tree.map(lambda v: jnp.asarray(v, params["w1"].dtype), values)
    return data, update, step, val_loss, params, values


@pytest.mark.parametrize("interval,lookback,remat_block", [
    (6, 0, 0),  # the whole interval, 2 checkpointed blocks of 3 steps
    (6, 3, 0),  # the last 3 of 6 steps, one level
    (7, 0, 2),  # 3 blocks of 2 steps + a remainder step
    (7, 0, 1),  # every step checkpointed on its own
])
def test_diff_through_opt_equals_central_finite_difference(interval, lookback, remat_block):
    """kind="exact": new raw value = old - hypergradient under SGD(1); the hypergradient equals
    the central difference of the validation loss after the unrolled steps (float64), whatever
    the checkpoint blocks."""
    with jax.enable_x64(True):
        data, update, step, val_loss, params, values = _exact_setup(interval, lookback)
        hyper_opt = optax.sgd(1.0)
        names = ("lr", "weight_decay", "momentum")
        chunk = algorithms.make_chunk(
            "exact", step=step, update=update, batch_fn=None, val_batch_fn=None,
            val_loss=val_loss, train_loss=None, interval=interval, num_steps=2 * interval,
            optimised=names, hyper_optimizer=hyper_opt, lookback=lookback,
            lr_clip=(-100.0, 100.0), remat_block=remat_block)
        outer = algorithms.init_outer("exact", values, names, hyper_opt)
        state = init_state(params, rule.make_rule(), jax.random.key(0), values, outer=outer)
        new_state, metrics = jax.jit(chunk)(state, data)
        hypergrad = {n: float(values[n] - new_state.values[n]) for n in names}

        window = lookback or interval
        # the first steps (outside the window) are the same for every perturbation
        start = state
        for _ in range(interval - window):
            start, _ = step(start, data)
        for n in names:
            eps = 1e-5
            losses = []
            for sign in (1, -1):
                v = dict(values, **{n: values[n] + sign * eps})
                s = start.replace(values=v)
                for _ in range(window):
                    s, _ = step(s, data)
                losses.append(float(val_loss(s.params, {}, data)))
            fd = (losses[0] - losses[1]) / (2 * eps)
            assert abs(hypergrad[n] - fd) <= 1e-6 * max(abs(fd), 1e-3), (n, hypergrad[n], fd)
        # the weights and last loss after the chunk are those of the unperturbed unrolled run
        ref = state
        for _ in range(interval):
            ref, ref_metrics = step(ref, data)
        np.testing.assert_allclose(new_state.params["w1"], ref.params["w1"], rtol=1e-12)
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-12)


def test_baydin_hypergradient_is_minus_the_gradient_product():
    """kind="baydin": h = -grad L_V(w_t) . grad L_train(w_{t-1}), applied to the raw log10 rate
    by SGD (the reference's HypergradientOptimiser: no chain rule through 10^x)."""
    with jax.enable_x64(True):
        data, update, step, val_loss, params, values = _exact_setup(1, 0)
        train_loss = lambda p, ms, b, k, v: _mlp_loss(p, b["x"], b["y"])
        hyper_opt = optax.sgd(0.001)
        chunk = algorithms.make_chunk(
            "baydin", step=step, update=update, batch_fn=None, val_batch_fn=None,
            val_loss=val_loss, train_loss=train_loss, interval=1, num_steps=5,
            optimised=("lr",), hyper_optimizer=hyper_opt, lr_clip=(-100.0, 100.0))
        outer = algorithms.init_outer("baydin", values, ("lr",), hyper_opt)
        state = init_state(params, rule.make_rule(), jax.random.key(0), values, outer=outer)
        new_state, _ = chunk(state, data)
        g_prev = jax.grad(_mlp_loss)(params, data["x"], data["y"])
        stepped, _ = step(state, data)
        g_val = jax.grad(_mlp_loss)(stepped.params, data["xv"], data["yv"])
        dot = sum(float(jnp.sum(a * b)) for a, b in zip(jax.tree.leaves(g_val),
                                                         jax.tree.leaves(g_prev)))
        np.testing.assert_allclose(float(new_state.values["lr"]),
                                   float(values["lr"]) - 0.001 * (-dot), rtol=1e-12)
        np.testing.assert_allclose(new_state.params["w1"], stepped.params["w1"], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# HDLR with equal rates is scalar LR


def test_hdlr_with_equal_rates_matches_scalar_lr():
    """Training with a per-weight rate tree whose entries are all equal is bit-identical to the
    scalar rate; its Neumann hypergradient summed over the weights is the scalar one."""
    data, update, step, val_loss, params, _ = _exact_setup(1, 0)
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    data = jax.tree.map(lambda p: p.astype(jnp.float32), data)
    scalar = rule.raw_values(0.05, 1e-3, 0.7, params, False)
    tree = rule.raw_values(0.05, 1e-3, 0.7, params, True)
    assert jax.tree.structure(tree["lr"]) == jax.tree.structure(params)
    s1 = init_state(params, rule.make_rule(), jax.random.key(0), scalar)
    s2 = init_state(params, rule.make_rule(), jax.random.key(0), tree)
    run = jax.jit(lambda s: jax.lax.scan(lambda c, _: step(c, data), s, None, length=20)[0])
    a, b = run(s1), run(s2)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    batch = data
    phi = lambda w, v: update(w, a.opt_state, {}, batch, jax.random.key(0), v)[0]
    v = jax.grad(lambda p: val_loss(p, {}, data))(a.params)
    g_scalar = ift.neumann_hypergradient(phi, a.params, scalar, v, 5)
    g_tree = ift.neumann_hypergradient(phi, a.params, tree, v, 5)
    total = sum(float(jnp.sum(t)) for t in jax.tree.leaves(g_tree["lr"]))
    np.testing.assert_allclose(total, float(g_scalar["lr"]), rtol=1e-4)
    np.testing.assert_allclose(float(g_tree["weight_decay"]), float(g_scalar["weight_decay"]),
                               rtol=1e-5)


def test_raw_values_and_natural_scales_round_trip():
    raw = rule.raw_values(0.01, 1e-4, 0.9)
    nat = rule.natural(raw)
    np.testing.assert_allclose([nat["lr"], nat["weight_decay"], nat["momentum"]],
                               [0.01, 1e-4, 0.9], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The driver: learner axis, compile once, resume


def test_vmapped_initialisations_equal_single_runs(tmp_path):
    """Learner i of a 3-initialisation program ends where a one-learner program with learner
    i's initial values ends; chunks 2..n compile nothing."""
    config = uci_config("ours_hdlr_momentum,smoke", num_inits=3)
    program = hypergrad.build_program(config)
    state, data = program.init()
    with count_compilations() as compiled:
        state, _ = program.chunk(state, data)
        first = compiled[0]
        for _ in range(program.num_steps // program.chunk_steps - 1):
            state, metrics = program.chunk(state, data)
    assert compiled[0] == first and program.trace_counter.num_traces == 1
    rows = program.axis.rows
    for i in (0, 2):
        single = uci_config("ours_hdlr_momentum,smoke", num_inits=0)
        for n in ("initial_lr", "initial_weight_decay", "initial_momentum"):
            single.sampled[n] = ()
            single.zipped[n] = (rows[i][n],)
        p1 = hypergrad.build_program(single)
        s1, d1 = p1.init()
        for _ in range(p1.num_steps // p1.chunk_steps):
            s1, _ = p1.chunk(s1, d1)
        for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(np.asarray(x)[0], np.asarray(y)[i], atol=2e-5)
        for x, y in zip(jax.tree.leaves(s1.values), jax.tree.leaves(state.values)):
            np.testing.assert_allclose(np.asarray(x)[0], np.asarray(y)[i], atol=2e-5)
    # the hyperparameters moved: the hypergradient steps did something
    assert not np.allclose(np.asarray(state.values["weight_decay"]),
                           np.log10([rows[i]["initial_weight_decay"] for i in range(3)]))


def test_resume_after_interruption_ends_where_an_uninterrupted_run_ends(tmp_path):
    config = uci_config("ours_lr_momentum,smoke", num_inits=2, checkpoint_every=1)
    whole = run_program(hypergrad.program_for(config), config.to_dict(), str(tmp_path / "a"),
                        progress=False)
    cut = str(tmp_path / "b")
    assert run_program(hypergrad.program_for(config), config.to_dict(), cut, progress=False,
                       max_chunks=2) == {}
    assert wd.read_json(os.path.join(cut, "status.json"))["state"] == "preempted"
    resumed = run_program(hypergrad.program_for(config), config.to_dict(), cut, progress=False)
    for a, b in zip(whole["learners"], resumed["learners"]):
        for k in ("test_loss", "val_loss", "lr", "weight_decay", "momentum"):
            assert a[k] == b[k], k


def test_compare_smoke_runs_every_algorithm_on_the_same_initialisations(tmp_path, capsys):
    config = uci_config("compare,smoke")
    group = hypergrad.run(config, str(tmp_path / "c"), progress=False)
    rows = group["rows"]
    assert list(rows) == list(config.compare_order)
    assert rows["random_3batched"]["runs"] == 1 and rows["bayesopt"]["runs"] == 1
    for name in ("random_validation", "ours_lr", "diff_through_opt"):
        s = wd.read_json(os.path.join(tmp_path, "c", name, "summary.json"))
        assert s["table_row"]["runs"] == 3
    ax = [wd.read_json(os.path.join(tmp_path, "c", n, "summary.json"))["axis"]
          for n in ("random", "ours_lr", "baydin")]
    assert ax[0] == ax[1] == ax[2]  # the same initialisations
    out = capsys.readouterr().out
    assert "ours_hdlr_momentum" in out and "median" in out


# ---------------------------------------------------------------------------------------------
# Bad values: one line, before compilation


@pytest.mark.parametrize("overrides, key", [
    ({"algorithm.lr_clip": (0.0, -10.0)}, "algorithm.lr_clip"),
    ({"algorithm.neumann_terms": 0}, "algorithm.neumann_terms"),
    ({"algorithm.interval": 0}, "algorithm.interval"),
    ({"algorithm.remat_block": -1}, "algorithm.remat_block"),
    ({"algorithm.kind": "nope"}, "algorithm.kind"),
    ({"sampled.initial_lr": (0.1, 1e-6, "log"), "num_inits": 3}, "sampled.initial_lr"),
    ({"algorithm.optimised": ("lr", "beta")}, "algorithm.optimised"),
    ({"bayesopt.bounds.momentum": (0.0, 1.0)}, "bayesopt.bounds.momentum"),
    ({"algorithm.batched": 3, "num_inits": 2}, "algorithm.batched"),
])
def test_bad_values_name_the_key(overrides, key):
    config = uci_config("ours_lr,smoke", **overrides)
    with pytest.raises(ConfigError, match=f"config.{key}="):
        hypergrad.validate(config)


# the reference's configs/*.yaml network_weight (raw log10 lr, log10 wd, logit momentum)
REFERENCE_INITS = {"uci": (-3.0, -16.0, 0.5), "fashion_mnist": (-3.0, -6.0, 0.0),
                   "cifar10": (-3.3534718751907349, -6.2753795385360718, 1.212821931),
                   "penn_treebank": (-1.3534718751907349, -9.0, 0.0)}


@pytest.mark.parametrize("name", sorted(REFERENCE_INITS))
def test_unsampled_learner_starts_at_its_data_sets_reference_hyperparameters(name):
    config = cli.load_config(f"{ROOT}/configs/hypergrad/{name}.py:ours_lr")
    raw = rule.raw_values(config.init.lr, config.init.weight_decay, config.init.momentum)
    np.testing.assert_allclose([float(raw[k]) for k in rule.NAMES], REFERENCE_INITS[name],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, steps", [("uci", 4000), ("fashion_mnist", 10000)])
def test_diff_through_opt_horizons_are_the_references(name, steps):
    """Long: the Standalone configs as run_all.py runs them (UCI 200 x 20, Fashion-MNIST 1000 x
    100, reset); Medium: 200-step intervals without reset at the run's budget; Full: UCI's
    4000 x 30 (reset); every other algorithm trains ``steps`` network steps."""
    horizons = {}
    for h in ("long", "medium", "full"):
        a = cli.load_config(f"{ROOT}/configs/hypergrad/{name}.py:diff_through_opt_{h}").algorithm
        horizons[h] = (a.interval, a.hyper_steps, a.reset)
    want = {"uci": {"long": (200, 20, True), "medium": (200, 20, False),
                    "full": (4000, 30, True)},
            "fashion_mnist": {"long": (1000, 100, True), "medium": (200, 50, False),
                              "full": (10000, 30, True)}}[name]
    assert horizons == want
    assert hypergrad.num_steps(cli.load_config(f"{ROOT}/configs/hypergrad/{name}.py:ours_lr")) \
        == steps == horizons["medium"][0] * horizons["medium"][1]


def test_random_3batched_defaults_to_the_spread_it_needs():
    config = uci_config("random_3batched")
    assert config.num_inits == 200 and config.algorithm.batched == 3
    hypergrad.validate(config)
    assert uci_config("random").num_inits == 0  # one learner at config.init unless asked


def test_missing_uci_file_is_one_clear_error(tmp_path):
    config = uci_config("ours_lr,smoke", **{"data.name": "energy",
                                           "data.data_dir": str(tmp_path)})
    with pytest.raises(UserError, match="energy") as e:
        hypergrad.build_program(config)
    assert "\n" not in str(e.value)


def test_command_line_errors_are_one_line(tmp_path):
    commands = {
        "clip": ["--config=configs/hypergrad/uci.py:ours_lr,smoke",
                 "--config.algorithm.lr_clip=(0.0,-10.0)"],
        "variant": ["--config=configs/hypergrad/uci.py:ours_lrr"],
        "uci": ["--config=configs/hypergrad/uci.py:ours_lr,smoke", "--config.data.name=yacht",
                f"--config.data.data_dir={tmp_path}"],
    }
    procs = {n: subprocess.Popen([sys.executable, "launch/hypergrad.py", *args,
                                  f"--workdir={tmp_path / n}", "--noprogress"], cwd=ROOT,
                                 env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for n, args in commands.items()}
    for proc in procs.values():
        _, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert not os.path.exists(tmp_path / "clip" / "ckpt")


def test_tensorboard_has_the_mean_over_initialisations_and_a_rate_histogram(tmp_path):
    from irmx.io import tensorboard as tb

    config = uci_config("ours_hdlr_momentum,smoke", num_inits=3)
    d = str(tmp_path / "hd")
    hypergrad.run(config, d, progress=False)
    runs = tb.list_runs(os.path.join(d, "tb"))
    assert "all_learners" in runs and len(runs) == 4
    mean = dict(tb.read_scalars(os.path.join(d, "tb", "all_learners"))["lr/mean"])
    rows = wd.read_metrics(os.path.join(d, "metrics.jsonl"))
    last = max(r["step"] for r in rows)
    np.testing.assert_allclose(mean[last], np.mean([r["lr"] for r in rows
                                                     if r["step"] == last]), rtol=1e-5)
    point = next(r for r in runs if r != "all_learners")
    histos = [v for ev in tb.read_events(os.path.join(d, "tb", point)) for v in ev.summary.value
              if v.WhichOneof("value") == "histo"]
    assert histos and histos[0].tag == "lr_quantiles"


def _write_ptb(directory, rng):
    words = "the cat sat on a mat dog ran and far away".split()
    for split, n in (("train", 120), ("valid", 30), ("test", 30)):
        lines = [" ".join(rng.choice(words, 6)) for _ in range(n)]
        (directory / f"ptb.{split}.txt").write_text("".join(f" {ln} \n" for ln in lines))


def test_penn_treebank_language_model_trains_from_ptb_files(tmp_path):
    """The LSTM task end to end on small files in the ptb.*.txt format: Ours (WD+LR) moves the
    hyperparameters, the test perplexity is below the vocabulary size (uniform guessing)."""
    _write_ptb(tmp_path, np.random.default_rng(0))
    config = cli.load_config(f"{ROOT}/configs/hypergrad/penn_treebank.py:ours_lr,smoke")
    config.data.data_dir = str(tmp_path)
    config.algorithm.hyper_steps = 10
    summary = hypergrad.run(config, str(tmp_path / "w"), progress=False)
    (row,) = summary["learners"]
    assert not row["diverged"] and np.isfinite(row["test_perplexity"])
    assert row["test_perplexity"] < 13  # 11 words + <eos>: uniform guessing is 12
    assert row["lr"] != pytest.approx(10 ** -1.35, rel=1e-3)


def test_bayesopt_asks_batches_and_resumes_without_asking_twice(tmp_path):
    """Rounds of (init_points, then batches): every repeat's points of a round are one
    program; the result per repeat is the test loss of its best-validation point; a search
    that lost its last round (killed) retrains exactly the stored points and ends the same."""
    import shutil

    config = uci_config("bayesopt,smoke", **{"bayesopt.repeats": 2})
    d = str(tmp_path / "bo")
    first = hypergrad.run(config, d, progress=False)
    assert first["evaluations"] == 2 * (2 + 2)
    points = wd.read_json(os.path.join(d, "points.json"))["rounds"]
    assert [len(r) for r in points] == [2, 2] and [len(p) for p in points[0]] == [2, 2]
    rounds = [wd.read_json(os.path.join(d, f"round_{k:02d}", "summary.json")) for k in (0, 1)]
    assert all(s["num_learners"] == 4 for s in rounds)  # 2 repeats x 2 points, one program
    for r, best in enumerate(first["best_points"]):
        mine = [row for s in rounds for row in s["learners"] if row["bo_repeat"] == r]
        chosen = min(mine, key=lambda row: row["val_loss"])
        assert chosen["val_loss"] == best["val_loss"]
        assert first["final_losses"][r] == chosen["unnormalised_test_loss"]
        lows, highs = zip(*[config.bayesopt.bounds[n] for n in ("lr", "weight_decay")])
        for row in mine:  # the points asked lie in the reference's bounds (log10 lr, wd)
            assert lows[0] <= np.log10(row["initial_lr"]) <= highs[0]
            assert lows[1] <= np.log10(row["initial_weight_decay"]) <= highs[1]
    shutil.rmtree(os.path.join(d, "round_01"))
    os.remove(os.path.join(d, "summary.json"))
    again = hypergrad.run(config, d, progress=False)
    assert again["final_losses"] == first["final_losses"]
    assert wd.read_json(os.path.join(d, "points.json"))["rounds"] == points
