"""The linear chain structural equation model of Arjovsky et al. 2019 (IRM, section 5.1).

With h = dim/2 and an environment's noise scale sigma (hidden confounder H, causes X, target Y,
effects Z, all h-dimensional)::

    H = N(0, sigma^2)                 X = H W_hx + N(0, sigma^2)
    Y = X W_xy + H W_hy + N(0, s_y)   Z = Y W_yz + H W_hz + N(0, s_z)
    inputs = [X, Z] S,  target = sum_j Y_j

Heteroskedastic ("E"): s_y = sigma^2, s_z = 1; homoskedastic ("O"): s_y = 1, s_z = sigma^2.
Partially observed ("P", hidden confounding): W_hx, W_hy, W_hz ~ N(0, 1)/dim; fully observed
("F"): W_hx = I, W_hy = W_hz = 0. Scrambled ("S"): S is the orthogonal factor of a Gaussian
matrix's QR; unscrambled ("U"): S = I. W_xy = W_yz = I. The invariant (causal) solution uses X
alone: w* = S^T [1,...,1, 0,...,0]. Settings are named as in the paper: FOU, FOS, ..., PES.
The reference is facebookresearch/InvariantRiskMinimization, code/experiment_synthetic/sem.py.
"""

import flax
import jax
import jax.numpy as jnp

from irmx.errors import ArgumentError

SETTINGS = tuple(a + b + c for a in "FP" for b in "OE" for c in "US")


@flax.struct.dataclass
class ChainSEM:
    """One draw of the SEM's weights (a pytree, so a seed-vmapped batch of SEMs works)."""

    w_hx: jax.Array
    w_hy: jax.Array
    w_hz: jax.Array
    w_xy: jax.Array
    w_yz: jax.Array
    scramble: jax.Array  # (dim, dim) orthogonal; inputs = [X, Z] @ scramble
    hetero: bool = flax.struct.field(pytree_node=False, default=True)


def parse_setting(setting: str) -> dict:
    """'FEU' -> {'hidden': False, 'hetero': True, 'scramble': False}."""
    if setting not in SETTINGS:
        raise ArgumentError("parse_setting", "setting", setting, "one of " + ", ".join(SETTINGS))
    return {"hidden": setting[0] == "P", "hetero": setting[1] == "E", "scramble": setting[2] == "S"}


def make_chain_sem(key, dim: int, setting: str) -> ChainSEM:
    """Draw the SEM's weights for ``setting`` from ``key`` (one Gaussian draw, sliced: fast to
    compile, as each separate threefry call costs compile time on CPU)."""
    opts = parse_setting(setting)
    h = dim // 2
    flat = jax.random.normal(key, (dim * dim + 3 * h * h,))
    gauss_scramble = flat[: dim * dim].reshape(dim, dim)
    gauss_hidden = flat[dim * dim :].reshape(3, h, h) / dim
    eye = jnp.eye(h)
    if opts["scramble"]:
        scramble, _ = jnp.linalg.qr(gauss_scramble)
    else:
        scramble = jnp.eye(dim)
    if opts["hidden"]:
        w_hx, w_hy, w_hz = gauss_hidden
    else:
        w_hx, w_hy, w_hz = eye, jnp.zeros((h, h)), jnp.zeros((h, h))
    return ChainSEM(w_hx, w_hy, w_hz, eye, eye, scramble, hetero=opts["hetero"])


def sample_environment(sem: ChainSEM, noise_4xNxH, sigma) -> tuple[jax.Array, jax.Array]:
    """One environment from standard normal noise (4, n, h) for H, X, Y, Z: inputs (n, dim)
    and target (n,)."""
    e_h, e_x, e_y, e_z = noise_4xNxH
    hid = e_h * sigma
    x = hid @ sem.w_hx + e_x * sigma
    y_scale, z_scale = (sigma, 1.0) if sem.hetero else (1.0, sigma)
    y = x @ sem.w_xy + hid @ sem.w_hy + e_y * y_scale
    z = y @ sem.w_yz + hid @ sem.w_hz + e_z * z_scale
    return jnp.concatenate([x, z], axis=1) @ sem.scramble, y.sum(axis=1)


def causal_solution(sem: ChainSEM) -> jax.Array:
    """The invariant regression vector in input coordinates: S^T [W_xy 1; 0]."""
    h = sem.w_xy.shape[0]
    return sem.scramble.T @ jnp.concatenate([sem.w_xy.sum(1), jnp.zeros(h)])


def causal_mask(dim: int) -> jax.Array:
    """1 on the causal (X) coordinates of the unscrambled basis, 0 on the effects (Z)."""
    return jnp.concatenate([jnp.ones(dim // 2), jnp.zeros(dim - dim // 2)])


def make_environments(key, sem: ChainSEM, n: int, sigmas) -> tuple[jax.Array, jax.Array]:
    """One environment per sigma, n samples each: inputs (E, n, dim), targets (E, n)."""
    h = sem.w_xy.shape[0]
    noise = jax.random.normal(key, (len(sigmas), 4, n, h))
    xs, ys = zip(*(sample_environment(sem, noise[e], s) for e, s in enumerate(sigmas)))
    return jnp.stack(xs), jnp.stack(ys)


def compress_environment(x_NxD, y_N) -> tuple[jax.Array, jax.Array]:
    """An exact (D+1)-row stand-in for one environment, for models linear in x without an
    intercept (f(x) = x v(params): ``phi_w``, ``linear`` without bias) and the squared loss.

    With the thin QR x = Q R, q = Q^T y and r = ||y - Q q|| (the least-squares residual),
    ``x' = c [R; 0]`` and ``y' = c [q; r]`` with c = sqrt((D+1)/N) give, for every v,

        mean_i (x'_i v - y'_i)^2 = (||R v - q||^2 + r^2) / N = mean_i (x_i v - y_i)^2,

    so the risk, its gradients and both IRMv1 penalties (functions of x^T x / N and x^T y / N)
    are unchanged while a step costs O(D^2) instead of O(N D). Float rounding differs.
    """
    n, dim = x_NxD.shape
    q_mat, r_mat = jnp.linalg.qr(x_NxD)
    q = q_mat.T @ y_N
    resid = jnp.sqrt(jnp.sum((y_N - q_mat @ q) ** 2))
    c = jnp.sqrt((dim + 1) / n)
    x_c = jnp.concatenate([r_mat, jnp.zeros((1, dim), x_NxD.dtype)]) * c
    y_c = jnp.concatenate([q, resid[None]]) * c
    return x_c, y_c
