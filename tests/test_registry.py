"""The name registry (``irmx.registry``): metrics and evaluators as named pure functions,
configured as data. References are plain numpy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from irmx import config_checks, measures, registry
from irmx.config_checks import ConfigError
from irmx.errors import ArgumentError


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test are dropped after it."""
    for kind in registry.KINDS:
        registry.names(kind)  # built-ins in first, so they are part of the copy
        monkeypatch.setitem(registry._REGISTRY, kind, dict(registry._REGISTRY[kind]))


def test_builtin_metrics_are_registered_in_order():
    assert registry.names("metric") == measures.METRICS
    assert registry.names("evaluator") == ("classification",)
    assert callable(registry.lookup("metric", "jacobian_operator_norm"))


def test_unknown_names_and_kinds_are_one_line_errors():
    with pytest.raises(registry.RegistryError) as err:
        registry.lookup("metric", "lipschitz")
    assert str(err.value) == ("unknown metric 'lipschitz'; registered: jacobian, "
                              "jacobian_operator_norm, accuracy, crossentropy, confidence")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)
    with pytest.raises(registry.RegistryError, match="unknown registry kind 'metrics'; kinds: "
                       "metric, evaluator, property, task"):
        registry.names("metrics")


def test_register_lookup_and_duplicates(scratch_registry):
    def make():
        @registry.register("property", "width")
        def width(params):
            return params.shape[-1]

        return width

    first = make()
    assert registry.lookup("property", "width") is first
    assert make() is not first  # the same definition again (a reloaded module) replaces it
    registry.register("task", "sum", sum)
    assert registry.names("task") == ("sum",)
    with pytest.raises(registry.RegistryError, match="task 'sum' is already registered"):
        registry.register("task", "sum", max)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(5)(jnp.tanh(nn.Dense(7)(x.reshape(x.shape[0], -1))))


def _setup(n=37, learners=3):
    net = _Net()
    gen = np.random.default_rng(0)
    x = gen.normal(size=(n, 2, 3, 1)).astype(np.float32)
    y = gen.integers(0, 5, size=(learners, n))
    keys = jax.random.split(jax.random.key(0), learners)
    variables = jax.vmap(lambda k: net.init(k, x[:1]))(keys)
    apply_fn = lambda v, x: net.apply(v, x, train=False)
    return apply_fn, variables, x, y


def _numpy_loss_accuracy(logits, y):
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean(), (logits.argmax(-1) == y).mean()


def test_a_registered_metric_drives_make_metric_fn(scratch_registry):
    """A user's metric, registered by name, is a metric like the built-ins: compute_metric,
    the driver's name check and the error listing all see it."""

    @registry.register("metric", "margin")
    def margin(apply_fn, **options):
        def fn(params, x, y=None, key=None):
            logits = apply_fn(params, x)
            top2 = jax.lax.top_k(logits, 2)[0]
            return dict(values=top2[:, 0] - top2[:, 1], converged=None, iterations=None)

        return fn

    apply_fn, variables, x, y = _setup(learners=1)
    params = jax.tree.map(lambda a: a[0], variables)
    out = jax.jit(lambda p, x: measures.compute_metric("margin", apply_fn, p, x))(params, x)
    logits = np.sort(np.asarray(apply_fn(params, x)), -1)
    np.testing.assert_allclose(out["values"], logits[:, -1] - logits[:, -2], rtol=1e-6)
    with pytest.raises(ArgumentError, match="confidence, margin"):
        measures.make_metric_fn("lipschitz", apply_fn)


def _splits():
    return {"test": lambda d: (d["x"], d["y"]), "first": lambda d: (d["x"][:10], d["y"][:10])}


@pytest.mark.parametrize("batch_size", [10, 37, 64])
def test_classification_evaluator_matches_numpy_over_learners(batch_size):
    """Mean loss and accuracy over a split of 37 points in batches (a padded, masked last batch
    unless the batch size is 37), jitted and vmapped over 3 learners with their own labels."""
    apply_fn, variables, x, y = _setup()
    spec = ml_collections.ConfigDict({"type": "classification", "split": "test", "every": 5})
    ev = registry.make_evaluator("test", spec, apply_fn=apply_fn, splits=_splits(),
                                 batch_size=batch_size, unused_by_this_type=1)
    assert (ev.name, ev.type, ev.every) == ("test", "classification", 5)
    assert ev.metric_names == ("test_loss", "test_accuracy")
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    out = jax.jit(jax.vmap(ev.fn, in_axes=(0, {"x": None, "y": 0})))(variables, data)
    assert set(out) == {"test_loss", "test_accuracy"}
    for n in range(3):
        logits = apply_fn(jax.tree.map(lambda a, n=n: a[n], variables), x)
        loss, acc = _numpy_loss_accuracy(logits, y[n])
        np.testing.assert_allclose(out["test_loss"][n], loss, rtol=1e-5)
        np.testing.assert_allclose(out["test_accuracy"][n], acc, atol=1e-7)


