"""Named key streams derived from one root seed.

Every random choice in irmx draws from ``stream(seed, name)``: the root key of ``seed`` folded
with a stable 31-bit hash of ``name`` (the first four bytes of its SHA-256). Streams are
independent of each other and of the order in which they are requested, so adding a stream never
changes the numbers of an existing one. ``seed`` may be a traced integer, so streams are built
inside ``vmap`` over the learner axis.
"""

import hashlib

import jax

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
