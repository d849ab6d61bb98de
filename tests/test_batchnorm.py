"""Model state (BatchNorm statistics) through the shared training step and the classifier loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from irmx import classify, train


class TinyBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(8)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(3)(nn.relu(x))


def test_batch_stats_follow_flax_and_params_follow_sgd():
    model = TinyBN()
    x = jax.random.normal(jax.random.key(0), (16, 4))
    y = jnp.arange(16) % 3
    variables = model.init(jax.random.key(1), x)
    params = {"params": variables["params"]}
    stats = {"batch_stats": variables["batch_stats"]}
    opt = optax.sgd(0.1)
    state = train.init_state(params, opt, jax.random.key(2), model_state=stats)
    update = train.make_update(classify.make_loss(model.apply), opt)
    step = jax.jit(train.make_step(update))
    new_state, metrics = step(state, (x, y))
    assert "model_state" not in metrics

    # Reference: flax's own training-mode forward and jax.grad, by hand.
    def loss(p):
        logits, upd = model.apply({**p, **stats}, x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd

    (_, want_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    for a, b in zip(jax.tree.leaves(new_state.model_state), jax.tree.leaves(want_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    want_params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(want_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the running statistics really moved (momentum 0.9 toward the batch mean)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                         new_state.model_state, stats)
    assert max(jax.tree.leaves(moved)) > 1e-3
    # the optimizer never sees the statistics
    assert "batch_stats" not in new_state.params
