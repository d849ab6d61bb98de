"""Load another run's workdir: its config, family, model, learner axis and checkpoints.

    run = runs.load("runs/digits")             # reads DIR/config.json; builds nothing yet
    run.family, run.checkpoint_steps()         # "classify", (0, 8, 16)
    state = run.restore(16)                    # {"params": ..., "model_state": ...}, all learners
    some = run.restore(16, learners=[0, 2])    # those learners (leading axis 2)
    variables = run.variables(16, learners=0)  # {**params, **model_state} of learner 0,
    run.model.apply(variables, x, train=False) # what the flax module takes

A restore reads only the asked items of the stacked train state from disk (orbax partial
restore), from each cohort's directory ``ckpt/<cohort>/`` that holds the asked learners, into a
template made by ``jax.eval_shape`` of the program's ``init``: shapes only, no parameters
initialised, nothing compiled. Building the program is the family's own
``build_program(config)``; for the classifier family that loads the data set from disk (the
embedded digits are small; a tfds data set is read from its prepared ``data_dir``), since the
program closes over it.
"""

import dataclasses
import importlib
import os
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from irmx.config_checks import ConfigError
from irmx.io import checkpoints
from irmx.io import workdir as wd

# family -> module whose build_program(config) makes the run's Program
BUILDERS = {"classify": "irmx.experiments.classify", "irm": "irmx.experiments.irm"}
DEFAULT_ITEMS = ("params", "model_state")


class RunError(ConfigError):
    """A workdir that cannot be loaded as asked; one line naming the workdir and what is wrong.

    A ConfigError (so a ValueError), which the command-line mains print as one line."""


def infer_family(config: dict) -> str | None:
    """The family that wrote a run whose config.json has no "family" field, from its keys: the
    classifier trainer's ``data.label_noise`` / ``checkpoint_epochs``, the IRM family's
    ``criterion``, a measures run's ``metric`` + ``source``; None when none match."""
    data = config.get("data")
    if (isinstance(data, dict) and "label_noise" in data) or "checkpoint_epochs" in config:
        return "classify"
    if "criterion" in config:
        return "irm"
    if "metric" in config and "source" in config:
        return "measures"
    return None


def read_config(workdir: str) -> tuple[str, ml_collections.ConfigDict, str]:
    """(absolute path, config, family) of a run workdir; RunError when it is none."""
    path = os.path.abspath(os.path.expanduser(workdir))
    if not os.path.exists(path):
        raise RunError(f"{path}: no such run workdir")
    if not os.path.isdir(path):
        raise RunError(f"{path}: not a run workdir (not a directory)")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise RunError(f"{path}: not a run workdir (no config.json)")
    try:
        blob = wd.read_json(cfg_path)
    except ValueError as e:  # json.JSONDecodeError
        raise RunError(f"{cfg_path}: not valid JSON ({e})") from None
    config = blob.get("config") if isinstance(blob, dict) else None
    if not isinstance(config, dict):
        raise RunError(f"{cfg_path}: no \"config\" object (not written by irmx?)")
    family = blob.get("family") or infer_family(config)
    return path, ml_collections.ConfigDict(config), family


def load(workdir: str) -> "Run":
    """The run in ``workdir``; checks the workdir and its family now, builds the program on
    first use. RunError (one line) when the workdir is not a loadable run."""
    path, config, family = read_config(workdir)
    if family is None:
        raise RunError(
            f"{path}: cannot tell which family wrote this run (config.json has no \"family\" "
            f"and its keys match none); loadable families: {', '.join(BUILDERS)}")
    if family not in BUILDERS:
        raise RunError(f"{path}: a {family!r} run, which has no model checkpoints to load; "
                       f"loadable families: {', '.join(BUILDERS)}")
    if family == "irm" and config.get("study"):
        raise RunError(f"{path}: an IRM study of several experiments; load one of them: "
                       + ", ".join(os.path.join(path, n) for n in config.study))
    return Run(path, config, family)


class Cohort(NamedTuple):
    """Learners trained together: one orbax directory whose states stack these learners."""

    directory: str
    learner_ids: tuple[str, ...]


