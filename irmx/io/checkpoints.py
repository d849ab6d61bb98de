"""Orbax checkpoints of the vmapped train state (all learners in one pytree)."""

import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


def make_manager(directory: str, keep_latest: int = 2, keep_steps=()) -> ocp.CheckpointManager:
    """Orbax manager keeping the ``keep_latest`` newest checkpoints (for resuming) and, for
    good, the ones at ``keep_steps`` (the numbered checkpoints that later analyses load)."""
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(keep_latest),
        checkpoint_managers.CustomSteps(tuple(int(s) for s in keep_steps)),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
    manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, step: int, like):
    """The checkpoint at ``step``, restored into the structure of ``like``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return manager.restore(int(step), args=ocp.args.StandardRestore(abstract))


def restore_latest(manager: ocp.CheckpointManager, like):
    """(state, step) of the newest checkpoint, restored into the structure of ``like``;
    (like, 0) when there is none."""
    step = manager.latest_step()
    if step is None:
        return like, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract)), int(step)
