"""IRM math against independent references: the IRMv1 penalty, the chain SEM, solution
metrics, gradient managers and per-term gradients, each a pure function under ``jax.jit``
compared with numpy (float64) or a closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irmx import train
from irmx.configs.irm.regression import get_config
from irmx.data import sem as sem_lib
from irmx.experiments import irm
from irmx.irm import criteria
from irmx.irm import gradient_managers as gm
from irmx.irm import metrics as irm_metrics
from irmx.irm.penalties import irmv1_penalty, mse
from irmx.nets import make_model

DIM, H = 10, 5
SIGMAS = (0.2, 2.0)
N_BIG = 200_000


def f64(a):
    return np.asarray(a, np.float64)


# ---------------------------------------------------------------------------------------------
# The IRMv1 penalty and the criteria built on it
# ---------------------------------------------------------------------------------------------


def test_irmv1_penalty_matches_hand_computed_mse_value():
    rs = np.random.RandomState(0)
    for n in (1, 7, 1000):
        f = rs.randn(n).astype(np.float32) * 2 + 0.5
        y = rs.randn(n).astype(np.float32) + f * 0.3
        got = jax.jit(irmv1_penalty)(f, y)
        want = (2.0 * np.mean((f64(f) - f64(y)) * f64(f))) ** 2
        np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-9)


def test_irmv1_penalty_uses_the_given_risk():
    # d/ds mean|s f - y| at s = 1 is mean(sign(f - y) f)
    rs = np.random.RandomState(1)
    f = rs.randn(500).astype(np.float32)
    y = rs.randn(500).astype(np.float32)
    mae = lambda p, t: jnp.mean(jnp.abs(p - t))
    got = jax.jit(lambda a, b: irmv1_penalty(a, b, risk_fn=mae))(f, y)
    want = np.mean(np.sign(f64(f) - f64(y)) * f64(f)) ** 2
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


def _linear_envs(seed=0, e=3, b=64, d=DIM):
    rs = np.random.RandomState(seed)
    x = rs.randn(e, b, d).astype(np.float32)
    y = (x @ rs.randn(d) + rs.randn(e, b)).astype(np.float32)
    w = (rs.randn(d) * 0.5).astype(np.float32)
    return x, y, w


def test_criteria_terms_and_metrics_match_numpy():
    x, y, w = _linear_envs()
    apply_fn = lambda p, xb: xb @ p
    pred = f64(x) @ f64(w)
    risks = np.mean((pred - f64(y)) ** 2, axis=1)
    pens = (2 * np.mean((pred - f64(y)) * pred, axis=1)) ** 2
    for name, want_terms in [
        ("erm", [risks.mean()]),
        ("erm_oracle", [risks.mean()]),
        ("irmv1", [risks.mean(), pens.sum()]),
    ]:
        fn = jax.jit(criteria.make_loss_terms(apply_fn, name))
        terms, m = fn(w, (x, y), None)
        np.testing.assert_allclose(f64(terms), want_terms, rtol=1e-5)
        np.testing.assert_allclose(f64(m["env_risks"]), risks, rtol=1e-5)
        np.testing.assert_allclose(float(m["risk"]), risks.mean(), rtol=1e-5)
        np.testing.assert_allclose(float(m["penalty"]), pens.sum(), rtol=1e-5)
    # input_projection multiplies the inputs first
    proj = np.diag(np.r_[np.ones(H), np.zeros(H)]).astype(np.float32)
    terms, _ = jax.jit(criteria.make_loss_terms(apply_fn, "erm", proj))(w, (x, y), None)
    want = np.mean((f64(x) @ f64(proj) @ f64(w) - f64(y)) ** 2)
    np.testing.assert_allclose(float(terms[0]), want, rtol=1e-5)
    with pytest.raises(ValueError, match=r"^make_loss_terms: criterion='nope' is invalid; "
                                         r"allowed: one of erm, erm_oracle, irmv1$"):
        criteria.make_loss_terms(apply_fn, "nope")


# ---------------------------------------------------------------------------------------------
# The chain SEM
# ---------------------------------------------------------------------------------------------


_sample = jax.jit(sem_lib.sample_environment)


@pytest.fixture(scope="module")
def big_envs():
    """Settings -> (sem, x_ExNxD, y_ExN) with many samples (statistical checks).

    Standard-normal noise from numpy, pushed through the (jitted) structural equations: no
    threefry compile per shape, and the same noise for every setting."""
    noise = np.random.RandomState(1).randn(len(SIGMAS), 4, N_BIG, H).astype(np.float32)
    cache = {}

    def get(setting):
        if setting not in cache:
            with jax.threefry_partitionable(True):  # the SEM this fixture was written for
                sem = sem_lib.make_chain_sem(jax.random.key(0), DIM, setting)
            xs, ys = zip(*(_sample(sem, noise[e], np.float32(s)) for e, s in enumerate(SIGMAS)),
                          strict=True)
            cache[setting] = (sem, f64(jnp.stack(xs)), f64(jnp.stack(ys)))
        return cache[setting]

    return get


def _e_and_se(values):
    """Sample mean and its standard error."""
    return values.mean(), values.std() / np.sqrt(values.size)


@pytest.mark.parametrize("setting", ["FEU", "FES", "FOU", "FOS"])
def test_causal_solution_has_zero_penalty_and_erm_does_not(setting, big_envs):
    """Fully observed: y - x w* is noise independent of X, so E_e[(f - y) f] = 0 in every
    environment; the pooled least-squares solution uses Z and is penalised."""
    sem, x, y = big_envs(setting)
    w_causal = f64(sem_lib.causal_solution(sem))
    w_erm = np.linalg.lstsq(x.reshape(-1, DIM), y.reshape(-1), rcond=None)[0]
    pen = jax.jit(jax.vmap(irmv1_penalty))
    p_causal = f64(pen(jnp.asarray(x @ w_causal, jnp.float32), jnp.asarray(y, jnp.float32)))
    p_erm = f64(pen(jnp.asarray(x @ w_erm, jnp.float32), jnp.asarray(y, jnp.float32)))
    for e in range(len(SIGMAS)):
        f = x[e] @ w_causal
        m, se = _e_and_se((f - y[e]) * f)
        assert abs(m) < 5 * se, (e, m, se)  # zero up to sampling error
        np.testing.assert_allclose(p_causal[e], 4 * m**2, rtol=1e-3, atol=1e-7)
        assert p_erm[e] > 1.0 and p_causal[e] < 1e-2 * p_erm[e], (p_causal, p_erm)
    # at the pooled least-squares solution the per-environment gradients cancel (equal n):
    # E_1[(f - y) f] = -E_2[(f - y) f], so both environments have the same penalty
    np.testing.assert_allclose(p_erm[0], p_erm[1], rtol=1e-3)


@pytest.mark.parametrize("setting", ["PEU", "PES", "POU"])
def test_causal_solution_penalty_with_hidden_confounding(setting, big_envs):
    """Partially observed: H drives X and Y, so the causal solution is *not* exactly invariant:
    E_e[(f - y) f] = -sigma^2 (W_hx 1) . (W_hy 1), penalty 4 sigma^4 ((W_hx 1).(W_hy 1))^2.
    It stays well below the ERM solution's penalty."""
    sem, x, y = big_envs(setting)
    w_causal = f64(sem_lib.causal_solution(sem))
    w_erm = np.linalg.lstsq(x.reshape(-1, DIM), y.reshape(-1), rcond=None)[0]
    c = f64(sem.w_hx).sum(1) @ f64(sem.w_hy).sum(1)
    for e, sigma in enumerate(SIGMAS):
        f = x[e] @ w_causal
        m, se = _e_and_se((f - y[e]) * f)
        assert abs(m - (-(sigma**2) * c)) < 5 * se, (m, -(sigma**2) * c, se)
        p = float(jax.jit(irmv1_penalty)(jnp.asarray(f, jnp.float32),
                                         jnp.asarray(y[e], jnp.float32)))
        p_erm = float(irmv1_penalty(jnp.asarray(x[e] @ w_erm), jnp.asarray(y[e])))
        assert p < 0.2 * p_erm
    # sigma = 2: the confounding term is resolved (well beyond the sampling error)
    f = x[1] @ w_causal
    m, se = _e_and_se((f - y[1]) * f)
    assert abs(4 * c) > 5 * se


