"""The learner axis shared by every family.

A config names a root ``seed`` with ``num_seeds`` (or an explicit ``seeds`` list) and
``vmapped`` values: scalars that change no shapes (learning rate, penalty weight, ...). Their
Cartesian product is one flat axis of N learners, seed slowest, so ``to_grid`` reshapes any
per-learner array to ``(S, G1, G2, ...)``. A pure per-learner function is jit(vmap)-ed over N,
and sharded over devices with ``jax.sharding`` when more than one is present.
"""

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LearnerAxis:
    """N = S seeds x the grid of vmapped values, flattened in C order (seed slowest).

    ``names[0]`` is always ``"seed"``; ``values[k]`` are the grid values of ``names[k]``.
    """

    names: tuple[str, ...]
    values: tuple[tuple, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.values)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.values[0]

    @property
    def hparam_names(self) -> tuple[str, ...]:
        return self.names[1:]

    @property
    def coords(self) -> dict[str, np.ndarray]:
        """Per-learner coordinate of every axis name, each an array of shape (N,)."""
        rows = list(itertools.product(*self.values))
        return {name: np.array([r[k] for r in rows]) for k, name in enumerate(self.names)}

    def coords_of(self, i: int) -> dict:
        return {name: _py(v[i]) for name, v in self.coords.items()}

    def hparams(self) -> dict[str, jax.Array]:
        """The vmapped values as float32 arrays of shape (N,), ready for vmap."""
        c = self.coords
        return {name: jnp.asarray(c[name], jnp.float32) for name in self.hparam_names}

    def seed_array(self) -> jax.Array:
        return jnp.asarray(self.coords["seed"], jnp.uint32)

    def to_grid(self, x):
        """Reshape a leading learner axis N to (S, G1, ...), leaf by leaf."""
        return jax.tree.map(lambda a: np.asarray(a).reshape(self.shape + np.shape(a)[1:]), x)


def _py(v):
    return v.item() if hasattr(v, "item") else v


def make_axis(seeds: Sequence[int], vmapped: Mapping[str, Sequence[float]] = ()) -> LearnerAxis:
    """Learner axis over ``seeds`` x the product of the non-empty ``vmapped`` value lists."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("the learner axis needs at least one seed")
    names, values = ["seed"], [seeds]
    for name, vals in dict(vmapped).items():
        vals = tuple(float(v) for v in vals)
        if vals:
            names.append(name)
            values.append(vals)
    return LearnerAxis(tuple(names), tuple(values))


def seeds_from_config(config) -> tuple[int, ...]:
    """Explicit ``config.seeds`` when given, else ``seed, seed + 1, ..., seed + num_seeds - 1``."""
    if config.get("seeds"):
        return tuple(int(s) for s in config.seeds)
    return tuple(range(int(config.seed), int(config.seed) + int(config.num_seeds)))


def axis_from_config(config) -> LearnerAxis:
    vmapped = {k: tuple(v) for k, v in config.get("vmapped", {}).items()}
    return make_axis(seeds_from_config(config), vmapped)


def shard_learners(tree):
    """Place the leading learner axis across all devices when it divides evenly; else as is.

    On one device this is the identity. On several, jit(vmap(...)) then runs data-parallel over
    learners with no code change (``jax.sharding.NamedSharding`` over a 1-D "learners" mesh).
    """
    devices = jax.devices()
    leaves = jax.tree.leaves(tree)
    if len(devices) == 1 or not leaves or leaves[0].shape[0] % len(devices):
        return tree
    mesh = jax.sharding.Mesh(np.array(devices), ("learners",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("learners"))
    return jax.device_put(tree, spec)


def select_per_seed(axis: LearnerAxis, criterion_N: np.ndarray) -> np.ndarray:
    """For each seed, the learner index with the lowest ``criterion`` over the vmapped grid.

    The paper's model selection: e.g. the IRM penalty weight with the lowest validation MSE.
    Non-finite values (diverged learners) are never selected unless all are.
    """
    crit = np.asarray(criterion_N, np.float64).reshape(axis.shape[0], -1)
    crit = np.where(np.isfinite(crit), crit, np.inf)
    per_seed = crit.shape[1]
    return np.arange(axis.shape[0]) * per_seed + np.argmin(crit, axis=1)


def _stats(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


def summarize(axis: LearnerAxis, metrics_N: dict, diverged_N, select_by: str = "") -> dict:
    """Per-learner final metrics and their mean/std/min/max over seeds at each grid point.

    Diverged learners are listed (``diverged: true``) but left out of the statistics. With
    ``select_by``, each seed's best grid point by that metric (lowest) is picked and its
    metrics are summarised under ``"selected"``.
    """
    diverged = np.asarray(diverged_N, bool)
    scalars = {k: np.asarray(v, np.float64) for k, v in metrics_N.items() if np.ndim(v) == 1}
    learners = []
    for i in range(axis.size):
        row = {"learner": i, **axis.coords_of(i), "diverged": bool(diverged[i])}
        row.update({k: float(v[i]) for k, v in scalars.items()})
        row.update({k: np.asarray(v[i]).tolist() for k, v in metrics_N.items() if np.ndim(v) > 1})
        learners.append(row)
    masked = {k: np.where(diverged, np.nan, v) for k, v in scalars.items()}
    grid = []
    per_point = axis.size // axis.shape[0]
    for g in range(per_point):
        idx = np.arange(axis.shape[0]) * per_point + g
        point = {n: axis.coords_of(int(idx[0]))[n] for n in axis.hparam_names}
        point["num_seeds"] = int(len(idx))
        point["num_diverged"] = int(diverged[idx].sum())
        point.update({k: _stats(v[idx]) for k, v in masked.items()})
        grid.append(point)
    summary = {
        "num_learners": axis.size,
        "axis": {n: list(v) for n, v in zip(axis.names, axis.values)},
        "num_diverged": int(diverged.sum()),
        "grid": grid,
        "learners": learners,
    }
    if select_by:
        chosen = select_per_seed(axis, masked[select_by])
        summary["selected"] = {
            "by": select_by,
            "learners": [int(i) for i in chosen],
            **{n: [axis.coords_of(int(i))[n] for i in chosen] for n in axis.hparam_names},
            **{k: _stats(v[chosen]) for k, v in masked.items()},
        }
    return summary
