"""The learner axis shared by every family.

A config's learner axis is a product of **factors**, the seed factor slowest:

* seeds: ``seed`` + ``num_seeds`` (or an explicit ``seeds`` list): coordinate ``seed``;
* ``vmapped.<name> = (v1, v2, ...)``: one product factor per non-empty list;
* ``zipped.<name> = (...)``: lists of one length walked together (one factor);
* ``sampled.num = n`` with ``sampled.<name> = (low, high[, "log" | "int"])``: n random draws,
  draw i of ``name`` from ``fold_in(fold_in(stream(sampled.seed, "axis_sample"), id(name)), i)``,
  so the draws are the same vmapped or not and when ``num`` grows;
* ``control = True``: per seed, one extra **control** learner (coordinate ``control=True``,
  the other coordinates at the family's neutral values) before the grid's learners.

The flat axis N is their Cartesian product in C order, so ``to_grid`` reshapes any per-learner
array to ``(S, F1, F2, ...)``. Coordinates may be ints, floats, bools or strings; a family
routes each (optimizer hyperparameters through ``optax.tree_utils.tree_set``, label noise to the
data, an intervention's scale to its hook). Coordinates named in ``SEED_ROLES`` are seeds of
their own streams (``learner_stream``): ``data_seed`` drives the data streams, ``init_seed`` the
initialisation, ``perturbation_seed`` the perturbation stream; the ``seed`` drives the rest.

Each learner has a stable ``learner_id``: a hash of its coordinates and of the base config
(everything but the learner axis), so results are stored and reused by it and a grown grid
computes only its new learners. A pure per-learner function runs over the axis with
``map_learners``: ``jax.vmap``, or ``jax.lax.map`` over groups of G vmapped learners
(``learners_per_group``) when the whole axis does not fit a cache or a device.
"""

import contextlib
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from irmx import rng

SEED_ROLES = ("seed", "data_seed", "init_seed", "perturbation_seed")
ROLE_STREAMS = {
    "data_seed": ("data", "data_split", "label_noise"),
    "init_seed": ("init",),
    "perturbation_seed": ("perturbation",),
}
# Config keys that describe the learner axis (may change between runs of one workdir).
AXIS_KEYS = ("seed", "num_seeds", "seeds", "vmapped", "zipped", "sampled", "control",
             "learners_per_group")


@dataclasses.dataclass(frozen=True)
class Factor:
    """One factor of the product: ``names`` walked together over ``len(self)`` rows."""

    kind: str  # seed | product | zip | sampled | control
    names: tuple[str, ...]
    rows: tuple[tuple, ...]  # rows[r][k] = value of names[k] in row r

    def __len__(self) -> int:
        return len(self.rows)


@dataclasses.dataclass(frozen=True)
class LearnerAxis:
    """N learners = the product of ``factors`` (C order, ``factors[0]`` the seeds)."""

    factors: tuple[Factor, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for f in self.factors for n in f.names)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(f) for f in self.factors)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r[0] for r in self.factors[0].rows)

    @property
    def hparam_names(self) -> tuple[str, ...]:
        """Coordinate names that vary within a seed (the grid's names)."""
        return tuple(n for f in self.factors[1:] for n in f.names)

    @property
    def values(self) -> tuple[tuple, ...]:
        """Per name, its distinct values in axis order (for tables and summaries)."""
        c = self.coords
        return tuple(tuple(dict.fromkeys(_py(v) for v in c[n])) for n in self.names)

    @property
    def rows(self) -> list[dict]:
        out = []
        for combo in itertools.product(*[f.rows for f in self.factors]):
            row = {}
            for f, r in zip(self.factors, combo):
                row.update({n: _py(v) for n, v in zip(f.names, r)})
            out.append(row)
        return out

    @property
    def coords(self) -> dict[str, np.ndarray]:
        """Per-learner coordinate of every name, each an array of shape (N,)."""
        rows = self.rows
        return {n: np.array([r[n] for r in rows]) for n in self.names}

    def coords_of(self, i: int) -> dict:
        return self.rows[i]

    def numeric_coords(self, indices=None) -> dict[str, np.ndarray]:
        """The coordinates that jit can take (numbers, bools) for learners ``indices``."""
        c = self.coords
        idx = np.arange(self.size) if indices is None else np.asarray(indices)
        return {n: v[idx] for n, v in c.items() if v.dtype.kind in "biuf"}

    def to_grid(self, x):
        """Reshape a leading learner axis N to (S, F1, ...), leaf by leaf."""
        return jax.tree.map(lambda a: np.asarray(a).reshape(self.shape + np.shape(a)[1:]), x)

    def learner_ids(self, base_config: Mapping | None = None) -> list[str]:
        """Stable id per learner: sha256 of its coordinates and the base config (12 hex)."""
        base = config_hash(base_config or {})
        return [learner_id(row, base) for row in self.rows]


