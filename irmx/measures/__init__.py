"""Data-driven measures of trained networks: input-output Jacobian norms (exact or matrix-free),
accuracy, cross-entropy and confidence; pure functions, jittable, vmappable over learners."""

from irmx.measures.jacobian import (
    MODES,
    NORMALIZATIONS,
    exact_jacobian,
    frobenius_exact,
    hutchinson_frobenius,
    hutchinson_sq_frobenius,
    hutchinson_variance,
    lanczos_operator_norm,
    make_output_fn,
    normalize_output,
    operator_norm_exact,
    seed_layout,
    seed_operator_norm,
    seed_power_iteration,
    seed_start,
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
    "JACOBIAN_METRICS", "METRICS", "MODES", "NORMALIZATIONS", "accuracy",
    "batch_mean", "compute_metric", "confidence", "crossentropy", "default_mode", "exact_jacobian",
    "frobenius_exact", "hutchinson_frobenius", "hutchinson_sq_frobenius", "hutchinson_variance",
    "lanczos_operator_norm", "make_metric_fn", "make_output_fn", "normalize_output",
    "operator_norm_exact", "seed_layout", "seed_operator_norm", "seed_power_iteration",
    "seed_start", "spectral_norm_dense",
]
