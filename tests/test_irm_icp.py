"""ICP (irmx.irm.icp) against an independent numpy/scipy run of the IRM reference's procedure."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from irmx.errors import ArgumentError
from irmx.irm import icp

ALPHA = 0.05


def _mean_var_test(res_in, res_out):
    """The reference's mean_var_test (models.py), in float64 scipy."""
    p_mean = scipy.stats.ttest_ind(res_in, res_out, equal_var=False).pvalue
    ratio = np.var(res_in, ddof=1) / np.var(res_out, ddof=1)
    p_var1 = 1 - scipy.stats.f.cdf(ratio, res_in.shape[0] - 1, res_out.shape[0] - 1)
    return 2 * min(p_mean, 2 * min(p_var1, 1 - p_var1))


def _reference_icp(x_ExNxD, y_ExN, alpha=ALPHA):
    """Per-environment p-values (subsets in powerset order, x E) and the coefficients."""
    n_env, n, dim = x_ExNxD.shape
    x_all = x_ExNxD.reshape(-1, dim).astype(np.float64)
    y_all = y_ExN.reshape(-1).astype(np.float64)
    env_all = np.repeat(np.arange(n_env), n)
    p_values, accepted = [], []
    for size in range(1, dim + 1):
        for subset in itertools.combinations(range(dim), size):
            x_s = x_all[:, list(subset)]
            res = y_all - x_s @ np.linalg.lstsq(x_s, y_all, rcond=None)[0]
            p_e = [_mean_var_test(res[env_all == e], res[env_all != e]) for e in range(n_env)]
            p_values.append(p_e)
            if min(p_e) * n_env > alpha:
                accepted.append(set(subset))
    coef = np.zeros(dim)
    features = sorted(set.intersection(*accepted)) if accepted else []
    if features:
        coef[features] = np.linalg.lstsq(x_all[:, features], y_all, rcond=None)[0]
    return np.asarray(p_values), coef, accepted


def _chain_envs(rng, h, n=500, sigmas=(0.2, 2.0, 5.0), hetero=False):
    """The IRM chain SEM, fully observed and unscrambled: X causes Y, Y causes Z; Y's noise
    scales with the environment (hetero) or Z's does (homoskedastic)."""
    xs, ys = [], []
    for s in sigmas:
        hid = rng.standard_normal((n, h)) * s
        x = hid + rng.standard_normal((n, h)) * s
        y = x + rng.standard_normal((n, h)) * (s if hetero else 1.0)
        z = y + rng.standard_normal((n, h)) * (1.0 if hetero else s)
        xs.append(np.concatenate([x, z], axis=1))
        ys.append(y.sum(axis=1))
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


@jax.jit
def _icp(x_ExNxD, y_ExN):
    return icp.icp_fit(x_ExNxD, y_ExN, ALPHA)


def _check_against_reference(x, y):
    p_ref, coef_ref, accepted_ref = _reference_icp(x, y)
    fit = jax.tree.map(np.asarray, _icp(x, y))
    p = fit.pvalues_SxE
    assert p.shape == p_ref.shape
    big = p_ref > 1e-6
    np.testing.assert_allclose(p[big], p_ref[big], rtol=1e-3)
    np.testing.assert_array_less(p[~big], 2e-6)
    np.testing.assert_allclose(fit.pvalues_S, p.min(1) * p.shape[1])
    np.testing.assert_array_equal(fit.accepted_S, p_ref.min(1) * p.shape[1] > ALPHA)
    features = set.intersection(*accepted_ref) if accepted_ref else set()
    np.testing.assert_array_equal(np.flatnonzero(fit.features_D), sorted(features))
    np.testing.assert_allclose(fit.w_D, coef_ref, rtol=1e-4, atol=1e-5)
    return fit.w_D, accepted_ref


def test_subset_masks_in_powerset_order():
    masks = icp.subset_masks(3)
    subsets = [tuple(np.flatnonzero(row)) for row in masks]
    assert subsets == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]


