"""Foundation v2: the update map, hooks, the general learner axis, learner groups and the
runner, each tested as the later families (hypergrad, interventions, interplay) will use them."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from irmx import learners, optim, rng, train
from irmx.configs.irm import regression
from irmx.experiments import irm
from irmx.experiments.loop import Program, run_program
from irmx.io import workdir as wd

X = np.random.default_rng(0).normal(size=(32, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * np.random.default_rng(1).normal(size=32)


def mse_loss(params, model_state, batch, key, values):
    x, y = batch
    r = jnp.mean((x @ params["w"] + params["b"] - y) ** 2)
    return r, {"risk": r}


def numpy_grad(w, b, x, y):
    r = x @ w + b - y
    return 2 * x.T @ r / len(y), 2 * r.mean()


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_plain_optax_single_term_matches_numpy_loop(name):
    """Any optax transformation with a single-term loss: shapes kept, numbers of a numpy loop."""
    opt = optax.sgd(0.05) if name == "sgd" else optax.adam(0.05)
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    state = train.init_state(params, opt, jax.random.key(0))
    chunk = jax.jit(train.make_chunk(train.make_step(train.make_update(mse_loss, opt)), 20))
    state, metrics = chunk(state, (jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)))
    assert state.params["w"].shape == (3,) and state.params["b"].shape == ()
    w, b, m, v = np.zeros(3), 0.0, np.zeros(4), np.zeros(4)
    for t in range(1, 21):
        gw, gb = numpy_grad(w, b, X, Y)
        g = np.append(gw, gb)
        if name == "sgd":
            step = 0.05 * g
        else:
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g**2
            step = 0.05 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        w, b = w - step[:3], b - step[3]
    np.testing.assert_allclose(state.params["w"], w, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(state.params["b"], b, rtol=2e-4, atol=1e-5)
    assert not bool(metrics["diverged"])


def test_optimizer_factory_coupled_and_decoupled_weight_decay_match_numpy():
    """irmx.optim: torch-style coupled decay (g + wd w) into momentum, and AdamW's decoupled."""
    params = {"w": jnp.ones(3), "b": jnp.zeros(())}
    data = (jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32))
    for decoupled in (False, True):
        opt = optim.make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=0.01,
                                   decoupled_weight_decay=decoupled)
        state = train.init_state(params, opt, jax.random.key(0))
        step = jax.jit(train.make_step(train.make_update(mse_loss, opt)))
        w, b, buf = np.ones(3), 0.0, np.zeros(4)
        for _ in range(5):
            state, _ = step(state, data)
            gw, gb = numpy_grad(w, b, X, Y)
            g, p = np.append(gw, gb), np.append(w, b)
            if decoupled:
                buf = 0.9 * buf + g
                p = p - 0.1 * (buf + 0.01 * p)
            else:
                buf = 0.9 * buf + g + 0.01 * p
                p = p - 0.1 * buf
            w, b = p[:3], p[3]
        np.testing.assert_allclose(state.params["w"], w, rtol=1e-5)


def _hyper_run(values, num_steps=10):
    """Validation loss after ``num_steps`` SGD-momentum steps with per-learner lr and wd."""
    opt = optim.make_optimizer("sgd", 0.1, momentum=0.5, weight_decay=0.0)
    names = ("learning_rate", "weight_decay")
    x, y = jnp.asarray(X[:24]), jnp.asarray(Y[:24])
    params = {"w": jnp.zeros(3, x.dtype), "b": jnp.zeros((), x.dtype)}
    state = train.init_state(params, opt, jax.random.key(0), values, hyperparams=names)
    update = train.make_update(mse_loss, opt, hyperparams=names)
    state, _ = train.make_chunk(train.make_step(update), num_steps)(state, (x, y))
    val = mse_loss(state.params, {}, (jnp.asarray(X[24:]), jnp.asarray(Y[24:])), None, None)
    return val[0]