def _py(v):
    return v.item() if hasattr(v, "item") else v


def config_hash(config: Mapping) -> str:
    """Hash of a config without its learner-axis keys (what every learner of a run shares)."""
    from irmx.io.workdir import to_json  # plain-JSON form of ConfigDicts and arrays

    base = {k: v for k, v in to_json(dict(config)).items() if k not in AXIS_KEYS}
    return hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()


def learner_id(coords: Mapping, base_hash: str = "") -> str:
    text = json.dumps({k: _py(v) for k, v in coords.items()}, sort_keys=True) + base_hash
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _check_unique(kind: str, names, rows) -> None:
    seen = set()
    for r in rows:
        if r in seen:
            shown = ", ".join(f"{n}={v!r}" for n, v in zip(names, r))
            raise ValueError(f"the learner axis' {kind} factor repeats a learner ({shown}); "
                             "each learner must be distinct")
        seen.add(r)


def seed_factor(seeds: Sequence[int]) -> Factor:
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("the learner axis needs at least one seed")
    _check_unique("seed", ("seed",), [(s,) for s in seeds])
    return Factor("seed", ("seed",), tuple((s,) for s in seeds))


def product_factor(name: str, values: Sequence) -> Factor:
    rows = tuple((_py(v),) for v in values)
    _check_unique("vmapped", (name,), rows)
    return Factor("product", (name,), rows)


def zip_factor(columns: Mapping[str, Sequence]) -> Factor:
    names = tuple(columns)
    lengths = {n: len(v) for n, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"zipped values must have one length; got {lengths}")
    rows = tuple(tuple(_py(columns[n][r]) for n in names) for r in range(lengths[names[0]]))
    _check_unique("zipped", names, rows)
    return Factor("zip", names, rows)


def sample_values(seed: int, name: str, spec: Sequence, num: int) -> np.ndarray:
    """``num`` draws of ``name`` from ``spec = (low, high[, "log" | "linear" | "int"])``: draw i
    depends on (seed, name, i) only. "log" is log-uniform, "int" uniform over low..high."""
    low, high = float(spec[0]), float(spec[1])
    scale = spec[2] if len(spec) > 2 else "linear"
    base = jax.random.fold_in(rng.stream(seed, "axis_sample"), rng.stream_id(name))
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(num, dtype=jnp.uint32))
    with jax.threefry_partitionable(False):
        u = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, dtype=jnp.float32))(keys),
                       np.float64)
    if scale == "log":
        return np.exp(np.log(low) + u * (np.log(high) - np.log(low)))
    if scale == "int":
        return np.floor(low + u * (high - low + 1)).astype(np.int64)
    return low + u * (high - low)


def sampled_factor(seed: int, specs: Mapping[str, Sequence], num: int) -> Factor:
    columns = {n: sample_values(seed, n, s, num) for n, s in specs.items()}
    rows = tuple(tuple(_py(columns[n][i]) for n in columns) for i in range(num))
    return Factor("sampled", tuple(columns), rows)


def with_control(factors: Sequence[Factor], neutral: Mapping) -> Factor:
    """The grid's factors as one factor, preceded by a control row (``control=True``, the
    other coordinates at ``neutral``)."""
    names = tuple(n for f in factors for n in f.names)
    missing = [n for n in names if n not in neutral]
    if missing:
        raise ValueError(f"a control learner needs neutral values of {missing}")
    grid = [tuple(v for r in combo for v in r) for combo in
            itertools.product(*[f.rows for f in factors])]
    rows = [(True, *[_py(neutral[n]) for n in names])] + [(False, *r) for r in grid]
    return Factor("control", ("control", *names), tuple(rows))


