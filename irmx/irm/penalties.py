"""Invariance penalties."""

import jax
import jax.numpy as jnp


def mse(pred, y):
    """Mean squared error, the regression risk R^e of the IRM synthetic study."""
    return jnp.mean((pred - y) ** 2)


def irmv1_penalty(pred, y, risk_fn=mse):
    """IRMv1 penalty of one environment: (d/ds R^e(s * f(x)) at s = 1)^2.

    Arjovsky et al. 2019, eq. (IRMv1): ||grad_{w | w=1.0} R^e(w . Phi)||^2 with a scalar dummy
    classifier w. For the squared loss this is (2 E[(f - y) f])^2.
    """
    grad_s = jax.grad(lambda s: risk_fn(s * pred, y))(jnp.ones((), pred.dtype))
    return grad_s**2