def test_hypergradient_through_a_chunk_equals_finite_differences():
    """jax.grad of a validation loss through a lax.scan chunk w.r.t. the learning rate and
    weight decay (learner values written into the optax state) = central differences, f64."""
    with jax.enable_x64(True):
        values = {"learning_rate": jnp.float64(0.05), "weight_decay": jnp.float64(0.1)}
        grads = jax.jit(jax.grad(_hyper_run))(values)
        for name in values:
            eps = 1e-6
            up = _hyper_run({**values, name: values[name] + eps})
            down = _hyper_run({**values, name: values[name] - eps})
            fd = (up - down) / (2 * eps)
            assert abs(float(grads[name])) > 1e-4  # both really matter
            np.testing.assert_allclose(grads[name], fd, rtol=1e-5)


def test_update_map_jvp_and_vjp_equal_a_dense_jacobian():
    """The update map Phi(w) at fixed batch, optimizer state and values: jvp and vjp agree
    with a dense jax.jacfwd on a small model (what the IFT's Neumann series multiplies)."""
    with jax.enable_x64(True):
        opt = optim.make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=1e-2)
        x, y = jnp.asarray(X), jnp.asarray(Y)
        params = {"w": jnp.asarray([0.3, -0.1, 0.2]), "b": jnp.asarray(0.1)}
        state = train.init_state(params, opt, jax.random.key(0))
        update = train.make_update(mse_loss, opt)
        flat, unravel = jax.flatten_util.ravel_pytree(params)

        def phi(w_flat):
            new = update(unravel(w_flat), state.opt_state, {}, (x, y), jax.random.key(1), {})[0]
            return jax.flatten_util.ravel_pytree(new)[0]

        dense = jax.jacfwd(phi)(flat)
        v = jnp.asarray([1.0, 2.0, -1.0, 0.5])
        np.testing.assert_allclose(jax.jvp(phi, (flat,), (v,))[1], dense @ v, rtol=1e-12)
        np.testing.assert_allclose(jax.vjp(phi, flat)[1](v)[0], dense.T @ v, rtol=1e-12)
        # and a closed form: Phi(w) = w - lr (H w + g0 + wd w) for the quadratic loss
        xb = np.c_[np.ones(32), X]  # ravel order: b, then w
        want = np.eye(4) - 0.1 * (2 * xb.T @ xb / 32 + 1e-2 * np.eye(4))
        np.testing.assert_allclose(dense, want, rtol=1e-10, atol=1e-12)


def test_extra_args_optimizer_gets_the_loss():
    """An optimizer needing the loss (GradientTransformationExtraArgs: a line search) runs."""
    opt = optax.chain(optax.sgd(1.0),
                      optax.scale_by_backtracking_linesearch(max_backtracking_steps=15))
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    state = train.init_state(params, opt, jax.random.key(0))
    step = jax.jit(train.make_step(train.make_update(mse_loss, opt)))
    data = (jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32))
    losses = []
    for _ in range(5):
        state, m = step(state, data)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0] and all(np.diff(losses) <= 1e-6)


# --- interventions readiness --------------------------------------------------------------

def _batch_fn(data, step, key):
    idx = jax.random.choice(key, data[0].shape[0], (8,), replace=False)
    return data[0][idx], data[1][idx], idx


def _mse_b(params, model_state, batch, key, values):
    return mse_loss(params, model_state, batch[:2], key, values)


def _intervention_hooks():
    """A weight perturbation at step 5 and a momentum-buffer scaling in steps [10, 20), each
    reading its per-learner scale from the learner's values."""
    def perturb(st, values, key):
        noise = jax.tree.map(lambda p: jax.random.normal(key, p.shape), st.params)
        params = jax.tree.map(lambda p, n: p + values["weight_noise"] * n, st.params, noise)
        return st._replace(params=params)

    def scale_momentum(st, values, key):
        trace = optax.tree_utils.tree_get(st.opt_state, "trace")
        scaled = jax.tree.map(lambda t: values["momentum_scale"] * t, trace)
        return st._replace(opt_state=optax.tree_utils.tree_set(st.opt_state, trace=scaled))

    return [train.Hook("before_step", perturb, 5, 6),
            train.Hook("after_update", scale_momentum, 10, 20)]


