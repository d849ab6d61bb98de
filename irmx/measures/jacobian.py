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
* ``matrix_free``: no Jacobian. The operator norm by block Lanczos on the K x K matrix J J^T
  (``lanczos_operator_norm``) with one transposed jvp and one jvp (``jax.linearize`` +
  ``jax.linear_transpose``) per Krylov vector; the Frobenius
  norm by Hutchinson's estimator with its standard error, by default with as many probes as
  reach a requested relative error (``hutchinson_frobenius``). Memory independent of K.

The backward passes that run inside a loop (per_output's map, the Lanczos iteration, the
Hutchinson probes) are re-traced with canonical-layout convolution kernels (``irmx.conv_layout``):
XLA:CPU otherwise runs the input-gradient convolutions of a loop body 6-8x slower.

The exact operator norm is sqrt(lambda_max(J J^T)) of the K x K Gram matrix (``eigvalsh``).
The seed instead runs a power iteration (10 steps, absolute tolerance 1e-2) on a rearrangement
of the explicit Jacobian that is not J (``J.view(N, -1, H)``): ``seed_operator_norm``
reproduces its numbers (``seed_compat``), which are 0.45-0.85 of sigma_max on trained nets.
(The seed's ``jacobian_low_mem`` writes row k to column ``-k``, a permutation of the rows,
which changes neither norm of J. Its --normalization choice "jacobian" sets a flag that no
metric reads, so it is not offered here.)
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from irmx.conv_layout import canonical_convs
from irmx.errors import ArgumentError

NORMALIZATIONS = ("none", "softmax", "logsoftmax", "crossentropy")
MODES = ("per_output", "bigmem", "matrix_free")
PROBE_SPACES = ("output", "input")

# Breakdown threshold of the Lanczos basis: a new column keeping less than this fraction of
# its norm after reorthogonalization is taken to lie in the span already.
_BREAKDOWN = 1e-4


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


def _orthogonalize(v_K, basis_KxM):
    """v (a vector, or the columns of a matrix) minus its projection on the columns of
    ``basis`` (orthonormal or zero), twice: one
    Gram-Schmidt pass loses orthogonality in proportion to the cancellation, two do not
    ("twice is enough", Giraud et al. 2005)."""
    hi = lax.Precision.HIGHEST
    for _ in range(2):
        v_K = v_K - jnp.matmul(basis_KxM, jnp.matmul(basis_KxM.T, v_K, precision=hi),
                               precision=hi)
    return v_K


def _extend_basis(basis_KxM, rank, new_Kxb, start):
    """Write the columns of ``new`` into ``basis`` from column ``start`` on, each orthogonalized
    against the basis so far and normalized. A column that is (nearly) in the span already is
    replaced by the coordinate vector e_i with the largest part outside the span: its part has
    squared norm >= (K - rank) / K (the trace of the complementary projector), so the basis
    grows until it has K columns, and only then are columns left zero. Returns (basis, rank)."""
    eye = jnp.eye(basis_KxM.shape[0], dtype=basis_KxM.dtype)

    def add(j, state):
        basis, rank = state
        col = new_Kxb[:, j]
        w = _orthogonalize(col, basis)
        norm = jnp.linalg.norm(w)
        # Breakdown (the Krylov space is invariant) or a zero column: restart from e_i.
        rest = _orthogonalize(eye, basis)
        rest_norms = jnp.linalg.norm(rest, axis=0)
        best = jnp.argmax(rest_norms)
        breakdown = norm <= _BREAKDOWN * jnp.linalg.norm(col)
        w = jnp.where(breakdown, rest[:, best], w)
        norm = jnp.where(breakdown, rest_norms[best], norm)
        # e_i's part is below 1e-4 only when the basis spans R^K already
        full = breakdown & (norm <= _BREAKDOWN)
        q = jnp.where(full, 0.0, w / jnp.where(full, 1.0, norm))
        basis = lax.dynamic_update_slice_in_dim(basis, q[:, None], start + j, axis=1)
        return basis, rank + jnp.where(full, 0, 1)

    return lax.fori_loop(0, new_Kxb.shape[1], add, (basis_KxM, rank))


