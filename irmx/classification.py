"""Pure pieces of the generic classifier trainer (noisy-label training of the measures family).

Per learner: a train/validation split (stream ``data_split``), symmetric label noise on the
training part (stream ``label_noise``), an epoch-wise shuffle (stream ``shuffle``), optional
random-crop + flip augmentation, cross-entropy with SGD (momentum, coupled weight decay as in
torch.optim.SGD) or Adam, and a linear learning-rate warm-up from ``warmup_initial`` over
``warmup_epochs`` epochs (ignite's ``create_lr_scheduler_with_warmup`` as the seed uses it).
"""

import jax
import jax.numpy as jnp
import optax


def warmup_schedule(lr, warmup_initial: float, warmup_epochs: int, steps_per_epoch: int):
    """lr_t = warmup_initial + (lr - warmup_initial) * min(epoch / warmup_epochs, 1), epoch =
    floor(t / steps_per_epoch): constant within an epoch, ``lr`` from epoch ``warmup_epochs``."""

    def schedule(count):
        if warmup_epochs == 0:
            return lr
        epoch = (count // steps_per_epoch).astype(jnp.float32)
        frac = jnp.minimum(epoch / warmup_epochs, 1.0)
        return warmup_initial + (lr - warmup_initial) * frac

    return schedule


def make_optimizer(optim, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD(momentum) or Adam with coupled L2 weight decay (g + wd * p, as torch.optim does),
    under ``optax.inject_hyperparams`` so ``learning_rate`` and ``weight_decay`` are vmappable."""
    from irmx.train import sum_terms

    def factory(learning_rate, weight_decay):
        lr = warmup_schedule(learning_rate, optim.warmup_initial, optim.warmup_epochs,
                             steps_per_epoch)
        if optim.name == "sgd":
            base = optax.sgd(lr, momentum=optim.momentum or None)
        else:
            base = optax.adam(lr)
        return optax.chain(sum_terms(), optax.add_decayed_weights(weight_decay), base)

    return optax.inject_hyperparams(factory)(
        learning_rate=optim.lr, weight_decay=optim.weight_decay
    )


def cross_entropy(logits_BxK, labels_B):
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B)


def make_loss_terms(apply_fn):
    """``(params, batch, key[, model_state]) -> ([mean cross-entropy], {loss, accuracy})``.

    With a model state (BatchNorm), the forward pass runs in training mode on batch statistics
    and returns the updated running statistics as ``metrics["model_state"]``."""

    def loss_terms(params, batch, key, model_state=None):
        del key
        x, y = batch
        metrics = {}
        if model_state:
            logits, metrics["model_state"] = apply_fn(
                {**params, **model_state}, x, train=True, mutable=list(model_state))
        else:
            logits = apply_fn(params, x)
        loss = cross_entropy(logits, y).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss[None], {"loss": loss, "accuracy": acc, **metrics}

    return loss_terms


def make_batch_fn(batch_size: int, steps_per_epoch: int, augment=None):
    """Batch ``step`` of a learner: epoch-wise permutation of its training indices (key
    fold_in(shuffle_key, epoch)), drop-last, then ``augment(key, images)`` if given."""

    def batch_fn(data, step, key):
        epoch = step // steps_per_epoch
        shuffle_key = jax.random.fold_in(jax.random.wrap_key_data(data["shuffle_key"]), epoch)
        n = data["train_idx"].shape[0]
        perm = jax.random.permutation(shuffle_key, n)
        pos = (step % steps_per_epoch) * batch_size
        idx = jax.lax.dynamic_slice_in_dim(perm, pos, batch_size)
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
        return cross_entropy(logits, y), (jnp.argmax(logits, -1) == y).astype(jnp.float32)

    losses, correct = jax.lax.map(one, (xs, ys))
    m = mask.reshape(num_batches, batch_size)
    return {
        "loss": jnp.sum(losses * m) / n,
        "accuracy": jnp.sum(correct * m) / n,
    }