def test_two_sample_tests_match_scipy():
    rng = np.random.default_rng(0)
    n1 = rng.integers(3, 4000, 200)
    n2 = rng.integers(3, 8000, 200)
    mean1, mean2 = rng.normal(0, 0.1, (2, 200))
    var1, var2 = rng.uniform(0.2, 3.0, (2, 200))
    # Then three samples, for mean_var_pvalue against the reference's mean_var_test.
    stats = [mean1, var1, n1, mean2, var2, n2]
    p_mean_var_ref = []
    for n_in, n_out, shift, scale in [(50, 100, 0.0, 1.0), (1000, 2000, 0.05, 1.05)] + [
        (1000, 2000, 0.1, 1.0)
    ]:
        a = rng.normal(shift, scale, n_in)
        b = rng.normal(0.0, 1.0, n_out)
        sample_stats = (a.mean(), a.var(ddof=1), n_in, b.mean(), b.var(ddof=1), n_out)
        stats = [np.append(v, u) for v, u in zip(stats, sample_stats)]
        p_mean_var_ref.append(_mean_var_test(a, b))
    p_mean, f_cdf, f_sf = (np.asarray(v) for v in jax.jit(icp.two_sample_tests)(*stats))

    p_ref = scipy.stats.ttest_ind_from_stats(
        mean1, np.sqrt(var1), n1, mean2, np.sqrt(var2), n2, equal_var=False
    ).pvalue
    assert p_ref.min() < 1e-20 and p_ref.max() > 0.9  # both tails covered
    big = p_ref > 1e-30  # float32 underflows below ~1e-38
    np.testing.assert_allclose(p_mean[:200][big], p_ref[big], rtol=1e-4)
    for got, want in ((f_cdf, scipy.stats.f.cdf), (f_sf, scipy.stats.f.sf)):
        want = want(var1 / var2, n1 - 1, n2 - 1)
        big = want > 1e-30
        assert big.mean() > 0.3 and want[big].min() < 1e-10
        np.testing.assert_allclose(got[:200][big], want[big], rtol=1e-4)

    assert min(p_mean_var_ref) < 0.05 < max(p_mean_var_ref)
    p_mean_var = 2 * np.minimum(p_mean, 2 * np.minimum(f_cdf, f_sf))[200:]  # mean_var_pvalue
    np.testing.assert_allclose(p_mean_var, p_mean_var_ref, rtol=1e-4)


def test_causal_subset_accepted_and_recovered():
    # Homoskedastic chain: Y | X is invariant, so {X} is accepted and is the intersection.
    # All cases share one shape (D = 6), so _icp compiles once.
    x, y = _chain_envs(np.random.default_rng(1), h=3, hetero=False)
    w, accepted_ref = _check_against_reference(x, y)
    assert {0, 1, 2} in accepted_ref
    np.testing.assert_allclose(w, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], atol=0.05)


def test_heteroskedastic_chain():
    x, y = _chain_envs(np.random.default_rng(2), h=3, hetero=True)
    _check_against_reference(x, y)


def test_nothing_accepted_gives_zeros():
    # Y's mechanism changes across environments: no subset is invariant.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 500, 6)).astype(np.float32)
    slopes = np.array([0.5, 1.0, 2.0])[:, None]
    y = (slopes * x[..., 0] + x[..., 1] + 0.5 * rng.standard_normal((3, 500))).astype(np.float32)
    w, accepted_ref = _check_against_reference(x, y)
    assert accepted_ref == []
    np.testing.assert_array_equal(w, np.zeros(6))


def test_empty_intersection_gives_zeros():
    # Y is noise unrelated to X: many subsets are accepted, their intersection is empty.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 500, 6)).astype(np.float32)
    y = rng.standard_normal((3, 500)).astype(np.float32)
    w, accepted_ref = _check_against_reference(x, y)
    assert len(accepted_ref) > 1 and not set.intersection(*accepted_ref)
    np.testing.assert_array_equal(w, np.zeros(6))


def test_vmap_over_seeds_matches_loop():
    rng = np.random.default_rng(5)
    batch = [_chain_envs(rng, h=3, hetero=bool(i % 2)) for i in range(3)]
    x_SxExNxD = jnp.asarray(np.stack([b[0] for b in batch]))
    y_SxExN = jnp.asarray(np.stack([b[1] for b in batch]))
    fit_S = jax.jit(jax.vmap(_icp))(x_SxExNxD, y_SxExN)
    for i, (x, y) in enumerate(batch):
        fit = _icp(x, y)
        np.testing.assert_allclose(fit_S.pvalues_SxE[i], fit.pvalues_SxE, rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(fit_S.accepted_S[i], fit.accepted_S)
        np.testing.assert_allclose(fit_S.w_D[i], fit.w_D, rtol=1e-5, atol=1e-6)
    assert np.any(np.asarray(fit_S.w_D) != 0)


def test_bad_shapes_raise():
    with pytest.raises(ArgumentError, match="icp_fit: x_ExNxD.shape"):
        icp.icp_solution(np.zeros((1, 10, 3)), np.zeros((1, 10)))
    with pytest.raises(ArgumentError, match="y_ExN.shape"):
        icp.icp_solution(np.zeros((2, 10, 3)), np.zeros((2, 9)))