def _lockstep(values_N, hooks):
    opt = optax.sgd(0.05, momentum=0.9)
    update = train.make_update(_mse_b, opt, hooks=hooks)
    chunk = train.make_chunk(jax.jit(train.make_step(update, _batch_fn)), 1)
    data = (jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32))

    def init_one(v):
        p = {"w": jnp.zeros(3), "b": jnp.zeros(())}
        return train.init_state(p, opt, rng.stream(7, "step"), v)

    state = jax.vmap(init_one)(values_N)
    run = jax.jit(jax.vmap(chunk, in_axes=(0, None)))
    for _ in range(25):
        state, _ = run(state, data)
    return state


def test_control_and_intervened_learners_in_lockstep_equal_single_runs():
    values = {"weight_noise": jnp.array([0.0, 0.3, 0.0, 0.3]),
              "momentum_scale": jnp.array([1.0, 1.0, 0.0, 0.5])}
    hooks = _intervention_hooks()
    state = _lockstep(values, hooks)
    # learner 0 is the control: identical to a run with no hooks at all
    plain = _lockstep({"weight_noise": jnp.zeros(1), "momentum_scale": jnp.ones(1)}, [])
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[0], rtol=1e-6, atol=1e-7)
    # each intervened learner equals its single run; and the interventions did change things
    for i in range(1, 4):
        single = _lockstep(jax.tree.map(lambda v, i=i: v[i:i + 1], values), hooks)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single.params)):
            np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b)[0], rtol=1e-5, atol=1e-6)
        assert not np.allclose(state.params["w"][i], state.params["w"][0], atol=1e-4)


def test_hooks_see_the_same_batches_and_act_only_in_their_window():
    hook = train.Hook("after_gradients", lambda g, v, k: jax.tree.map(lambda x: 0 * x, g), 3, 5)
    opt = optax.sgd(0.1)
    update = train.make_update(_mse_b, opt, hooks=[hook])
    step = jax.jit(train.make_step(update, _batch_fn))
    data = (jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32))
    state = train.init_state({"w": jnp.zeros(3), "b": jnp.zeros(())}, opt, rng.stream(1, "step"))
    params = []
    for _ in range(7):
        params.append(np.asarray(state.params["w"]))
        state, _ = step(state, data)
    params.append(np.asarray(state.params["w"]))
    moved = [not np.array_equal(params[t], params[t + 1]) for t in range(7)]
    assert moved == [True, True, True, False, False, True, True]  # zeroed gradients at 3, 4


def test_activation_hook_perturbs_a_named_module_output():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(4, name="hidden")(x)
            return nn.Dense(1, name="out")(nn.relu(h))[:, 0]

    net = Net()
    x, y = jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)
    params = net.init(jax.random.key(0), x)

    def loss(p, ms, batch, key, values):
        r = jnp.mean((net.apply(p, batch[0]) - batch[1]) ** 2)
        return r, {}

    def silence(path, out, values, key):
        return out * values["keep"] if path == "hidden" else out

    opt = optax.sgd(0.0)
    hook = train.Hook("activations", silence)
    upd = train.make_update(loss, opt, hooks=[hook])
    st = opt.init(params)
    on = upd(params, st, {}, (x, y), jax.random.key(0), {"keep": 0.0})[3]["loss"]
    off = upd(params, st, {}, (x, y), jax.random.key(0), {"keep": 1.0})[3]["loss"]
    # with the hidden layer silenced the output is the out-layer's bias (zero at init)
    np.testing.assert_allclose(on, np.mean(Y**2), rtol=1e-5)
    np.testing.assert_allclose(off, loss(params, {}, (x, y), None, None)[0], rtol=1e-6)


def test_divergence_keeps_the_last_finite_state_exactly():
    opt = optax.sgd(0.1, momentum=0.9)
    step = jax.jit(train.make_step(train.make_update(mse_loss, opt)))
    state = train.init_state({"w": jnp.zeros(3), "b": jnp.zeros(())}, opt, jax.random.key(0))
    data = (jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32))
    state, _ = step(state, data)
    bad = (data[0], data[1].at[0].set(jnp.inf))
    new, m = step(state, bad)
    assert bool(new.diverged) and bool(m["diverged"])
    for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                    jax.tree.leaves((new.params, new.opt_state))):
        assert np.array_equal(a, b)
    later, _ = step(new, data)  # stays frozen
    assert bool(later.diverged) and np.array_equal(later.params["w"], state.params["w"])


# --- learner axis ---------------------------------------------------------------------------

