"""Invariant Causal Prediction (ICP), the linear baseline of the IRM synthetic study.

Peters, Buehlmann & Meinshausen 2016, "Causal inference by using invariant prediction:
identification and confidence intervals" (JRSS B), run exactly as the IRM reference does:
facebookresearch/InvariantRiskMinimization, ``code/experiment_synthetic/models.py``, class
``InvariantCausalPrediction``. On environments (x_e, y_e), all of them pooled (the last one too):

- for every non-empty subset S of the D features, least squares without intercept of the pooled
  y on the pooled x_S; for each environment e the residuals inside e are tested against those
  outside e: ``p_e = 2 min(p_mean, p_var2)``, with p_mean the two-sided Welch t-test p-value
  (``scipy.stats.ttest_ind(equal_var=False)``), ``p_var1 = 1 - F.cdf(var_in / var_out; n_in - 1,
  n_out - 1)`` (ddof=1 variances) and ``p_var2 = 2 min(p_var1, 1 - p_var1)``;
- the subset's p-value is ``E min_e p_e`` (Bonferroni over the E environments; this is the
  reference's variant: its TODO notes that Peters et al.'s code uses E - 1); S is accepted when
  that p-value exceeds alpha;
- the solution is least squares on the pooled x restricted to the intersection of the accepted
  subsets (zeros elsewhere); zeros when that intersection is empty or nothing is accepted.

Everything is one pure, jittable and vmappable JAX program (no Python control flow on values):
the 2^D - 1 subsets are a 0/1 mask matrix, the masked least squares solve the pooled Gram matrix
``M G M + (I - M)`` against ``M b``, and the Student-t and F distribution functions are a float32
regularized incomplete beta function with a cancellation-free prefactor (``_betainc_pair``;
``jax.scipy.special.betainc``'s ``lgamma(a) + lgamma(b) - lgamma(a + b)`` loses ~1e-3 relative
accuracy in float32 at the degrees of freedom here, ~1000-3000).

Against the float64 reference the p-values agree to ~1e-4 relative (down to ~1e-30, where
float32 ends; the distribution functions alone to ~1e-5, the rest is the float32 residual
variances, whose rounding the F test amplifies), so a subset's acceptance can differ only when
its p-value is that close to alpha.
The pooled x restricted to any subset is assumed to have full column rank (continuous data).

``icp_solution`` gives the regression vector; ``icp_fit`` also the p-values, the accepted
subsets and the features kept; ``subset_masks(D)`` says which row is which subset.
"""

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from irmx.errors import ArgumentError

_SUBSETS_PER_BLOCK = 64  # residuals of this many subsets at a time: (block, E, N) floats
_CF_ITERATIONS = 300  # continued-fraction cap; a, b ~ 1e3 converge in under 100


def subset_masks(dim: int) -> np.ndarray:
    """The 2^dim - 1 non-empty feature subsets as 0/1 rows (2^dim - 1, dim), in the reference's
    ``powerset`` order (by size, then lexicographic)."""
    rows = [
        np.isin(np.arange(dim), subset)
        for size in range(1, dim + 1)
        for subset in itertools.combinations(range(dim), size)
    ]
    return np.asarray(rows, np.float32).reshape(-1, dim)


def _stirling_correction(z):
    """lgamma(z) - [(z - 1/2) log z - z + log(2 pi) / 2]: the series 1/(12z) - 1/(360z^3) +
    1/(1260z^5) for z >= 10 (error < 1e-10), the direct difference of small numbers below."""
    z_big = jnp.maximum(z, 10.0)
    inv, inv2 = 1.0 / z_big, 1.0 / z_big**2
    series = inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 / 1260))
    z_small = jnp.minimum(z, 10.0)
    direct = jax.lax.lgamma(z_small) - (
        (z_small - 0.5) * jnp.log(z_small) - z_small + 0.5 * math.log(2 * math.pi)
    )
    return jnp.where(z >= 10.0, series, direct)


