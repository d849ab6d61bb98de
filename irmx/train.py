"""The training core every family shares: a pure update map, a step wrapper, ``lax.scan`` chunks.

Three layers, each a pure function you can call, jit, vmap or differentiate on its own:

* ``make_update(loss_fn, optimizer, ...)`` returns the **update map**

      update(params, opt_state, model_state, batch, key, values, step=0)
          -> (params, opt_state, model_state, aux)

  Phi(w, lambda; batch) of the implicit-function-theorem hypergradient literature (Lorraine et
  al. 2020; Clarke et al. 2022): the gradient of the loss, the hooks of the step window, the
  optax update. ``values`` is the learner's pytree of per-learner values (hyperparameters,
  intervention parameters); the names in ``hyperparams`` are written into the optimizer state
  (``set_hyperparams``, the injected hyperparameters of ``optax.inject_hyperparams``) before
  every update, so the update is a differentiable
  function of them (``jax.grad`` through a chunk w.r.t. a learning rate works; tested against
  finite differences).
* ``make_step(update, batch_fn)`` wraps it: folds the learner's step key with the step number,
  picks the batch and masks divergence (a learner whose loss or new state is not finite keeps,
  exactly, the params, optimizer and model state of its last finite step; it never poisons a
  vmapped sweep).
* ``make_chunk(step, num_steps)`` runs ``num_steps`` steps in one ``lax.scan``.

A loss is ``loss_fn(params, model_state, batch, key, values) -> (loss, aux)`` with ``aux`` a dict
of scalar metrics; a loss that updates non-trainable collections (BatchNorm statistics) returns
them as ``aux["model_state"]``. Single-term losses work with any optax transformation.
Multi-term losses (IRM's risk and penalty) are opt-in with ``multi_term=True``: the loss returns
a vector of T terms, the gradient of each term is taken separately (one vjp per term, batched
with vmap) and the optimizer receives gradients with a leading axis T, which its first
transform combines (``sum_terms``, IRM's gradient managers). An optimizer that needs the loss
itself (an ``optax.GradientTransformationExtraArgs``, e.g. a line search) receives ``value``,
``grad`` and ``value_fn`` as extra arguments.

**Hooks** (``Hook(point, fn, start, stop)``) are where interventions live, each active in the
step window ``start <= step < stop`` and reading its per-learner parameters from ``values``:

    before_step      fn(UpdateState, values, key) -> UpdateState      (weights, momentum, ...)
    after_gradients  fn(grads, values, key) -> grads
    after_update     fn(UpdateState, values, key) -> UpdateState
    activations      fn(module_path, output, values, key) -> output   (every flax module call
                     inside the loss's forward pass, through ``flax.linen.intercept_methods``)

Outside its window a hook's result is discarded with ``jnp.where``, so one compiled step serves
every step and every learner of a vmapped run.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from irmx import conv_layout

HOOK_POINTS = ("before_step", "after_gradients", "after_update", "activations")


@flax.struct.dataclass
class TrainState:
    """Everything one learner carries between steps (checkpointed as is)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    key: jax.Array  # uint32 raw key data of the learner's "step" stream
    diverged: jax.Array  # bool scalar: a non-finite loss or state was seen; frozen since
    model_state: Any = flax.struct.field(default_factory=dict)  # flax batch_stats, ...
    values: Any = flax.struct.field(default_factory=dict)  # per-learner values (see make_update)
    # state of an outer loop that changes ``values`` between chunks (hypergradient optimizer
    # state, reference weights of a reset, ...); {} for plain training
    outer: Any = flax.struct.field(default_factory=dict)


class UpdateState(NamedTuple):
    """What the before-step and after-update hooks see and may change."""

    params: Any
    opt_state: Any
    model_state: Any


@dataclasses.dataclass(frozen=True)
class Hook:
    """``fn`` at ``point`` (one of HOOK_POINTS), active for steps ``start <= step < stop``
    (``stop=None``: until the end)."""

    point: str
    fn: Callable
    start: int = 0
    stop: int | None = None

    def __post_init__(self):
        if self.point not in HOOK_POINTS:
            raise ValueError(f"hook point {self.point!r} unknown; allowed: "
                             f"{', '.join(HOOK_POINTS)}")
        if self.start < 0 or (self.stop is not None and self.stop <= self.start):
            raise ValueError(f"hook window [{self.start}, {self.stop}) is empty or negative")

    def active(self, step) -> jax.Array:
        on = jnp.asarray(step) >= self.start
        return on if self.stop is None else on & (jnp.asarray(step) < self.stop)


def _select(pred, new, old):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _hook_key(key, point: str, index: int):
    return jax.random.fold_in(jax.random.fold_in(key, HOOK_POINTS.index(point)), index)