def test_sampled_axis_draws_are_the_same_alone_vmapped_and_when_grown():
    spec = {"lr": (1e-4, 1e-1, "log"), "wd": (0.0, 1.0)}
    small = learners.make_axis([0, 1], sampled=spec, num_sampled=5, sample_seed=3)
    big = learners.make_axis([0, 1, 2], sampled=spec, num_sampled=9, sample_seed=3)
    assert small.shape == (2, 5) and big.shape == (3, 9)
    lr_small = small.to_grid(small.coords["lr"])
    lr_big = big.to_grid(big.coords["lr"])
    np.testing.assert_array_equal(lr_small[0], lr_big[0, :5])
    np.testing.assert_array_equal(lr_small[0], lr_small[1])  # the same draws for every seed
    # each draw is the single draw of (seed, name, i): no dependence on how many are drawn
    for i in range(5):
        one = learners.sample_values(3, "lr", spec["lr"], i + 1)[-1]
        assert one == lr_small[0, i]
    lr = lr_big[0]
    assert (lr >= 1e-4).all() and (lr <= 1e-1).all() and lr.min() < 1e-3 < lr.max()
    # log-uniform: log lr is spread evenly, not bunched at the top
    ints = learners.sample_values(0, "width", (2, 5, "int"), 200)
    assert set(ints.tolist()) == {2, 3, 4, 5}


def test_axis_zip_control_seed_roles_and_ids():
    axis = learners.make_axis([1, 2], {"lr": (0.1, 0.2)},
                              zipped={"data_seed": (7, 8), "label_noise": (0.0, 0.5)},
                              control=True, neutral={"lr": 0.1, "data_seed": 7,
                                                     "label_noise": 0.0})
    assert axis.shape == (2, 5)  # per seed: control + 2 lr x 2 zipped rows
    rows = axis.rows
    assert rows[0] == {"seed": 1, "control": True, "lr": 0.1, "data_seed": 7, "label_noise": 0.0}
    assert rows[4] == {"seed": 1, "control": False, "lr": 0.2, "data_seed": 8,
                       "label_noise": 0.5}
    # seed roles: data streams from data_seed, the rest from seed
    k = learners.learner_stream(rows[4], "label_noise")
    assert np.array_equal(jax.random.key_data(k), jax.random.key_data(rng.stream(8, "label_noise")))
    k = learners.learner_stream(rows[4], "init")
    assert np.array_equal(jax.random.key_data(k), jax.random.key_data(rng.stream(1, "init")))
    ids = axis.learner_ids({"a": 1})
    assert len(set(ids)) == axis.size and ids == axis.learner_ids({"a": 1})
    assert ids != axis.learner_ids({"a": 2})  # the base config is part of the identity
    # a learner's id does not depend on the rest of the grid
    other = learners.make_axis([2], {"lr": (0.2,)}, zipped={"data_seed": (8,),
                                                           "label_noise": (0.5,)})
    assert ids[9] != other.learner_ids({"a": 1})[0]  # (it has no control coordinate)
    with pytest.raises(ValueError, match="repeats a learner"):
        learners.make_axis([1, 1])


def test_learner_groups_give_the_same_numbers_as_one_vmap():
    c = regression.get_config("irmv1,smoke")
    c.vmapped.penalty_weight = (1.0, 10.0, 100.0)
    whole = irm.build_program(c)
    c.learners_per_group = 5  # 12 learners: groups of 5, 5 and a remainder of 2
    grouped = irm.build_program(c)
    out = []
    for p in (whole, grouped):
        state, data = p.init()
        for _ in range(2):
            state, metrics = p.chunk(state, data)
        out.append((state.params, p.evaluate(state, data)))
    for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1])):  # float32 rounding
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_chunks_after_the_first_compile_nothing():
    """Backend compilations counted through jax.monitoring, not Python traces."""
    program = irm.build_program(regression.get_config("irmv1,smoke"))
    state, data = program.init()
    state, _ = program.chunk(state, data)
    jax.block_until_ready(state)
    with learners.count_compilations() as n:
        for _ in range(3):
            state, _ = program.chunk(state, data)
        jax.block_until_ready(state)
    assert n[0] == 0
    x = jnp.ones(7).block_until_ready()
    with learners.count_compilations() as n:  # the counter does see real compilations
        jax.jit(lambda a: a * 3.0 + 1.0)(x).block_until_ready()
    assert n[0] == 1