@pytest.mark.parametrize("setting", sem_lib.SETTINGS)
def test_sem_weights_follow_the_setting(setting):
    sem = sem_lib.make_chain_sem(jax.random.key(3), DIM, setting)
    assert sem.hetero == (setting[1] == "E")
    eye = np.eye(H)
    np.testing.assert_array_equal(f64(sem.w_xy), eye)
    np.testing.assert_array_equal(f64(sem.w_yz), eye)
    s = f64(sem.scramble)
    assert s.shape == (DIM, DIM)
    np.testing.assert_allclose(s.T @ s, np.eye(DIM), atol=1e-5)  # orthogonal
    if setting[2] == "U":
        np.testing.assert_array_equal(s, np.eye(DIM))
    else:
        assert np.abs(s - np.eye(DIM)).max() > 0.1
    if setting[0] == "F":
        np.testing.assert_array_equal(f64(sem.w_hx), eye)
        np.testing.assert_array_equal(f64(sem.w_hy), 0 * eye)
        np.testing.assert_array_equal(f64(sem.w_hz), 0 * eye)
    else:
        w = np.stack([f64(sem.w_hx), f64(sem.w_hy), f64(sem.w_hz)]) * DIM  # N(0, 1) entries
        assert 0.5 < w.std() < 1.5 and abs(w.mean()) < 0.5
        assert not np.allclose(f64(sem.w_hx), f64(sem.w_hy))
    # w* = S^T [1, ..., 1, 0, ..., 0]
    ones_zeros = np.r_[np.ones(H), np.zeros(H)]
    np.testing.assert_allclose(f64(sem_lib.causal_solution(sem)), s.T @ ones_zeros, atol=1e-6)
    np.testing.assert_array_equal(f64(sem_lib.causal_mask(DIM)), ones_zeros)


