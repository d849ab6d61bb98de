"""irmx.measures against independent references.

References: per-sample dense Jacobians from ``jax.jacfwd`` of a normalized output written out
here (not the library's ``make_output_fn``), reduced in float64 by ``numpy.linalg.svd`` /
``numpy.linalg.norm``; accuracy / cross-entropy / confidence in plain numpy.

Tolerances (relative): exact modes (per_output, bigmem) 1e-5; matrix_free operator norm
(Lanczos) at the default tol 1e-4 (and a lower bound); ``seed_compat`` against a numpy
re-implementation of the seed's loop from the same start vectors, 1e-4; Hutchinson's mean
within 5 standard errors of the exact squared norm and its sample variance within [0.6, 1.6]
of the stated formula.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irmx import measures
from irmx.errors import ArgumentError

K = 10
B = 5


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = jnp.tanh(nn.Dense(32)(x))
        return nn.Dense(K)(x)


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
        return nn.Dense(K)(x.reshape(x.shape[0], -1))


NETS = {"mlp": MLP(), "conv": ConvNet()}


def _setup(net_name, seed=0, batch=B):
    net = NETS[net_name]
    x = jax.random.normal(jax.random.key(100 + seed), (batch, 8, 8, 1))
    y = jnp.arange(batch) % K
    params = net.init(jax.random.key(seed), x)
    return net.apply, params, x, y


def _reference_jacobians(apply_fn, params, x, y, normalization, target_logit_only=False):
    """Dense per-sample Jacobians (B x K' x D, float64) by jacfwd of the normalized output."""

    def g(xi, yi):
        z = apply_fn(params, xi[None])[0]
        if normalization == "softmax":
            z = jax.nn.softmax(z)
        elif normalization == "logsoftmax":
            z = jax.nn.log_softmax(z)
        elif normalization == "crossentropy":
            z = -jax.nn.log_softmax(z)[yi][None]
        if target_logit_only:
            z = z[yi][None]
        return z

    jacs = np.asarray(jax.jit(jax.vmap(jax.jacfwd(g)))(x, y), np.float64)  # one jacfwd per sample
    return jacs.reshape(jacs.shape[0], jacs.shape[1], -1)


def _ref_norms(jacs):
    fro = np.linalg.norm(jacs.reshape(jacs.shape[0], -1), axis=1)
    op = np.array([np.linalg.svd(j, compute_uv=False)[0] for j in jacs])
    return {"jacobian": fro, "jacobian_operator_norm": op}


def _run(name, apply_fn, params, x, y, key=None, **options):
    fn = jax.jit(measures.make_metric_fn(name, apply_fn, **options))
    return jax.tree.map(np.asarray, fn(params, x, y, key))


def _run_all(specs, apply_fn, params, x, y, key=None):
    """Several (name, options) metrics in one jitted program (one compilation, fast tests)."""
    fns = [measures.make_metric_fn(name, apply_fn, **options) for name, options in specs]
    outs = jax.jit(lambda p, x, y, k: [fn(p, x, y, k) for fn in fns])(params, x, y, key)
    return [jax.tree.map(np.asarray, out) for out in outs]


@pytest.mark.parametrize("net_name", ["mlp", "conv"])
@pytest.mark.parametrize("normalization", ["none", "softmax", "logsoftmax", "crossentropy"])
def test_exact_modes_match_dense_reference(net_name, normalization):
    apply_fn, params, x, y = _setup(net_name)
    ref = _ref_norms(_reference_jacobians(apply_fn, params, x, y, normalization))
    specs = [
        (name, dict(normalization=normalization, mode=mode))
        for name in ("jacobian", "jacobian_operator_norm")
        for mode in ("per_output", "bigmem")
    ]
    outs = _run_all(specs, apply_fn, params, x, y)
    for (name, options), out in zip(specs, outs, strict=True):
        assert out["values"].shape == (B,)
        assert out["converged"] is None and out["iterations"] is None
        np.testing.assert_allclose(out["values"], ref[name], rtol=1e-5, err_msg=str(options))


@pytest.mark.parametrize("net_name", ["mlp", "conv"])
@pytest.mark.parametrize("normalization", ["none", "softmax", "logsoftmax", "crossentropy"])
def test_matrix_free_operator_norm(net_name, normalization):
    apply_fn, params, x, y = _setup(net_name)
    exact = _ref_norms(_reference_jacobians(apply_fn, params, x, y, normalization))
    exact = exact["jacobian_operator_norm"]
    key = jax.random.key(7)
    specs = [("jacobian_operator_norm", dict(normalization=normalization, mode="matrix_free"))]
    (out,) = _run_all(specs, apply_fn, params, x, y, key)
    assert measures.default_mode("jacobian_operator_norm") == "matrix_free"  # K unknown
    assert measures.default_mode("jacobian_operator_norm", 10) == "per_output"  # K vjps cheaper
    assert measures.default_mode("jacobian_operator_norm", 100) == "matrix_free"
    assert measures.default_mode("jacobian", 100) == "per_output"
    assert out["converged"].dtype == bool and out["converged"].all()
    assert out["iterations"].shape == (B,) and (out["iterations"] >= 1).all()
    np.testing.assert_allclose(out["values"], exact, rtol=1e-4)
    assert (out["values"] <= exact * (1 + 1e-5)).all()  # Ritz values approach from below


@pytest.mark.parametrize("net_name, normalizations",
                         [("mlp", ("none", "softmax", "logsoftmax")), ("conv", ("softmax",))])
def test_target_logit_only(net_name, normalizations):
    apply_fn, params, x, y = _setup(net_name)
    for normalization in normalizations:
        jacs = _reference_jacobians(apply_fn, params, x, y, normalization, True)
        assert jacs.shape[1] == 1  # 1 x D: the gradient of the target output
        grad_norm = np.linalg.norm(jacs[:, 0], axis=1)
        specs = [
            (name, dict(normalization=normalization, mode=mode, target_logit_only=True))
            for name in ("jacobian", "jacobian_operator_norm")
            for mode in measures.MODES
        ]
        outs = _run_all(specs, apply_fn, params, x, y)
        for (name, options), out in zip(specs, outs, strict=True):
            np.testing.assert_allclose(out["values"], grad_norm, rtol=1e-5,
                                       err_msg=f"{name} {options}")


def test_classification_metrics_match_numpy():
    apply_fn, params, x, _ = _setup("conv", batch=8)
    logits = np.asarray(apply_fn(params, x), np.float64)
    y = np.array([int(np.argmax(logits[0])), 1, 2, 3, 4, 5, 6, 7])
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    p = np.exp(logp)
    onehot = np.eye(K)[y]
    want = {
        "accuracy": (logits.argmax(1) == y).astype(float),
        "crossentropy": -logp[np.arange(8), y],
        "confidence": np.linalg.norm(onehot - p, axis=1),
    }
    assert want["accuracy"][0] == 1.0
    specs = [(name, {}) for name in want]
    outs = _run_all(specs, apply_fn, params, x, jnp.asarray(y))
    for (name, _), out in zip(specs, outs, strict=True):
        ref = want[name]
        np.testing.assert_allclose(out["values"], ref, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(measures.batch_mean(out), ref.mean(), rtol=1e-5, atol=1e-6)


def _linear_apply(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"].T


def _linear_params(singular_values, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    k = len(singular_values)
    u, _ = np.linalg.qr(rng.normal(size=(k, k)))
    v, _ = np.linalg.qr(rng.normal(size=(dim, k)))
    return {"w": jnp.asarray(u @ np.diag(singular_values) @ v.T, jnp.float32)}, u


def _near_orthogonal_start(u1, batch, block, component, seed=3):
    """Start blocks whose first column has only ``component`` along u1 (the top left singular
    vector); the other columns Gaussian."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(batch, u1.size, block))
    first = g[:, :, 0] - np.outer(g[:, :, 0] @ u1, u1)
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    g[:, :, 0] = np.sqrt(1 - component**2) * first + component * u1
    return jnp.asarray(g, jnp.float32)


@functools.cache
def _lanczos_jit(options):
    def fn(params, x, key, start):
        out_fn = lambda x_: _linear_apply(params, x_)
        return measures.lanczos_operator_norm(out_fn, x, key, start_BxKxb=start, **dict(options))

    return jax.jit(fn)


def _lanczos(params, x, start=None, **options):
    """lanczos_operator_norm of the linear net, compiled once per options and shapes."""
    fn = _lanczos_jit(tuple(sorted(options.items())))
    return [np.asarray(a) for a in fn(params, x, jax.random.key(2), start)]


@pytest.mark.parametrize("k_out", [10, 40])
def test_lanczos_near_degenerate_top_and_near_orthogonal_start(k_out):
    # sigma_2 / sigma_1 = 0.99; 8 samples whose first start vector has a 1e-6 component along
    # the top singular vector (power iteration stopped near sigma_2 there and reported
    # convergence), 120 with Gaussian starts: within tolerance or flagged, never wrong and
    # converged.
    rng = np.random.default_rng(k_out)
    sv = np.concatenate([[1.0, 0.99], np.sort(rng.uniform(0.0, 0.9, k_out - 2))[::-1]])
    params, u = _linear_params(sv, dim=80)
    dense = np.linalg.svd(np.asarray(params["w"], np.float64), compute_uv=False)[0]
    start = np.concatenate([_near_orthogonal_start(u[:, 0], 8, 2, 1e-6),
                            rng.normal(size=(120, k_out, 2))]).astype(np.float32)
    sigma, converged, iters = _lanczos(params, jnp.zeros((128, 80)), start, tol=1e-4)
    assert converged.all() and (iters <= -(-k_out // 2)).all()
    np.testing.assert_allclose(sigma, dense, rtol=1e-4)


def test_lanczos_finds_a_top_direction_missing_from_the_krylov_space():
    # Every start vector exactly orthogonal to the top singular vector: the Krylov space is
    # invariant without it, the basis restarts from coordinate vectors and, at K columns,
    # Rayleigh-Ritz is exact (converged by exhaustion).
    sv = np.array([1.0, 0.99, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01])
    params, u = _linear_params(sv)
    x = jnp.zeros((4, 64))
    start = _near_orthogonal_start(u[:, 0], 4, 1, 0.0)
    sigma, converged, iters = _lanczos(params, x, start, block_size=1, tol=1e-12)
    assert converged.all() and (iters == K).all()
    np.testing.assert_allclose(sigma, 1.0, rtol=1e-5)
    # Stopped by the cap: not converged, below sigma_max (Ritz values are lower bounds).
    sigma, converged, iters = _lanczos(params, x, start, block_size=1, tol=1e-12, max_iters=3)
    assert not converged.any() and (iters == 3).all() and (sigma <= 1.0 + 1e-6).all()
    # A zero Jacobian: sigma 0, converged at once.
    sigma, converged, iters = _lanczos({"w": jnp.zeros((K, 64))}, x, start, block_size=1,
                                       tol=1e-12)
    assert (sigma == 0).all() and converged.all() and (iters == 1).all()


def _seed_reference(jacs_BxKxD, x_shape, v0_BxL, num_steps=10, atol=1e-2):
    """The seed's jacobian_low_mem layout and spectral_norm loop, in float64 numpy, written
    from its description: J_seed[n, c, h, w, col] with column -d (mod K) holding output d's
    gradient in NCHW, viewed as N x (C*H*W*K / H) x H; power iteration with sigma_prev, an
    active set and a break. Returns (sigma, the last computed estimates)."""
    batch, k_out = jacs_BxKxD.shape[:2]
    _, h, w, c = x_shape
    j_seed = np.zeros((batch, c, h, w, k_out))
    for d in range(k_out):
        grad_nhwc = jacs_BxKxD[:, d].reshape(batch, h, w, c)
        j_seed[..., -d] = np.transpose(grad_nhwc, (0, 3, 1, 2))
    m = j_seed.reshape(batch, -1, j_seed.shape[2])
    sigma_prev = np.zeros(batch)
    last = np.zeros(batch)
    v = np.asarray(v0_BxL, np.float64).copy()
    active = np.arange(batch)
    for _ in range(num_steps):
        u = np.einsum("nml,nl->nm", m[active], v[active])
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        vn = np.einsum("nml,nm->nl", m[active], u)
        vn /= np.linalg.norm(vn, axis=1, keepdims=True)
        sigma = np.einsum("nm,nml,nl->n", u, m[active], vn)
        last[active] = sigma
        changed = np.abs(sigma - sigma_prev[active]) >= atol
        if not changed.any():
            break
        v[active] = vn
        sigma_prev[active[changed]] = sigma[changed]
        active = active[changed]
    return sigma_prev, last


def test_seed_compat_matches_the_seeds_formulas():
    apply_fn, params, x, y = _setup("conv", batch=8)
    params = jax.tree.map(lambda a: 3.0 * a, params)  # larger Jacobians: several steps
    key = jax.random.key(5)
    v0 = np.asarray(measures.seed_start(key, 8, 8), np.float64)  # H = 8 (NCHW: C*W*K x H)
    specs = [("jacobian_operator_norm", dict(normalization=normalization, seed_compat=True,
                                             mode=mode))
             for normalization in ("none", "softmax") for mode in ("per_output", "bigmem")]
    outs = _run_all(specs, apply_fn, params, x, y, key)
    for (_, options), out in zip(specs, outs, strict=True):
        jacs = _reference_jacobians(apply_fn, params, x, y, options["normalization"])
        want, last = _seed_reference(jacs, x.shape, v0)
        np.testing.assert_allclose(out["values"], want, rtol=1e-4, atol=1e-6, err_msg=str(options))
        assert (out["iterations"] <= 10).all()
        exact = _ref_norms(jacs)["jacobian_operator_norm"]
        assert (out["values"] < exact * (1 - 1e-3)).any()  # not sigma_max(J)
        if options["normalization"] == "none":  # the estimate before the converged one
            stopped = out["converged"] & (want > 0)
            assert stopped.any() and (np.abs(want - last)[stopped] > 0).all()


def test_seed_compat_zero_below_tolerance_and_one_output_error():
    # Tiny Jacobians (first estimate < 1e-2): the seed reports exactly 0.
    params, _ = _linear_params(np.linspace(3e-3, 1e-3, K))
    x = jnp.zeros((4, 8, 8, 1))
    out = _run("jacobian_operator_norm", _linear_apply, params, x, None, jax.random.key(1),
               seed_compat=True)
    assert (out["values"] == 0).all() and out["converged"].all()
    assert (out["iterations"] == 1).all()
    # A flat input keeps its axes (J.shape[2] = K): the seed's matrix is J^T, its number
    # sigma_max up to the 10-step power iteration.
    params, _ = _linear_params(np.array([1.0, 0.3, 0.2, 0.1, 0.1, 0.05, 0.05, 0.02, 0.01, 0.01]))
    out = _run("jacobian_operator_norm", _linear_apply, params, jnp.zeros((4, 64)), None,
               jax.random.key(1), seed_compat=True)
    np.testing.assert_allclose(out["values"], 1.0, rtol=2e-2)
    for options in (dict(normalization="crossentropy"), dict(target_logit_only=True),
                    dict(mode="matrix_free")):
        with pytest.raises(ArgumentError, match="seed_compat=True is invalid"):
            measures.make_metric_fn("jacobian_operator_norm", MLP().apply, seed_compat=True,
                                    **options)
    with pytest.raises(ArgumentError, match="seed_compat=True is invalid"):
        measures.make_metric_fn("jacobian", MLP().apply, seed_compat=True)
    apply_fn, params, x, y = _setup("mlp")
    out_fn = measures.make_output_fn(apply_fn, params, y, normalization="crossentropy")
    with pytest.raises(ValueError, match="seed_compat=False"):
        measures.seed_operator_norm(out_fn, x, jax.random.key(0))


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def test_vmap_over_learners_equals_per_learner():
    per_set = [_setup("conv", seed=s) for s in range(3)]
    apply_fn, _, x, y = per_set[0]
    params_n = _stack([p for _, p, _, _ in per_set])
    key = jax.random.key(3)
    cases = [
        ("jacobian", dict(mode="per_output", normalization="softmax")),
        ("jacobian", dict(mode="bigmem", normalization="logsoftmax")),
        ("jacobian", dict(mode="matrix_free", num_probes=4)),
        ("jacobian_operator_norm", dict(mode="per_output")),
        ("jacobian_operator_norm", dict(mode="bigmem", normalization="crossentropy")),
        ("jacobian_operator_norm", dict(mode="matrix_free", normalization="softmax")),
        ("jacobian_operator_norm", dict(seed_compat=True)),
        ("confidence", dict()),
    ]
    fns = [measures.make_metric_fn(name, apply_fn, **options) for name, options in cases]
    run_all = lambda p, x, y, k: [fn(p, x, y, k) for fn in fns]
    vmapped = jax.jit(jax.vmap(run_all, in_axes=(0, None, None, None)))(params_n, x, y, key)
    single = jax.jit(run_all)
    for i in range(3):
        singles = single(per_set[i][1], x, y, key)
        for case, got, one in zip(cases, vmapped, singles, strict=True):
            assert got["values"].shape == (3, B)
            np.testing.assert_allclose(got["values"][i], one["values"], rtol=1e-5,
                                       err_msg=str(case))
            if one["converged"] is not None:
                # Batched and unbatched convolutions round differently (~1e-7), which can move
                # a relative change of ~tol across the threshold: one iteration more or less.
                np.testing.assert_array_equal(got["converged"][i], one["converged"])
                if one["iterations"] is not None:  # (Hutchinson reports probes instead)
                    assert np.abs(got["iterations"][i] - one["iterations"]).max() <= 1


@pytest.mark.parametrize("probe_space", ["output", "input"])
def test_hutchinson_is_unbiased_with_the_stated_variance(probe_space):
    apply_fn, params, x, y = _setup("mlp")
    jacs = _reference_jacobians(apply_fn, params, x, y, "none")
    exact_sq = np.sum(jacs.reshape(B, -1) ** 2, axis=1)
    num_probes, reps = 2, 400
    var = np.asarray(measures.hutchinson_variance(jnp.asarray(jacs), probe_space, num_probes))
    out_fn = measures.make_output_fn(apply_fn, params)
    estimate = jax.jit(jax.vmap(lambda k: measures.hutchinson_sq_frobenius(
        out_fn, x, k, num_probes=num_probes, probe_space=probe_space)))
    samples = np.asarray(estimate(jax.random.split(jax.random.key(11), reps)), np.float64)
    assert samples.shape == (reps, B)
    # Unbiased: the mean of `reps` independent estimates is within 5 standard errors.
    np.testing.assert_array_less(np.abs(samples.mean(0) - exact_sq), 5 * np.sqrt(var / reps))
    # ... and the spread is the documented variance (ratio of sample to formula in [0.6, 1.6]).
    ratio = samples.var(0, ddof=1) / var
    assert ((ratio > 0.6) & (ratio < 1.6)).all(), ratio
    if probe_space == "output":  # lower variance than input-space probes when D >> K
        assert (var < np.asarray(measures.hutchinson_variance(jnp.asarray(jacs), "input",
                                                              num_probes))).all()


def test_hutchinson_is_exact_for_one_output():
    apply_fn, params, x, y = _setup("conv")
    exact = _run("jacobian", apply_fn, params, x, y, normalization="crossentropy")
    mf = _run("jacobian", apply_fn, params, x, y, normalization="crossentropy",
              mode="matrix_free", num_probes=1)
    np.testing.assert_allclose(mf["values"], exact["values"], rtol=1e-5)


def test_compute_metric_under_jit_with_static_names():
    apply_fn, params, x, y = _setup("mlp")
    jitted = jax.jit(measures.compute_metric,
                     static_argnames=("name", "apply_fn", "normalization", "mode"))
    got = jitted(name="jacobian", apply_fn=apply_fn, params=params, x=x, y=y,
                 normalization="softmax", mode="bigmem")
    want = measures.compute_metric("jacobian", apply_fn, params, x, y, normalization="softmax",
                                   mode="per_output")
    np.testing.assert_allclose(got["values"], want["values"], rtol=1e-5)


@pytest.mark.parametrize(
    "options, argument, value",
    [
        (dict(name="lipschitz"), "name", "'lipschitz'"),
        (dict(normalization="jacobian"), "normalization", "'jacobian'"),
        (dict(mode="bigmemory"), "mode", "'bigmemory'"),
        (dict(normalization="crossentropy", target_logit_only=True), "target_logit_only",
         "True"),
        (dict(max_iters=0), "max_iters", "0"),
        (dict(tol=-1.0), "tol", "-1.0"),
        (dict(num_probes=2.5), "num_probes", "2.5"),
    ],
)
def test_bad_configuration_names_the_argument(options, argument, value):
    options = dict(options)
    name = options.pop("name", "jacobian")
    with pytest.raises(ArgumentError) as err:
        measures.make_metric_fn(name, MLP().apply, **options)
    message = str(err.value)
    assert isinstance(err.value, ValueError) and err.value.path == argument
    assert message.startswith(f"make_metric_fn: {argument}={value} is invalid; allowed: ")


def test_missing_labels_is_an_error():
    apply_fn, params, x, _ = _setup("mlp")
    with pytest.raises(ValueError, match="needs integer labels"):
        measures.compute_metric("jacobian", apply_fn, params, x, None, target_logit_only=True)


def test_looped_backward_passes_use_canonical_conv_kernels():
    # XLA:CPU runs convolutions with O/I-swapped kernels (AD's input gradient) inside loop bodies
    # on a slow generic path; irmx re-lays the kernels out (irmx.conv_layout).
    from irmx.conv_layout import canonical_convs

    apply_fn, params, x, y = _setup("conv")
    out, vjp_fn = jax.vjp(lambda x_: apply_fn(params, x_), x)
    ct = jax.random.normal(jax.random.key(5), out.shape)
    np.testing.assert_allclose(canonical_convs(vjp_fn, ct)(ct)[0], vjp_fn(ct)[0], rtol=1e-5,
                               atol=1e-7)
    for name, mode in (("jacobian", "per_output"), ("jacobian_operator_norm", "matrix_free")):
        fn = measures.make_metric_fn(name, apply_fn, mode=mode)
        hlo = jax.jit(fn).lower(params, x, y, None).compile().as_text()
        assert set(re.findall(r"dim_labels=([^,\s]+)", hlo)) == {"b01f_01io->b01f"}, name


# ---------------------------------------------------------------------------------------------
# Hutchinson's estimate with its standard error; adaptive probes (num_probes=0, rel_error)


def _exact_frobenius(apply_fn, params, x, y, normalization="none"):
    jacs = _reference_jacobians(apply_fn, params, x, y, normalization)
    return jacs, np.linalg.norm(jacs.reshape(jacs.shape[0], -1), axis=1)


def test_adaptive_hutchinson_reaches_the_requested_relative_error():
    """Over 64 points x 8 probe keys, the adaptive estimate's actual relative error of ||J||_F
    has an rms near the requested rel_error (a rule stopping at half or twice the error would
    land outside [0.6, 1.35] rel_error), few errors beyond 3 rel_error, and the reported
    standard error describes the actual error (z-scores of rms ~1)."""
    rel_error, reps = 0.02, 8
    apply_fn, params, x, y = _setup("mlp", batch=64)
    _, exact = _exact_frobenius(apply_fn, params, x, y)
    fn = measures.make_metric_fn("jacobian", apply_fn, mode="matrix_free", rel_error=rel_error)
    keys = jax.random.split(jax.random.key(21), reps)
    out = jax.tree.map(np.asarray, jax.jit(jax.vmap(fn, in_axes=(None, None, None, 0)))(
        params, x, y, keys))
    err = out["values"] / exact - 1.0
    rms = np.sqrt(np.mean(err**2))
    assert 0.6 * rel_error < rms < 1.35 * rel_error, rms
    assert np.mean(np.abs(err) > 3 * rel_error) < 0.02
    assert out["converged"].all() and (out["stderr"] <= rel_error * out["values"] + 1e-7).all()
    z = (out["values"] - exact) / out["stderr"]
    assert 0.7 < np.sqrt(np.mean(z**2)) < 1.4
    # probes in blocks of 16 from 32 on; the points need different numbers of them
    probes = out["probes"]
    assert (probes >= 32).all() and (probes % 16 == 0).all() and probes.max() > probes.min()
    # a tighter request takes about (2x)^2 = 4x the probes
    tight = measures.make_metric_fn("jacobian", apply_fn, mode="matrix_free",
                                    rel_error=rel_error / 2)
    more = np.asarray(jax.jit(tight)(params, x, y, keys[0])["probes"])
    assert 2.5 < more.mean() / probes[0].mean() < 6


@pytest.mark.parametrize("probe_space", ["output", "input"])
def test_hutchinson_stderr_matches_the_exact_variance(probe_space):
    """The reported variance s^2 / n of the mean is unbiased for hutchinson_variance / n, and
    the norm's standard error is its square root / (2 ||J||) (delta method)."""
    apply_fn, params, x, y = _setup("mlp")
    jacs, _ = _exact_frobenius(apply_fn, params, x, y)
    num_probes, reps = 16, 200
    exact_var = np.asarray(measures.hutchinson_variance(jnp.asarray(jacs), probe_space,
                                                        num_probes))
    out_fn = measures.make_output_fn(apply_fn, params)
    est = jax.jit(jax.vmap(lambda k: measures.hutchinson_frobenius(
        out_fn, x, k, num_probes=num_probes, probe_space=probe_space)))
    got = jax.tree.map(np.asarray, est(jax.random.split(jax.random.key(12), reps)))
    assert (got["probes"] == num_probes).all() and got["converged"].all()
    ratio = got["sq_var"].mean(0) / exact_var
    assert ((ratio > 0.85) & (ratio < 1.15)).all(), ratio
    fn = measures.make_metric_fn("jacobian", apply_fn, mode="matrix_free",
                                 num_probes=num_probes, probe_space=probe_space)
    key = jax.random.key(12)
    metric = jax.tree.map(np.asarray, jax.jit(fn)(params, x, y, key))
    one = jax.tree.map(np.asarray, jax.jit(lambda k: measures.hutchinson_frobenius(
        out_fn, x, k, num_probes=num_probes, probe_space=probe_space))(key))
    np.testing.assert_allclose(metric["values"], np.sqrt(one["sq"]), rtol=1e-6)
    np.testing.assert_allclose(metric["stderr"], np.sqrt(one["sq_var"]) / (2 * metric["values"]),
                               rtol=1e-5)


def test_adaptive_hutchinson_is_the_fixed_estimate_at_the_probes_it_used():
    # Probe j comes from fold_in(key, j): a point that stopped after p probes holds exactly the
    # fixed p-probe estimate (its statistics froze while the others went on).
    apply_fn, params, x, y = _setup("conv", batch=8)
    out_fn = measures.make_output_fn(apply_fn, params)
    key = jax.random.key(4)
    adaptive = jax.tree.map(np.asarray, jax.jit(lambda k: measures.hutchinson_frobenius(
        out_fn, x, k, rel_error=0.03))(key))
    for p in sorted(set(adaptive["probes"].tolist())):
        fixed = jax.jit(lambda k, p=p: measures.hutchinson_frobenius(out_fn, x, k,
                                                                       num_probes=p))(key)
        at = adaptive["probes"] == p
        np.testing.assert_allclose(adaptive["sq"][at], np.asarray(fixed["sq"])[at], rtol=1e-5)
        np.testing.assert_allclose(adaptive["sq_var"][at], np.asarray(fixed["sq_var"])[at],
                                   rtol=1e-3)


def test_adaptive_hutchinson_caps_the_probes_and_is_exact_for_one_output():
    apply_fn, params, x, y = _setup("conv")
    capped = _run("jacobian", apply_fn, params, x, y, jax.random.key(0), mode="matrix_free",
                  rel_error=1e-4, max_probes=48)
    assert (capped["probes"] == 48).all() and not capped["converged"].any()
    assert (capped["stderr"] > 1e-4 * capped["values"]).all()
    for normalization, target in (("crossentropy", False), ("softmax", True)):
        exact = _run("jacobian", apply_fn, params, x, y, normalization=normalization,
                     target_logit_only=target)
        one = _run("jacobian", apply_fn, params, x, y, normalization=normalization,
                   target_logit_only=target, mode="matrix_free")  # adaptive, K = 1
        np.testing.assert_allclose(one["values"], exact["values"], rtol=1e-5)
        assert (one["stderr"] == 0).all() and (one["probes"] == 1).all()
        assert one["converged"].all()


def test_adaptive_hutchinson_vmapped_over_learners_equals_per_learner():
    per_set = [_setup("mlp", seed=s) for s in range(3)]
    apply_fn, _, x, y = per_set[0]
    params_n = _stack([p for _, p, _, _ in per_set])
    key = jax.random.key(3)
    fn = measures.make_metric_fn("jacobian", apply_fn, mode="matrix_free", rel_error=0.03)
    vmapped = jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))(params_n, x, y, key)
    single = jax.jit(fn)
    same = []
    for i in range(3):
        one = single(per_set[i][1], x, y, key)
        # the same probes, unless batched rounding moves a stopping test across its threshold
        eq = np.asarray(vmapped["probes"][i]) == np.asarray(one["probes"])
        np.testing.assert_allclose(np.asarray(vmapped["values"][i])[eq],
                                   np.asarray(one["values"])[eq], rtol=1e-5)
        same.append(eq)
    assert np.mean(same) >= 0.8


@pytest.mark.parametrize("options, argument, value", [
    (dict(num_probes=-1), "num_probes", "-1"),
    (dict(rel_error=0.0), "rel_error", "0.0"),
    (dict(max_probes=100), "max_probes", "100"),  # not a multiple of the block (16)
    (dict(max_probes=16), "max_probes", "16"),  # below the minimum (32)
    (dict(probe_space="both"), "probe_space", "'both'"),
])
def test_bad_hutchinson_options_name_the_argument(options, argument, value):
    with pytest.raises(ArgumentError) as err:
        measures.make_metric_fn("jacobian", MLP().apply, mode="matrix_free", **options)
    assert str(err.value).startswith(f"make_metric_fn: {argument}={value} is invalid; allowed: ")