def test_summarize_grid_and_per_seed_selection_against_numpy():
    axis = learners.make_axis([10, 11, 12], {"pw": (1.0, 10.0), "lr": (0.1, 0.2)})
    r = np.random.default_rng(0)
    m = r.normal(size=12)
    crit = r.normal(size=12)
    div = np.zeros(12, bool)
    div[5] = True
    s = learners.summarize(axis, {"m": m, "crit": crit}, div, select_by="crit")
    grid_m = np.where(div, np.nan, m).reshape(3, 4)
    for g, point in enumerate(s["grid"]):
        col = grid_m[:, g]
        col = col[np.isfinite(col)]
        assert point["m"]["mean"] == pytest.approx(col.mean())
        assert point["m"]["std"] == pytest.approx(col.std())
        assert point["num_seeds"] == 3 and point["m"]["n"] == len(col)
    assert [p["pw"] for p in s["grid"]] == [1.0, 1.0, 10.0, 10.0]
    c = np.where(div, np.inf, crit).reshape(3, 4)
    chosen = np.arange(3) * 4 + c.argmin(1)
    assert s["selected"]["learners"] == chosen.tolist()
    assert s["selected"]["m"]["mean"] == pytest.approx(m[chosen].mean())
    assert s["selected"]["lr"] == [axis.rows[i]["lr"] for i in chosen]


# --- runner ---------------------------------------------------------------------------------

def _grid_config(values):
    c = regression.get_config("irmv1,smoke")
    c.num_seeds = 2
    c.vmapped.penalty_weight = values
    return c


def test_growing_the_grid_trains_only_the_new_learners(tmp_path, monkeypatch):
    trained = []
    real_build = irm.build_program

    def counting_build(config):
        p = real_build(config)

        def init(coords=None):
            trained.append(len(next(iter(coords.values()))))
            return p.init(coords)

        return Program(**{**p.__dict__, "init": init})

    monkeypatch.setattr(irm, "build_program", counting_build)
    d = str(tmp_path / "run")
    first = irm.run(_grid_config((1.0, 10.0)), d, progress=False)
    assert trained == [4] and first["num_learners"] == 4
    stored = {f: open(os.path.join(d, "learners", f)).read()
              for f in os.listdir(os.path.join(d, "learners"))}
    grown = irm.run(_grid_config((1.0, 10.0, 100.0)), d, progress=False)
    assert trained == [4, 2] and grown["num_learners"] == 6
    for f, text in stored.items():  # the 4 old results untouched
        assert open(os.path.join(d, "learners", f)).read() == text
    by_id = {r["learner_id"]: r for r in grown["learners"]}
    for r in first["learners"]:
        assert by_id[r["learner_id"]]["causal_error"] == r["causal_error"]
    assert len(os.listdir(os.path.join(d, "learners"))) == 6
    # the grown run equals a fresh run of the 6-learner config
    fresh = irm.run(_grid_config((1.0, 10.0, 100.0)), str(tmp_path / "fresh"), progress=False)
    np.testing.assert_allclose([r["causal_error"] for r in grown["learners"]],
                               [r["causal_error"] for r in fresh["learners"]], rtol=1e-5)
    irm.run(_grid_config((1.0, 10.0, 100.0)), d, progress=False)
    assert trained == [4, 2, 6]  # the finished run was not run again
    bad = _grid_config((1.0, 10.0, 100.0))
    bad.optim.lr = 0.01
    with pytest.raises(wd.WorkdirError, match=r"differing keys: optim\.lr"):
        irm.run(bad, d, progress=False)


def _eval_program(fail=False):
    axis = learners.make_axis([0, 1, 2])

    def init(coords=None):
        coords = axis.numeric_coords() if coords is None else coords
        return None, {"seed": np.asarray(coords["seed"], np.float64)}

    def evaluate(state, data):
        if fail:
            raise RuntimeError("broken evaluator")
        return {"double": 2 * data["seed"]}

    return Program(name="probe", family="test", axis=axis, init=init, evaluate=evaluate)