def _apply_hooks(hooks, point, tree, values, key, step):
    for i, hook in enumerate(h for h in hooks if h.point == point):
        new = hook.fn(tree, values, _hook_key(key, point, i))
        tree = _select(hook.active(step), new, tree)
    return tree


def _with_activation_hooks(fn, hooks, values, key, step):
    """``fn`` with every flax module output passed through the activation hooks."""
    hooks = [h for h in hooks if h.point == "activations"]
    if not hooks:
        return fn

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return out
        path = "/".join(context.module.scope.path) if context.module.scope else ""
        for i, hook in enumerate(hooks):
            new = hook.fn(path, out, values, _hook_key(key, "activations", i))
            out = _select(hook.active(step), new, out)
        return out

    def wrapped(*args):
        with nn.intercept_methods(interceptor):
            return fn(*args)

    return wrapped


def _is_inject(s) -> bool:
    return isinstance(s, optax.InjectStatefulHyperparamsState)


def set_hyperparams(opt_state, **values):
    """Set injected hyperparameters (``optax.inject_hyperparams``) anywhere in a nested optax
    state, cast to their dtype: the ``hyperparams`` entries of every inject state that has
    the name (``optax.tree_utils.tree_set`` would also hit a same-named field of an inner
    state, e.g. a combiner's logged ``penalty_weight``). An unknown name is one clear error."""
    unknown = [n for n in values if n not in hyperparam_names(opt_state)]
    if unknown:
        raise ValueError(
            f"{unknown[0]!r} is not an injected optimizer hyperparameter; allowed: "
            f"{', '.join(hyperparam_names(opt_state)) or 'none (use optax.inject_hyperparams)'}"
        )
    if not values:
        return opt_state

    def set_one(s):
        if not _is_inject(s):
            return s
        new = dict(s.hyperparams)
        for n, v in values.items():
            if n in new:
                new[n] = jnp.asarray(v, jnp.asarray(new[n]).dtype)
        return s._replace(hyperparams=new)

    return jax.tree.map(set_one, opt_state, is_leaf=_is_inject)


def hyperparam_names(opt_state) -> tuple[str, ...]:
    """Names of every injected hyperparameter of a (nested) optax state."""
    names = []
    for state in jax.tree.leaves(opt_state, is_leaf=_is_inject):
        if _is_inject(state):
            names += [n for n in state.hyperparams if n not in names]
    return tuple(names)


