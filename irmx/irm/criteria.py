"""Criteria: the loss terms of ERM, ERM-oracle and IRMv1 on a stack of environments.

A criterion maps (params, environments) to a vector of loss terms (ERM risk, IRMv1 penalty);
the optimizer's first transform combines their gradients (``irmx.irm.gradient_managers``).
"""

import jax
import jax.numpy as jnp

from irmx.errors import ArgumentError
from irmx.irm.penalties import irmv1_penalty, irmv1_vector_penalty, mse

CRITERIA = ("erm", "erm_oracle", "irmv1")
# scalar_dummy: (d/ds R^e(s f))^2 at s = 1 (the paper's IRMv1, any model);
# vector_dummy: mean_k (d/dw_k R^e(x Phi w))^2 at w = 1 (the IRM reference code; model phi_w)
PENALTIES = ("scalar_dummy", "vector_dummy")
RISK_REDUCTIONS = ("mean", "sum")  # of the per-environment risks (the reference sums)


def make_loss_terms(apply_fn, criterion: str, input_projection=None,
                    penalty: str = "scalar_dummy", risk_reduction: str = "mean"):
    """``loss_terms(params, envs, key) -> (terms_T, metrics)`` for ``criterion``.

    ``envs = (x_ExBxD, y_ExB)`` are the training environments. The ERM risk is the mean (or,
    ``risk_reduction="sum"``, the sum) of the per-environment risks; the IRMv1 penalty is the
    sum over environments of ``penalty``'s per-environment value (``irmx.irm.penalties``; the
    vector dummy needs ``apply_fn(params, x, w)``, i.e. the ``phi_w`` model).
    ``input_projection`` (D x D) multiplies the inputs first: ERM-oracle uses the projector on
    the causal features, so it learns from them alone.
    """
    for argument, value, allowed in (("criterion", criterion, CRITERIA),
                                      ("penalty", penalty, PENALTIES),
                                      ("risk_reduction", risk_reduction, RISK_REDUCTIONS)):
        if value not in allowed:
            raise ArgumentError("make_loss_terms", argument, value, "one of " + ", ".join(allowed))

    def env_penalty(params, x_BxD, pred_B, y_B):
        if penalty == "scalar_dummy":
            return irmv1_penalty(pred_B, y_B)
        return irmv1_vector_penalty(lambda w: apply_fn(params, x_BxD, w), y_B, x_BxD.shape[-1])

    def loss_terms(params, envs, key):
        del key
        x_ExBxD, y_ExB = envs
        if input_projection is not None:
            x_ExBxD = x_ExBxD @ input_projection
        pred_ExB = jax.vmap(lambda x: apply_fn(params, x))(x_ExBxD)
        risks_E = jax.vmap(mse)(pred_ExB, y_ExB)
        penalties_E = jax.vmap(lambda x, p, y: env_penalty(params, x, p, y))(
            x_ExBxD, pred_ExB, y_ExB)
        risk = risks_E.sum() if risk_reduction == "sum" else risks_E.mean()
        penalty_value = penalties_E.sum()
        metrics = {"risk": risk, "penalty": penalty_value, "env_risks": risks_E}
        terms = jnp.stack([risk, penalty_value]) if criterion == "irmv1" else risk[None]
        return terms, metrics

    return loss_terms