def _log_beta_prefactor(a, b, x, y):
    """log[x^a y^b / B(a, b)] for y = 1 - x, without the cancellations of the textbook form.

    With Stirling's formula, 1/B(a, b) = sqrt(ab / (2 pi (a + b))) (a+b)^(a+b) / (a^a b^b)
    exp(-dcorr), so the prefactor is a log(x / x0) + b log(y / y0) + log(ab / (a + b)) / 2 -
    log(2 pi) / 2 - dcorr with x0 = a / (a + b), y0 = b / (a + b) (DiDonato & Morris 1992's
    ``brcomp``); x / x0 - 1 = (b x - a y) / a and y / y0 - 1 = (a y - b x) / b need no 1 - x.
    """
    dev = b * x - a * y
    log_ratio = a * jnp.log1p(dev / a) + b * jnp.log1p(-dev / b)
    dcorr = _stirling_correction(a) + _stirling_correction(b) - _stirling_correction(a + b)
    return log_ratio + 0.5 * jnp.log(a * b / (a + b)) - 0.5 * math.log(2 * math.pi) - dcorr


def _beta_continued_fraction(a, b, x, y):
    """F with I_x(a, b) = x^a y^b / (B(a, b) F), y = 1 - x: the continued fraction
    b_0 + a_1 / (b_1 + a_2 / (b_2 + ...)) of Boost's ``ibeta_fraction2`` (DiDonato & Morris
    1992's ``bfrac``), by the modified Lentz algorithm, with
    a_m = (a+m-1)(a+b+m-1) m (b-m) x^2 / (a+2m-1)^2 and
    b_m = m + m (b-m) x / (a+2m-1) + (a+m)(a y - b x + 1 + m (2-x)) / (a+2m+1).
    It holds a y - b x as such, so it keeps float32 accuracy near x = 1, where the plain
    fraction (DLMF 8.17.22) loses a factor 1/y; it converges fast for x <= a / (a + b).
    """
    tiny = jnp.float32(1e-30)
    eps = jnp.finfo(jnp.float32).eps
    lam = a * y - b * x

    def terms(m):
        num = (a + m - 1) * (a + b + m - 1) * m * (b - m) * x * x / (a + 2 * m - 1) ** 2
        den = (
            m
            + m * (b - m) * x / (a + 2 * m - 1)
            + (a + m) * (lam + 1 + m * (2 - x)) / (a + 2 * m + 1)
        )
        return num, den

    def cond(state):
        m, _, _, _, done = state
        return (m <= _CF_ITERATIONS) & ~jnp.all(done)

    def body(state):
        m, c, d, f, done = state
        num, den = terms(m.astype(x.dtype))
        d = den + num * d
        d = 1.0 / jnp.where(jnp.abs(d) < tiny, tiny, d)
        c = den + num / c
        c = jnp.where(jnp.abs(c) < tiny, tiny, c)
        delta = c * d
        f = jnp.where(done, f, f * delta)
        return m + 1, c, d, f, done | (jnp.abs(delta - 1.0) < eps)

    _, f0 = terms(jnp.zeros_like(x))
    f0 = jnp.where(jnp.abs(f0) < tiny, tiny, f0)
    state = (jnp.int32(1), f0, jnp.zeros_like(x), f0, jnp.zeros(x.shape, bool))
    return jax.lax.while_loop(cond, body, state)[3]


def _betainc_pair(a, b, x, y):
    """(I_x(a, b), 1 - I_x(a, b)), both to float32 relative accuracy, given x and y = 1 - x
    separately (callers form both from the statistic, so neither is a rounded 1 - other).

    The continued fraction runs on the side where it converges fast, (a, b, x) for
    x <= a / (a + b) and (b, a, y) otherwise, and gives that side's tail directly; the other
    is its complement.
    """
    a, b, x, y = jnp.broadcast_arrays(*(jnp.asarray(v, jnp.float32) for v in (a, b, x, y)))
    direct = b * x <= a * y
    a1, b1 = jnp.where(direct, a, b), jnp.where(direct, b, a)
    x1, y1 = jnp.where(direct, x, y), jnp.where(direct, y, x)
    tail = jnp.exp(_log_beta_prefactor(a1, b1, x1, y1)) / _beta_continued_fraction(a1, b1, x1, y1)
    tail = jnp.where(x1 <= 0.0, 0.0, jnp.clip(tail, 0.0, 1.0))
    return jnp.where(direct, tail, 1.0 - tail), jnp.where(direct, 1.0 - tail, tail)


