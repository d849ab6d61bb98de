"""Orbax checkpoints of the vmapped train state (all learners in one pytree)."""

import os

import jax
import orbax.checkpoint as ocp


def make_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
    manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, like):
    """(state, step) of the newest checkpoint, restored into the structure of ``like``;
    (like, 0) when there is none."""
    step = manager.latest_step()
    if step is None:
        return like, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract)), int(step)