@pytest.mark.parametrize("setting", ["FEU", "FOS", "PEU", "POS"])
def test_sample_environment_matches_numpy_equations(setting):
    """The structural equations written out in numpy from the given standard-normal noise."""
    sem = sem_lib.make_chain_sem(jax.random.key(4), DIM, setting)
    n, sigma = 50, 1.7
    noise = np.random.RandomState(5).randn(4, n, H).astype(np.float32)
    x_in, target = _sample(sem, noise, np.float32(sigma))
    e_h, e_x, e_y, e_z = f64(noise)
    hid = sigma * e_h
    xs = hid @ f64(sem.w_hx) + sigma * e_x
    y_scale, z_scale = (sigma, 1.0) if setting[1] == "E" else (1.0, sigma)
    ys = xs + hid @ f64(sem.w_hy) + y_scale * e_y
    zs = ys + hid @ f64(sem.w_hz) + z_scale * e_z
    assert x_in.shape == (n, DIM) and target.shape == (n,)
    np.testing.assert_allclose(f64(x_in), np.concatenate([xs, zs], 1) @ f64(sem.scramble),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f64(target), ys.sum(1), rtol=1e-5, atol=1e-5)


def test_make_environments_shapes_and_independent_draws():
    sem = sem_lib.make_chain_sem(jax.random.key(0), DIM, "FEU")
    x, y = sem_lib.make_environments(jax.random.key(1), sem, 123, (0.2, 2.0, 5.0))
    assert x.shape == (3, 123, DIM) and y.shape == (3, 123)
    assert x.dtype == jnp.float32 and y.dtype == jnp.float32
    # unscrambled, fully observed: inputs' first half is X with std sigma * sqrt(2)
    stds = f64(x[:, :, :H]).std(axis=(1, 2))
    np.testing.assert_allclose(stds / np.sqrt(2), (0.2, 2.0, 5.0), rtol=0.15)


