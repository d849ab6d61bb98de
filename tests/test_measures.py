"""irmx.measures against independent references.

References: per-sample dense Jacobians from ``jax.jacfwd`` of a normalized output written out
here (not the library's ``make_output_fn``), reduced in float64 by ``numpy.linalg.svd`` /
``numpy.linalg.norm``; accuracy / cross-entropy / confidence in plain numpy.

Tolerances (relative): exact modes (per_output, bigmem) 1e-5; matrix_free operator norm at the
default tol 1e-3 (and a lower bound); the seed's power-iteration setting (10 iterations,
absolute tol 1e-2) 5e-2 * max(sigma, 1); Hutchinson's mean within 5 standard errors of the
exact squared norm and its sample variance within [0.6, 1.6] of the stated formula.
"""

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
    specs = [("jacobian_operator_norm", dict(normalization=normalization, mode="matrix_free")),
             ("jacobian_operator_norm", dict(normalization=normalization, mode="matrix_free",
                                             **measures.SEED_POWER))]
    out, seed = _run_all(specs, apply_fn, params, x, y, key)
    assert measures.default_mode("jacobian_operator_norm") == "matrix_free"  # K unknown
    assert measures.default_mode("jacobian_operator_norm", 10) == "per_output"  # K vjps cheaper
    assert measures.default_mode("jacobian_operator_norm", 100) == "matrix_free"
    assert measures.default_mode("jacobian", 100) == "per_output"
    assert out["converged"].dtype == bool and out["converged"].all()
    assert out["iterations"].shape == (B,) and (out["iterations"] >= 1).all()
    np.testing.assert_allclose(out["values"], exact, rtol=1e-3)
    assert (out["values"] <= exact * (1 + 1e-5)).all()  # power iteration approaches from below

    # The seed's setting: <= 10 iterations, *absolute* tolerance 1e-2 on the estimate. It stops
    # on a small change, not a small error, and 1e-2 is large next to the operator norm of
    # softmax outputs (~0.07 here): errors up to 9e-2 absolute / 14% relative on logits (a conv
    # sample with sigma_2 / sigma_1 = 0.86 that "converged" after 3 iterations) and 17% relative
    # on softmax were measured on these nets, hence 0.2 * max(sigma, 1).
    assert (seed["iterations"] <= 10).all()
    assert ((seed["iterations"] == 10) | seed["converged"]).all()
    np.testing.assert_array_less(np.abs(seed["values"] - exact), 0.2 * np.maximum(exact, 1.0))
    assert (seed["values"] <= exact * (1 + 1e-5)).all()


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
    u, _ = np.linalg.qr(rng.normal(size=(K, K)))
    v, _ = np.linalg.qr(rng.normal(size=(dim, K)))
    return {"w": jnp.asarray(u @ np.diag(singular_values) @ v.T, jnp.float32)}


def test_power_iteration_slow_convergence_is_reported():
    # Two near-equal top singular values: the contraction per iteration is (0.999)^4.
    sv = np.array([1.0, 0.999, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01])
    params = _linear_params(sv)
    x = jax.random.normal(jax.random.key(1), (B, 8, 8, 1))
    out = _run("jacobian_operator_norm", _linear_apply, params, x, None, jax.random.key(2),
               mode="matrix_free", max_iters=3, tol=1e-7)
    assert not out["converged"].any()
    np.testing.assert_array_equal(out["iterations"], 3)
    assert (out["values"] <= 1.0 + 1e-6).all() and (out["values"] > 0.9).all()
    # A well-separated spectrum converges in a few iterations with the same settings.
    sv_easy = np.array([1.0, 0.3, 0.2, 0.1, 0.1, 0.05, 0.05, 0.02, 0.01, 0.01])
    easy = _run("jacobian_operator_norm", _linear_apply, _linear_params(sv_easy), x, None,
                jax.random.key(2), mode="matrix_free", max_iters=50, tol=1e-6)
    assert easy["converged"].all() and (easy["iterations"] < 15).all()
    np.testing.assert_allclose(easy["values"], 1.0, rtol=1e-5)


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
