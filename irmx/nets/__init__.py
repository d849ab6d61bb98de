"""flax.linen models, chosen by name through ``make_model``."""

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
    raise ValueError(f"config.model.name={name!r} unknown; allowed: {', '.join(MODELS)}")