def make_axis(seeds: Sequence[int], vmapped: Mapping[str, Sequence] = (), *,
              zipped: Mapping[str, Sequence] | None = None,
              sampled: Mapping[str, Sequence] | None = None, num_sampled: int = 0,
              sample_seed: int = 0, control: bool = False,
              neutral: Mapping | None = None) -> LearnerAxis:
    """Learner axis over ``seeds`` x product(vmapped) x zip(zipped) x sampled (module doc)."""
    factors = [product_factor(n, v) for n, v in dict(vmapped).items() if len(v)]
    if zipped and any(len(v) for v in zipped.values()):
        factors.append(zip_factor({n: v for n, v in zipped.items() if len(v)}))
    specs = {n: s for n, s in (sampled or {}).items() if len(s)}
    if num_sampled and specs:
        factors.append(sampled_factor(sample_seed, specs, num_sampled))
    if control:
        factors = [with_control(factors, neutral or {})]
    names = [n for f in factors for n in f.names]
    dup = sorted({n for n in names if names.count(n) > 1} | ({"seed"} & set(names)))
    if dup:
        raise ValueError(f"learner-axis names {dup} appear in more than one factor")
    return LearnerAxis((seed_factor(seeds), *factors))


def seeds_from_config(config) -> tuple[int, ...]:
    """Explicit ``config.seeds`` when given, else ``seed, seed + 1, ..., seed + num_seeds - 1``."""
    if config.get("seeds"):
        return tuple(int(s) for s in config.seeds)
    return tuple(range(int(config.seed), int(config.seed) + int(config.num_seeds)))


def axis_from_config(config, neutral: Mapping | None = None) -> LearnerAxis:
    """The learner axis a config describes (module docstring for the keys)."""
    sampled = dict(config.get("sampled", {}) or {})
    num = int(sampled.pop("num", 0) or 0)
    sample_seed = sampled.pop("seed", None)
    sample_seed = int(config.get("seed", 0)) if sample_seed in (None, -1) else int(sample_seed)
    return make_axis(
        seeds_from_config(config),
        {k: tuple(v) for k, v in config.get("vmapped", {}).items()},
        zipped={k: tuple(v) for k, v in config.get("zipped", {}).items()},
        sampled={k: tuple(v) for k, v in sampled.items()},
        num_sampled=num, sample_seed=sample_seed,
        control=bool(config.get("control", False)), neutral=neutral,
    )


def learner_stream(coords: Mapping, name: str) -> jax.Array:
    """Key of stream ``name`` for one learner: from the seed role that owns the stream when the
    learner has that coordinate (``ROLE_STREAMS``), else from its ``seed``."""
    for role, streams in ROLE_STREAMS.items():
        if name in streams and role in coords:
            return rng.stream(coords[role], name)
    return rng.stream(coords["seed"], name)


def _leaf_axes(in_axes, args) -> list:
    """in_axes (a prefix tree of 0 / None) broadcast to one entry per leaf of ``args``."""
    marked = jax.tree.map(lambda ax, sub: [-1 if ax is None else ax] * len(jax.tree.leaves(sub)),
                          in_axes, args, is_leaf=lambda x: x is None)
    return [None if a == -1 else a for a in jax.tree.leaves(marked)]


def map_learners(fn: Callable, in_axes=0, group_size: int = 0) -> Callable:
    """``fn`` over the leading learner axis of its mapped arguments: ``jax.vmap(fn, in_axes)``
    when ``group_size`` is 0 (or covers N), else ``jax.lax.map`` over groups of ``group_size``
    vmapped learners (same numbers; memory and cache footprint of one group). ``in_axes`` uses
    0 (mapped) and None (shared) as in vmap; outputs are mapped."""
    vf = jax.vmap(fn, in_axes=in_axes)
    if not group_size:
        return vf

    def grouped(*args):
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        leaf_axes = _leaf_axes(axes, args)
        leaves, treedef = jax.tree.flatten(args)
        n = next(leaf.shape[0] for leaf, a in zip(leaves, leaf_axes) if a == 0)
        if group_size >= n:
            return vf(*args)
        mapped = [leaf for leaf, a in zip(leaves, leaf_axes) if a == 0]
        shared = [leaf for leaf, a in zip(leaves, leaf_axes) if a is None]

        def one(m):
            it_m, it_s = iter(m), iter(shared)
            full = [next(it_m) if a == 0 else next(it_s) for a in leaf_axes]
            return fn(*jax.tree.unflatten(treedef, full))

        return jax.lax.map(one, mapped, batch_size=group_size)

    return grouped


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


