"""Built-in demonstrations: realistic derivative bugs that jaxcheck pinpoints.

Each demo checks a small float32 model whose derivative has one planted bug and
returns the `GradCheckResult`; `fixed=True` checks the corrected derivative,
which passes.

Example:
  >>> run_demo("mlp", fixed=True).passed
  True
"""

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from . import grad_cases as _suites


@dataclasses.dataclass(frozen=True)
class Demo:
    """A named demonstration.

    Attributes:
      name: Key in `DEMOS`, e.g. "mlp".
      description: One paragraph: the model, the planted bug, where it shows up.
      run: `run(fixed)` checks the model and returns the `GradCheckResult`.
    """

    name: str
    description: str
    run: Callable[[bool], Any]


def _check_grad(f, args, **kwargs):
    import jaxcheck  # the public door: the catalogue is a client of the library

    return jaxcheck.check_grad(f, args, **kwargs)


# ----------------------------------------------------------------------------
# mlp: hand-written backprop of a 3-layer MLP, one bias gradient wrong.


def _run_mlp(fixed: bool):
    def backprop(params, x, y):
        return _suites.mlp3_backprop(params, x, y, bug=None if fixed else "bias")

    args = _suites.mlp3_data(jnp.float32)
    return _check_grad(_suites.mlp3_loss, args, argnums=0, grad_fn=backprop)


# ----------------------------------------------------------------------------
# layernorm: a custom_vjp layer norm whose bwd misses the mean of the cotangent.

_LN_EPS = 1e-5


def _layer_norm_fwd(x):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + _LN_EPS)
    xhat = (x - mean) * rstd
    return xhat, (xhat, rstd)


def _layer_norm_rule(with_mean_term: bool) -> Callable:
    """Layer norm over the last axis (no affine part) with a hand-written bwd."""

    def bwd(res, g):
        xhat, rstd = res
        dx = g - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)
        if with_mean_term:
            dx = dx - jnp.mean(g, axis=-1, keepdims=True)
        return (rstd * dx,)

    layer_norm = jax.custom_vjp(lambda x: _layer_norm_fwd(x)[0])
    layer_norm.defvjp(_layer_norm_fwd, bwd)
    return layer_norm


_layer_norm_ok = _layer_norm_rule(with_mean_term=True)
_layer_norm_buggy = _layer_norm_rule(with_mean_term=False)


def _layernorm_args():
    f32 = jnp.float32
    params = {
        "W": _suites._normal(300, (6, 8), f32, 0.5),
        "gamma": _suites._uniform(301, (8,), f32, 0.5, 1.5),
        "beta": _suites._normal(302, (8,), f32, 0.1),
    }
    return params, _suites._normal(303, (4, 6), f32), _suites._weights(304, (4, 8), f32)


def _run_layernorm(fixed: bool):
    layer_norm = _layer_norm_ok if fixed else _layer_norm_buggy

    def loss(params, x, v):
        h = layer_norm(x @ params["W"]) * params["gamma"][None, :] + params["beta"][None, :]
        return jnp.sum(v * jnp.tanh(h))

    return _check_grad(loss, _layernorm_args(), argnums=0)


# ----------------------------------------------------------------------------
# dropout: hand-written backprop that forgets the inverted-dropout scaling.


def _run_dropout(fixed: bool):
    def backprop(params, x, y, key):
        return _suites.dropout_backprop(params, x, y, key, bug=not fixed)

    args = _suites.dropout_data(jnp.float32)
    return _check_grad(_suites.dropout_loss, args, argnums=0, grad_fn=backprop)


# ----------------------------------------------------------------------------
# pallas: a Pallas softmax kernel whose hand-written backward kernel reduces over the
# wrong axis. Both kernels run with `interpret=True`, so the demo runs on CPU.


def _softmax_kernel(x_ref, y_ref):
    x = x_ref[...]
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    y_ref[...] = e / jnp.sum(e, axis=-1, keepdims=True)


