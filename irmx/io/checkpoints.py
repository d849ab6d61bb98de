"""Orbax checkpoints of the vmapped train state (all learners in one pytree)."""

import os

import jax
import numpy as np
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


def open_reader(directory: str) -> ocp.CheckpointManager:
    """A manager that only reads ``directory`` (another run's ``ckpt/``): unlike
    ``make_manager`` it creates nothing and, never saving, deletes nothing. (orbax's
    ``read_only=True`` would do the same but logs warnings on stderr, where the command-line
    mains print their one-line errors.)"""
    options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def restore_items(manager: ocp.CheckpointManager, step: int, abstract: dict) -> dict:
    """Only the top-level items of the saved state named by ``abstract`` (item name -> tree of
    ``jax.ShapeDtypeStruct``, e.g. ``{"params": ..., "model_state": ...}`` of a TrainState),
    as numpy arrays: orbax's partial restore reads nothing else from disk."""
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    args = ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True)
    return manager.restore(int(step), args=args)
