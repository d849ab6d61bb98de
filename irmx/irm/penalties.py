"""Invariance penalties: IRMv1 with a scalar dummy (the paper's eq.) or a vector dummy (the IRM
reference code's synthetic study)."""

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


def irmv1_vector_penalty(predict_fn, y, dim: int, risk_fn=mse):
    """IRMv1 penalty of one environment with a *vector* dummy classifier w (dim,), as the IRM
    reference's synthetic study computes it (facebookresearch/InvariantRiskMinimization,
    code/experiment_synthetic/models.py, ``InvariantRiskMinimization.train``)::

        penalty_e = mean_k (d R^e(Phi w) / d w_k at w = 1)^2

    ``predict_fn(w)`` is the prediction x Phi w of the environment's inputs for a dummy w. For the
    squared loss the gradient is 2/n Phi^T x^T (x Phi 1 - y): the mean, not the sum, over the dim
    coordinates, and a dim-dimensional (not one-dimensional) stationarity condition.
    """
    grad_w = jax.grad(lambda w: risk_fn(predict_fn(w), y))(jnp.ones((dim,), y.dtype))
    return jnp.mean(grad_w**2)