def _softmax_bwd_kernel(axis: int) -> Callable:
    """dx = y * (g - sum(g * y)) with the sum over `axis` (-1 is right, 0 the bug)."""

    def kernel(y_ref, g_ref, dx_ref):
        y, g = y_ref[...], g_ref[...]
        dx_ref[...] = y * (g - jnp.sum(g * y, axis=axis, keepdims=True))

    return kernel


def _pallas(kernel: Callable, like: jax.Array, *operands: jax.Array) -> jax.Array:
    from jax.experimental import pallas as pl

    out_shape = jax.ShapeDtypeStruct(like.shape, like.dtype)
    return pl.pallas_call(kernel, out_shape=out_shape, interpret=True)(*operands)


def _pallas_softmax_rule(reduce_axis: int) -> Callable:
    """Row softmax (last axis) as a custom_vjp of two Pallas kernels."""

    @jax.custom_vjp
    def pallas_softmax(x):
        return _pallas(_softmax_kernel, x, x)

    def fwd(x):
        y = pallas_softmax(x)
        return y, y

    def bwd(y, g):
        return (_pallas(_softmax_bwd_kernel(reduce_axis), y, y, g),)

    pallas_softmax.defvjp(fwd, bwd)
    return pallas_softmax


def _run_pallas(fixed: bool):
    softmax = _pallas_softmax_rule(-1 if fixed else 0)

    def loss(params, x, v):
        return jnp.sum(v * (softmax(x @ params["W"]) + params["b"][None, :]))

    f32 = jnp.float32
    params = {"W": _suites._normal(310, (6, 8), f32, 0.5), "b": _suites._normal(311, (8,), f32)}
    args = (params, _suites._normal(312, (4, 6), f32), _suites._normal(313, (4, 8), f32))
    return _check_grad(loss, args, argnums=0)


DEMOS: dict[str, Demo] = {
    demo.name: demo
    for demo in (
        Demo(
            "mlp",
            "A 3-layer tanh MLP (softmax cross-entropy + L2, float32) with hand-written "
            "backprop. The bias gradient of 'layer2' forgets the tanh derivative; the "
            "check names args[0]['layer2']['b'] and its worst element.",
            _run_mlp,
        ),
        Demo(
            "layernorm",
            "A jax.custom_vjp layer norm inside a small loss with random weights. Its bwd "
            "is missing the mean-of-cotangent term, so the gradient of the weights "
            "feeding it, args[0]['W'], is wrong while 'gamma' and 'beta' are right.",
            _run_layernorm,
        ),
        Demo(
            "dropout",
            "A dropout MLP whose key is an argument held fixed, with hand-written "
            "backprop that forgets the 1/(1-p) scaling of the mask; only the layer "
            "before the dropout, args[0]['W1'], is affected.",
            _run_dropout,
        ),
        Demo(
            "pallas",
            "A row softmax written as two Pallas kernels (forward and a hand-written "
            "backward) in a jax.custom_vjp, run with interpret=True on CPU. The backward "
            "kernel sums g * y over the wrong axis, so the gradient of args[0]['W'] is wrong "
            "while the bias after the softmax is right; the report names the rule.",
            _run_pallas,
        ),
    )
}


def run_demo(name: str = "mlp", *, fixed: bool = False) -> Any:
    """Runs one built-in demo and returns its `GradCheckResult`.

    Args:
      name: A key of `DEMOS`: "mlp", "layernorm", "dropout" or "pallas".
      fixed: Check the corrected derivative instead of the planted bug.

    Raises:
      ValueError: If `name` is not a demo.
    """
    if name not in DEMOS:
        close = difflib.get_close_matches(name, DEMOS, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise ValueError(
            f"`run_demo` has no demo {name!r}; choose one of {', '.join(DEMOS)}.{hint}"
        )
    return DEMOS[name].run(fixed)
