"""The hypergradient algorithms as pure chunks: T network steps, then one hyperparameter step.

Each ``make_*_chunk`` returns ``chunk(state, data) -> (state, metrics)`` over one learner's
``irmx.train.TrainState`` (vmapped by the driver): the hyperparameters are the learner's raw
``values`` (``irmx.hypergrad.rule``), the hyperparameter optimizer's state is
``state.outer["hyper_opt"]``. Settings follow the reference code
(rmclarke/OptimisingWeightUpdateHyperparameters, ``train.py`` Learner.train, ``optimisers.py``
and ``configs/*.yaml``):

* ``neumann`` (Ours WD+LR, WD+LR+M, WD+HDLR+M; Lorraine et al. 2020 with weight decay only):
  T - 1 steps, then the last step through ``jax.vjp`` of the update map, the IFT hypergradient
  with K Neumann terms (``irmx.hypergrad.ift``) at w_T on the validation batch, one Adam step
  (lr 0.05) on the optimised raw values.
* ``exact`` (Diff-through-Opt): ``jax.value_and_grad`` of the validation loss after the last
  ``lookback`` steps of the interval, through their unrolled ``lax.scan``; the state entering
  the window is a constant (the reference re-enters ``higher.innerloop_ctx`` there with
  detached weights and momentum buffer). Every step is under ``jax.checkpoint``, so the
  backward pass holds one state per step; with ``remat_block`` = B > 1 the window runs as
  ``lookback // B`` checkpointed blocks of B checkpointed steps (two-level checkpointing:
  Griewank & Walther 2000, "Algorithm 799: revolve"; Chen et al. 2016, "Training Deep Nets
  with Sublinear Memory Cost"), which holds lookback / B + B states (2 sqrt(lookback) at
  B = ceil(sqrt(lookback)), the setting of the horizons over 200 steps) for one more forward
  step per step (``benchmarks/hypergrad_memory.py``, MLP 784-50-10 over 10,000 steps: 94 MB of
  temporaries instead of 3.1 GB, 1.6x the time).
* ``baydin`` (Baydin et al. 2018, SGD-HD): T = 1, hypergradient of the raw learning rate
  h = -grad L_V(w_t) . grad L_train(w_{t-1}) (the reference installs this product directly as
  the gradient of the log10 rate, with no chain rule through 10^x; so does this), SGD lr 0.001;
  the validation batch comes from the training data (``validation_proportion: 0``).
* ``fixed`` (Random, Random_Validation): T steps, no hyperparameter step.

After a hyperparameter step the raw log10 learning rate is clipped to ``lr_clip`` (the
reference's ``hyperparameter_clipping: lr: [-10, 0]``). A non-finite hypergradient leaves the
values (and the hyperparameter optimizer) unchanged. With ``reset`` (Long/Full
Diff-through-Opt: ``reset_model_after_hyperparameter_update``) the weights and model state go
back to their initial values after every hyperparameter step but the last; the momentum buffer
is kept, as the reference's ``model.load_state_dict`` keeps it.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from irmx.hypergrad import ift, rule
from irmx.train import all_finite, commit_step, step_inputs

KINDS = ("neumann", "exact", "baydin", "fixed")


def _select(pred, new, old):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _tree_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _scan_steps(step, state, data, num: int):
    if num <= 0:
        return state
    state, _ = jax.lax.scan(lambda s, _: step(s, data), state, None, length=num)
    return state


def _remat_scan(step, state, data, num: int, block: int):
    """``num`` steps of ``step`` from ``state`` for reverse-mode differentiation: ``num //
    block`` checkpointed blocks of ``block`` checkpointed steps, then the remainder; returns the
    final state and the last step's metrics. The backward pass keeps one state per block plus
    one per step of the block being differentiated."""
    remat_step = jax.checkpoint(step, prevent_cse=False)  # under scan: safe (jax docs)

    def steps(s, n):
        s, metrics = jax.lax.scan(lambda c, _: remat_step(c, data), s, None, length=n)
        return s, jax.tree.map(lambda m: m[-1], metrics)

    num_blocks, rest = divmod(num, block)
    if num_blocks <= 1:  # one level: every step checkpointed on its own
        return steps(state, num)
    remat_block = jax.checkpoint(lambda s: steps(s, block), prevent_cse=False)
    state, metrics = jax.lax.scan(lambda c, _: remat_block(c), state, None, length=num_blocks)
    metrics = jax.tree.map(lambda m: m[-1], metrics)
    if rest:
        state, metrics = steps(state, rest)
    return state, metrics


def init_outer(kind: str, values, optimised: Sequence[str], hyper_optimizer, params=None,
               model_state=None, reset: bool = False) -> dict:
    """``TrainState.outer`` of a fresh learner: the hyperparameter optimizer's state over the
    optimised values (and the initial weights when ``reset``)."""
    outer = {}
    if kind != "fixed":
        outer["hyper_opt"] = hyper_optimizer.init({k: values[k] for k in optimised})
    if reset:
        outer["initial_params"] = params
        outer["initial_model_state"] = model_state if model_state is not None else {}
    return outer


def _hyper_metrics(state) -> dict:
    hp = rule.natural(state.values)
    out = rule.summarize_lr(state.values["lr"])
    out.update(weight_decay=hp["weight_decay"], momentum=hp["momentum"])
    return out


def make_chunk(kind: str, *, step: Callable, update: Callable, batch_fn: Callable | None,
               val_batch_fn: Callable | None, val_loss: Callable, train_loss: Callable,
               interval: int, num_steps: int, optimised: Sequence[str] = (),
               hyper_optimizer: optax.GradientTransformation | None = None,
               neumann_terms: int = 5, lookback: int = 0, lr_clip=(-10.0, 0.0),
               reset: bool = False, remat_block: int = 1) -> Callable:
    """One chunk = ``interval`` network steps + one hyperparameter step of ``kind``.

    step: ``irmx.train.make_step(update, batch_fn)``; update: the update map;
    val_batch_fn(data, step, key) -> validation batch (None: ``data`` itself);
    val_loss(params, model_state, batch) -> scalar; train_loss(params, model_state, batch, key,
    values) -> scalar (Baydin's previous gradient); optimised: names of the raw values the
    hyperparameter optimizer changes; lookback: exact differentiation window (0 = the whole
    interval); remat_block: steps per checkpointed block of that window (1 = every step
    checkpointed on its own, no blocks; 0 = ceil(sqrt(lookback))).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown hypergradient algorithm {kind!r}; allowed: {KINDS}")
    optimised = tuple(optimised)
    lookback = interval if lookback <= 0 else min(lookback, interval)
    remat_block = math.ceil(math.sqrt(lookback)) if remat_block <= 0 else remat_block
    if remat_block == 1:
        remat_block = lookback  # one level (_remat_scan: fewer than two blocks)

    def val_batch(data, state, key):
        return data if val_batch_fn is None else val_batch_fn(data, state.step, key)

    def apply_hyper(state, hypergrad, ok):
        """One hyperparameter-optimizer step on the optimised values (kept when not ``ok``)."""
        sub = {k: state.values[k] for k in optimised}
        grads = {k: hypergrad[k] for k in optimised}
        ok = ok & all_finite(grads) & ~state.diverged
        updates, opt_state = hyper_optimizer.update(grads, state.outer["hyper_opt"], sub)
        new = optax.apply_updates(sub, updates)
        if "lr" in new:
            new["lr"] = jax.tree.map(lambda x: jnp.clip(x, *lr_clip), new["lr"])
        values = _select(ok, {**state.values, **new}, state.values)
        outer = dict(state.outer, hyper_opt=_select(ok, opt_state, state.outer["hyper_opt"]))
        state = state.replace(values=values, outer=outer)
        if reset:
            last = state.step >= num_steps
            state = state.replace(
                params=_select(last, state.params, state.outer["initial_params"]),
                model_state=_select(last, state.model_state,
                                    state.outer["initial_model_state"]))
        return state, {"hypergrad_norm": _tree_norm(grads), "hyper_skipped": ~ok}

    def neumann_chunk(state, data):
        state = _scan_steps(step, state, data, interval - 1)
        batch, key = step_inputs(state, data, batch_fn)

        def phi(w, v):
            p, o, ms, aux = update(w, state.opt_state, state.model_state, batch, key, v,
                                   state.step)
            return p, (o, ms, aux)

        new_params, vjp_fn, (o, ms, aux) = jax.vjp(phi, state.params, state.values,
                                                   has_aux=True)
        new_state, metrics = commit_step(state, new_params, o, ms, aux)
        vb = val_batch(data, state, jax.random.fold_in(key, 1))
        vloss, vgrad = jax.value_and_grad(val_loss)(new_state.params, new_state.model_state, vb)
        p = ift.neumann_series(lambda u: vjp_fn(u)[0], vgrad, neumann_terms)
        hypergrad = vjp_fn(p)[1]
        new_state, hm = apply_hyper(new_state, hypergrad, jnp.isfinite(vloss))
        return new_state, {"loss": metrics["loss"], "diverged": new_state.diverged,
                           "hyper_val_loss": vloss, **hm, **_hyper_metrics(new_state)}

    def exact_chunk(state, data):
        state = _scan_steps(step, state, data, interval - lookback)
        start = jax.lax.stop_gradient(state)

        def val_after(values):
            s, metrics = _remat_scan(step, start.replace(values=values), data, lookback,
                                     remat_block)
            key = jax.random.fold_in(jax.random.wrap_key_data(s.key), s.step)
            vb = val_batch(data, s, key)
            return val_loss(s.params, s.model_state, vb), (s, metrics["loss"])

        (vloss, (new_state, loss)), hypergrad = jax.value_and_grad(val_after, has_aux=True)(
            start.values)
        new_state, hm = apply_hyper(new_state, hypergrad, jnp.isfinite(vloss))
        return new_state, {"loss": loss, "diverged": new_state.diverged,
                           "hyper_val_loss": vloss, **hm, **_hyper_metrics(new_state)}

    def baydin_chunk(state, data):
        state = _scan_steps(step, state, data, interval - 1)
        batch, key = step_inputs(state, data, batch_fn)
        prev_grad = jax.grad(train_loss)(state.params, state.model_state, batch, key,
                                         state.values)
        out = update(state.params, state.opt_state, state.model_state, batch, key,
                     state.values, state.step)
        new_state, metrics = commit_step(state, *out)
        vb = val_batch(data, state, jax.random.fold_in(key, 1))
        vloss, vgrad = jax.value_and_grad(val_loss)(new_state.params, new_state.model_state, vb)
        dot = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(vgrad),
                                                  jax.tree.leaves(prev_grad)))
        hypergrad = {"lr": jax.tree.map(lambda x: jnp.full_like(x, -dot), state.values["lr"])}
        new_state, hm = apply_hyper(new_state, hypergrad, jnp.isfinite(vloss))
        return new_state, {"loss": metrics["loss"], "diverged": new_state.diverged,
                           "hyper_val_loss": vloss, **hm, **_hyper_metrics(new_state)}

    def fixed_chunk(state, data):
        state, metrics = jax.lax.scan(lambda s, _: step(s, data), state, None, length=interval)
        return state, {"loss": metrics["loss"][-1], "diverged": state.diverged,
                       **_hyper_metrics(state)}

    chunk = {"neumann": neumann_chunk, "exact": exact_chunk, "baydin": baydin_chunk,
             "fixed": fixed_chunk}[kind]
    return chunk
