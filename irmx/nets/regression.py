"""Regressors of the IRM synthetic study (outputs squeezed to shape (B,) for one target)."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


def _squeeze(y):
    return y[..., 0] if y.shape[-1] == 1 else y


class Linear(nn.Module):
    """f(x) = x w (+ b when ``use_bias``; the SEM has no intercept, so b is learned near 0)."""

    features: int = 1
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        return _squeeze(nn.Dense(self.features, use_bias=self.use_bias)(x))


class PhiW(nn.Module):
    """IRM's f(x) = x Phi w with Phi (D x D) trained from the identity and w = 1 fixed.

    The parameterisation of the IRM reference code (models.py, InvariantRiskMinimization).
    ``w`` (D,) replaces the fixed classifier: the IRM reference's penalty differentiates the
    risk with respect to it (``irmx.irm.penalties.irmv1_vector_penalty``).
    """

    @nn.compact
    def __call__(self, x, w=None):
        dim = x.shape[-1]
        phi = self.param("phi", lambda key, shape: jnp.eye(*shape), (dim, dim))
        if w is None:
            return (x @ phi).sum(-1)
        return x @ phi @ w


class MLP(nn.Module):
    """ReLU MLP ("nonlinear" model): Dense-ReLU per hidden width, then a linear head."""

    hidden: Sequence[int] = (64,)
    out_dim: int = 1

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return _squeeze(nn.Dense(self.out_dim)(x))
