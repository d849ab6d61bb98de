"""Linear-IRM metrics: how far a learned regressor is from the SEM's invariant solution."""

import jax
import jax.numpy as jnp

from irmx.data.sem import ChainSEM, causal_mask, causal_solution
from irmx.irm.penalties import mse


def effective_solution(apply_fn, params, x_BxD) -> jax.Array:
    """The regressor's effective linear weights: the mean input gradient E_x[grad_x f(x)].

    Exact (the weight vector, or Phi w) for linear models; the average slope of a nonlinear one.
    """
    grads = jax.vmap(jax.grad(lambda x: apply_fn(params, x[None])[0]))(x_BxD)
    return grads.mean(0)


def solution_errors(sem: ChainSEM, w_hat_D) -> dict:
    """``causal_error``, ``noncausal_error``: mean squared error between the learned and the SEM's
    solution on the causal (X) and non-causal (Z) coordinates (IRM reference, main.py ``errors``).

    Both are taken in the unscrambled basis (w = S w_hat), where X and Z are separate
    coordinates; for unscrambled settings (S = I) this is exactly the reference's definition,
    for scrambled ones it keeps the causal / non-causal split meaningful.
    """
    dim = w_hat_D.shape[0]
    mask = causal_mask(dim)
    w_true = sem.scramble @ causal_solution(sem)
    sq = (sem.scramble @ w_hat_D - w_true) ** 2
    return {
        "causal_error": jnp.sum(sq * mask) / jnp.sum(mask),
        "noncausal_error": jnp.sum(sq * (1 - mask)) / jnp.sum(1 - mask),
    }


def evaluate(apply_fn, params, sem: ChainSEM, heldout, input_projection=None) -> dict:
    """Final metrics of one learner: solution errors, the held-out MSE and the solution itself."""
    x, y = heldout
    if input_projection is not None:
        project = lambda p, v: apply_fn(p, v @ input_projection)
    else:
        project = apply_fn
    w_hat = effective_solution(project, params, x)
    return dict(
        solution_errors(sem, w_hat),
        heldout_mse=mse(project(params, x), y),
        solution=w_hat,
    )