def _welch_beta_args(mean1, var1, n1, mean2, var2, n2):
    """Welch's t-test as I_x(a, b) arguments: t = (m1 - m2) / sqrt(v1/n1 + v2/n2), the
    Welch-Satterthwaite df; the two-sided p-value is I_{df/(df+t^2)}(df/2, 1/2)."""
    se1, se2 = var1 / n1, var2 / n2
    se = se1 + se2
    df = se**2 / (se1**2 / (n1 - 1) + se2**2 / (n2 - 1))
    t2 = (mean1 - mean2) ** 2 / se
    return df / 2, 0.5, df / (df + t2), t2 / (df + t2)


def _f_beta_args(ratio, dof1, dof2):
    """F(dof1, dof2).cdf(f) as I_u(dof1/2, dof2/2), u = dof1 f / (dof1 f + dof2)."""
    denom = dof1 * ratio + dof2
    return dof1 / 2, dof2 / 2, dof1 * ratio / denom, dof2 / denom


def two_sample_tests(mean1, var1, n1, mean2, var2, n2):
    """(p_mean, F cdf, F sf) of two samples given their means, ddof=1 variances and sizes:
    p_mean is the two-sided Welch t-test p-value (``scipy.stats.ttest_ind(equal_var=False)``),
    the F(n1 - 1, n2 - 1) cdf and sf are at var1 / var2; each to float32 relative accuracy
    (``1 - cdf`` would lose the upper tail). One incomplete-beta call serves all three.
    """
    welch = _welch_beta_args(mean1, var1, n1, mean2, var2, n2)
    f_test = _f_beta_args(var1 / var2, n1 - 1, n2 - 1)
    shape = jnp.broadcast_shapes(*(jnp.shape(v) for v in welch + f_test))
    stacked = [
        jnp.stack([jnp.broadcast_to(u, shape), jnp.broadcast_to(v, shape)])
        for u, v in zip(welch, f_test)
    ]
    cdf_2x, sf_2x = _betainc_pair(*stacked)
    return cdf_2x[0], cdf_2x[1], sf_2x[1]


def mean_var_pvalue(mean1, var1, n1, mean2, var2, n2):
    """The reference's ``mean_var_test``: 2 min(p_mean, p_var2), p_mean Welch's two-sided t-test,
    p_var2 = 2 min(p_var1, 1 - p_var1), p_var1 = 1 - F.cdf(var1 / var2; n1 - 1, n2 - 1)."""
    p_mean, f_cdf, f_sf = two_sample_tests(mean1, var1, n1, mean2, var2, n2)
    return 2 * jnp.minimum(p_mean, 2 * jnp.minimum(f_cdf, f_sf))


def _masked_lstsq(gram_DxD, xty_D, masks_SxD):
    """Least squares restricted to each mask's features: (M G M + I - M) w = M b by Cholesky,
    zeros outside (the identity block decouples them); an empty mask gives w = 0."""
    eye = jnp.eye(gram_DxD.shape[0], dtype=gram_DxD.dtype)
    gram_SxDxD = masks_SxD[:, :, None] * gram_DxD * masks_SxD[:, None, :]
    gram_SxDxD = gram_SxDxD + eye * (1.0 - masks_SxD)[:, None, :]
    chol_SxDxD = jnp.linalg.cholesky(gram_SxDxD)
    rhs_SxDx1 = (masks_SxD * xty_D)[..., None]
    half = jax.scipy.linalg.solve_triangular(chol_SxDxD, rhs_SxDx1, lower=True)
    return jax.scipy.linalg.solve_triangular(chol_SxDxD, half, lower=True, trans=1)[..., 0]


def _pooled(where, x_ExNxD, y_ExN):
    """Checked float32 inputs and the pooled normal equations: X^T X (D, D) and X^T y (D,)."""
    x_ExNxD, y_ExN = jnp.asarray(x_ExNxD, jnp.float32), jnp.asarray(y_ExN, jnp.float32)
    if x_ExNxD.ndim != 3 or x_ExNxD.shape[0] < 2 or x_ExNxD.shape[1] < 2:
        raise ArgumentError(where, "x_ExNxD.shape", x_ExNxD.shape, "(E >= 2, N >= 2, D)")
    if y_ExN.shape != x_ExNxD.shape[:2]:
        raise ArgumentError(where, "y_ExN.shape", y_ExN.shape, f"{x_ExNxD.shape[:2]} (E, N)")
    gram_DxD = jnp.einsum("end,enk->dk", x_ExNxD, x_ExNxD)
    xty_D = jnp.einsum("end,en->d", x_ExNxD, y_ExN)
    return x_ExNxD, y_ExN, gram_DxD, xty_D


