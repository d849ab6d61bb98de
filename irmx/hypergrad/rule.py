"""The weight-update rule whose hyperparameters the hypergrad family optimises.

Clarke, Oldewage & Hernandez-Lobato, "Scalable One-Pass Optimisation of High-Dimensional
Weight-Update Hyperparameters by Implicit Differentiation" (ICLR 2022), Section 2 and the
reference code (rmclarke/OptimisingWeightUpdateHyperparameters: torch.optim.SGD under
``higher``, ``train.py`` install_hyperparameters): per parameter tensor,

    d = g + wd * w;   b <- mu * b + d;   w <- w - eta * b

with the hyperparameters on unconstrained scales (the reference's ``transformed_hyperparameters``):
eta = 10^x_lr, wd = 10^x_wd, mu = sigmoid(x_mom). ``x_lr`` is a scalar, or a pytree shaped like
the parameters (one learning rate per weight: the paper's "HDLR"). The raw values are a
learner's ``values`` (``irmx.train.TrainState.values``): differentiable inputs of the update map
and a vmapped learner axis. Optional global-norm gradient clipping first (the Penn Treebank
config's ``network_weight_grad_clipping``).
"""

import jax
import jax.numpy as jnp
import optax

NAMES = ("lr", "weight_decay", "momentum")


def natural(values) -> dict:
    """The hyperparameters on their natural scales: {lr: 10^x (scalar or tree), weight_decay:
    10^x, momentum: sigmoid(x)}."""
    return {
        "lr": jax.tree.map(lambda x: 10.0 ** x, values["lr"]),
        "weight_decay": 10.0 ** values["weight_decay"],
        "momentum": jax.nn.sigmoid(values["momentum"]),
    }


def raw_values(lr: float, weight_decay: float, momentum: float, params=None,
               per_parameter_lr: bool = False) -> dict:
    """Raw (unconstrained) values of natural-scale hyperparameters: log10 lr, log10 wd,
    logit mu (the reference's natural_sgd_generator applies the inverse sigmoid to mu).
    ``per_parameter_lr``: x_lr as a tree like ``params``, every entry the same."""
    x_lr = jnp.log10(jnp.asarray(lr, jnp.float32))
    if per_parameter_lr:
        x_lr = jax.tree.map(lambda p: jnp.full(p.shape, x_lr, jnp.float32), params)
    mu = jnp.asarray(momentum, jnp.float32)
    return {
        "lr": x_lr,
        "weight_decay": jnp.log10(jnp.asarray(weight_decay, jnp.float32)),
        "momentum": jnp.log(mu) - jnp.log1p(-mu),
    }


def _scale_by_rates(rates) -> optax.GradientTransformation:
    """u <- -eta * u, eta a scalar or a tree like the updates."""

    def update(updates, state, params=None):
        del params
        if jax.tree.structure(rates) == jax.tree.structure(updates):
            return jax.tree.map(lambda u, r: -r * u, updates, rates), state
        return jax.tree.map(lambda u: -rates * u, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_rule(clip_norm: float = 0.0):
    """The optimizer factory ``rule(values) -> optax.GradientTransformation`` (``irmx.train``
    accepts factories): [clip_by_global_norm], add_decayed_weights(wd), trace(mu),
    scale(-eta). Its state (the momentum buffer b) does not depend on the values."""

    def rule(values):
        hp = natural(values)
        parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
        parts += [optax.add_decayed_weights(hp["weight_decay"]),
                  optax.trace(decay=hp["momentum"]),
                  _scale_by_rates(hp["lr"])]
        return optax.chain(*parts)

    return rule


def summarize_lr(x_lr) -> dict:
    """Loggable learning-rate statistics: ``lr`` (the mean natural rate over every weight; the
    rate itself when scalar) and, per weight, ``lr_quantiles`` (deciles of 10^x, 0..100%)."""
    leaves = [jnp.ravel(x) for x in jax.tree.leaves(x_lr)]
    flat = jnp.concatenate(leaves) if len(leaves) > 1 else leaves[0]
    rates = 10.0 ** flat
    out = {"lr": jnp.mean(rates)}
    if flat.size > 1:
        out["lr_quantiles"] = jnp.quantile(rates, jnp.linspace(0.0, 1.0, 11))
    return out