def optimizer_of(optimizer, values) -> optax.GradientTransformation:
    """``optimizer`` itself, or, for an optimizer **factory** (a plain function of the
    learner's values, see ``make_update``), the transformation it builds from ``values``."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    return optimizer(values)


def init_state(params, optimizer, key, values=None, model_state=None,
               hyperparams: Sequence[str] = (), outer=None) -> TrainState:
    """Fresh state of one learner. ``key`` is its ``step`` stream; ``values`` its per-learner
    pytree; the entries named in ``hyperparams`` are written into the optimizer state;
    ``outer`` the state of an outer loop over the values (``TrainState.outer``)."""
    values = {} if values is None else values
    opt_state = optimizer_of(optimizer, values).init(params)
    opt_state = set_hyperparams(opt_state, **{n: values[n] for n in hyperparams})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        key=jax.random.key_data(key),
        diverged=jnp.zeros((), bool),
        model_state=model_state or {},
        values=values,
        outer={} if outer is None else outer,
    )


class SumTermsState(NamedTuple):
    pass


def sum_terms() -> optax.GradientTransformation:
    """Combine stacked term gradients g_T by summation: g = sum_t g_t (plain optimisation of a
    multi-term loss)."""

    def init_fn(params):
        del params
        return SumTermsState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: g.sum(0), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def term_gradients(loss_terms_fn, params, *args):
    """Terms, their per-term gradients (leading axis T on every leaf) and the aux dict of a
    multi-term loss ``loss_terms_fn(params, *args) -> (terms_T, aux)``."""
    terms_T, vjp_fn, aux = jax.vjp(lambda p: loss_terms_fn(p, *args), params, has_aux=True)
    (grads_T,) = jax.vmap(vjp_fn)(jnp.eye(terms_T.shape[0], dtype=terms_T.dtype))
    return terms_T, grads_T, aux


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.array(leaves)) if leaves else jnp.ones((), bool)


def make_update(loss_fn: Callable, optimizer, *,
                multi_term: bool = False, hooks: Sequence[Hook] = (),
                hyperparams: Sequence[str] = (), canonical_convs: bool = False,
                remat: bool = False) -> Callable:
    """The pure update map (module docstring). ``canonical_convs=True`` re-lays out the
    convolutions of the gradient computation so XLA:CPU keeps them on its fast path inside a
    ``lax.scan`` (conv nets 2.5-38x faster; ``irmx.conv_layout``). ``remat=True`` wraps the
    map in ``jax.checkpoint`` (long unrolled differentiation: memory of one step per step).

    ``optimizer`` is an optax transformation, or a **factory** ``optimizer(values) ->
    optax.GradientTransformation`` called inside the update with the learner's values, for
    hyperparameters that ``inject_hyperparams`` cannot carry (pytrees: one learning rate per
    weight, ``irmx.hypergrad.rule``); its state's structure must not depend on the values.
    Either way the update is a differentiable function of ``values``."""
    hooks = tuple(hooks)
    for h in hooks:
        if not isinstance(h, Hook):
            raise TypeError(f"hooks must be irmx.train.Hook instances, got {type(h).__name__}")

    def update(params, opt_state, model_state, batch, key, values, step=0):
        opt = optimizer_of(optimizer, values)
        extra_args = isinstance(opt, optax.GradientTransformationExtraArgs)
        key_loss, key_hooks = jax.random.split(key)
        st = _apply_hooks(hooks, "before_step", UpdateState(params, opt_state, model_state),
                          values, key_hooks, step)
        params, opt_state, model_state = st
        if hyperparams:
            opt_state = set_hyperparams(opt_state, **{n: values[n] for n in hyperparams})
        loss_of = _with_activation_hooks(loss_fn, hooks, values, key_hooks, step)

        def grad_fn(p, ms, b, k, v):
            if multi_term:
                terms, grads, aux = term_gradients(loss_of, p, ms, b, k, v)
                return terms, grads, aux
            (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(p, ms, b, k, v)
            return loss, grads, aux

        if canonical_convs:
            grad_fn = conv_layout.canonical_convs(grad_fn, params, model_state, batch, key_loss,
                                                  values)
        loss, grads, aux = grad_fn(params, model_state, batch, key_loss, values)
        aux = dict(aux)
        new_model_state = aux.pop("model_state", model_state)
        grads = _apply_hooks(hooks, "after_gradients", grads, values, key_hooks, step)
        if extra_args:
            value_fn = lambda p: loss_of(p, model_state, batch, key_loss, values)[0]
            updates, opt_state = opt.update(grads, opt_state, params, value=loss,
                                            grad=grads, value_fn=value_fn)
        else:
            updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        st = _apply_hooks(hooks, "after_update", UpdateState(params, opt_state, new_model_state),
                          values, key_hooks, step)
        if multi_term:
            aux.setdefault("loss", loss.sum())
            aux["terms"] = loss
        else:
            aux.setdefault("loss", loss)
        return st.params, st.opt_state, st.model_state, aux

    return jax.checkpoint(update) if remat else update


def make_step(update: Callable, batch_fn: Callable | None = None) -> Callable:
    """Pure step ``(state, data) -> (state, metrics)`` around an update map.

    The step key is ``fold_in(step stream, step)``; ``batch_fn(data, step, key)`` picks the
    step's batch with its own sub-key (None: full batch, ``data`` itself). A step whose loss,
    parameters, optimizer or model state is not finite marks the learner diverged and keeps its
    previous state exactly.
    """

    def step(state: TrainState, data):
        batch, key_update = step_inputs(state, data, batch_fn)
        out = update(state.params, state.opt_state, state.model_state, batch, key_update,
                     state.values, state.step)
        return commit_step(state, *out)

    return step


def step_inputs(state: TrainState, data, batch_fn: Callable | None = None):
    """(batch, update key) of the learner's next step: the step key is ``fold_in(step stream,
    step)``, split into the batch's key and the update's (``make_step``; also used by the
    hypergradient steps, which call the update map themselves to differentiate it)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    key_batch, key_update = jax.random.split(key)
    batch = data if batch_fn is None else batch_fn(data, state.step, key_batch)
    return batch, key_update


def commit_step(state: TrainState, params, opt_state, model_state, aux):
    """The state after one step with the update map's outputs, divergence masked: a step whose
    loss or new state is not finite marks the learner diverged and keeps its previous state
    exactly. Returns (state, metrics)."""
    ok = all_finite((aux["loss"], params, opt_state, model_state)) & ~state.diverged
    new_state = state.replace(
        step=state.step + 1,
        params=_select(ok, params, state.params),
        opt_state=_select(ok, opt_state, state.opt_state),
        model_state=_select(ok, model_state, state.model_state),
        diverged=~ok,
    )
    return new_state, dict(aux, diverged=new_state.diverged)


def make_chunk(step: Callable, num_steps: int) -> Callable:
    """Run ``num_steps`` steps in one ``lax.scan``; returns the last step's metrics.

    ``chunk.num_traces`` counts how often the chunk was traced (compile-once is tested with
    backend-compile events too: ``irmx.learners.count_compilations``).
    """

    def chunk(state, data):
        chunk.num_traces += 1

        def body(s, _):
            return step(s, data)

        state, metrics = jax.lax.scan(body, state, None, length=num_steps)
        return state, jax.tree.map(lambda m: m[-1], metrics)

    chunk.num_traces = 0
    return chunk