def _subset_pvalues(x_ExNxD, y_ExN, gram_DxD, xty_D):
    """p_SxE: residual moments per environment, blocks of subsets at a time (lax.map); the
    outside-e moments are pooled from the other environments' (no second pass over the data)."""
    n_env, n, dim = x_ExNxD.shape
    n_out = (n_env - 1) * n
    w_SxD = _masked_lstsq(gram_DxD, xty_D, jnp.asarray(subset_masks(dim)))

    def env_moments(w_D):  # per-environment residual mean and centred sum of squares
        res_ExN = y_ExN - x_ExNxD @ w_D
        mean_E = res_ExN.mean(1)
        return mean_E, jnp.sum((res_ExN - mean_E[:, None]) ** 2, axis=1)

    mean_SxE, ss_SxE = jax.lax.map(env_moments, w_SxD, batch_size=_SUBSETS_PER_BLOCK)
    # Outside e: the other environments pooled; their sum of squares about the pooled mean.
    others_ExE = 1.0 - jnp.eye(n_env, dtype=jnp.float32)
    mean_out_SxE = (mean_SxE @ others_ExE) * n / n_out
    dev2_SxExE = (mean_SxE[:, None, :] - mean_out_SxE[:, :, None]) ** 2
    ss_out_SxE = ss_SxE @ others_ExE + n * jnp.sum(dev2_SxExE * others_ExE, axis=2)
    return mean_var_pvalue(
        mean_SxE, ss_SxE / (n - 1), n, mean_out_SxE, ss_out_SxE / (n_out - 1), n_out
    )


def icp_pvalues(x_ExNxD, y_ExN):
    """Each subset's per-environment p-values (2^D - 1, E), subsets as ``subset_masks(D)``.

    Entry (s, e) is ``mean_var_pvalue`` of the pooled least-squares residuals on subset s inside
    environment e against those of all other environments.
    """
    return _subset_pvalues(*_pooled("icp_pvalues", x_ExNxD, y_ExN))


def icp_accepted(x_ExNxD, y_ExN, alpha=0.05):
    """(p-value, accepted) of each subset of ``subset_masks(D)``: p = E min_e p_e (the reference's
    Bonferroni factor E), accepted when p > alpha."""
    fit = icp_fit(x_ExNxD, y_ExN, alpha)
    return fit.pvalues_S, fit.accepted_S


class ICPFit(NamedTuple):
    """Everything ICP computes; subsets are the rows of ``subset_masks(D)``."""

    pvalues_SxE: jax.Array  # mean_var_pvalue of subset s in environment e
    pvalues_S: jax.Array  # E min_e pvalues_SxE
    accepted_S: jax.Array  # pvalues_S > alpha
    features_D: jax.Array  # bool: in every accepted subset (all False when none is accepted)
    w_D: jax.Array  # pooled least squares on features_D, zeros elsewhere


def icp_fit(x_ExNxD, y_ExN, alpha=0.05) -> ICPFit:
    """ICP on E equal-size environments x_ExNxD (E, N, D), y_ExN (E, N); see the module doc."""
    x_ExNxD, y_ExN, gram_DxD, xty_D = _pooled("icp_fit", x_ExNxD, y_ExN)
    p_SxE = _subset_pvalues(x_ExNxD, y_ExN, gram_DxD, xty_D)
    p_S = p_SxE.min(1) * p_SxE.shape[1]
    accepted_S = p_S > alpha
    masks_SxD = jnp.asarray(subset_masks(x_ExNxD.shape[2]))
    in_all_accepted_D = jnp.all(jnp.where(accepted_S[:, None], masks_SxD > 0, True), axis=0)
    features_D = in_all_accepted_D & jnp.any(accepted_S)
    w_D = _masked_lstsq(gram_DxD, xty_D, features_D[None].astype(jnp.float32))[0]
    return ICPFit(p_SxE, p_S, accepted_S, features_D, w_D)


def icp_solution(x_ExNxD, y_ExN, alpha=0.05) -> jax.Array:
    """ICP's regression vector (D,): pooled least squares on the intersection of the accepted
    subsets' features, zeros elsewhere; all zeros when nothing is accepted or the intersection
    is empty. x_ExNxD (E, N, D) and y_ExN (E, N) are E equal-size environments."""
    return icp_fit(x_ExNxD, y_ExN, alpha).w_D
