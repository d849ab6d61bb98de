"""Keep input-gradient convolutions fast inside XLA:CPU loops.

Reverse-mode AD transposes ``y = conv(x, W)`` (W in HWIO) into ``conv(g, rev(W))`` with the
kernel's O and I roles swapped (dimension labels ``01oi``). At the top level of a program XLA:CPU
re-lays such a kernel out and runs the convolution with its fast (Eigen) kernels; inside a
``while`` body (``lax.map``, ``lax.scan``, ``lax.while_loop``) it does not, and falls back to a
generic loop nest: measured here (jax 0.10.2, 2 cores) 6-8x slower for the 3x3 convolutions of
a small ResNet, which made one looped backward pass cost as much as eight vmapped ones.

``canonical_convs(fn, *example_args)`` re-evaluates ``fn``'s jaxpr with every convolution's
kernel explicitly transposed to the canonical spatial-I-O order (a relayout of a small array,
hoisted out of loops by XLA; the convolution is mathematically unchanged), so the convolutions
of ``per_output``'s map and the power iteration's loop stay on the fast path. Everything else is
bound unchanged; calls (``jit``/``pjit``/``closed_call``) are entered recursively.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

_CALLS = ("jit", "pjit", "closed_call", "core_call")


def _conv(lhs, rhs, *, dimension_numbers, **params):
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    n = len(rhs_spec) - 2
    canonical = (n + 1, n) + tuple(range(n))  # (O, I, spatial...) dims of a [spatial..., I, O]
    if tuple(rhs_spec) != canonical:
        rhs = jnp.transpose(rhs, tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0]))
        dimension_numbers = lax.ConvDimensionNumbers(lhs_spec, canonical, out_spec)
    return lax.conv_general_dilated_p.bind(lhs, rhs, dimension_numbers=dimension_numbers,
                                           **params)


def _eval(jaxpr, consts, args):
    env = {}

    def read(v):
        return v.val if isinstance(v, core.Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts, strict=True):
        env[var] = val
    for var, val in zip(jaxpr.invars, args, strict=True):
        env[var] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        sub = eqn.params.get("jaxpr")
        if eqn.primitive is lax.conv_general_dilated_p:
            outvals = [_conv(*invals, **eqn.params)]
        elif eqn.primitive.name in _CALLS and isinstance(sub, core.ClosedJaxpr):
            outvals = _eval(sub.jaxpr, sub.consts, invals)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            subfuns = ()
            if isinstance(params, tuple):  # jax < 0.7: (subfuns, params)
                subfuns, params = params
            with eqn.ctx.manager:
                outvals = eqn.primitive.bind(*subfuns, *invals, **params)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for var, val in zip(eqn.outvars, outvals, strict=True):
            if not isinstance(var, core.DropVar):
                env[var] = val
    return [read(v) for v in jaxpr.outvars]


def canonical_convs(fn, *example_args):
    """``fn`` (traced once at ``example_args``' shapes) with canonical-layout convolution kernels.

    Same values as ``fn`` up to float rounding; closed-over values (e.g. a vjp's residuals)
    become constants of the traced jaxpr.
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    out_tree = jax.tree.structure(out_shape)

    def run(*args):
        return jax.tree.unflatten(out_tree, _eval(closed.jaxpr, closed.consts,
                                                  jax.tree.leaves(args)))

    return run
