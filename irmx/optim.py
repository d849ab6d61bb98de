"""The one optimizer factory every family uses: sgd / momentum / adam, coupled or decoupled weight
decay, an epoch-wise linear warm-up and an optional first transform (a gradient combiner for
multi-term losses), all under ``optax.inject_hyperparams`` so that the learning rate, weight
decay, momentum and the combiner's scalars are per-learner values (vmappable, and
differentiable inputs of the update map).

Coupled weight decay is torch.optim's ``weight_decay``: d = g + wd * w enters the optimizer
(``optax.add_decayed_weights`` before it). Decoupled weight decay is AdamW's (Loshchilov &
Hutter 2019): w <- w - lr * (u + wd * w) with u the optimizer's direction.
"""

import inspect
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import optax

from irmx.errors import ArgumentError

OPTIMIZERS = ("sgd", "adam")


def warmup_schedule(lr, warmup_initial: float, warmup_epochs: int, steps_per_epoch: int):
    """lr_t = warmup_initial + (lr - warmup_initial) * min(epoch / warmup_epochs, 1), epoch =
    floor(t / steps_per_epoch): constant within an epoch, ``lr`` from epoch ``warmup_epochs``
    (ignite's ``create_lr_scheduler_with_warmup`` as the measures seed uses it)."""

    def schedule(count):
        if warmup_epochs == 0:
            return lr
        epoch = (count // steps_per_epoch).astype(jnp.float32)
        frac = jnp.minimum(epoch / warmup_epochs, 1.0)
        return warmup_initial + (lr - warmup_initial) * frac

    return schedule


def make_optimizer(name: str, learning_rate: float, *, momentum: float = 0.0,
                   weight_decay: float | None = None, decoupled_weight_decay: bool = False,
                   warmup_epochs: int = 0, warmup_initial: float = 0.0,
                   steps_per_epoch: int = 1, combiner: Callable | None = None,
                   combiner_hparams: Mapping[str, float] | None = None
                   ) -> optax.GradientTransformation:
    """``inject_hyperparams`` chain: [combiner(**combiner_hparams)], [coupled decay],
    sgd(momentum) | adam, [decoupled decay], learning rate (with warm-up).

    Injected hyperparameters: ``learning_rate``, ``weight_decay`` (unless None: no decay
    transform at all; 0.0 keeps it, so a vmapped weight decay can start from 0), ``momentum``
    (sgd with momentum > 0) and the combiner's names. ``momentum=0`` builds plain sgd.
    """
    if name not in OPTIMIZERS:
        raise ArgumentError("make_optimizer", "name", name, "one of " + ", ".join(OPTIMIZERS))
    combiner_hparams = dict(combiner_hparams or {})
    use_momentum = name == "sgd" and momentum > 0

    decay = weight_decay is not None

    def factory(learning_rate, weight_decay=None, momentum=None, **hp):
        lr = warmup_schedule(learning_rate, warmup_initial, warmup_epochs, steps_per_epoch)
        parts = [combiner(**hp)] if combiner is not None else []
        if decay and not decoupled_weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay))
        if name == "adam":
            parts.append(optax.scale_by_adam())
        elif use_momentum:
            parts.append(optax.trace(decay=momentum))
        if decay and decoupled_weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay))
        parts.append(optax.scale_by_learning_rate(lr))
        return optax.chain(*parts)

    # inject_hyperparams binds hyperparameters by the factory's signature: spell them out.
    names = ["learning_rate", "weight_decay", "momentum", *combiner_hparams]
    extra = {"weight_decay": weight_decay} if decay else {}
    factory.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in names])
    extra.update({"momentum": momentum} if use_momentum else {})
    return optax.inject_hyperparams(factory)(learning_rate=learning_rate, **extra,
                                             **combiner_hparams)
