"""Named key streams derived from one root seed.

Every random choice in irmx draws from ``stream(seed, name)``: the root key of ``seed`` folded
with a stable 31-bit hash of ``name`` (the first four bytes of its SHA-256). Streams are
independent of each other and of the order in which they are requested, so adding a stream never
changes the numbers of an existing one. ``seed`` may be a traced integer, so streams are built
inside ``vmap`` over the learner axis.
"""

import hashlib

import jax
import jax.numpy as jnp

# step: the per-step key of the training step (batch choice, augmentation, dropout, hooks);
# shuffle: epoch permutations only; axis_sample: the draws of a sampled learner axis.
STREAMS = ("init", "data", "data_split", "label_noise", "shuffle", "step", "mc_sample",
           "perturbation", "axis_sample")


def stream_id(name: str) -> int:
    """Stable 31-bit integer for a stream name (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") & 0x7FFFFFFF


def stream(seed, name: str) -> jax.Array:
    """The typed key of stream ``name`` for root ``seed``: fold_in(key(seed), stream_id(name))."""
    if name not in STREAMS:
        raise ValueError(f"unknown key stream {name!r}; allowed: {', '.join(STREAMS)}")
    return jax.random.fold_in(jax.random.key(seed), stream_id(name))


_FEISTEL_ROUNDS = 6


def shuffled_index(key: jax.Array, positions: jax.Array, n: int) -> jax.Array:
    """Entries ``positions`` of a pseudo-random permutation of ``range(n)`` keyed by ``key``,
    in O(len(positions)) work, so a training step picks its batch of an epoch's shuffle without
    materialising the permutation (``jax.random.permutation`` sorts all n indices, 20 ms a step
    on CPU for n = 50,000).

    The permutation is a balanced Feistel network on 2h-bit integers (2^(2h) >= n): x = (L, R),
    each of 6 rounds maps (L, R) -> (R, L xor F_r(R)) with F_r(R) = threefry bits of
    fold_in(fold_in(key, r), R) — a keyed pseudo-random permutation (Luby & Rackoff, SIAM J.
    Comput. 1988) — restricted to range(n) by cycle walking (re-encrypt while >= n; Black &
    Rogaway, CT-RSA 2002), under 4 encryptions per entry on average since 2^(2h) < 4n.
    """
    n = int(n)
    if n <= 1:
        return jnp.zeros_like(jnp.asarray(positions), dtype=jnp.uint32)
    half = ((n - 1).bit_length() + 1) // 2
    mask = jnp.uint32((1 << half) - 1)
    round_keys = [jax.random.fold_in(key, r) for r in range(_FEISTEL_ROUNDS)]

    def round_fn(k, right):
        return jax.vmap(lambda r: jax.random.bits(jax.random.fold_in(k, r), dtype=jnp.uint32))(
            right.reshape(-1)).reshape(right.shape)

    def encrypt(x):
        left, right = x >> half, x & mask
        for k in round_keys:
            left, right = right, left ^ (round_fn(k, right) & mask)
        return (left << half) | right

    def walk(x):
        return jnp.where(x >= n, encrypt(x), x)

    x = encrypt(jnp.asarray(positions, dtype=jnp.uint32))
    return jax.lax.while_loop(lambda x: jnp.any(x >= n), walk, x)


def epoch_batch(shuffle_key: jax.Array, step, steps_per_epoch: int, batch_size: int,
                n: int) -> jax.Array:
    """Indices of training batch ``step``: slice ``step % steps_per_epoch`` of epoch
    ``step // steps_per_epoch``'s shuffle of ``range(n)`` (key fold_in(shuffle_key, epoch)),
    drop-last, as a data loader with ``shuffle=True, drop_last=True`` draws them."""
    epoch_key = jax.random.fold_in(shuffle_key, step // steps_per_epoch)
    positions = (step % steps_per_epoch) * batch_size + jnp.arange(batch_size)
    return shuffled_index(epoch_key, positions, n).astype(jnp.int32)