def test_eval_only_program_status_contract(tmp_path, monkeypatch):
    d = str(tmp_path / "eval")
    states = []
    real = wd.Workdir.set_status

    def spy(self, state, step, **kw):
        states.append(state)
        return real(self, state, step, **kw)

    monkeypatch.setattr(wd.Workdir, "set_status", spy)
    s = run_program(_eval_program(), {"x": 1}, d, progress=False)
    assert states == ["running", "done"]
    assert [r["double"] for r in s["learners"]] == [0.0, 2.0, 4.0]
    assert json.load(open(os.path.join(d, "status.json")))["state"] == "done"
    run_program(_eval_program(fail=True), {"x": 1}, d, progress=False)  # finished: not re-run
    assert states == ["running", "done"]
    with pytest.raises(RuntimeError, match="broken evaluator"):
        run_program(_eval_program(fail=True), {"x": 1}, str(tmp_path / "bad"), progress=False)
    status = json.load(open(tmp_path / "bad" / "status.json"))
    assert status["state"] == "failed" and "broken evaluator" in status["error"]


def test_every_learner_diverged_ends_diverged_not_failed(tmp_path):
    c = regression.get_config("smoke")
    c.vmapped.lr = (1e30, 1e31)
    c.num_seeds = 2
    s = irm.run(c, str(tmp_path / "div"), progress=False)
    status = json.load(open(tmp_path / "div" / "status.json"))
    assert status["state"] == "diverged" and s["num_diverged"] == 4
    again = irm.run(c, str(tmp_path / "div"), progress=False)  # a re-run says it is finished
    assert again["num_diverged"] == 4


def test_status_step_is_current_at_every_chunk(tmp_path):
    c = regression.get_config("smoke")
    d = str(tmp_path / "st")
    irm.run(c, d, progress=False, max_chunks=2)
    status = json.load(open(os.path.join(d, "status.json")))
    assert status["state"] == "preempted" and status["step"] == 2 * c.chunk_steps


# --- classifier on the core ---------------------------------------------------------------

def _classifier_config(**overrides):
    from irmx.configs.measures import noisy_classification

    c = noisy_classification.get_config("smoke")
    c.num_seeds = 1
    c.update_from_flattened_dict(overrides)
    return c


def test_classifier_killed_before_its_first_checkpoint_resumes(tmp_path):
    """Checkpoint 0 (the initialisation) exists when a run is stopped right after start: the
    re-run restores it instead of saving step 0 again (orbax StepAlreadyExistsError before)."""
    from irmx.experiments import classify

    c = _classifier_config()
    d = str(tmp_path / "early")
    assert classify.run(c, d, progress=False, max_chunks=0) == {}
    assert wd.read_json(os.path.join(d, "status.json"))["state"] == "preempted"
    s = classify.run(c, d, progress=False)
    assert wd.read_json(os.path.join(d, "status.json"))["state"] == "done"
    full = classify.run(c, str(tmp_path / "full"), progress=False)
    assert [r["test_accuracy"] for r in s["learners"]] == \
        [r["test_accuracy"] for r in full["learners"]]


def test_label_noise_and_weight_decay_are_vmappable_in_the_trainer():
    from irmx.experiments import classify

    c = _classifier_config(**{"vmapped.label_noise": (0.0, 0.5),
                              "vmapped.weight_decay": (0.0, 0.1)})
    program = classify.build_program(c)
    state, data = program.init()
    rows = program.axis.rows
    n = c.data.train_split
    for i, row in enumerate(rows):
        corrupted = np.asarray(data["corrupted"][i])
        assert corrupted.sum() == round(n * row["label_noise"])
        assert float(state.opt_state.hyperparams["weight_decay"][i]) == pytest.approx(
            row["weight_decay"])
    # learner (noise 0.5, wd 0.1) is a single run with those values as plain config
    single = _classifier_config(**{"data.label_noise": 0.5, "optim.weight_decay": 0.1})
    s_state, s_data = classify.build_program(single).init()
    np.testing.assert_array_equal(data["train_labels"][3], s_data["train_labels"][0])
    p = classify.build_program(c)
    for _ in range(2):
        state, _ = p.chunk(state, data)
    sp = classify.build_program(single)
    for _ in range(2):
        s_state, _ = sp.chunk(s_state, s_data)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(s_state.params)):
        np.testing.assert_allclose(np.asarray(a)[3], np.asarray(b)[0], rtol=1e-5, atol=1e-6)


