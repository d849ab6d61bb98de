"""Name registry of pure functions configured as data: metrics and evaluators (big_vision's
``registry.Registry`` and ``config.evals``).

A metric builder is registered under a name and looked up by it::

    @registry.register("metric", "accuracy")
    def accuracy_metric(apply_fn, **options):  # -> fn(params, x, y, key) -> dict(values=...)
        ...
    registry.lookup("metric", "accuracy"); registry.names("metric")

An evaluator is configured as data, one entry per name, and built with what the trainer has::

    config.evals.test = {"type": "classification", "split": "test", "every": 10}
    ev = registry.make_evaluator("test", config.evals.test, apply_fn=..., splits=...,
                                 batch_size=500)
    ev.fn(variables, data)                        # {"test_loss": .., "test_accuracy": ..}
    registry.evaluator_metric_names(config.evals) # ("test_loss", "test_accuracy"), no context:
                                                  # a jitted chunk's NaNs when not due
    registry.evaluate_due(evaluators, step, last_step, variables, data)  # inside the chunk

The built-in entries live next to the code they wrap (``irmx.measures.metrics``,
``irmx.measures.evaluators``) and are imported on the first lookup of their kind.
"""

import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from irmx.config_checks import ConfigError
from irmx.errors import ArgumentError

KINDS = ("metric", "evaluator", "property", "task")
_BUILTINS = {"metric": ("irmx.measures.metrics",), "evaluator": ("irmx.measures.evaluators",)}
_REGISTRY: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
_loaded: set[str] = set()


class RegistryError(ConfigError):
    """An unknown kind or name; one line listing what is registered."""


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise RegistryError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")


def _load_builtins(kind: str) -> None:
    if kind not in _loaded:
        for module in _BUILTINS.get(kind, ()):
            importlib.import_module(module)
        _loaded.add(kind)


def register(kind: str, name: str, obj=None):
    """Register ``obj`` as ``kind`` ``name``; without ``obj``, a decorator that does. A second
    object under a taken name is an error, except the same definition again (a module
    reloaded in a notebook)."""
    _check_kind(kind)

    def add(obj):
        old = _REGISTRY[kind].get(name)
        same = lambda a, b: (getattr(a, "__module__", None), getattr(a, "__qualname__", a)) == (
            getattr(b, "__module__", None), getattr(b, "__qualname__", b))
        if old is not None and old is not obj and not same(old, obj):
            raise RegistryError(f"{kind} {name!r} is already registered (by {old!r})")
        _REGISTRY[kind][name] = obj
        return obj

    return add if obj is None else add(obj)


def names(kind: str) -> tuple[str, ...]:
    """The registered names of ``kind``, in registration order (built-ins first)."""
    _check_kind(kind)
    _load_builtins(kind)
    return tuple(_REGISTRY[kind])


def lookup(kind: str, name: str):
    """The object registered as ``kind`` ``name``; RegistryError listing the names otherwise."""
    registered = names(kind)
    if name not in registered:
        raise RegistryError(f"unknown {kind} {name!r}; registered: {', '.join(registered)}")
    return _REGISTRY[kind][name]


# ---------------------------------------------------------------------------------------------
# Evaluators


class EvaluatorType(NamedTuple):
    """A registered evaluator type: ``build(spec, **context) -> fn(variables, data) -> {key:
    scalar}``, the ``keys`` it returns (the metrics are named ``<evaluator name>_<key>``) and
    its spec ``options`` (name -> default; ``REQUIRED`` for none)."""

    build: Callable
    keys: tuple[str, ...]
    options: Mapping[str, Any]


REQUIRED = object()
COMMON_OPTIONS = {"type": REQUIRED, "every": 1}  # every: due when step % every == 0 (or last)


class Evaluator(NamedTuple):
    """A built evaluator: ``fn(variables, data) -> {metric name: scalar}``, pure and jittable
    (vmap it over learners like any per-learner function)."""

    name: str
    type: str
    every: int
    metric_names: tuple[str, ...]
    fn: Callable

    def due(self, step, last_step):
        """Whether to evaluate after ``step`` (jnp bool under jit): every ``every``, and last."""
        return (step % self.every == 0) | (step == last_step)


