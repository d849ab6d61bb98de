"""Pure pieces of the classifier trainer (the measures family's noisy-label training; driver
``irmx.experiments.classify``, config ``configs/measures/noisy_classification.py``, main
``launch/train.py``).

Per learner: a train/validation split (stream ``data_split``), symmetric label noise on the
training part (stream ``label_noise``), an epoch-wise shuffle (stream ``shuffle``), optional
random-crop + flip augmentation (the step key, stream ``step``), cross-entropy. The optimizer
(SGD with momentum and coupled weight decay as in torch.optim.SGD, or Adam, with the seed's
linear warm-up) is ``irmx.optim.make_optimizer``.
"""

import jax
import jax.numpy as jnp

from irmx import rng
from irmx.measures.metrics import accuracy, crossentropy


def make_loss(apply_fn):
    """``loss(params, model_state, batch, key, values) -> (mean cross-entropy, aux)``, aux =
    {accuracy[, model_state]}: the update map's single-term loss (``irmx.train``).

    With a model state (BatchNorm), the forward pass runs in training mode on batch statistics
    and returns the updated running statistics as ``aux["model_state"]``."""

    def loss(params, model_state, batch, key, values):
        del key, values
        x, y = batch
        aux = {}
        if model_state:
            logits, aux["model_state"] = apply_fn(
                {**params, **model_state}, x, train=True, mutable=list(model_state))
        else:
            logits = apply_fn(params, x)
        aux["accuracy"] = jnp.mean(accuracy(logits, y))
        return jnp.mean(crossentropy(logits, y)), aux

    return loss


def make_batch_fn(batch_size: int, steps_per_epoch: int, augment=None):
    """Batch ``step`` of a learner: epoch-wise shuffle of its training indices
    (``irmx.rng.epoch_batch``: key fold_in(shuffle_key, epoch), drop-last), then
    ``augment(key, images)`` if given."""

    def batch_fn(data, step, key):
        idx = rng.epoch_batch(jax.random.wrap_key_data(data["shuffle_key"]), step,
                              steps_per_epoch, batch_size, data["train_idx"].shape[0])
        x = data["images"][data["train_idx"][idx]]
        y = data["train_labels"][idx]
        if augment is not None:
            x = augment(key, x)
        return x, y

    return batch_fn


def evaluate_split(apply_fn, params, images, labels, batch_size: int) -> dict:
    """Mean accuracy and cross-entropy over a whole split, in batches (lax.map; the last
    partial batch is padded and masked)."""
    n = images.shape[0]
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    xs = jnp.concatenate([images, jnp.zeros((pad,) + images.shape[1:], images.dtype)])
    ys = jnp.concatenate([labels, jnp.zeros((pad,), labels.dtype)])
    mask = jnp.arange(num_batches * batch_size) < n
    xs = xs.reshape((num_batches, batch_size) + images.shape[1:])
    ys = ys.reshape(num_batches, batch_size)

    def one(batch):
        x, y = batch
        logits = apply_fn(params, x)
        return crossentropy(logits, y), accuracy(logits, y)

    losses, correct = jax.lax.map(one, (xs, ys))
    m = mask.reshape(num_batches, batch_size)
    return {
        "loss": jnp.sum(losses * m) / n,
        "accuracy": jnp.sum(correct * m) / n,
    }
