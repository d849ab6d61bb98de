"""Criteria: the loss terms of ERM, ERM-oracle and IRMv1 on a stack of environments.

A criterion maps (params, environments) to a vector of loss terms (ERM risk, IRMv1 penalty);
the optimizer's first transform combines their gradients (``irmx.irm.gradient_managers``).
"""

import jax
import jax.numpy as jnp

from irmx.errors import ArgumentError
from irmx.irm.penalties import irmv1_penalty, mse

CRITERIA = ("erm", "erm_oracle", "irmv1")


def make_loss_terms(apply_fn, criterion: str, input_projection=None):
    """``loss_terms(params, envs, key) -> (terms_T, metrics)`` for ``criterion``.

    ``envs = (x_ExBxD, y_ExB)`` are the training environments. The ERM risk is the mean of the
    per-environment risks; the IRMv1 penalty is their sum of squared dummy-scale gradients.
    ``input_projection`` (D x D) multiplies the inputs first: ERM-oracle uses the projector on the
    causal features, so it learns from them alone.
    """
    if criterion not in CRITERIA:
        raise ArgumentError("make_loss_terms", "criterion", criterion,
                            "one of " + ", ".join(CRITERIA))

    def loss_terms(params, envs, key):
        del key
        x_ExBxD, y_ExB = envs
        if input_projection is not None:
            x_ExBxD = x_ExBxD @ input_projection
        pred_ExB = jax.vmap(lambda x: apply_fn(params, x))(x_ExBxD)
        risks_E = jax.vmap(mse)(pred_ExB, y_ExB)
        penalties_E = jax.vmap(irmv1_penalty)(pred_ExB, y_ExB)
        risk, penalty = risks_E.mean(), penalties_E.sum()
        metrics = {"risk": risk, "penalty": penalty, "env_risks": risks_E}
        terms = jnp.stack([risk, penalty]) if criterion == "irmv1" else risk[None]
        return terms, metrics

    return loss_terms