def test_evaluator_metric_names_and_due_evaluation():
    apply_fn, variables, x, y = _setup(learners=1)
    variables = jax.tree.map(lambda a: a[0], variables)
    specs = ml_collections.ConfigDict({
        "test": {"type": "classification", "split": "test", "every": 10},
        "first": {"type": "classification", "split": "first", "batch_size": 4},
    })
    names = registry.evaluator_metric_names(specs)  # a ConfigDict iterates sorted by name
    assert names == ("first_loss", "first_accuracy", "test_loss", "test_accuracy")
    assert registry.evaluator_metric_names(specs.to_dict()) == names
    evaluators = registry.make_evaluators(specs, apply_fn=apply_fn, splits=_splits(),
                                          batch_size=8)
    assert [(e.name, e.every) for e in evaluators] == [("first", 1), ("test", 10)]
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y[0])}
    due = jax.jit(lambda step: registry.evaluate_due(evaluators, step, 25, variables, data))
    loss, acc = _numpy_loss_accuracy(apply_fn(variables, x), y[0])
    first_loss, _ = _numpy_loss_accuracy(apply_fn(variables, x[:10]), y[0, :10])
    for step, test_due in ((10, True), (13, False), (25, True)):  # 25: the last step
        out = due(step)
        assert set(out) == set(names)
        np.testing.assert_allclose(out["first_loss"], first_loss, rtol=1e-5)  # every step
        if test_due:
            np.testing.assert_allclose(out["test_loss"], loss, rtol=1e-5)
            np.testing.assert_allclose(out["test_accuracy"], acc, atol=1e-7)
        else:
            assert np.isnan(out["test_loss"]) and np.isnan(out["test_accuracy"])


@pytest.mark.parametrize("spec, option, allowed", [
    ({"type": "regression", "split": "test"}, "type", "one of classification"),
    ({"split": "test"}, "type", "one of classification"),
    ({"type": "classification"}, "split", "a value (required by 'classification')"),
    ({"type": "classification", "split": "test", "evry": 2}, "evry",
     "an option of a 'classification' evaluator: type, every, split, batch_size"),
    ({"type": "classification", "split": "test", "every": 0}, "every", "an integer >= 1"),
    ({"type": "classification", "split": "val"}, "split", "one of test, first"),
    ({"type": "classification", "split": "test", "batch_size": 2.5}, "batch_size",
     "an integer >= 1"),
    ("classification", "", "a dict"),
])
def test_bad_evaluator_specs_name_the_option(spec, option, allowed):
    """The library names the evaluator and its option (path specs.<name>.<option>); a driver
    maps the path to its config key (config_keys: specs -> evals)."""
    apply_fn, _, _, _ = _setup(learners=1)
    with pytest.raises(ArgumentError) as err:
        registry.make_evaluator("val", spec, apply_fn=apply_fn, splits=_splits(), batch_size=8)
    message = str(err.value)
    assert message.startswith(f"evaluator 'val': {option or 'spec'}=") and allowed in message
    assert "\n" not in message and err.value.path == "specs.val" + (option and f".{option}")
    with pytest.raises(ConfigError) as err, config_checks.config_keys(specs="evals"):
        registry.make_evaluator("val", spec, apply_fn=apply_fn, splits=_splits(), batch_size=8)
    key = "evals.val" + (option and f".{option}")
    assert str(err.value).startswith(f"config.{key}=") and allowed in str(err.value)


def test_a_bad_context_batch_size_names_the_argument():
    apply_fn, _, _, _ = _setup(learners=1)
    spec = {"type": "classification", "split": "test"}
    with pytest.raises(ArgumentError) as err:
        registry.make_evaluator("val", spec, apply_fn=apply_fn, splits=_splits(), batch_size=0)
    assert str(err.value) == "evaluator 'val': batch_size=0 is invalid; allowed: an integer >= 1"
    assert err.value.path == "batch_size"