def test_step_stream_is_separate_from_the_shuffle_stream():
    """The augmentation key of step t is not the permutation key of epoch t (both streams of
    the same seed used to be one)."""
    from irmx.experiments import classify

    program = classify.build_program(_classifier_config())
    state, data = program.init()
    assert not np.array_equal(np.asarray(state.key[0]), np.asarray(data["shuffle_key"][0]))
    assert np.array_equal(np.asarray(state.key[0]),
                          np.asarray(jax.random.key_data(rng.stream(42, "step"))))


def test_learner_data_is_the_same_inside_and_outside_init():
    from irmx.experiments import classify

    c = _classifier_config()
    program = classify.build_program(c)
    _, data = program.init()
    from irmx.data import images as images_lib

    pool_y = images_lib.load_image_data("digits")["train"][1]
    per = classify.learner_data(c, {"seed": jnp.uint32(42)}, jnp.asarray(pool_y), 10)
    np.testing.assert_array_equal(per["train_idx"], data["train_idx"][0])
    np.testing.assert_array_equal(per["train_labels"], data["train_labels"][0])


def test_remat_update_gives_the_same_hypergradient():
    """make_update(remat=True) (jax.checkpoint, for long unrolls) changes no numbers."""
    opt = optim.make_optimizer("sgd", 0.1, momentum=0.5, weight_decay=0.0)
    names = ("learning_rate", "weight_decay")
    x, y = jnp.asarray(X[:24], jnp.float32), jnp.asarray(Y[:24], jnp.float32)
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}

    def val_loss(values, remat):
        state = train.init_state(params, opt, jax.random.key(0), values, hyperparams=names)
        update = train.make_update(mse_loss, opt, hyperparams=names, remat=remat)
        state, _ = train.make_chunk(train.make_step(update), 10)(state, (x, y))
        return mse_loss(state.params, {}, (x, y), None, None)[0]

    values = {"learning_rate": jnp.float32(0.05), "weight_decay": jnp.float32(0.1)}
    plain = jax.jit(jax.grad(lambda v: val_loss(v, False)))(values)
    remat = jax.jit(jax.grad(lambda v: val_loss(v, True)))(values)
    for k in values:
        np.testing.assert_allclose(plain[k], remat[k], rtol=1e-6)


def test_sampled_axis_from_a_config_routes_to_the_optimizer():
    from irmx import config_checks

    c = regression.get_config("irmv1,smoke")
    c.sampled.num, c.sampled.lr = 3, (1e-3, 1e-1, "log")
    program = irm.build_program(c)
    assert program.axis.shape == (4, 3)
    want = learners.sample_values(c.seed, "lr", (1e-3, 1e-1, "log"), 3)
    np.testing.assert_allclose(program.axis.to_grid(program.axis.coords["lr"])[2], want)
    state, _ = program.init()
    np.testing.assert_allclose(state.opt_state.hyperparams["learning_rate"],
                               np.tile(want, 4), rtol=1e-6)
    c.sampled.lr = (0.1, 0.01)
    with pytest.raises(config_checks.ConfigError, match=r"config\.sampled\.lr=\(0\.1, 0\.01\)"):
        irm.build_program(c)


def test_zipped_axis_from_a_config():
    from irmx import config_checks

    c = regression.get_config("irmv1,smoke")
    c.num_seeds = 2
    c.zipped.lr, c.zipped.penalty_weight = (0.01, 0.1), (10.0, 100.0)
    program = irm.build_program(c)
    assert program.axis.shape == (2, 2)
    assert [(r["lr"], r["penalty_weight"]) for r in program.axis.rows[:2]] == [
        (0.01, 10.0), (0.1, 100.0)]
    state, _ = program.init()
    np.testing.assert_allclose(state.opt_state.hyperparams["penalty_weight"],
                               [10.0, 100.0, 10.0, 100.0])
    c.zipped.penalty_weight = (10.0,)
    with pytest.raises(config_checks.ConfigError, match="one length"):
        irm.build_program(c)
