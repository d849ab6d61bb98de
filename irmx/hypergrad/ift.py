"""Implicit-function-theorem hypergradients with a truncated Neumann series (matrix-free).

At a fixed point w* = Phi(w*, lambda) of the update map Phi (``irmx.train.make_update``), the
implicit function theorem gives dw*/dlambda = (I - J)^-1 dPhi/dlambda with J = dPhi/dw, so the
hypergradient of a validation loss L_V is

    dL_V/dlambda = dL_V/dlambda|direct + (dPhi/dlambda)^T (I - J^T)^-1 dL_V/dw .

Clarke et al. (ICLR 2022, Eq. 5-6; Lorraine, Vicol & Duvenaud 2020) approximate the inverse by
the truncated Neumann series (I - J^T)^-1 v ~ sum_{i=0}^{K-1} (J^T)^i v. The reference code
(``optimisers.py``, NeumannHypergradientOptimiser._hypergradient) computes exactly this with
K = ``hyperparameter_rollback_distance`` = 5 terms (i = 0..4), J and dPhi/dlambda taken at the
last network step (w_{T-1} -> w_T, the momentum buffer held fixed), v = dL_V(w_T)/dw, and drops
the direct term (zero for weight-update hyperparameters: L_V does not depend on them). Every
product here is one vjp of the update map; no Jacobian or Hessian is materialised.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def neumann_series(vjp_w, v, num_terms: int):
    """p = sum_{i=0}^{K-1} (J^T)^i v with ``vjp_w(u) = J^T u`` (K = ``num_terms`` >= 1)."""

    def body(_, carry):
        term, total = carry
        term = vjp_w(term)
        return term, _add(total, term)

    _, total = jax.lax.fori_loop(0, num_terms - 1, body, (v, v))
    return total


def neumann_hypergradient(phi, params, values, val_grad, num_terms: int):
    """(dPhi/dlambda)^T sum_{i<K} (J^T)^i ``val_grad`` at (``params``, ``values``): the
    reference's indirect hypergradient (module docstring). ``phi(params, values) ->
    new_params``."""
    _, vjp_fn = jax.vjp(phi, params, values)
    p = neumann_series(lambda u: vjp_fn(u)[0], val_grad, num_terms)
    return vjp_fn(p)[1]


def ift_hypergradient_dense(phi, params, values, val_grad):
    """The same hypergradient with the exact inverse, (dPhi/dlambda)^T (I - J^T)^-1 v, from a
    dense Jacobian and a linear solve: the reference the Neumann series is tested against
    (small models only)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = jax.jacfwd(lambda f: jax.flatten_util.ravel_pytree(phi(unravel(f), values))[0])(flat)
    v = jax.flatten_util.ravel_pytree(val_grad)[0]
    p = jnp.linalg.solve(jnp.eye(flat.size, dtype=jac.dtype) - jac.T, v)
    _, vjp_fn = jax.vjp(phi, params, values)
    return vjp_fn(unravel(p))[1]