@contextlib.contextmanager
def count_compilations():
    """Count XLA backend compilations inside the block (``jax.monitoring`` events), e.g. to
    check that chunks 2..n of a run compile nothing: ``with count_compilations() as n: ...;
    n[0]``."""
    from jax import monitoring

    count = [0]

    def listener(event, duration, **kwargs):
        del duration, kwargs
        if event == "/jax/core/compile/backend_compile_duration":
            count[0] += 1

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        monitoring.unregister_event_duration_listener(listener)


def select_per_seed(axis: LearnerAxis, criterion_N: np.ndarray) -> np.ndarray:
    """For each seed, the learner index with the lowest ``criterion`` over the grid.

    The paper's model selection: e.g. the IRM penalty weight with the lowest validation MSE.
    Non-finite values (diverged learners) are never selected unless all are.
    """
    crit = np.asarray(criterion_N, np.float64).reshape(axis.shape[0], -1)
    crit = np.where(np.isfinite(crit), crit, np.inf)
    per_seed = crit.shape[1]
    return np.arange(axis.shape[0]) * per_seed + np.argmin(crit, axis=1)


def stats(values) -> dict:
    """mean / std (population) / min / max / n over the finite entries (None when none)."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), "n": int(v.size)}


def grid_points(axis: LearnerAxis) -> list[tuple[dict, np.ndarray]]:
    """The grid points in axis order: per combination of the factors after the seeds, its
    coordinates (``hparam_names``) and its learners' indices, one per seed (``summarize``'s
    ``grid``, TensorBoard's runs)."""
    rows = axis.rows
    per_point = axis.size // axis.shape[0]
    out = []
    for g in range(per_point):
        idx = np.arange(axis.shape[0]) * per_point + g
        out.append(({n: rows[int(idx[0])][n] for n in axis.hparam_names}, idx))
    return out


def summarize(axis: LearnerAxis, metrics_N: dict, diverged_N, select_by: str = "",
              learner_ids: Sequence[str] | None = None) -> dict:
    """Per-learner final metrics and their mean/std/min/max over seeds at each grid point.

    Diverged learners are listed (``diverged: true``) but left out of the statistics. With
    ``select_by``, each seed's best grid point by that metric (lowest) is picked and its
    metrics are summarised under ``"selected"``.
    """
    diverged = np.asarray(diverged_N, bool)
    scalars = {k: np.asarray(v, np.float64) for k, v in metrics_N.items() if np.ndim(v) == 1}
    rows = axis.rows
    learners = []
    for i in range(axis.size):
        row = {"learner": i, **rows[i], "diverged": bool(diverged[i])}
        if learner_ids is not None:
            row["learner_id"] = learner_ids[i]
        row.update({k: float(v[i]) for k, v in scalars.items()})
        row.update({k: np.asarray(v[i]).tolist() for k, v in metrics_N.items() if np.ndim(v) > 1})
        learners.append(row)
    masked = {k: np.where(diverged, np.nan, v) for k, v in scalars.items()}
    grid = []
    for coords, idx in grid_points(axis):
        point = dict(coords)
        point["num_seeds"] = int(len(idx))
        point["num_diverged"] = int(diverged[idx].sum())
        point.update({k: stats(v[idx]) for k, v in masked.items()})
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
            **{n: [rows[int(i)][n] for i in chosen] for n in axis.hparam_names},
            **{k: stats(v[chosen]) for k, v in masked.items()},
        }
    return summary


def make_init(init_one: Callable, axis: LearnerAxis, shared: Mapping | None = None) -> Callable:
    """The one init builder: ``init(coords=None) -> (state_n, data)`` = jit(vmap(init_one)) over
    the learners' coordinates (the whole axis when None), sharded over devices, with
    ``shared`` data (read by every learner, not vmapped) merged into ``data``.

    ``init_one(coords) -> (state, per_learner_data)`` sees one learner's numeric coordinates
    (seed roles as uint32). Threefry is non-partitionable for the whole package (set once in
    ``irmx/__init__.py``), so a pure helper gives the same draws inside and outside ``init``.
    """
    init_jit = jax.jit(jax.vmap(init_one))

    def init(coords=None):
        coords = axis.numeric_coords() if coords is None else coords
        typed = {n: jnp.asarray(v, jnp.uint32) if n in SEED_ROLES else jnp.asarray(v)
                 for n, v in coords.items()}
        state, per = init_jit(shard_learners(typed))
        return state, ({**per, **shared} if shared else per)

    return init
