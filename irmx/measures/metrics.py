"""Data-driven measures of a trained classifier, by name: Jacobian norms, accuracy,
cross-entropy and confidence (Gamba, Azizpour & Bjorkman, BMVC 2023; the seed's
``core/metrics.py`` and ``compute_stats.py --metric``).

``make_metric_fn(name, apply_fn, ...)`` validates the static configuration (names, mode,
options; before anything is traced) and returns a pure function ``(params, x, y, key) ->
dict(values=(B,), converged=(B,) | None, iterations=(B,) | None)``, jittable as it is and
vmappable over a leading learner axis of ``params``::

    fn = make_metric_fn("jacobian_operator_norm", apply_fn, normalization="softmax")
    out = jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))(params_N, x, y, key)
    out["values"]  # N x B

``apply_fn(params, x_BxHxWxC) -> logits_BxK`` must treat samples independently (inference
mode: no batch statistics, no dropout).
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from irmx import registry, rng
from irmx.errors import ArgumentError
from irmx.measures import jacobian as jac

METRICS = ("jacobian", "jacobian_operator_norm", "accuracy", "crossentropy", "confidence")
JACOBIAN_METRICS = ("jacobian", "jacobian_operator_norm")

# Defaults of the matrix-free estimators. tol bounds the relative error of Lanczos's sigma_max
# through the residual of its Ritz pair (see jacobian.lanczos_operator_norm).
DEFAULT_TOL = 1e-5
DEFAULT_MAX_ITERS = 200
# Hutchinson: num_probes 0 = adaptive, as many probes as bring the estimated relative standard
# error of ||J||_F to rel_error (at most max_probes, a multiple of jacobian.HUTCHINSON_BLOCK).
DEFAULT_NUM_PROBES = 0
DEFAULT_REL_ERROR = 0.01
DEFAULT_MAX_PROBES = 4096


def accuracy(logits_BxK, y_B) -> jax.Array:
    """Top-1 correctness per sample, 1.0 or 0.0 (argmax ties go to the first index, like
    torch.topk in the seed's ``metric_helpers.accuracy``)."""
    return (jnp.argmax(logits_BxK, axis=-1) == y_B).astype(logits_BxK.dtype)


def crossentropy(logits_BxK, y_B) -> jax.Array:
    """Per-sample cross-entropy -log softmax(f(x))_y (torch CrossEntropyLoss(reduction='none'))."""
    logp = jax.nn.log_softmax(logits_BxK, axis=-1)
    return -jnp.take_along_axis(logp, y_B[:, None].astype(jnp.int32), axis=-1)[:, 0]


def confidence(logits_BxK, y_B) -> jax.Array:
    """Distance of the prediction from the one-hot label, ||onehot(y) - softmax(f(x))||_2
    (the seed's ``metric_helpers.confidence``; 0 = confidently right, sqrt(2) = confidently
    wrong)."""
    p = jax.nn.softmax(logits_BxK, axis=-1)
    onehot = jax.nn.one_hot(y_B, logits_BxK.shape[-1], dtype=p.dtype)
    return jnp.sqrt(jnp.sum(jnp.square(onehot - p), axis=-1))


def batch_mean(result) -> jax.Array:
    """Mean over the batch (last) axis of a metric's ``values`` (or of a result dict)."""
    values = result["values"] if isinstance(result, dict) else result
    return jnp.mean(values, axis=-1)


EXACT_MAX_OUTPUTS = 16  # up to this many outputs the exact operator norm is the cheaper one


def default_mode(name: str, num_outputs: int | None = None) -> str:
    """The mode that costs least. The operator norm: exact needs K vjps, Lanczos a jvp + vjp
    per Krylov vector (up to K, fewer on trained nets), so exact ``per_output`` while K <=
    EXACT_MAX_OUTPUTS (measured at K=10: within 1.1x of one batched K-cotangent backward pass,
    the matrix-free iteration 2-4x) and ``matrix_free`` above or when K is unknown (K=100:
    Lanczos 3x faster than bigmem in benchmarks/jacobian_norms.py's quick check, 14 of 100
    vectors, flat memory). Everything else: exact ``per_output`` (the seed's
    default)."""
    if name != "jacobian_operator_norm":
        return "per_output"
    if num_outputs is not None and num_outputs <= EXACT_MAX_OUTPUTS:
        return "per_output"
    return "matrix_free"


def _check(name, normalization, mode, target_logit_only, tol, atol, max_iters, num_probes,
           probe_space, rel_error, max_probes):
    def fail(argument, value, allowed):
        raise ArgumentError("make_metric_fn", argument, value, allowed)

    registered = registry.names("metric")
    if name not in registered:
        fail("name", name, "one of " + ", ".join(registered))
    if normalization not in jac.NORMALIZATIONS:
        fail("normalization", normalization, "one of " + ", ".join(jac.NORMALIZATIONS))
    if mode not in jac.MODES:
        fail("mode", mode, "one of " + ", ".join(jac.MODES))
    if not isinstance(target_logit_only, bool):
        fail("target_logit_only", target_logit_only, "True or False")
    if target_logit_only and normalization == "crossentropy" and name in JACOBIAN_METRICS:
        fail("target_logit_only", target_logit_only,
             "False with normalization='crossentropy' (already one output; the seed "
             "raises on this combination too)")
    for key, value in (("tol", tol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0
        ):
            fail(key, value, "a finite number >= 0")
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)
    if not integer(max_iters) or max_iters < 1:
        fail("max_iters", max_iters, "an integer >= 1")
    if not integer(num_probes) or num_probes < 0:
        fail("num_probes", num_probes, "an integer >= 1, or 0 (adaptive: rel_error)")
    if probe_space not in jac.PROBE_SPACES:
        fail("probe_space", probe_space, "one of " + ", ".join(jac.PROBE_SPACES))
    if isinstance(rel_error, bool) or not isinstance(rel_error, (int, float)) or not (
            math.isfinite(rel_error) and rel_error > 0):
        fail("rel_error", rel_error, "a finite number > 0")
    block, least = jac.HUTCHINSON_BLOCK, jac.HUTCHINSON_MIN_PROBES
    if not integer(max_probes) or max_probes < least or max_probes % block:
        fail("max_probes", max_probes, f"a multiple of {block}, >= {least}")


def _check_seed_compat(name, mode, normalization, target_logit_only, seed_compat):
    def fail(allowed):
        raise ArgumentError("make_metric_fn", "seed_compat", seed_compat, allowed)

    if not isinstance(seed_compat, bool):
        fail("True or False")
    if not seed_compat:
        return
    if name != "jacobian_operator_norm":
        fail(f"False with name={name!r} (it reproduces the seed's jacobian_operator_norm)")
    if mode == "matrix_free":
        fail("False with mode='matrix_free' (the seed iterates on the explicit Jacobian)")
    if target_logit_only or normalization == "crossentropy":
        fail("False with one output (normalization='crossentropy' or target_logit_only): "
             "the seed fails there (IndexError in its spectral_norm)")


def _require_labels(name, normalization, target_logit_only, y):
    if y is None:
        raise ValueError(
            f"metric {name!r} (normalization={normalization!r}, "
            f"target_logit_only={target_logit_only}) needs integer labels y of shape (B,)"
        )


def _result(values, converged=None, iterations=None, stderr=None, probes=None) -> dict:
    return dict(values=values, converged=converged, iterations=iterations, stderr=stderr,
                probes=probes)


def _pointwise(name: str, per_sample: Callable) -> Callable:
    """A registered metric builder of ``per_sample(logits_BxK, y_B) -> (B,)``."""

    def build(apply_fn, **options):
        def fn(params, x, y=None, key=None):
            _require_labels(name, options["normalization"], options["target_logit_only"], y)
            return _result(per_sample(apply_fn(params, x), y))

        return fn

    return build


def _jacobian_output_fn(name, apply_fn, params, y, normalization, target_logit_only):
    """The (normalized) output whose input Jacobian is measured; labels when it needs them."""
    needs_y = target_logit_only or normalization == "crossentropy"
    if needs_y:
        _require_labels(name, normalization, target_logit_only, y)
    return jac.make_output_fn(apply_fn, params, y if needs_y else None,
                              normalization=normalization, target_logit_only=target_logit_only)


@registry.register("metric", "jacobian")
def _frobenius_metric(apply_fn, *, normalization, mode, target_logit_only, num_probes,
                      probe_space, rel_error, max_probes, **unused):
    """||J(x)||_F: exact (per_output / bigmem) or Hutchinson's estimate (matrix_free) with its
    standard error se(sqrt S) = se(S) / (2 sqrt S) (delta method), whether it reached
    ``rel_error`` (converged) and the probes used."""
    mode = default_mode("jacobian") if mode is None else mode

    def fn(params, x, y=None, key=None):
        out_fn = _jacobian_output_fn("jacobian", apply_fn, params, y, normalization,
                                     target_logit_only)
        if mode == "matrix_free":
            key = rng.stream(0, "mc_sample") if key is None else key
            est = jac.hutchinson_frobenius(out_fn, x, key, num_probes=num_probes,
                                           probe_space=probe_space, rel_error=rel_error,
                                           max_probes=max_probes)
            norm = jnp.sqrt(est["sq"])
            stderr = jnp.where(norm > 0, jnp.sqrt(est["sq_var"]) / (2.0 * norm), 0.0)
            return _result(norm, est["converged"], stderr=stderr, probes=est["probes"])
        return _result(jac.frobenius_exact(out_fn, x, mode))

    return fn


@registry.register("metric", "jacobian_operator_norm")
def _operator_norm_metric(apply_fn, *, normalization, mode, target_logit_only, tol, atol,
                          max_iters, seed_compat=False, **unused):
    """sigma_max(J(x)): exact (per_output / bigmem) or block Lanczos (matrix_free); mode
    None = ``default_mode`` of the number of outputs, resolved when traced. ``seed_compat``:
    the seed's number instead (``jacobian.seed_operator_norm``; mode None = per_output)."""

    def fn(params, x, y=None, key=None):
        out_fn = _jacobian_output_fn("jacobian_operator_norm", apply_fn, params, y,
                                     normalization, target_logit_only)
        mode_ = mode
        if seed_compat:
            key = rng.stream(0, "mc_sample") if key is None else key
            sigma, converged, iters = jac.seed_operator_norm(out_fn, x, key, mode_ or "per_output")
            return _result(sigma, converged, iters)
        if mode_ is None:
            mode_ = default_mode("jacobian_operator_norm", jac._num_outputs(out_fn, x))
        if mode_ == "matrix_free":
            key = rng.stream(0, "mc_sample") if key is None else key
            sigma, converged, iters = jac.lanczos_operator_norm(out_fn, x, key, tol=tol,
                                                                atol=atol, max_iters=max_iters)
            return _result(sigma, converged, iters)
        return _result(jac.operator_norm_exact(out_fn, x, mode_))

    return fn


for _name, _fn in (("accuracy", accuracy), ("crossentropy", crossentropy),
                   ("confidence", confidence)):
    registry.register("metric", _name, _pointwise(_name, _fn))


def make_metric_fn(name: str, apply_fn: Callable, *, normalization: str = "none",
                   mode: str | None = None, target_logit_only: bool = False,
                   tol: float = DEFAULT_TOL, atol: float = 0.0,
                   max_iters: int = DEFAULT_MAX_ITERS, num_probes: int = DEFAULT_NUM_PROBES,
                   probe_space: str = "output", rel_error: float = DEFAULT_REL_ERROR,
                   max_probes: int = DEFAULT_MAX_PROBES, seed_compat: bool = False) -> Callable:
    """Validate a metric's static configuration and return ``fn(params, x, y=None, key=None)``.

    name: a registered metric (``irmx.registry.names("metric")``; the built-ins are METRICS).
      ``jacobian`` = ||J(x)||_F, ``jacobian_operator_norm`` = sigma_max(J(x)) of the
      (normalized) output's input Jacobian (see ``irmx.measures.jacobian``).
    normalization: none | softmax | logsoftmax | crossentropy (Jacobian metrics only; like the
      seed, the other metrics ignore it). None means "none".
    mode: per_output | bigmem | matrix_free; None = ``default_mode(name, K)`` with K the
      number of (normalized) outputs, resolved when traced. Ignored by the
      non-Jacobian metrics. matrix_free means block Lanczos (``tol``, ``atol``, ``max_iters``;
      ``jacobian.lanczos_operator_norm``) for the operator norm and Hutchinson's estimator
      (``num_probes``, ``probe_space``) for the Frobenius norm: sqrt of an unbiased estimate of
      ||J||_F^2 (so the norm itself is biased low by Jensen, by ~Var/(8 ||J||^3)), with
      ``num_probes`` probes or, when 0 (the default), adaptively as many as bring the estimated
      relative standard error of ||J||_F to ``rel_error`` (at most ``max_probes``; see
      ``jacobian.hutchinson_frobenius``).
    target_logit_only: the Jacobian of the target output only (1 x D), as in the seed.
    seed_compat: ``jacobian_operator_norm`` only: the seed's default number instead of
      sigma_max (``jacobian.seed_operator_norm``: its 10-step power iteration on its
      rearrangement of the explicit Jacobian; 0.45-0.85 of sigma_max on trained nets). Needs
      mode per_output, bigmem or None and more than one output (the seed fails on one).
    key: the start vectors / probes (irmx's ``mc_sample`` stream); None = stream(0, mc_sample).

    Returns dict(values=(B,), converged=(B,) bool or None, iterations=(B,) int32 or None,
    stderr=(B,) or None, probes=(B,) int32 or None); converged / iterations are arrays only for
    Lanczos and seed_compat (there converged = the seed's tolerance met before its 10 steps),
    converged / stderr / probes for Hutchinson (converged: rel_error reached before max_probes;
    stderr: the estimated standard error of the value).
    """
    normalization = "none" if normalization is None else normalization
    _check(name, normalization, default_mode(name) if mode is None else mode,
           target_logit_only, tol, atol, max_iters, num_probes, probe_space, rel_error,
           max_probes)
    _check_seed_compat(name, mode, normalization, target_logit_only, seed_compat)
    build = registry.lookup("metric", name)
    return build(apply_fn, normalization=normalization, mode=mode,
                 target_logit_only=target_logit_only, tol=tol, atol=atol, max_iters=max_iters,
                 num_probes=num_probes, probe_space=probe_space, rel_error=rel_error,
                 max_probes=max_probes, seed_compat=seed_compat)


def compute_metric(name: str, apply_fn: Callable, params, x, y=None, *, key=None, **options):
    """``make_metric_fn(name, apply_fn, **options)(params, x, y, key)`` in one call; under
    ``jax.jit`` pass name, apply_fn and options as static (or close over them)."""
    return make_metric_fn(name, apply_fn, **options)(params, x, y, key)
