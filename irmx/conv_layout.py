"""Keep convolutions fast inside XLA:CPU loops (training chunks, Jacobian loops).

Reverse-mode AD transposes ``y = conv(x, W)`` (W in HWIO) into ``conv(g, rev(W))`` with the
kernel's O and I roles swapped (dimension labels ``01oi``). At the top level of a program XLA:CPU
re-lays such a kernel out and runs the convolution with its fast (Eigen) kernels; inside a
``while`` body (``lax.map``, ``lax.scan``, ``lax.while_loop``) it does not, and falls back to a
generic loop nest: measured here (jax 0.10.2, 2 cores) 6-8x slower for the 3x3 convolutions of
a small ResNet, which made one looped backward pass cost as much as eight vmapped ones.

``canonical_convs(fn, *example_args)`` re-evaluates ``fn``'s jaxpr with every convolution's
operands explicitly transposed to the canonical layouts (input [N, spatial..., C], kernel
[spatial..., I, O]) and its result transposed back (relayouts; the kernel's is hoisted out of
loops by XLA; the arithmetic is unchanged), so the convolutions of ``per_output``'s map and the
Lanczos loop stay on the fast path. Everything else is bound unchanged; calls
(``jit``/``pjit``/``closed_call``) are entered recursively.

The same holds for training: the weight-gradient convolutions (``f01b_i01o->01bf``) and the
input-gradient ones of ``jax.grad`` inside a ``lax.scan`` over steps hit the slow path too.
Measured (ResNet18K(k=8), batch 128, 5 SGD steps): 34.3 s in a scan, 1.0 s unrolled, 0.9 s in
a scan of ``canonical_convs(jax.grad(loss), params)`` (bit-identical parameters).
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

_CALLS = ("jit", "pjit", "closed_call", "core_call")


def _conv(lhs, rhs, *, dimension_numbers, **params):
    """The convolution with its operands (and result) explicitly in XLA:CPU's canonical layouts:
    input and output [batch, spatial..., feature], kernel [spatial..., in, out]."""
    lhs_spec, rhs_spec, out_spec = (tuple(s) for s in dimension_numbers)
    n = len(rhs_spec) - 2
    canonical_rhs = (n + 1, n) + tuple(range(n))  # (O, I, spatial...) of [spatial..., I, O]
    canonical_io = (0, n + 1) + tuple(range(1, n + 1))  # (N, C, spatial...) of [N, sp..., C]
    if rhs_spec != canonical_rhs:
        rhs = jnp.transpose(rhs, rhs_spec[2:] + (rhs_spec[1], rhs_spec[0]))
    if lhs_spec != canonical_io:
        lhs = jnp.transpose(lhs, (lhs_spec[0],) + lhs_spec[2:] + (lhs_spec[1],))
    out = lax.conv_general_dilated_p.bind(
        lhs, rhs, dimension_numbers=lax.ConvDimensionNumbers(canonical_io, canonical_rhs,
                                                             canonical_io), **params)
    if out_spec != canonical_io:
        position = {out_spec[0]: 0, out_spec[1]: n + 1}
        position.update({d: 1 + i for i, d in enumerate(out_spec[2:])})
        out = jnp.transpose(out, tuple(position[d] for d in range(n + 2)))
    return out


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