@pytest.mark.parametrize("setting", ["FEU", "FOU"])
def test_noise_scales_hetero_vs_homo(setting, big_envs):
    """FxU: inputs = [X, Z], target = sum Y. The target's residual r = target - sum X is the
    Y noise: var(r) / h = s_y^2 (sigma^2 hetero 'E', 1 homo 'O'); Z_j - X_j = Y noise_j + Z
    noise_j, so var(Z_j - X_j) - cov(Z_j - X_j, r) = s_z^2 (1 'E', sigma^2 'O')."""
    _, x, y = big_envs(setting)
    for e, sigma in enumerate(SIGMAS):
        xs, zs = x[e][:, :H], x[e][:, H:]
        r = y[e] - xs.sum(1)
        s_y2, s_z2 = (sigma**2, 1.0) if setting[1] == "E" else (1.0, sigma**2)
        np.testing.assert_allclose(r.var() / H, s_y2, rtol=0.03)
        np.testing.assert_allclose(xs.var(0), 2 * sigma**2, rtol=0.03)  # X = H + noise
        d = zs - xs
        cov_dr = ((d - d.mean(0)) * (r - r.mean())[:, None]).mean(0)
        np.testing.assert_allclose(cov_dr, s_y2, rtol=0.05, atol=0.02)
        np.testing.assert_allclose(d.var(0) - cov_dr, s_z2, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("setting", ["FEU", "FOU"])
def test_pooled_least_squares_matches_population_closed_form(setting, big_envs):
    """Per coordinate, with s = mean_e sigma_e^2: ERM's population weights are
    (w_x, w_z) = (1/(s+1), s/(s+1)) for FEU and (s/(s+1), 1/(s+1)) for FOU."""
    _, x, y = big_envs(setting)
    w = np.linalg.lstsq(x.reshape(-1, DIM), y.reshape(-1), rcond=None)[0]
    s = np.mean(np.square(SIGMAS))
    wx, wz = (1 / (s + 1), s / (s + 1)) if setting == "FEU" else (s / (s + 1), 1 / (s + 1))
    np.testing.assert_allclose(w[:H], wx, atol=0.01)
    np.testing.assert_allclose(w[H:], wz, atol=0.01)


# ---------------------------------------------------------------------------------------------
# Solution metrics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["FEU", "PES"])
def test_solution_errors_match_numpy(setting):
    sem = sem_lib.make_chain_sem(jax.random.key(7), DIM, setting)
    w_hat = np.random.RandomState(8).randn(DIM).astype(np.float32)
    got = jax.jit(irm_metrics.solution_errors)(sem, w_hat)
    u = f64(sem.scramble) @ f64(w_hat)  # unscrambled basis: inputs @ w = [X, Z] @ (S w)
    np.testing.assert_allclose(float(got["causal_error"]), np.mean((u[:H] - 1) ** 2), rtol=1e-5)
    np.testing.assert_allclose(float(got["noncausal_error"]), np.mean(u[H:] ** 2), rtol=1e-5)
    if setting[2] == "U":  # the IRM reference's errors(w, w_hat): index by w != 0 / w == 0
        w = np.r_[np.ones(H), np.zeros(H)]
        np.testing.assert_allclose(float(got["causal_error"]),
                                   np.mean((w[w != 0] - f64(w_hat)[w != 0]) ** 2), rtol=1e-5)
        np.testing.assert_allclose(float(got["noncausal_error"]),
                                   np.mean((w[w == 0] - f64(w_hat)[w == 0]) ** 2), rtol=1e-5)
    zero = jax.jit(irm_metrics.solution_errors)(sem, sem_lib.causal_solution(sem))
    assert float(zero["causal_error"]) < 1e-10 and float(zero["noncausal_error"]) < 1e-10


def _init(model, seed=0, d=DIM):
    return model.init(jax.random.key(seed), jnp.ones((1, d)))


def test_effective_solution_of_linear_models_is_their_weight_vector():
    x = np.random.RandomState(9).randn(40, DIM).astype(np.float32)
    eff = jax.jit(irm_metrics.effective_solution, static_argnums=0)
    lin = make_model("linear", use_bias=True)
    p = _init(lin)
    p = jax.tree.map(lambda a: a + 0.3, p)  # nonzero bias
    np.testing.assert_allclose(f64(eff(lin.apply, p, x)),
                               f64(p["params"]["Dense_0"]["kernel"][:, 0]), rtol=1e-6)
    phi = make_model("phi_w")
    p = {"params": {"phi": jnp.asarray(np.random.RandomState(10).randn(DIM, DIM), jnp.float32)}}
    np.testing.assert_allclose(f64(eff(phi.apply, p, x)), f64(p["params"]["phi"]).sum(1),
                               rtol=1e-5, atol=1e-6)


def test_effective_solution_of_mlp_is_mean_input_gradient():
    mlp = make_model("mlp", hidden=(16,))
    p = _init(mlp, seed=2)
    x = np.random.RandomState(11).randn(64, DIM).astype(np.float32)
    eff = jax.jit(irm_metrics.effective_solution, static_argnums=0)(mlp.apply, p, x)
    w1 = f64(p["params"]["Dense_0"]["kernel"])
    b1 = f64(p["params"]["Dense_0"]["bias"])
    w2 = f64(p["params"]["Dense_1"]["kernel"])[:, 0]
    active = (f64(x) @ w1 + b1 > 0).astype(np.float64)  # relu'
    want = ((active * w2) @ w1.T).mean(0)
    np.testing.assert_allclose(f64(eff), want, rtol=1e-4, atol=1e-6)


def test_evaluate_matches_numpy_with_projection():
    sem = sem_lib.make_chain_sem(jax.random.key(12), DIM, "FES")
    rs = np.random.RandomState(13)
    x = rs.randn(1, 300, DIM).astype(np.float32) * 5
    y = (x @ rs.randn(DIM) + rs.randn(1, 300)).astype(np.float32)
    lin = make_model("linear", use_bias=False)
    p = _init(lin, seed=3)
    proj = np.diag(np.r_[np.ones(H), np.zeros(H)]).astype(np.float32)
    out = jax.jit(irm_metrics.evaluate, static_argnums=0)(lin.apply, p, sem, (x[0], y[0]), proj)
    w = f64(p["params"]["Dense_0"]["kernel"][:, 0])
    w_eff = f64(proj) @ w
    np.testing.assert_allclose(f64(out["solution"]), w_eff, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(out["heldout_mse"]),
                               np.mean((f64(x[0]) @ w_eff - f64(y[0])) ** 2), rtol=1e-5)
    u = f64(sem.scramble) @ w_eff
    np.testing.assert_allclose(float(out["noncausal_error"]), np.mean(u[H:] ** 2), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Gradient managers
# ---------------------------------------------------------------------------------------------


def _stacked_grads(seed):
    """A 2-leaf pytree with a leading term axis of 2: (g_e, g_p)."""
    rs = np.random.RandomState(seed)
    return {
        "kernel": jnp.asarray(rs.randn(2, DIM, 1), jnp.float32),
        "bias": jnp.asarray(rs.randn(2, 1) * 3, jnp.float32),
    }


def _params():
    return {"kernel": jnp.zeros((DIM, 1)), "bias": jnp.zeros((1,))}


def _run(tx, grads_list):
    """Apply ``tx`` to a sequence of stacked gradients; outputs and states per step (jit)."""
    update = jax.jit(tx.update)
    state = tx.init(_params())
    outs, states = [], []
    for g in grads_list:
        out, state = update(g, state)
        outs.append(jax.tree.map(f64, out))
        states.append(state)
    return outs, states


def _assert_tree_close(got, want, rtol=1e-5, atol=1e-6):
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def test_weighted_sum_annealing_and_rescaling():
    grads = [_stacked_grads(s) for s in range(5)]
    np_g = [jax.tree.map(f64, g) for g in grads]
    # lambda = 1 for the first anneal_steps steps, then penalty_weight; divided by lambda > 1
    outs, states = _run(gm.weighted_sum(10.0, anneal_steps=2), grads)
    for t, (out, st, g) in enumerate(zip(outs, states, np_g, strict=True)):
        lam = 1.0 if t < 2 else 10.0
        want = {k: (v[0] + lam * v[1]) / max(lam, 1.0) for k, v in g.items()}
        _assert_tree_close(out, want)
        assert float(st.penalty_weight) == lam and int(st.count) == t + 1
    # rescale=False: plain g_e + lambda g_p
    outs, _ = _run(gm.weighted_sum(10.0, anneal_steps=2, rescale=False), grads)
    for t, (out, g) in enumerate(zip(outs, np_g, strict=True)):
        lam = 1.0 if t < 2 else 10.0
        _assert_tree_close(out, {k: v[0] + lam * v[1] for k, v in g.items()})
    # lambda < 1 is never rescaled
    outs, _ = _run(gm.weighted_sum(0.25, anneal_steps=1), grads)
    for t, (out, g) in enumerate(zip(outs, np_g, strict=True)):
        lam = 1.0 if t < 1 else 0.25
        _assert_tree_close(out, {k: v[0] + lam * v[1] for k, v in g.items()})
    # convex mixing: r g_e + (1 - r) g_p from the first step (no annealing, no rescaling)
    outs, states = _run(gm.convex_mix(0.3), grads)
    for t, (out, st, g) in enumerate(zip(outs, states, np_g, strict=True)):
        _assert_tree_close(out, {k: 0.3 * v[0] + 0.7 * v[1] for k, v in g.items()})
        assert int(st.count) == t + 1


def _np_norms(g, per_tensor):
    if per_tensor:
        return ({k: np.linalg.norm(v[0]) for k, v in g.items()},
                {k: np.linalg.norm(v[1]) for k, v in g.items()})
    ne = np.sqrt(sum(np.sum(v[0] ** 2) for v in g.values()))
    np_ = np.sqrt(sum(np.sum(v[1] ** 2) for v in g.values()))
    return ne, np_


@pytest.mark.parametrize("per_tensor", [False, True])
def test_adareg_lambda_is_alpha_times_norm_ratio(per_tensor):
    alpha, eps = 0.7, 0.05  # a large eps checks where it enters: alpha ||g_e|| / (||g_p|| + eps)
    grads = [_stacked_grads(s) for s in (20, 21)]
    outs, states = _run(gm.adareg(alpha, 0.0, eps, per_tensor=per_tensor), grads)
    for out, st, g in zip(outs, states, [jax.tree.map(f64, g) for g in grads], strict=True):
        ne, np_ = _np_norms(g, per_tensor)
        if per_tensor:
            lam = {k: alpha * ne[k] / (np_[k] + eps) for k in g}
            want = {k: v[0] + lam[k] * v[1] for k, v in g.items()}
            for k in g:
                np.testing.assert_allclose(float(st.penalty_weight[k]), lam[k], rtol=1e-5)
            assert lam["kernel"] != pytest.approx(lam["bias"], rel=1e-2)  # really per tensor
        else:
            lam = alpha * ne / (np_ + eps)
            want = {k: v[0] + lam * v[1] for k, v in g.items()}
            np.testing.assert_allclose(float(st.penalty_weight), lam, rtol=1e-5)
        _assert_tree_close(out, want)
        # the penalty's share: ||lambda g_p|| = alpha ||g_e|| ||g_p|| / (||g_p|| + eps)
        if not per_tensor:
            np.testing.assert_allclose(lam * np_, alpha * ne * np_ / (np_ + eps), rtol=1e-12)


@pytest.mark.parametrize("per_tensor", [False, True])
def test_soft_adareg_bias_corrected_ema(per_tensor):
    alpha, beta, eps = 2.0, 0.9, 1e-8
    grads = [_stacked_grads(s) for s in (30, 31, 32)]
    outs, states = _run(gm.adareg(alpha, beta, eps, per_tensor=per_tensor), grads)
    keys = ("kernel", "bias") if per_tensor else (None,)
    m_e = {k: 0.0 for k in keys}
    m_p = {k: 0.0 for k in keys}
    np_grads = [jax.tree.map(f64, g) for g in grads]
    for t, (out, st, g) in enumerate(zip(outs, states, np_grads, strict=True), 1):
        ne, np_ = _np_norms(g, per_tensor)
        if not per_tensor:
            ne, np_ = {None: ne}, {None: np_}
        lam = {}
        for k in keys:
            m_e[k] = beta * m_e[k] + (1 - beta) * ne[k]
            m_p[k] = beta * m_p[k] + (1 - beta) * np_[k]
            debias = 1 - beta**t
            lam[k] = alpha * (m_e[k] / debias) / (m_p[k] / debias + eps)
        if per_tensor:
            want = {k: v[0] + lam[k] * v[1] for k, v in g.items()}
            for k in keys:
                np.testing.assert_allclose(float(st.penalty_weight[k]), lam[k], rtol=1e-5)
                np.testing.assert_allclose(float(st.norm_erm[k]), m_e[k], rtol=1e-5)
        else:
            want = {k: v[0] + lam[None] * v[1] for k, v in g.items()}
            np.testing.assert_allclose(float(st.penalty_weight), lam[None], rtol=1e-5)
            np.testing.assert_allclose(float(st.norm_erm), m_e[None], rtol=1e-5)
            np.testing.assert_allclose(float(st.norm_penalty), m_p[None], rtol=1e-5)
        _assert_tree_close(out, want)
    # the EMA differs from the hard version after the first step
    hard_lam = alpha * _np_norms(jax.tree.map(f64, grads[2]), False)[0] / (
        _np_norms(jax.tree.map(f64, grads[2]), False)[1] + eps)
    if not per_tensor:
        assert abs(float(states[2].penalty_weight) - hard_lam) > 1e-3


@pytest.mark.parametrize("variant,manager", [
    ("base_erm", "sum"), ("irmv1", "weighted"), ("irmv1,convex", "convex"),
    ("adareg_simple", "adareg"), ("adareg", "adareg"), ("soft_adareg", "adareg"),
])
def test_make_optimizer_wiring_matches_numpy(variant, manager):
    """Config -> chain(combiner, sgd): each update is -lr times the combined gradient (two steps:
    the second tells hard AdaReg (current norms) from soft AdaReg (EMA of norms) apart)."""
    name, *extra = variant.split(",")
    c = get_config(name)
    c.optim.name, c.optim.lr = "sgd", 0.5
    c.criterion.anneal_steps = 0
    if extra:
        c.criterion.mixing, c.criterion.erm_weight = "convex", 0.2
    c.gradient_manager.eps = 0.1
    tx = irm.make_optimizer(c)
    update = jax.jit(tx.update)
    state = tx.init(_params())
    pw, alpha = c.criterion.penalty_weight, c.gradient_manager.alpha
    m = c.gradient_manager
    beta = m.beta if m.name == "soft_adareg" else 0.0
    ema_e = ema_p = 0.0
    for t, seed in enumerate((40, 41), 1):
        g = _stacked_grads(seed)
        out, state = update(g, state)
        g = jax.tree.map(f64, g)
        if manager == "sum":
            want = {k: v[0] + v[1] for k, v in g.items()}
        elif manager == "weighted":
            want = {k: (v[0] + pw * v[1]) / pw for k, v in g.items()}
        elif manager == "convex":
            r = c.criterion.erm_weight
            want = {k: r * v[0] + (1 - r) * v[1] for k, v in g.items()}
        else:
            ne, np_ = _np_norms(g, m.per_tensor)
            if not m.per_tensor:
                ne, np_ = {k: ne for k in g}, {k: np_ for k in g}
            ema_e = {k: beta * (ema_e[k] if t > 1 else 0.0) + (1 - beta) * ne[k] for k in g}
            ema_p = {k: beta * (ema_p[k] if t > 1 else 0.0) + (1 - beta) * np_[k] for k in g}
            d = 1 - beta**t
            want = {k: v[0] + alpha * (ema_e[k] / d) / (ema_p[k] / d + 0.1) * v[1]
                    for k, v in g.items()}
        _assert_tree_close(jax.tree.map(lambda a: -f64(a) / 0.5, out), want, rtol=1e-4)
    assert float(state.hyperparams["learning_rate"]) == 0.5  # an injected, vmappable value


# ---------------------------------------------------------------------------------------------
# Per-term gradients
# ---------------------------------------------------------------------------------------------


def test_term_gradients_equal_separate_grads_and_closed_form():
    x, y, w = _linear_envs(seed=3, e=2, b=50)
    lin = make_model("linear", use_bias=True)
    params = jax.tree.map(lambda a: a + 0.1, _init(lin, seed=4))
    loss_terms = criteria.make_loss_terms(lin.apply, "irmv1")
    terms, grads, metrics = jax.jit(
        lambda p: train.term_gradients(loss_terms, p, (x, y), None))(params)
    assert terms.shape == (2,)
    for t in range(2):
        sep = jax.jit(jax.grad(lambda p, t=t: loss_terms(p, (x, y), None)[0][t]))(params)
        jax.tree.map(lambda a, b, t=t: np.testing.assert_allclose(f64(a[t]), f64(b), rtol=1e-5,
                                                                  atol=1e-6), grads, sep)
    # closed form for f = x w + b: risk = mean_e mean (f - y)^2, penalty = sum_e 4 m_e^2 with
    # m_e = mean (f - y) f, dm_e = mean (2 f - y) [x, 1]
    wk = f64(params["params"]["Dense_0"]["kernel"][:, 0])
    b = float(params["params"]["Dense_0"]["bias"][0])
    xe, ye = f64(x), f64(y)
    f = xe @ wk + b
    xa = np.concatenate([xe, np.ones(xe.shape[:2] + (1,))], -1)
    g_risk = np.mean([2 * np.mean((f[e] - ye[e])[:, None] * xa[e], 0) for e in range(2)], 0)
    g_pen = sum(8 * np.mean((f[e] - ye[e]) * f[e]) * np.mean((2 * f[e] - ye[e])[:, None] * xa[e], 0)
                for e in range(2))
    got = grads["params"]["Dense_0"]
    np.testing.assert_allclose(f64(got["kernel"][0, :, 0]), g_risk[:DIM], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f64(got["bias"][0, 0]), g_risk[DIM], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f64(got["kernel"][1, :, 0]), g_pen[:DIM], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f64(got["bias"][1, 0]), g_pen[DIM], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(metrics["risk"]), float(terms[0]), rtol=1e-6)


def test_term_gradients_three_nonlinear_terms():
    def loss_terms(p, a):
        u, v = p["u"], p["v"]
        return jnp.stack([jnp.sum(u**2) * v, jnp.sum(jnp.sin(u * a)), jnp.exp(v) * u[0]]), {}

    p = {"u": jnp.array([0.3, -1.2, 2.0]), "v": jnp.array(0.7)}
    a = jnp.array([1.0, 2.0, -0.5])
    terms, grads, _ = jax.jit(lambda q: train.term_gradients(loss_terms, q, a))(p)
    assert grads["u"].shape == (3, 3) and grads["v"].shape == (3,)
    u, v, an = f64(p["u"]), 0.7, f64(a)
    want_u = [2 * u * v, an * np.cos(u * an), np.array([np.exp(v), 0, 0])]
    want_v = [np.sum(u**2), 0.0, np.exp(v) * u[0]]
    np.testing.assert_allclose(f64(grads["u"]), np.stack(want_u), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f64(grads["v"]), want_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f64(terms), [np.sum(u**2) * v, np.sum(np.sin(u * an)),
                                            np.exp(v) * u[0]], rtol=1e-5)


def test_mse_is_mean_squared_error():
    rs = np.random.RandomState(0)
    a, b = rs.randn(2, 33).astype(np.float32)
    np.testing.assert_allclose(float(jax.jit(mse)(a, b)), np.mean((f64(a) - f64(b)) ** 2),
                               rtol=1e-6)
