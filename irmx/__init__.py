"""irmx: experiment families for the science of deep-learning training, as one vmapped program."""

import jax

__version__ = "0.1.0"

# Non-partitionable threefry for every irmx computation, set once: the same random numbers
# vmapped over learners or not (so a pure helper gives one learner's draws inside and outside a
# vmapped init), and on CPU its seed-vmapped draws compile 3-10x faster than the partitionable
# default (jax 0.10, measured).
jax.config.update("jax_threefry_partitionable", False)
