"""Gradient managers: optax transforms that combine per-term gradients (ERM risk, penalty).

Each takes gradients stacked along a leading axis of two terms, g = (g_e, g_p), as produced by
``irmx.train.term_gradients``, and returns one combined gradient for the next transform of an
``optax.chain`` (adam, sgd, ...). Their hyperparameters are plain arguments, so
``optax.inject_hyperparams`` makes them per-learner vmapped values.

- ``weighted_sum``: g_e + lambda_t g_p with IRM's annealing: lambda_t = 1 while step <
  ``anneal_steps``, then ``penalty_weight``; when lambda_t > 1 the whole gradient is divided by
  lambda_t (the IRM reference's colored-MNIST rescaling, which keeps the step size bounded).
- ``convex_mix``: r g_e + (1 - r) g_p, r = ``erm_weight`` (the reference's synthetic study).
- ``adareg``: lambda_t = alpha ||g_e|| / (||g_p|| + eps), so the penalty always contributes the
  fraction alpha of the ERM gradient's norm; global norms over the whole model
  (``per_tensor=False``, the seed's ``adareg_simple``) or one lambda per parameter tensor
  (``per_tensor=True``, the seed's ``adareg``). With ``beta > 0`` ("soft AdaReg") both norms are
  bias-corrected exponential moving averages with decay beta,
  n_t = (beta n_{t-1} + (1 - beta) ||g||) / (1 - beta^t), before the ratio is taken.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

MANAGERS = ("none", "adareg", "soft_adareg")


class WeightedSumState(NamedTuple):
    count: jax.Array
    penalty_weight: jax.Array  # lambda_t of the last step (for logging)


def weighted_sum(penalty_weight, anneal_steps: int = 0, rescale: bool = True):
    """g = (g_e + lambda_t g_p) / max(lambda_t, 1) if rescale else g_e + lambda_t g_p."""

    def init_fn(params):
        del params
        return WeightedSumState(jnp.zeros((), jnp.int32), jnp.ones((), jnp.float32))

    def update_fn(updates, state, params=None):
        del params
        lam = jnp.where(state.count < anneal_steps, 1.0, penalty_weight).astype(jnp.float32)
        scale = jnp.where(lam > 1.0, 1.0 / lam, 1.0) if rescale else 1.0
        out = jax.tree.map(lambda g: (g[0] + lam * g[1]) * scale, updates)
        return out, WeightedSumState(state.count + 1, lam)

    return optax.GradientTransformation(init_fn, update_fn)


class ConvexMixState(NamedTuple):
    count: jax.Array


def convex_mix(erm_weight):
    """g = r g_e + (1 - r) g_p with r = ``erm_weight`` in [0, 1]: the IRM reference's
    synthetic-study objective r * error + (1 - r) * penalty (its ``reg``; r = 0 is the penalty
    alone), from the first step (no annealing, no rescaling)."""

    def init_fn(params):
        del params
        return ConvexMixState(jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        r = jnp.asarray(erm_weight, jnp.float32)
        out = jax.tree.map(lambda g: r * g[0] + (1.0 - r) * g[1], updates)
        return out, ConvexMixState(state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


class AdaRegState(NamedTuple):
    count: jax.Array
    norm_erm: Any  # EMA of ||g_e||: scalar, or one per tensor
    norm_penalty: Any
    penalty_weight: Any  # lambda_t of the last step: scalar, or one per tensor


def _norms(tree_T, per_tensor: bool):
    """(||g_e||, ||g_p||): whole-model norms, or per-leaf trees of norms."""
    if per_tensor:
        sq = jax.tree.map(lambda g: jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1), tree_T)
        norm_of_term = lambda t: jax.tree.map(lambda s: jnp.sqrt(s[t]), sq)
        return norm_of_term(0), norm_of_term(1)
    total = sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in jax.tree.leaves(tree_T))
    return jnp.sqrt(total[0]), jnp.sqrt(total[1])


def adareg(alpha, beta=0.0, eps: float = 1e-8, per_tensor: bool = False):
    """AdaReg: g = g_e + lambda_t g_p, lambda_t = alpha ||g_e|| / (||g_p|| + eps) (see module)."""

    def init_fn(params):
        zeros = jax.tree.map(lambda p: jnp.zeros((), jnp.float32), params)
        z = zeros if per_tensor else jnp.zeros((), jnp.float32)
        return AdaRegState(jnp.zeros((), jnp.int32), z, z, z)

    def update_fn(updates, state, params=None):
        del params
        n_e, n_p = _norms(updates, per_tensor)
        count = state.count + 1
        ema = lambda old, new: beta * old + (1.0 - beta) * new
        m_e = jax.tree.map(ema, state.norm_erm, n_e)
        m_p = jax.tree.map(ema, state.norm_penalty, n_p)
        debias = 1.0 - jnp.asarray(beta, jnp.float32) ** count
        lam = jax.tree.map(lambda a, b: alpha * (a / debias) / (b / debias + eps), m_e, m_p)
        if per_tensor:
            out = jax.tree.map(lambda g, lam_t: g[0] + lam_t * g[1], updates, lam)
        else:
            out = jax.tree.map(lambda g: g[0] + lam * g[1], updates)
        return out, AdaRegState(count, m_e, m_p, lam)

    return optax.GradientTransformation(init_fn, update_fn)
