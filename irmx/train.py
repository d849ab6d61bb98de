"""One training loop for every family: a pure step, ``lax.scan`` chunks, divergence masking.

A family supplies ``loss_terms_fn(params, batch, key) -> (terms_T, metrics)``: a vector of T
loss terms (ERM risk, penalty, ...) and a dict of scalar metrics. The step takes the gradient of
*each* term separately (one vjp per term, batched with vmap), so the optimizer receives
gradients stacked along a leading axis T. The first transform of the optimizer chain combines
them (``sum_terms``, a weighted sum, AdaReg, ...): "manual optimisation" is the mechanism, not a
special case, and gradient managers are ordinary optax transforms composed with ``optax.chain``.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from irmx import conv_layout


@flax.struct.dataclass
class TrainState:
    """Everything one learner carries between steps (checkpointed as is)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    key: jax.Array  # uint32 raw key data: per-step randomness is fold_in(key, step)
    diverged: jax.Array  # bool scalar: a non-finite loss or update was seen; params frozen since
    # Non-trainable model collections updated by the forward pass (flax ``batch_stats``); empty
    # for most models. A loss that updates them returns the new value as metrics["model_state"].
    model_state: Any = flax.struct.field(default_factory=dict)


def init_state(params, optimizer: optax.GradientTransformation, key, hparams=None,
               model_state=None) -> TrainState:
    """Fresh state; ``hparams`` (name -> scalar) overrides injected optimizer hyperparameters."""
    opt_state = optimizer.init(params)
    if hparams:
        opt_state = set_hyperparams(opt_state, hparams)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        key=jax.random.key_data(key),
        diverged=jnp.zeros((), bool),
        model_state=model_state or {},
    )


def set_hyperparams(opt_state, hparams: dict):
    """Set values of an ``optax.inject_hyperparams`` state (the learner's vmapped scalars)."""
    if not hasattr(opt_state, "hyperparams"):
        raise ValueError("the optimizer must be built with optax.inject_hyperparams")
    unknown = set(hparams) - set(opt_state.hyperparams)
    if unknown:
        raise ValueError(
            f"vmapped values {sorted(unknown)} are not optimizer hyperparameters; "
            f"allowed: {sorted(opt_state.hyperparams)}"
        )
    new = dict(opt_state.hyperparams)
    for name, value in hparams.items():
        new[name] = jnp.asarray(value, jnp.asarray(new[name]).dtype)
    return opt_state._replace(hyperparams=new)


class SumTermsState(NamedTuple):
    pass


def sum_terms() -> optax.GradientTransformation:
    """Combine stacked term gradients g_T by summation: g = sum_t g_t (plain optimisation)."""

    def init_fn(params):
        del params
        return SumTermsState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: g.sum(0), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def term_gradients(loss_terms_fn, params, *args):
    """Terms, their per-term gradients (leading axis T on every leaf) and the metrics."""
    terms_T, vjp_fn, metrics = jax.vjp(lambda p: loss_terms_fn(p, *args), params, has_aux=True)
    (grads_T,) = jax.vmap(vjp_fn)(jnp.eye(terms_T.shape[0], dtype=terms_T.dtype))
    return terms_T, grads_T, metrics


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(
    loss_terms_fn: Callable,
    optimizer: optax.GradientTransformation,
    batch_fn: Callable | None = None,
    canonical_convs: bool = False,
):
    """Pure step ``(state, data) -> (state, metrics)``.

    ``batch_fn(data, step, key)`` picks the step's batch (None: full batch, ``data`` itself).
    With a non-empty ``state.model_state`` the loss is called as
    ``loss_terms_fn(params, batch, key, model_state)`` and returns the updated model state as
    ``metrics["model_state"]`` (BatchNorm statistics), which the step stores.
    ``canonical_convs=True`` re-lays out the convolutions of the gradient computation so that
    XLA:CPU keeps them on its fast path inside the ``lax.scan`` of a chunk (conv nets: measured
    34 s -> 0.9 s for 5 steps of a small ResNet; see ``irmx.conv_layout``).
    A step whose terms, gradients or new parameters are not finite marks the learner diverged
    and keeps its previous parameters, so one diverged learner never poisons a vmapped sweep.
    """

    def train_step(state: TrainState, data):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        batch = data if batch_fn is None else batch_fn(data, state.step, key)
        extra = (state.model_state,) if jax.tree.leaves(state.model_state) else ()
        grad_fn = lambda p, b, k, *e: term_gradients(loss_terms_fn, p, b, k, *e)
        if canonical_convs:
            grad_fn = conv_layout.canonical_convs(grad_fn, state.params, batch, key, *extra)
        terms_T, grads_T, metrics = grad_fn(state.params, batch, key, *extra)
        model_state = metrics.pop("model_state", state.model_state)
        updates, opt_state = optimizer.update(grads_T, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = _all_finite((terms_T, grads_T, params)) & ~state.diverged
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = TrainState(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            key=state.key,
            diverged=~ok,
            model_state=keep(model_state, state.model_state),
        )
        metrics = dict(metrics, diverged=new_state.diverged)
        return new_state, metrics

    return train_step


def make_train_chunk(train_step: Callable, num_steps: int):
    """Run ``num_steps`` steps in one ``lax.scan``; returns the last step's metrics.

    ``chunk.num_traces`` counts how often the chunk was traced: a run compiles once, and every
    later chunk reuses the executable (tested).
    """

    def chunk(state, data):
        chunk.num_traces += 1

        def body(s, _):
            return train_step(s, data)

        state, metrics = jax.lax.scan(body, state, None, length=num_steps)
        return state, jax.tree.map(lambda m: m[-1], metrics)

    chunk.num_traces = 0
    return chunk
