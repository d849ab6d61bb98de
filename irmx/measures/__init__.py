"""Data-driven measures of trained networks: input-output Jacobian norms (exact or matrix-free),
accuracy, cross-entropy and confidence; pure functions, jittable, vmappable over learners."""

from irmx.measures.jacobian import (
    MODES,
    NORMALIZATIONS,
    SEED_POWER,
    exact_jacobian,
    frobenius_exact,
    hutchinson_frobenius,
    hutchinson_sq_frobenius,
    hutchinson_variance,
    make_output_fn,
    normalize_output,
    operator_norm_exact,
    power_iteration,
    spectral_norm_dense,
)
from irmx.measures.metrics import (
    JACOBIAN_METRICS,
    METRICS,
    accuracy,
    batch_mean,
    compute_metric,
    confidence,
    crossentropy,
    default_mode,
    make_metric_fn,
)

__all__ = [
    "JACOBIAN_METRICS", "METRICS", "MODES", "NORMALIZATIONS", "SEED_POWER", "accuracy",
    "batch_mean", "compute_metric", "confidence", "crossentropy", "default_mode", "exact_jacobian",
    "frobenius_exact", "hutchinson_frobenius", "hutchinson_sq_frobenius", "hutchinson_variance",
    "make_metric_fn", "make_output_fn", "normalize_output", "operator_norm_exact",
    "power_iteration", "spectral_norm_dense",
]
