r"""Input-output Jacobians of a classifier and their norms, exact or matrix-free.

For one input x (flattened dimension D = H*W*C) and a classifier with K logits, the measures of
Gamba, Azizpour & Bjorkman, "On the Lipschitz Constant of Deep Networks and Double Descent"
(BMVC 2023; code github.com/magamba/overparameterization, ``core/metric_helpers.py``) are norms
of the K x D Jacobian

    J(x) = d g(f(x)) / dx

where g is a *normalization* of the logits applied before differentiating:

    none        g(z) = z                        (K rows)
    softmax     g(z) = softmax(z)               (K rows)
    logsoftmax  g(z) = log softmax(z)           (K rows)
    crossentropy g(z) = -log softmax(z)_y       (1 row: the gradient of the per-sample loss)

and ``target_logit_only`` keeps only row y of g(f(x)) (the seed's ``jacobian_target_only``:
the gradient of the target output, a 1 x D Jacobian; applied *after* the softmax / logsoftmax
normalization, as in the seed, where the criterion wraps the model before the target row is
selected). The seed refuses target_logit_only with crossentropy (a ValueError in
``get_jacobian_fn``; its --help text says "ignored", its code raises), and so do we.

Every function here takes ``out_fn``: a batched map x_BxHxWxC -> out_BxK built by
``make_output_fn`` as ``vmap`` of a per-sample function, so the samples of a batch are
independent and one backward pass over the batch with the same cotangent e_k for every sample
gives row k of every sample's Jacobian at once (the seed's ``indexing_mask`` trick).

Three ways to get the norms (``mode``):

* ``per_output``: K backward passes, one per output, in a ``lax.map``/``lax.scan`` (the seed's
  default ``jacobian_low_mem``). Memory of one backward pass (+ the K x D Jacobian for the
  operator norm; the Frobenius norm is accumulated, so it needs no Jacobian at all).
* ``bigmem``: the same K backward passes as one ``vmap`` over the K cotangents (the seed's
  ``--bigmem``): one wide backward pass, K times the activation-gradient memory.
* ``matrix_free``: no Jacobian. The operator norm by power iteration on J^T J with one jvp and
  one transposed jvp (``jax.linearize`` + ``jax.linear_transpose``) per iteration; the Frobenius
  norm by Hutchinson's estimator with its standard error, by default with as many probes as
  reach a requested relative error (``hutchinson_frobenius``). Memory independent of K.

The backward passes that run inside a loop (per_output's map, the power iteration, the
Hutchinson probes) are re-traced with canonical-layout convolution kernels (``irmx.conv_layout``):
XLA:CPU otherwise runs the input-gradient convolutions of a loop body 6-8x slower.

The exact operator norm is sqrt(lambda_max(J J^T)) of the K x K Gram matrix (``eigvalsh``);
the seed instead runs its power iteration (10 steps, absolute tolerance 1e-2) on the explicit
Jacobian. (The seed's ``jacobian_low_mem`` writes row k to column ``-k``, a permutation of the
rows, which changes neither norm. Its --normalization choice "jacobian" sets a flag that no
metric reads, so it is not offered here.)
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from irmx.conv_layout import canonical_convs
from irmx.errors import ArgumentError

NORMALIZATIONS = ("none", "softmax", "logsoftmax", "crossentropy")
MODES = ("per_output", "bigmem", "matrix_free")
PROBE_SPACES = ("output", "input")

# The seed's power-iteration setting (compute_stats.py --num-power-iters=10 and
# metric_helpers.spectral_norm atol=1e-2): at most 10 iterations, stop when the singular value
# estimate changes by less than 1e-2 in absolute value. Use as power_iteration(..., **SEED_POWER).
# Only the setting is reproduced, not two quirks of the seed's loop: it returns the estimate of
# the iteration *before* the one that met the tolerance, and a sample whose first estimate is
# already below 1e-2 (e.g. softmax outputs of a confident net) is reported as exactly 0.
SEED_POWER = dict(max_iters=10, tol=0.0, atol=1e-2)

_TINY = 1e-30


def normalize_output(logits_K, y, normalization: str, target_logit_only: bool = False):
    """g(logits) for one sample: the normalization of the module docstring, then row y if
    ``target_logit_only``. Returns a vector (K,) or (1,)."""
    if normalization == "none":
        out = logits_K
    elif normalization == "softmax":
        out = jax.nn.softmax(logits_K)
    elif normalization == "logsoftmax":
        out = jax.nn.log_softmax(logits_K)
    elif normalization == "crossentropy":
        out = -lax.dynamic_index_in_dim(jax.nn.log_softmax(logits_K), y, keepdims=True)
    else:
        raise ArgumentError("normalize_output", "normalization", normalization,
                            "one of " + ", ".join(NORMALIZATIONS))
    if target_logit_only:
        out = lax.dynamic_index_in_dim(out, y, keepdims=True)
    return out


def make_output_fn(apply_fn: Callable, params, y_B=None, *, normalization: str = "none",
                   target_logit_only: bool = False) -> Callable:
    """The batched map x_BxHxWxC -> g(f(x))_BxK whose per-sample Jacobians are measured.

    Built as ``vmap`` over samples of ``apply_fn(params, x[None])[0]`` so that samples are
    independent by construction (one backward pass over the batch = B per-sample vjps).
    ``y_B`` (integer labels) is needed for crossentropy and target_logit_only.
    """

    def one(x, y):
        logits = apply_fn(params, x[None])[0]
        return normalize_output(logits, y, normalization, target_logit_only)

    if y_B is None:
        return jax.vmap(lambda x: one(x, 0))
    return lambda x_B: jax.vmap(one)(x_B, y_B)


def _sq_norms(t_B):
    """Per-sample squared Euclidean norms of a batched array (all axes but the first)."""
    return jnp.sum(jnp.square(t_B.reshape(t_B.shape[0], -1)), axis=1)


def _num_outputs(out_fn, x_B) -> int:
    return jax.eval_shape(out_fn, x_B).shape[1]


def _output_cotangents(k_out: int, batch: int, dtype):
    """The K cotangents e_k, each broadcast over the batch: K x B x K."""
    return jnp.broadcast_to(jnp.eye(k_out, dtype=dtype)[:, None, :], (k_out, batch, k_out))


def exact_jacobian(out_fn, x_B, mode: str = "per_output") -> jax.Array:
    """The per-sample Jacobians J_BxKxD (D = prod of x's non-batch axes) by K backward passes:
    sequential (``per_output``, a lax.map) or all at once (``bigmem``, a vmap)."""
    out, vjp_fn = jax.vjp(out_fn, x_B)
    batch, k_out = out.shape
    cts = _output_cotangents(k_out, batch, out.dtype)
    if mode == "per_output":
        vjp_fn = canonical_convs(vjp_fn, cts[0])  # a loop body: see irmx.conv_layout
        rows_KxBxD = lax.map(lambda ct: vjp_fn(ct)[0].reshape(batch, -1), cts)
    elif mode == "bigmem":
        rows_KxBxD = jax.vmap(lambda ct: vjp_fn(ct)[0].reshape(batch, -1))(cts)
    else:
        raise ArgumentError("exact_jacobian", "mode", mode, "one of per_output, bigmem")
    return jnp.swapaxes(rows_KxBxD, 0, 1)


def frobenius_exact(out_fn, x_B, mode: str = "per_output") -> jax.Array:
    """||J(x)||_F per sample, exactly, with K backward passes.

    ``per_output`` accumulates sum_k ||J_k.||^2 in a lax.scan, so no Jacobian is ever stored;
    ``bigmem`` builds J_BxKxD with one vmapped backward pass and takes its norm.
    """
    if mode == "bigmem":
        return jnp.sqrt(jnp.sum(jnp.square(exact_jacobian(out_fn, x_B, "bigmem")), axis=(1, 2)))
    if mode != "per_output":
        raise ArgumentError("frobenius_exact", "mode", mode, "one of per_output, bigmem")
    out, vjp_fn = jax.vjp(out_fn, x_B)
    batch, k_out = out.shape
    cts = _output_cotangents(k_out, batch, out.dtype)
    vjp_fn = canonical_convs(vjp_fn, cts[0])

    def add_row(acc_B, ct):
        return acc_B + _sq_norms(vjp_fn(ct)[0]), None

    acc_B, _ = lax.scan(add_row, jnp.zeros((batch,), out.dtype), cts)
    return jnp.sqrt(acc_B)


def spectral_norm_dense(j_BxKxD) -> jax.Array:
    """sigma_max of each K x D Jacobian: sqrt(lambda_max(J J^T)), the K x K Gram being cheaper
    than an SVD of J when K << D; relative accuracy ~ float eps for the top singular value."""
    gram = jnp.einsum("bkd,bld->bkl", j_BxKxD, j_BxKxD, precision=lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram)[:, -1], 0.0))


def operator_norm_exact(out_fn, x_B, mode: str = "per_output") -> jax.Array:
    """||J(x)||_2 = sigma_max(J(x)) per sample from the explicit Jacobian (K backward passes)."""
    return spectral_norm_dense(exact_jacobian(out_fn, x_B, mode))


def power_iteration(out_fn, x_B, key, *, tol: float = 1e-5, atol: float = 0.0,
                    max_iters: int = 200):
    r"""sigma_max(J(x)) per sample by power iteration on J^T J, without forming J.

    One iteration per sample (v unit, in input space):  u = J v / ||J v||  (a jvp),
    w = J^T u  (a transposed jvp),  sigma = ||w|| = ||J^T J v|| / ||J v||,  v <- w / ||w||.
    The estimates increase monotonically to sigma_max (from below) at the rate
    (sigma_2 / sigma_1)^4 per iteration; ``jax.linearize`` runs the network forward once and
    ``jax.linear_transpose`` of the linearized map gives J^T, so an iteration costs about one
    forward plus one backward pass of the tangent/cotangent only, with memory independent of K.

    The loop is one ``lax.while_loop`` over the whole batch: a sample stops (its v, sigma and
    iteration count freeze) when |sigma_t - sigma_{t-1}| <= tol * sigma_t + atol (sigma_0 = 0),
    and the loop ends when every sample has stopped or after ``max_iters`` iterations. The
    seed's setting (``metric_helpers.spectral_norm``) is ``SEED_POWER``: max_iters=10, tol=0,
    atol=1e-2 (absolute). Note the stopping rule bounds the change, not the error: with a
    per-iteration contraction q the remaining error is about change * q / (1 - q), which is why
    the default tol (1e-5) is well below the 1e-3 relative accuracy it is meant to deliver.

    Accuracy caveat (inherent to power iteration, not flagged by ``converged``): when the two
    top singular values are within a few percent and the random start is nearly orthogonal to
    the top singular vector, the estimate creeps up from sigma_2 so slowly that it passes the
    test early, low by up to the gap (sigma_1 - sigma_2) / sigma_1. The mean error is about
    sqrt(tol) / pi whatever the gap; simulated at tol = 1e-5 (random 10 x 200 Jacobians,
    2000 starts per gap) the share of samples more than 1e-3 low was 0 at a gap of 30%, 0.05%
    at 10%, 1.9% at 3% and 7.5% at 1% (max error = the gap). On the networks of the tests and
    the benchmark every sample was within 1e-5 of exact. Use an exact mode (cheap for small K)
    when every sample must be within 1e-3; a Lanczos iteration would escape faster.

    The start vector is Gaussian from ``key`` (irmx's ``mc_sample`` stream), one per sample.
    With one output (crossentropy, target_logit_only) J is a row and sigma_max = ||J||: it is
    computed exactly by one vjp (converged, 1 iteration) instead of iterating.

    Returns (sigma_B, converged_B bool, iterations_B int32).
    """
    batch = x_B.shape[0]
    if _num_outputs(out_fn, x_B) == 1:
        sigma = frobenius_exact(out_fn, x_B, "bigmem")
        return sigma, jnp.ones((batch,), bool), jnp.ones((batch,), jnp.int32)
    out, jvp_fn = jax.linearize(out_fn, x_B)
    vjp_fn = canonical_convs(jax.linear_transpose(jvp_fn, x_B), out)
    bshape = (batch,) + (1,) * (x_B.ndim - 1)
    v = jax.random.normal(key, x_B.shape, x_B.dtype)
    v = v / jnp.sqrt(_sq_norms(v)).reshape(bshape)

    def cond(state):
        i, _, _, converged, _ = state
        return (i < max_iters) & ~jnp.all(converged)

    def body(state):
        i, v, sigma, converged, iters = state
        u = jvp_fn(v)
        u = u / jnp.maximum(jnp.sqrt(_sq_norms(u)), _TINY)[:, None]
        (w,) = vjp_fn(u)
        s = jnp.sqrt(_sq_norms(w))
        v_new = w / jnp.maximum(s, _TINY).reshape(bshape)
        active = ~converged
        done = jnp.abs(s - sigma) <= tol * s + atol
        return (
            i + 1,
            jnp.where(active.reshape(bshape), v_new, v),
            jnp.where(active, s, sigma),
            converged | (active & done),
            jnp.where(active, i + 1, iters),
        )

    init = (
        jnp.int32(0),
        v,
        jnp.zeros((batch,), x_B.dtype),
        jnp.zeros((batch,), bool),
        jnp.zeros((batch,), jnp.int32),
    )
    _, _, sigma, converged, iters = lax.while_loop(cond, body, init)
    return sigma, converged, iters


# Adaptive Hutchinson (num_probes=0): probes come in blocks of HUTCHINSON_BLOCK, the stopping test
# runs after each block once HUTCHINSON_MIN_PROBES are in (a variance from fewer probes is too
# noisy to stop on). Simulated on 10 x 50 Jacobians (rank-1-dominated, random, one large row)
# at rel_error 0.01, 400-1000 runs each: rms error of ||J||_F 0.006-0.010, 0-4.2% of runs
# beyond 2 rel_error (a Gaussian: 4.6%), 32 to ~3700 probes.
HUTCHINSON_BLOCK = 16
HUTCHINSON_MIN_PROBES = 32


def _probe_values(out_fn, x_B, probe_space: str):
    """``values(key) -> (B,)``: one Hutchinson probe's ||J^T u||^2 (output space: a vjp sharing
    one forward pass) or ||J v||^2 (input space: a jvp), Rademacher u / v from ``key``."""
    if probe_space == "output":
        out, vjp_fn = jax.vjp(out_fn, x_B)
        vjp_fn = canonical_convs(vjp_fn, out)  # a loop body: see irmx.conv_layout
        return lambda k: _sq_norms(vjp_fn(jax.random.rademacher(k, out.shape, out.dtype))[0])
    if probe_space == "input":

        def values(k):
            _, u = jax.jvp(out_fn, (x_B,), (jax.random.rademacher(k, x_B.shape, x_B.dtype),))
            return _sq_norms(u)

        return values
    raise ArgumentError("hutchinson_frobenius", "probe_space", probe_space,
                        "one of " + ", ".join(PROBE_SPACES))


def _block_stats(values, key, first, size: int):
    """Count, mean and sum of squared deviations (B,) of probes first..first+size-1, probe j
    drawn from fold_in(key, j) (so probe j is the same whatever the block size or count)."""
    keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(first + jnp.arange(size))
    v_PxB = lax.map(values, keys)
    mean = jnp.mean(v_PxB, axis=0)
    return jnp.float32(size), mean, jnp.sum(jnp.square(v_PxB - mean), axis=0)


def _merge(a, b):
    """Chan et al.'s pairwise update of (count, mean, M2): numerically stable, unlike the raw
    sum of squares when the probes barely vary."""
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + jnp.square(delta) * (na * nb / n)


def hutchinson_frobenius(out_fn, x_B, key, *, num_probes: int = 0, probe_space: str = "output",
                         rel_error: float = 0.01, max_probes: int = 4096) -> dict:
    r"""Hutchinson's estimate of ||J(x)||_F^2 per sample with its standard error.

    Probes p = 1..n give values q_p = ||J^T u_p||^2 (``probe_space="output"``, Rademacher u in
    {-1, 1}^K, one vjp each after one shared forward pass) or q_p = ||J v_p||^2 (``"input"``,
    v in {-1, 1}^D, one jvp each); E q_p = ||J||_F^2. The estimate is their mean, its variance
    s^2 / n from their sample variance s^2 (the exact one: ``hutchinson_variance``).

    ``num_probes > 0``: that many probes. ``num_probes = 0`` (adaptive): per sample, probes in
    blocks of ``HUTCHINSON_BLOCK`` inside one ``lax.while_loop`` until the estimated relative
    standard error of the *norm* ||J||_F — half that of the squared norm, by the delta method:
    se(sqrt S) = se(S) / (2 sqrt S) — is at most ``rel_error``, i.e. s^2 / n <= (2 rel_error
    mean)^2, after at least ``HUTCHINSON_MIN_PROBES`` probes and at most ``max_probes`` (a
    sample stopped by the cap is not ``converged``). A stopped sample's statistics freeze while
    the others go on; the batch's passes run until the last sample stops. The probes needed are
    (sd(q) / (2 rel_error E q))^2: from tens when the rows of J are nearly orthogonal to
    thousands when they are nearly parallel (then sd(q) ~ 1.3 E q at K = 10, ~3700 probes at
    1%), which is why the exact K backward passes are the cheaper choice for small K.

    With one output (crossentropy, target_logit_only) and output probes q_p = ||J||^2 for every
    probe: one vjp gives the exact value (standard error 0, 1 probe). Jittable, vmappable.

    Returns dict(sq=(B,) estimate of ||J||_F^2, sq_var=(B,) its estimated variance s^2 / n (NaN
    for one probe), probes=(B,) int32, converged=(B,) bool).
    """
    batch = x_B.shape[0]
    if probe_space == "output" and _num_outputs(out_fn, x_B) == 1:
        # u = +-1 and ||J^T u||^2 = ||J||^2 for every probe: one vjp gives the exact value.
        sq = jnp.square(frobenius_exact(out_fn, x_B, "bigmem"))
        return dict(sq=sq, sq_var=jnp.zeros_like(sq), probes=jnp.ones((batch,), jnp.int32),
                    converged=jnp.ones((batch,), bool))
    values = _probe_values(out_fn, x_B, probe_space)
    if num_probes > 0:
        n, mean, m2 = _block_stats(values, key, 0, num_probes)
        n = jnp.full((batch,), n)
        converged = jnp.ones((batch,), bool)
    else:
        dtype = jax.eval_shape(values, key).dtype

        def cond(state):
            drawn, _, converged = state
            return (drawn < max_probes) & ~jnp.all(converged)

        def body(state):
            drawn, stats, converged = state
            new = _merge(stats, _block_stats(values, key, drawn, HUTCHINSON_BLOCK))
            active = ~converged
            stats = tuple(jnp.where(active, b, a) for a, b in zip(stats, new, strict=True))
            n, mean, m2 = stats
            small = m2 / (n - 1.0) / n <= jnp.square(2.0 * rel_error * mean)
            return drawn + HUTCHINSON_BLOCK, stats, converged | (
                active & (n >= HUTCHINSON_MIN_PROBES) & small)

        zeros = jnp.zeros((batch,), dtype)
        init = (jnp.int32(0), (zeros, zeros, zeros), jnp.zeros((batch,), bool))
        _, (n, mean, m2), converged = lax.while_loop(cond, body, init)
    sq_var = jnp.where(n > 1, m2 / jnp.maximum(n - 1.0, 1.0) / n, jnp.nan)
    return dict(sq=mean, sq_var=sq_var, probes=n.astype(jnp.int32), converged=converged)


def hutchinson_sq_frobenius(out_fn, x_B, key, *, num_probes: int = 10,
                            probe_space: str = "output") -> jax.Array:
    r"""Unbiased estimate of ||J(x)||_F^2 per sample from ``num_probes`` Rademacher probes
    (``hutchinson_frobenius``'s ``sq``; probe j from fold_in(key, j)).

    ``probe_space="output"`` (default): u in {-1, 1}^K, estimate mean_p ||J^T u_p||^2, one
    backward pass (vjp) per probe, sharing one forward pass. Its variance is

        Var = 2 (||J J^T||_F^2 - sum_k (J J^T)_kk^2) / num_probes,

    zero when the rows of J are orthogonal, in particular when K = 1 (crossentropy or
    target_logit_only: the estimate is then exact).

    ``probe_space="input"``: v in {-1, 1}^D, estimate mean_p ||J v_p||^2, one jvp (forward-mode,
    no stored activations) per probe, with

        Var = 2 (||J^T J||_F^2 - sum_i (J^T J)_ii^2) / num_probes.

    Both Gram matrices have the same Frobenius norm (sum_i sigma_i^4); the output-space variance
    subtracts the K squared row norms ||J_k.||^4, the input-space one the D squared column norms
    ||J_.i||^4, which are tiny when D >> K and the Jacobian is spread over the input, so the
    output-space probe is (for image classifiers) the lower-variance choice at about the same
    cost per probe (a backward vs a jvp pass) — hence the default. Either beats the exact K
    backward passes only when num_probes < K.
    """
    if num_probes < 1:
        raise ArgumentError("hutchinson_sq_frobenius", "num_probes", num_probes,
                            "an integer >= 1 (0, adaptive: hutchinson_frobenius)")
    return hutchinson_frobenius(out_fn, x_B, key, num_probes=num_probes,
                                probe_space=probe_space)["sq"]


def hutchinson_variance(j_BxKxD, probe_space: str = "output", num_probes: int = 1):
    """The exact variance of ``hutchinson_sq_frobenius`` for given dense Jacobians (for tests
    and for choosing num_probes): 2 (||G||_F^2 - sum_i G_ii^2) / num_probes, G = J J^T (output
    probes) or J^T J (input probes)."""
    if probe_space == "output":
        gram = jnp.einsum("bkd,bld->bkl", j_BxKxD, j_BxKxD, precision=lax.Precision.HIGHEST)
    else:
        gram = jnp.einsum("bkd,bke->bde", j_BxKxD, j_BxKxD, precision=lax.Precision.HIGHEST)
    diag = jnp.diagonal(gram, axis1=1, axis2=2)
    return 2.0 * (jnp.sum(gram**2, axis=(1, 2)) - jnp.sum(diag**2, axis=1)) / num_probes
