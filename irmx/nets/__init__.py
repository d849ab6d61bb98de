"""flax.linen models, chosen by name through ``make_model``."""

from irmx.errors import ArgumentError
from irmx.nets.classifiers import CLASSIFIER_PATTERNS, is_classifier_name, make_classifier
from irmx.nets.regression import MLP, Linear, PhiW

MODELS = ("linear", "phi_w", "mlp")


def make_model(name: str, **kwargs):
    """Model ``name`` built from ``kwargs`` (its config section)."""
    if name == "linear":
        return Linear(features=kwargs.get("out_dim", 1), use_bias=kwargs.get("use_bias", False))
    if name == "phi_w":
        return PhiW()
    if name == "mlp":
        return MLP(hidden=tuple(kwargs["hidden"]), out_dim=kwargs.get("out_dim", 1))
    if is_classifier_name(name):  # image classifiers (irmx.nets.classifiers)
        return make_classifier(
            name, kwargs.get("num_classes", 10), batchnorm=kwargs.get("batchnorm", False),
            weight_init=kwargs.get("weight_init", "pytorch"),
        )
    raise ArgumentError("make_model", "name", name,
                        "one of " + ", ".join(MODELS + CLASSIFIER_PATTERNS))