def register_evaluator(type_name: str, *, keys, options: Mapping[str, Any] = ()):
    """Decorator registering ``build(spec, **context)`` as evaluator type ``type_name``."""

    def deco(build):
        register("evaluator", type_name, EvaluatorType(build, tuple(keys), dict(options)))
        return build

    return deco


def spec_error(name: str, option: str, value, allowed: str) -> ArgumentError:
    """The error of ``option`` of evaluator ``name``'s spec: path ``specs.<name>.<option>`` (a
    driver maps ``specs`` to where its specs live, e.g. ``config.evals``)."""
    return ArgumentError(f"evaluator {name!r}", option, value, allowed,
                         path=f"specs.{name}.{option}")


def _spec_dict(name: str, spec) -> dict:
    if hasattr(spec, "to_dict"):  # ml_collections.ConfigDict
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        raise ArgumentError(f"evaluator {name!r}", "spec", spec,
                            'a dict such as {"type": "classification", ...}', path=f"specs.{name}")
    return dict(spec)


def resolve_spec(name: str, spec) -> tuple[EvaluatorType, dict]:
    """(evaluator type, spec with defaults filled) after checking the spec names a registered
    type, only its options, every one required, and a positive integer ``every``."""
    spec = _spec_dict(name, spec)
    types = names("evaluator")
    if spec.get("type") not in types:
        raise spec_error(name, "type", spec.get("type"), "one of " + ", ".join(types))
    kind = _REGISTRY["evaluator"][spec["type"]]
    allowed = {**COMMON_OPTIONS, **kind.options}
    for key in spec:
        if key not in allowed:
            raise spec_error(name, key, spec[key],
                             f"an option of a {spec['type']!r} evaluator: " + ", ".join(allowed))
    full = {k: spec.get(k, default) for k, default in allowed.items()}
    missing = [k for k, v in full.items() if v is REQUIRED]
    if missing:
        raise spec_error(name, missing[0], None, f"a value (required by {spec['type']!r})")
    every = full["every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise spec_error(name, "every", every, "an integer >= 1")
    return kind, full


def make_evaluator(name: str, spec, **context) -> Evaluator:
    """Build evaluator ``name`` from its ``spec`` (a dict or ConfigDict) and the trainer's
    ``context`` (keyword arguments the type's builder takes, e.g. apply_fn, splits)."""
    kind, full = resolve_spec(name, spec)
    inner = kind.build(full, name=name, **context)
    metric_names = tuple(f"{name}_{k}" for k in kind.keys)

    def fn(variables, data):
        out = inner(variables, data)
        return {f"{name}_{k}": out[k] for k in kind.keys}

    return Evaluator(name, full["type"], full["every"], metric_names, fn)


def make_evaluators(specs, **context) -> tuple[Evaluator, ...]:
    """Every evaluator of ``specs`` (name -> spec, e.g. ``config.evals``), in the specs'
    order (a ConfigDict's: sorted by name)."""
    return tuple(make_evaluator(n, s, **context) for n, s in _items(specs))


def _items(specs):
    if hasattr(specs, "to_dict"):
        specs = specs.to_dict()
    return list(specs.items())


def evaluator_metric_names(specs) -> tuple[str, ...]:
    """The metric names an evaluator set produces (``<name>_<key>`` of every entry, in the
    specs' order), from the specs alone (no data, no model): a jitted chunk fills them with NaN
    when not due."""
    out = []
    for name, spec in _items(specs):
        kind, _ = resolve_spec(name, spec)
        out.extend(f"{name}_{k}" for k in kind.keys)
    return tuple(out)


def evaluate_due(evaluators, step, last_step, variables, data) -> dict:
    """Every evaluator's metrics, NaN for those not due after ``step`` (pure, jittable: one
    ``lax.cond`` per evaluator, so only the due ones compute)."""
    cast = lambda d: {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}
    out = {}
    for ev in evaluators:
        nan = {k: jnp.full((), math.nan, jnp.float32) for k in ev.metric_names}
        out.update(jax.lax.cond(ev.due(step, last_step),
                                lambda ev=ev: cast(ev.fn(variables, data)), lambda nan=nan: nan))
    return out
