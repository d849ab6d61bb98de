"""The LSTM language model of the hypergrad family's Penn Treebank runs, and its training pieces.

Clarke et al. (ICLR 2022), reference ``models.LSTMwithEmbedding`` (``configs/penn_treebank.yaml``:
10000 tokens, 650 embedding, 650 hidden, 2 layers): ``torch.nn.Embedding`` -> ``torch.nn.LSTM``
-> ``torch.nn.Linear``, written here in flax with torch's equations and initialisations, time-
major ``(T, P)``. The hidden state is carried between consecutive batches (detached) and cleared
when an epoch restarts (reference ``train.py``: ``hidden_states``, ``repeating_dataloader``'s
``reset_callback``). The reference clips the weight gradient's global norm at 0.25
(``network_weight_grad_clipping``): compose ``optax.clip_by_global_norm(0.25)`` in the optimizer.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from irmx.data.ptb import bptt_batch, num_bptt_batches
from irmx.errors import ArgumentError


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def lstm_layer(w_ih, w_hh, b_ih, b_hh, xs_TxPxD, h, c):
    """One torch.nn.LSTM layer over time: gates = x W_ih^T + b_ih + h W_hh^T + b_hh split as
    (i, f, g, o); c' = sig(f) c + sig(i) tanh(g); h' = sig(o) tanh(c'). Returns (hs, h, c)."""

    def cell(carry, x):
        h, c = carry
        gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    (h, c), hs = jax.lax.scan(cell, (h, c), xs_TxPxD)
    return hs, h, c


class LSTMLanguageModel(nn.Module):
    """Embedding -> ``num_layers`` stacked LSTMs -> Linear decoder; ``(T, P)`` tokens in.

    ``__call__(tokens_TxP, carry) -> (logits_TxPxV, new_carry)``; ``carry`` is a tuple of
    per-layer ``(h, c)``, each ``(P, hidden_size)``. Initialisation as torch: embedding N(0, 1);
    every LSTM weight and both biases U(-1/sqrt(hidden), 1/sqrt(hidden)); decoder weight and
    bias U(-1/sqrt(hidden), 1/sqrt(hidden)) (``nn.Linear``'s default). Parameters keep torch's
    names and layouts (``weight_ih_l{k}`` is ``(4H, in)``).
    """

    num_tokens: int = 10000
    embed_size: int = 650
    hidden_size: int = 650
    num_layers: int = 2

    def initial_carry(self, parallel_sequences: int):
        zeros = jnp.zeros((parallel_sequences, self.hidden_size), jnp.float32)
        return tuple((zeros, zeros) for _ in range(self.num_layers))

    @nn.compact
    def __call__(self, tokens_TxP, carry):
        hidden = self.hidden_size
        x = nn.Embed(self.num_tokens, self.embed_size, name="encoder",
                     embedding_init=nn.initializers.normal(1.0))(tokens_TxP)
        init = _uniform(1.0 / hidden**0.5)
        new_carry = []
        for k in range(self.num_layers):
            size_in = self.embed_size if k == 0 else hidden
            w_ih = self.param(f"weight_ih_l{k}", init, (4 * hidden, size_in))
            w_hh = self.param(f"weight_hh_l{k}", init, (4 * hidden, hidden))
            b_ih = self.param(f"bias_ih_l{k}", init, (4 * hidden,))
            b_hh = self.param(f"bias_hh_l{k}", init, (4 * hidden,))
            x, h, c = lstm_layer(w_ih, w_hh, b_ih, b_hh, x, *carry[k])
            new_carry.append((h, c))
        logits_TxPxV = nn.Dense(self.num_tokens, name="decoder", kernel_init=init,
                                bias_init=init)(x)
        return logits_TxPxV, tuple(new_carry)


def _token_loss(logits_TxPxV, targets_TxP):
    logp = jax.nn.log_softmax(logits_TxPxV, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets_TxP[..., None], axis=-1))


def make_lm_loss(model: LSTMLanguageModel):
    """``loss(params, model_state, batch, key, values) -> (mean token cross-entropy, aux)``.

    ``model_state = {"carry": ...}`` is the hidden state carried from the previous batch (its
    gradient stopped, as the reference detaches it); ``batch = (inputs, targets, reset)`` with
    ``reset`` a bool scalar that zeroes the carry first (epoch restart). ``aux`` holds
    ``perplexity = exp(loss)`` and the new ``model_state``.
    """

    def loss(params, model_state, batch, key, values):
        del key, values
        inputs, targets, reset = batch
        carry = jax.lax.stop_gradient(model_state["carry"])
        carry = jax.tree.map(lambda s: jnp.where(reset, jnp.zeros_like(s), s), carry)
        logits, new_carry = model.apply({"params": params}, inputs, carry)
        value = _token_loss(logits, targets)
        aux = {"perplexity": jnp.exp(value),
               "model_state": {"carry": jax.lax.stop_gradient(new_carry)}}
        return value, aux

    return loss


def make_lm_batch_fn(batched_train, seq_len: int):
    """``batch_fn(data, step, key) -> (inputs, targets, reset)`` for ``irmx.train.make_step``:
    batch ``step mod num_bptt_batches`` of ``data`` (the batchified ``(L, P)`` train stream;
    ``None``: ``batched_train``), ``reset`` when that index is 0 (a new epoch)."""
    num_batches = num_bptt_batches(batched_train.shape[0], seq_len)
    if num_batches < 1:
        raise ArgumentError("make_lm_batch_fn", "seq_len", seq_len,
                            f"at most {batched_train.shape[0] - 1} (rows of batched_train - 1)")

    def batch_fn(data, step, key):
        del key
        tokens = batched_train if data is None else data
        index = jnp.mod(step, num_batches)
        inputs, targets = bptt_batch(tokens, index, seq_len)
        return inputs, targets, index == 0

    return batch_fn


def evaluate_lm(model: LSTMLanguageModel, params, batched_tokens, seq_len: int):
    """(mean token loss, perplexity) over a whole batchified split, the carry passed from batch
    to batch from zeros (``lax.scan``), as the reference's ``compute_full_dataset_loss``; all
    batches are full so the mean of batch means is the token mean."""
    batched_tokens = jnp.asarray(batched_tokens)
    num_batches = num_bptt_batches(batched_tokens.shape[0], seq_len)

    def body(carry, index):
        inputs, targets = bptt_batch(batched_tokens, index, seq_len)
        logits, carry = model.apply({"params": params}, inputs, carry)
        return carry, _token_loss(logits, targets)

    carry0 = model.initial_carry(batched_tokens.shape[1])
    _, losses = jax.lax.scan(body, carry0, jnp.arange(num_batches))
    value = jnp.mean(losses)
    return value, jnp.exp(value)