def _rayleigh_ritz(basis_KxM, image_KxM):
    """The top Ritz pair of A on span(basis) (image = A basis; unused columns zero): theta =
    lambda_max(V^T A V) and the residual norm ||A y - theta y|| of its Ritz vector y = V s."""
    hi = lax.Precision.HIGHEST
    h = jnp.matmul(basis_KxM.T, image_KxM, precision=hi)
    theta, s = jnp.linalg.eigh(0.5 * (h + h.T))
    theta, s = theta[-1], s[:, -1]
    resid = jnp.matmul(image_KxM, s, precision=hi) - theta * jnp.matmul(basis_KxM, s,
                                                                          precision=hi)
    return jnp.maximum(theta, 0.0), jnp.linalg.norm(resid)


def lanczos_operator_norm(out_fn, x_B, key, *, tol: float = 1e-5, atol: float = 0.0,
                          max_iters: int = 200, block_size: int = 2, start_BxKxb=None):
    r"""sigma_max(J(x)) per sample by block Lanczos on the K x K matrix A = J J^T, without J.

    sigma_max(J)^2 = lambda_max(A). A is applied matrix-free in output space, A u = J (J^T u):
    one transposed jvp (``jax.linear_transpose`` of ``jax.linearize``'s map: a backward pass)
    and one jvp per vector, so the basis vectors have K entries (cheap to store and to
    reorthogonalize) and memory stays independent of K beyond K x K per sample.

    Per sample: an orthonormal basis V of the block Krylov space span{Q, A Q, A^2 Q, ...}
    started from ``block_size`` Gaussian vectors Q (from ``key``, irmx's ``mc_sample`` stream),
    grown ``block_size`` columns per iteration by A applied to the newest block, fully
    reorthogonalized (two Gram-Schmidt passes); Rayleigh-Ritz gives theta = lambda_max(V^T A V)
    with Ritz vector y = V s and residual r = ||A y - theta y||, and the estimate is
    sigma = sqrt(theta). If the new block lies in the span (an invariant subspace), the basis is
    extended by the coordinate vector with the largest part outside it, so V reaches K columns.

    Stopping rule, per sample, in one ``lax.while_loop`` over the batch: stop when

        r <= tol * theta + atol * sqrt(theta)     or     rank(V) = K (Krylov space exhausted),

    or after ``max_iters`` iterations (not converged). Why ``converged`` holds: (i) for
    symmetric A every unit y has an eigenvalue lambda with |lambda - theta| <= r (Krylov-
    Weinstein), so |sqrt(lambda) - sigma| <= r / sqrt(theta) <= tol * sigma + atol; (ii) theta
    <= lambda_max (Courant-Fischer), so the estimate never exceeds sigma_max; (iii) at rank K,
    V^T A V is similar to A and theta = lambda_max to rounding, whatever the start. What the
    residual test cannot see is an eigenvector missing from the Krylov space: stopping before
    exhaustion at a lower eigenvalue needs every start vector to be nearly orthogonal to the top
    singular vector, which is why the block has two: simulated on random 10 x 200 Jacobians
    with sigma_2 / sigma_1 = 0.99, 0.97, 0.9 (2000 samples each, tol 1e-4), a single start
    stopped wrong and "converged" on 6 / 2000 samples at the 1% gap (up to the gap low), a
    block of 2 on none (max error 4e-7), and a start block with one vector 1e-6 from
    orthogonal is harmless (tested). On 100 x 200 Jacobians (300 samples per gap) neither
    failed (max error 4e-7); a block of 2 stopped after 25 / 15 / 12 iterations on average at
    the 1% / 3% / 10% gaps (tol 1e-4: 49 / 30 / 25 of the 100 vectors), a single start after
    31 / 19 / 13 (fewer vectors, more iterations; a vmapped pair costs about one vector).
    Stopping at sigma_2 is the failure of the power iteration this replaces (it reported
    convergence near sigma_2 on 6 of 8,400 samples, up to 15% low).

    Cost: ``block_size`` jvp + vjp pairs per iteration and at most ceil(K / block_size)
    iterations; a K x K eigendecomposition per sample per iteration (negligible next to the
    network passes for K <= a few hundred). ``start_BxKxb`` replaces the random start (tests).
    With one output (crossentropy, target_logit_only) J is a row and sigma_max = ||J||: it is
    computed exactly by one vjp (converged, 1 iteration).

    Returns (sigma_B, converged_B bool, iterations_B int32).
    """
    batch = x_B.shape[0]
    k_out = _num_outputs(out_fn, x_B)
    if k_out == 1:
        sigma = frobenius_exact(out_fn, x_B, "bigmem")
        return sigma, jnp.ones((batch,), bool), jnp.ones((batch,), jnp.int32)
    b = min(block_size, k_out)
    out, jvp_fn = jax.linearize(out_fn, x_B)
    vjp_fn = canonical_convs(jax.linear_transpose(jvp_fn, x_B), out)
    gram_op = jax.vmap(lambda u_BxK: jvp_fn(vjp_fn(u_BxK)[0]), in_axes=2, out_axes=2)
    if start_BxKxb is None:
        start_BxKxb = jax.random.normal(key, (batch, k_out, b), out.dtype)
    width = -(-k_out // b) * b + b  # room for every block up to rank K, plus one
    q0, _ = jnp.linalg.qr(start_BxKxb.astype(out.dtype))  # independent with probability 1
    basis0 = jnp.zeros((batch, k_out, width), out.dtype).at[:, :, :b].set(q0)
    rank0 = jnp.full((batch,), b, jnp.int32)
    max_steps = min(max_iters, -(-k_out // b))

    def cond(state):
        i, *_, converged, _ = state
        return (i < max_steps) & ~jnp.all(converged)

    def body(state):
        i, basis, image, rank, sigma, converged, iters = state
        q = lax.dynamic_slice_in_dim(basis, i * b, b, axis=2)
        aq = gram_op(q)
        image_new = lax.dynamic_update_slice_in_dim(image, aq, i * b, axis=2)
        theta, resid = jax.vmap(_rayleigh_ritz)(basis, image_new)
        done = (resid <= tol * theta + atol * jnp.sqrt(theta)) | (rank >= k_out)
        basis_new, rank_new = jax.vmap(lambda v, r, w: _extend_basis(v, r, w, (i + 1) * b))(
            basis, rank, aq)
        active = ~converged
        a3 = active[:, None, None]
        grow = (active & ~done)[:, None, None]
        return (
            i + 1,
            jnp.where(grow, basis_new, basis),
            jnp.where(a3, image_new, image),
            jnp.where(active & ~done, rank_new, rank),
            jnp.where(active, jnp.sqrt(theta), sigma),
            converged | (active & done),
            jnp.where(active, i + 1, iters),
        )

    init = (jnp.int32(0), basis0, jnp.zeros_like(basis0), rank0,
            jnp.zeros((batch,), out.dtype), jnp.zeros((batch,), bool),
            jnp.zeros((batch,), jnp.int32))
    _, _, _, _, sigma, converged, iters = lax.while_loop(cond, body, init)
    return sigma, converged, iters


# The seed's operator-norm computation, reproduced by ``seed_operator_norm`` (``seed_compat``):
# compute_stats.py --num-power-iters (default 10) and metric_helpers.spectral_norm's atol.
SEED_NUM_POWER_ITERS = 10
SEED_ATOL = 1e-2


def seed_layout(j_BxKxD, x_shape) -> jax.Array:
    """The matrix the seed's ``spectral_norm`` iterates on, from irmx's Jacobians J_BxKxD (D
    flattened from x's non-batch axes, images in irmx's B x H x W x C layout).

    The seed's input is NCHW; ``jacobian_low_mem`` stores J as x.shape + (K,) = N x C x H x W x K
    with output k's gradient in column -k (column j holds output -j mod K), and
    ``spectral_norm`` reshapes it with ``J.view(N, -1, J.shape[2])``: J.shape[2] is the image
    height H, not K, so the matrix is a (C W K) x H rearrangement of the Jacobian's entries
    (80 x 8 on 8 x 8 digits, 960 x 32 on CIFAR), not J. For inputs with other than 4 axes the
    axes are kept (for B x D inputs J.shape[2] = K and the matrix is J^T, as intended)."""
    batch, k_out = j_BxKxD.shape[:2]
    j = j_BxKxD.reshape((batch, k_out) + tuple(x_shape[1:]))
    if len(x_shape) == 4:  # B x K x H x W x C -> the seed's N x C x H x W x K
        j = j.transpose(0, 4, 2, 3, 1)
    else:
        j = jnp.moveaxis(j, 1, -1)
    j = j[..., (-np.arange(k_out)) % k_out]
    return j.reshape(batch, -1, j.shape[2])


def seed_power_iteration(m_BxMxL, v0_BxL, *, num_steps: int = SEED_NUM_POWER_ITERS,
                         atol: float = SEED_ATOL):
    r"""The seed's ``metric_helpers.spectral_norm`` loop on matrices M, from unit starts v0.

    Per step: u = M v / ||M v||, v = M^T u / ||M^T u||, sigma = u^T M v. A sample whose estimate
    changed by less than ``atol`` (|sigma - sigma_prev| < atol, sigma_prev starting at 0) stops
    and keeps sigma_prev: the estimate *before* the one that met the tolerance; so a sample
    whose first estimate is below atol is reported as exactly 0. At most ``num_steps`` steps
    (the seed's loop also breaks when no sample changed by >= atol; per sample that is the
    same). Returns (sigma_B, converged_B: stopped by the tolerance, iterations_B: steps run).
    """
    hi = lax.Precision.HIGHEST
    mv = lambda m, v: jnp.einsum("bml,bl->bm", m, v, precision=hi)
    mtu = lambda m, u: jnp.einsum("bml,bm->bl", m, u, precision=hi)
    norm = lambda t: jnp.linalg.norm(t, axis=1, keepdims=True)

    def step(state, _):
        v, sigma_prev, active, iters = state
        u = mv(m_BxMxL, v)
        u = u / norm(u)
        v_new = mtu(m_BxMxL, u)
        v_new = v_new / norm(v_new)
        sigma = jnp.sum(mv(m_BxMxL, v_new) * u, axis=1)
        keep = active & (jnp.abs(sigma - sigma_prev) >= atol)  # NaN compares False: stops
        return (jnp.where(active[:, None], v_new, v), jnp.where(keep, sigma, sigma_prev), keep,
                iters + active), None

    batch = m_BxMxL.shape[0]
    init = (v0_BxL, jnp.zeros((batch,), m_BxMxL.dtype), jnp.ones((batch,), bool),
            jnp.zeros((batch,), jnp.int32))
    (_, sigma, active, iters), _ = lax.scan(step, init, None, length=num_steps)
    return sigma, ~active, iters


def seed_start(key, batch: int, dim: int, dtype=jnp.float32) -> jax.Array:
    """The seed's start vectors: v ~ N(0, I) in the last-axis space of ``seed_layout``'s
    matrix, normalized (``torch.randn``; here from ``key``, irmx's ``mc_sample`` stream)."""
    v = jax.random.normal(key, (batch, dim), dtype)
    return v / jnp.linalg.norm(v, axis=1, keepdims=True)


def seed_operator_norm(out_fn, x_B, key, mode: str = "per_output"):
    r"""The seed's default ``jacobian_operator_norm`` numbers (``seed_compat``): its power
    iteration (``seed_power_iteration``: 10 steps, absolute tolerance 1e-2, the estimate
    before the converged one, zero below 1e-2) on its rearrangement of the explicit Jacobian
    (``seed_layout``), not on J. That is not sigma_max(J): on the README's trained 8 x 8 digits
    nets (4 seeds x 1000 training points) its mean ratio to sigma_max is 0.80 on logits (5-95%:
    0.70-0.91), 0.59 with softmax (0.46-0.74) and 0.83 with logsoftmax; the issue measured
    0.45-0.54 on CIFAR-shaped input.

    The Jacobian comes from ``exact_jacobian(out_fn, x_B, mode)``: per_output is the seed's
    default ``jacobian_low_mem``; bigmem gives the same Jacobian. (The seed's --bigmem path,
    ``jacobian_big_mem`` on the input tiled K times, mixes samples: column k of sample n is the
    gradient at sample (n K + k) mod N, correct only at batch size 1; not reproduced.) With one
    output (crossentropy, target_logit_only) the seed's Jacobian is N x D and its
    ``spectral_norm`` raises an IndexError: so does this, with a one-line ValueError.

    Returns (sigma_B, converged_B, iterations_B) as ``seed_power_iteration``.
    """
    if _num_outputs(out_fn, x_B) == 1:
        raise ValueError("seed_operator_norm: one output (normalization='crossentropy' or "
                         "target_logit_only): the seed fails here (IndexError in spectral_norm); "
                         "use seed_compat=False")
    m = seed_layout(exact_jacobian(out_fn, x_B, mode), x_B.shape)
    return seed_power_iteration(m, seed_start(key, m.shape[0], m.shape[2], m.dtype))


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