class Run:
    """A loaded run: ``config`` (ConfigDict), ``family``, ``axis`` (learner axis), and on first
    use its ``program`` and ``model`` (flax module); checkpoints by step."""

    def __init__(self, path: str, config: ml_collections.ConfigDict, family: str):
        self.path, self.config, self.family = path, config, family
        self._program = None
        self._template = None

    def __repr__(self) -> str:
        return f"Run({self.path!r}, family={self.family!r})"

    def build(self, **kwargs):
        """Build (once) the run's program with its family's ``build_program(config,
        **kwargs)``, e.g. ``dataset=`` for the classifier family when the caller has it."""
        if self._program is None:
            module = importlib.import_module(BUILDERS[self.family])
            self._program = module.build_program(self.config, **kwargs)
        return self._program

    @property
    def program(self):
        return self.build()

    @property
    def axis(self):
        """The program's learner axis (before the program is built: the one the config
        describes, which is what the families build)."""
        if self._program is not None:
            return self._program.axis
        from irmx.learners import axis_from_config

        return axis_from_config(self.config)

    @property
    def learner_ids(self) -> list[str]:
        return self.axis.learner_ids(self.config.to_dict())

    @property
    def model(self):
        return self.program.model

    def template(self):
        """The stacked train state's structure, shapes and dtypes for every learner
        (``jax.eval_shape`` of the program's init: traced, never run)."""
        if self._template is None:
            self._template = jax.eval_shape(self.program.init)[0]
        return self._template

    def cohorts(self) -> list[Cohort]:
        """The checkpoint directories under ``ckpt/``: one per cohort of learners trained
        together (``ckpt/<cohort>/cohort.json`` names them; a grown grid adds a cohort)."""
        root = os.path.join(self.path, "ckpt")
        if not os.path.isdir(root):
            return []
        out = []
        for n in sorted(os.listdir(root)):
            meta = os.path.join(root, n, "cohort.json")
            if os.path.exists(meta):
                out.append(Cohort(os.path.join(root, n), tuple(wd.read_json(meta)["learners"])))
        return out

    def _saved_steps(self, cohort: Cohort) -> set[int]:
        manager = checkpoints.open_reader(cohort.directory)
        try:
            return {int(s) for s in manager.all_steps()}
        finally:
            manager.close()

    def _where(self, indices) -> dict[int, list[tuple[Cohort, int]]]:
        """step -> for each learner of ``indices``: (cohort, row in it) holding that step, for
        the steps every one of them has."""
        ids = self.learner_ids
        found: dict[int, dict[int, tuple[Cohort, int]]] = {}
        for cohort in self.cohorts():
            rows = {lid: r for r, lid in enumerate(cohort.learner_ids)}
            for step in self._saved_steps(cohort):
                for i in indices:
                    if ids[i] in rows:
                        found.setdefault(step, {}).setdefault(i, (cohort, rows[ids[i]]))
        return {step: [by[i] for i in indices] for step, by in sorted(found.items())
                if len(by) == len(indices)}

    def checkpoint_steps(self, learners=None) -> tuple[int, ...]:
        """Steps with a checkpoint of every learner (or of ``learners``), ascending."""
        return tuple(self._where(self._indices(learners)[0]))

    def _indices(self, learners) -> tuple[list[int], bool]:
        """(learner indices, whether one int was given: its axis is dropped)."""
        size = self.axis.size
        if learners is None:
            return list(range(size)), False
        is_index = lambda i: isinstance(i, (int, np.integer)) and not isinstance(i, bool)
        single = is_index(learners)
        picked = [learners] if single else (
            list(learners) if isinstance(learners, (list, tuple, np.ndarray)) else None)
        if not picked or not all(is_index(i) and 0 <= i < size for i in picked):
            raise RunError(f"{self.path}: learners={learners!r} is invalid; allowed: an index "
                           f"or a list of indices in [0, {size - 1}] (the run has {size} "
                           "learners)")
        return [int(i) for i in picked], single

    def _item_names(self, template) -> tuple[str, ...]:
        if dataclasses.is_dataclass(template):
            return tuple(f.name for f in dataclasses.fields(template))
        return tuple(template)

    def restore(self, step: int, learners=None, items=DEFAULT_ITEMS) -> dict:
        """``{item: tree}`` of the train state saved at ``step``: only ``items`` (fields of the
        state: params, model_state, opt_state, step, key, diverged), of every learner (None),
        of learner ``i`` (an int: no learner axis) or of learners ``[i, j, ...]`` (in that
        order). Reads only those items from disk; arrays are jax arrays on the default
        device."""
        indices, single = self._indices(learners)
        where = self._where(indices)
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step not in where:
            raise RunError(f"{self.path}: no checkpoint at step {step!r}"
                           + ("" if learners is None else f" of learners {learners!r}")
                           + "; saved steps: " + (", ".join(map(str, where)) or "none"))
        items = (items,) if isinstance(items, str) else tuple(items)
        template = self.template()
        names = self._item_names(template)
        if not items or any(i not in names for i in items):
            raise RunError(f"{self.path}: items={items!r} is invalid; allowed: "
                           f"{', '.join(names)}")
        get = (lambda t, i: getattr(t, i)) if dataclasses.is_dataclass(template) else (
            lambda t, i: t[i])
        located = where[int(step)]
        restored = {}
        for cohort in dict.fromkeys(c for c, _ in located):
            # the template has every learner; a cohort stacks its own number of them
            n = len(cohort.learner_ids)
            abstract = jax.tree.map(
                lambda a, n=n: jax.ShapeDtypeStruct((n,) + a.shape[1:], a.dtype),
                {i: get(template, i) for i in items})
            manager = checkpoints.open_reader(cohort.directory)
            try:
                restored[cohort] = checkpoints.restore_items(manager, int(step), abstract)
            finally:
                manager.close()
        if len(restored) == 1 and [r for _, r in located] == list(range(
                len(located[0][0].learner_ids))):
            out = restored[located[0][0]]  # one cohort, every learner in order: as restored
        else:
            out = jax.tree.map(lambda *rows: np.stack(rows), *[
                jax.tree.map(lambda a, r=r: a[r], restored[c]) for c, r in located])
        if single:
            out = jax.tree.map(lambda a: a[0], out)
        return jax.device_put({i: out[i] for i in items})

    def variables(self, step: int, learners=None) -> dict:
        """The model's variables at ``step`` (params and any BatchNorm statistics), what
        ``model.apply`` takes; learners as in ``restore``."""
        r = self.restore(step, learners, ("params", "model_state"))
        return {**r["params"], **r["model_state"]}

    def data(self):
        """The program's data (per-learner splits, noisy labels, ...), every learner: its
        ``init``'s second output. Unlike ``restore`` this runs the real init (the data are part
        of it)."""
        return self.program.init()[1]
