"""A catalogue of correct and deliberately broken custom rules (`jax.custom_vjp` / `jax.custom_jvp`).

Each `RuleCase` builds a rule and the point at which to check it. A correct checker
passes every case with `broken=False` and, for every case with `broken=True`, reports
the check named by `expected_check` as failed (or error), naming `expected_path` (an
input leaf "args[0]['b']" or an output leaf "out[1]"). The test suites and the
verdict-quality benchmarks both run this catalogue.

Data are deterministic and drawn in float32, then cast, so both precisions check the
same points; to check in float64, call `build` and the checker inside
`with jax.enable_x64(True):`. Rules shipped with JAX 0.10.2 that are `custom_jvp`
objects are included directly (some live in private modules: `jax.nn.softmax` calls
`jax._src.nn.functions._softmax`, `jnp.linalg.slogdet` calls `_slogdet_lu` for n >= 3);
`jax.nn.gelu` and `jax.scipy.special.logsumexp` are plain functions differentiated by
JAX, so they appear as the undecorated function of a hand-written rule.

Example:
  >>> case = {c.name: c for c in rule_cases()}["vjp/layernorm_missing_mean"]
  >>> case.kind, case.expected_check, case.expected_path
  ('vjp', 'fd', 'args[0]')
"""

import dataclasses
import functools as ft
from collections.abc import Callable
from typing import Any

import jax
import jax._src.nn.functions as _nn_src
import jax._src.numpy.linalg as _linalg_src
import jax._src.numpy.ufuncs as _ufuncs_src
import jax.numpy as jnp
import numpy as np

PyTree = Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuleCase:
    """One catalogue entry.

    Attributes:
      name: Readable id, e.g. "vjp/layernorm_missing_mean".
      kind: "vjp" (check with `check_custom_vjp`) or "jvp" (`check_custom_jvp`).
      broken: Whether a correct checker must report a failure.
      expected_check: For broken cases, the check that must catch it.
      expected_path: For broken cases, the leaf the finding must name (None when the finding
        is about the whole output, e.g. a wrong-length tuple).
      build: `build(dtype) -> (f, args)`, dtype `jnp.float32` or `jnp.float64`.
      order: The `order` to check at (2 for second-order bugs).
      note: What the case exercises or what the planted bug is.
    """

    name: str
    kind: str
    broken: bool
    expected_check: str | None
    expected_path: str | None
    build: Callable[[Any], tuple[Any, tuple]]
    order: int = 1
    note: str = ""


def _normal(seed: int, shape: tuple[int, ...], dtype: Any, scale: float = 1.0) -> jax.Array:
    return (scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)).astype(dtype)


def _mixed(dtype: Any) -> jax.Array:
    """Five points with negative and positive elements, all at least 0.3 away from 0."""
    return jnp.asarray([-1.3, -0.4, 0.7, 1.9, -2.2], jnp.float32).astype(dtype)


def _bug(dtype: Any) -> float:
    """A relative error far below finite-difference resolution but far above rounding."""
    return 1.5e-5 if jnp.dtype(dtype) == jnp.float32 else 1e-11


# ----------------------------------------------------------------------------------
# custom_vjp rules.


def _vjp(
    fun: Callable, fwd: Callable, bwd: Callable, *, symbolic_zeros: bool = False, **kw: Any
) -> Any:
    op = jax.custom_vjp(fun, **kw)
    op.defvjp(fwd, bwd, symbolic_zeros=symbolic_zeros)
    return op


def _sin_vjp(bwd: Callable, fwd_res: Callable = lambda x: x, fwd_out: Callable = jnp.sin) -> Any:
    return _vjp(jnp.sin, lambda x: (fwd_out(x), fwd_res(x)), bwd)


def _b_sin(dtype: Any, op: Any) -> tuple[Any, tuple]:
    return op, (_mixed(dtype),)


_SIN_OK = _sin_vjp(lambda x, g: (g * jnp.cos(x),))


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def _gelu_grad(x: jax.Array) -> jax.Array:
    return jax.scipy.stats.norm.cdf(x) + x * jax.scipy.stats.norm.pdf(x)


def _pytree_rule(bug: bool) -> Any:
    """f({'a': x, 'b': y}) -> (x * y, {'s': sin(a)}): dict input, tuple/dict output."""

    def fun(p):
        return p["a"] * p["b"], {"s": jnp.sin(p["a"])}

    def bwd(p, g):
        gp, gs = g
        db = gp * p["a"] * (1.5 if bug else 1.0)
        return ({"a": gp * p["b"] + gs["s"] * jnp.cos(p["a"]), "b": db},)

    return _vjp(fun, lambda p: (fun(p), p), bwd)


def _b_pytree(dtype: Any, bug: bool) -> tuple[Any, tuple]:
    p = {"a": _normal(1, (4,), dtype), "b": _normal(2, (4,), dtype)}
    return _pytree_rule(bug), (p,)


def _normalize_rule(bug: bool) -> Any:
    """x / ||x|| along a nondiff `axis` (nondiff_argnums=(1,))."""

    def fun(x, axis):
        return x / jnp.linalg.norm(x, axis=axis, keepdims=True)

    def fwd(x, axis):
        n = jnp.linalg.norm(x, axis=axis, keepdims=True)
        return x / n, (x / n, n)

    def bwd(axis, res, g):
        y, n = res
        proj = jnp.sum(g * y, axis=axis, keepdims=True)
        return ((g - (0.0 if bug else 1.0) * proj * y) / n,)

    return _vjp(fun, fwd, bwd, nondiff_argnums=(1,))


def _gather_rule(ct_for_int: str) -> Any:
    """2 * x[idx] with an int32 `idx` argument (not in nondiff_argnums)."""

    def fun(x, idx):
        return 2 * x[idx]

    def bwd(res, g):
        x, idx = res
        dx = jnp.zeros_like(x).at[idx].add(2 * g)
        if ct_for_int == "none":
            return dx, None
        if ct_for_int == "float0":
            return dx, np.zeros(idx.shape, jax.dtypes.float0)
        return dx, jnp.zeros(idx.shape, x.dtype)  # wrong: a float cotangent for an int input

    return _vjp(fun, lambda x, idx: (fun(x, idx), (x, idx)), bwd)


def _b_gather(dtype: Any, ct: str) -> tuple[Any, tuple]:
    return _gather_rule(ct), (_normal(3, (5,), dtype), jnp.asarray([4, 0, 2], jnp.int32))


def _layernorm_rule(missing_mean: bool) -> Any:
    """Layer norm over the last axis with scale and bias; bwd optionally missing the mean term."""

    def fun(x, scale, bias):
        mu = jnp.mean(x, -1, keepdims=True)
        sigma = jnp.sqrt(jnp.mean((x - mu) ** 2, -1, keepdims=True) + 1e-5)
        return (x - mu) / sigma * scale[None, :] + bias[None, :]

    def fwd(x, scale, bias):
        mu = jnp.mean(x, -1, keepdims=True)
        sigma = jnp.sqrt(jnp.mean((x - mu) ** 2, -1, keepdims=True) + 1e-5)
        xhat = (x - mu) / sigma
        return xhat * scale[None, :] + bias[None, :], (xhat, sigma, scale)

    def bwd(res, g):
        xhat, sigma, scale = res
        gh = g * scale[None, :]
        mean_g = 0.0 if missing_mean else jnp.mean(gh, -1, keepdims=True)
        dx = (gh - mean_g - xhat * jnp.mean(gh * xhat, -1, keepdims=True)) / sigma
        return dx, jnp.sum(g * xhat, 0), jnp.sum(g, 0)

    return _vjp(fun, fwd, bwd)


def _b_layernorm(dtype: Any, missing_mean: bool) -> tuple[Any, tuple]:
    x = _normal(4, (2, 4), dtype, 2.0)
    return _layernorm_rule(missing_mean), (
        x,
        1 + _normal(5, (4,), dtype, 0.3),
        _normal(6, (4,), dtype, 0.3),
    )


def _leaky_rule(neg_slope_bwd: float) -> Any:
    fun = lambda x: jnp.where(x > 0, x, 0.01 * x)  # noqa: E731
    return _vjp(fun, lambda x: (fun(x), x), lambda x, g: (jnp.where(x > 0, g, neg_slope_bwd * g),))


def _mean_square_rule(batch_axis_bug: bool) -> Any:
    """mean(x**2) whose bwd runs in numpy through `jax.pure_callback`.

    The buggy callback divides by `x.shape[0]`: right for an unbatched x of shape (n,),
    wrong under `vmap` with vmap_method="expand_dims", where it sees (batch, n).
    """

    def host_grad(x, g):
        x, g = np.asarray(x), np.asarray(g)
        g = g.reshape(g.shape + (1,) * (x.ndim - g.ndim))  # a batched g of shape (b,) -> (b, 1)
        n = x.shape[0] if batch_axis_bug else x.shape[-1]
        return (2.0 * x * g / n).astype(x.dtype)

    def bwd(x, g):
        method = "expand_dims" if batch_axis_bug else "sequential"
        return (
            jax.pure_callback(
                host_grad, jax.ShapeDtypeStruct(x.shape, x.dtype), x, g, vmap_method=method
            ),
        )

    fun = lambda x: jnp.mean(x**2)  # noqa: E731
    return _vjp(fun, lambda x: (fun(x), x), bwd)


def _sinc_rule() -> Any:
    """sinc at an exact zero: autodiff of the undecorated `where` formula gives NaN there."""

    def fun(x):
        return jnp.where(x == 0, 1.0, jnp.sin(x) / x)

    def bwd(x, g):
        safe = jnp.where(x == 0, 1.0, x)
        d = jnp.where(x == 0, 0.0, (safe * jnp.cos(safe) - jnp.sin(safe)) / safe**2)
        return (g * d,)

    return _vjp(fun, lambda x: (fun(x), x), bwd)


def _b_sinc(dtype: Any) -> tuple[Any, tuple]:
    return _sinc_rule(), (jnp.asarray([-1.1, 0.0, 0.6, 2.3], jnp.float32).astype(dtype),)


def _symbolic_zeros_rule() -> Any:
    def fwd(x, y):
        return x.value * jnp.sin(y.value), (x.value, y.value)

    def bwd(res, g):
        x, y = res
        return g * jnp.sin(y), g * x * jnp.cos(y)

    return _vjp(lambda x, y: x * jnp.sin(y), fwd, bwd, symbolic_zeros=True)


def logsumexp(x: jax.Array) -> jax.Array:
    """`jax.scipy.special.logsumexp` over all of x (a plain function in jax 0.10.2)."""
    return jax.scipy.special.logsumexp(x)


def _logsumexp_rule() -> Any:
    return _vjp(logsumexp, lambda x: (logsumexp(x), x), lambda x, g: (g * jax.nn.softmax(x),))


def _jit_only_rule() -> Any:
    """bwd converts to numpy: fine eagerly, raises under jit (and vmap)."""
    return _sin_vjp(lambda x, g: (g * jnp.asarray(np.cos(np.asarray(x))),))


def _raising_bwd(x, g):
    return (g @ jnp.ones((x.shape[0] + 1, 2), x.dtype),)


def _vjp_cases() -> list[RuleCase]:
    ok = lambda name, build, note, order=1: RuleCase(
        name=name,
        kind="vjp",
        broken=False,
        expected_check=None,
        expected_path=None,
        build=build,
        note=note,
        order=order,
    )  # noqa: E731
    bad = lambda name, check, path, build, note, order=1: RuleCase(
        name=name,
        kind="vjp",
        broken=True,
        expected_check=check,
        expected_path=path,
        build=build,
        note=note,
        order=order,
    )  # noqa: E731
    sin = lambda op: ft.partial(_b_sin, op=op)  # noqa: E731
    pos = lambda dtype: jnp.asarray([0.5, 1.2, 2.0], jnp.float32).astype(dtype)  # noqa: E731
    return [
        ok("vjp/sin", sin(_SIN_OK), "correct sin rule", order=2),
        ok("vjp/pytree", ft.partial(_b_pytree, bug=False), "dict input, (array, dict) output"),
        ok(
            "vjp/nondiff_axis",
            lambda d: (_normalize_rule(False), (_normal(7, (2, 3), d), 1)),
            "nondiff_argnums=(1,) axis",
        ),
        ok(
            "vjp/int_arg_none",
            ft.partial(_b_gather, ct="none"),
            "int32 index argument, cotangent None",
        ),
        ok(
            "vjp/int_arg_float0",
            ft.partial(_b_gather, ct="float0"),
            "int32 index argument, float0 cotangent",
        ),
        ok(
            "vjp/layernorm",
            ft.partial(_b_layernorm, missing_mean=False),
            "layer norm with scale and bias",
            order=2,
        ),
        ok(
            "vjp/leaky_relu",
            lambda d: (_leaky_rule(0.01), (_mixed(d),)),
            "a branchy rule, right on both branches",
        ),
        ok(
            "vjp/callback_bwd",
            lambda d: (_mean_square_rule(False), (_normal(8, (5,), d),)),
            "bwd in numpy via pure_callback, vmap_method='sequential'",
        ),
        ok(
            "vjp/logsumexp",
            lambda d: (_logsumexp_rule(), (_normal(9, (5,), d),)),
            "jax.scipy.special.logsumexp (a plain function in jax 0.10.2) with the softmax rule",
        ),
        ok(
            "vjp/gelu",
            lambda d: (
                _vjp(_gelu, lambda x: (_gelu(x), x), lambda x, g: (g * _gelu_grad(x),)),
                (_mixed(d),),
            ),
            "jax.nn.gelu (plain function) with its exact derivative",
        ),
        ok(
            "vjp/sinc_at_zero",
            _b_sinc,
            "autodiff of f.fun is NaN at 0; the rule is right (autodiff skipped, informational)",
        ),
        ok(
            "vjp/symbolic_zeros",
            lambda d: (_symbolic_zeros_rule(), (_normal(10, (3,), d), _normal(11, (3,), d))),
            "symbolic_zeros=True: fwd receives CustomVJPPrimal",
        ),
        bad(
            "vjp/sin_sign",
            "fd",
            "args[0]",
            sin(_sin_vjp(lambda x, g: (-g * jnp.cos(x),))),
            "bwd has the wrong sign",
        ),
        bad(
            "vjp/pytree_bug",
            "fd",
            "args[0]['b']",
            ft.partial(_b_pytree, bug=True),
            "the cotangent of args[0]['b'] is 1.5x too large",
        ),
        bad(
            "vjp/nondiff_axis_bug",
            "fd",
            "args[0]",
            lambda d: (_normalize_rule(True), (_normal(7, (2, 3), d), 1)),
            "bwd forgets the projection term",
        ),
        bad(
            "vjp/wrong_shape",
            "structure",
            "args[0]",
            sin(_sin_vjp(lambda x, g: ((g * jnp.cos(x))[None],))),
            "bwd returns shape (1, n) for (n,)",
        ),
        bad(
            "vjp/wrong_length",
            "structure",
            None,
            lambda d: (
                _vjp(jnp.multiply, lambda x, y: (x * y, (x, y)), lambda r, g: (g * r[1],)),
                (_normal(12, (3,), d), _normal(13, (3,), d)),
            ),
            "bwd returns 1 cotangent for 2 arguments",
        ),
        bad(
            "vjp/not_a_tuple",
            "structure",
            None,
            sin(_sin_vjp(lambda x, g: g * jnp.cos(x))),
            "bwd returns a bare array, not a tuple",
        ),
        bad(
            "vjp/wrong_dtype",
            "structure",
            "args[0]",
            sin(_sin_vjp(lambda x, g: ((g * jnp.cos(x)).astype(jnp.bfloat16),))),
            "bwd returns bfloat16 cotangents",
        ),
        bad(
            "vjp/int_arg_float_ct",
            "structure",
            "args[1]",
            ft.partial(_b_gather, ct="float"),
            "a float cotangent for an int32 input",
        ),
        bad(
            "vjp/pytree_wrong_structure",
            "structure",
            "args[0]",
            lambda d: (
                _vjp(
                    lambda p: p["a"] * p["b"],
                    lambda p: (p["a"] * p["b"], p),
                    lambda p, g: ({"a": g * p["b"]},),
                ),
                ({"a": _normal(1, (3,), d), "b": _normal(2, (3,), d)},),
            ),
            "bwd's dict lacks key 'b'",
        ),
        bad(
            "vjp/bwd_raises",
            "structure",
            None,
            sin(_vjp(jnp.sin, lambda x: (jnp.sin(x), x), _raising_bwd)),
            "bwd raises a shape error",
        ),
        bad(
            "vjp/approx_fwd",
            "primal",
            "out",
            lambda d: (
                _vjp(
                    _gelu,
                    lambda x: (jax.nn.gelu(x, approximate=True), x),
                    lambda x, g: (g * _gelu_grad(x),),
                ),
                (_mixed(d),),
            ),
            "fwd uses the tanh approximation of gelu",
        ),
        bad(
            "vjp/affine_bwd",
            "linearity",
            "args[0]",
            sin(_sin_vjp(lambda x, g: (g * jnp.cos(x) + 1e-3,))),
            "bwd adds a constant",
        ),
        bad(
            "vjp/nonlinear_bwd",
            "linearity",
            "args[0]",
            sin(_sin_vjp(lambda x, g: (g * jnp.abs(g) * jnp.cos(x),))),
            "bwd squares the cotangent",
        ),
        bad(
            "vjp/negative_branch",
            "fd",
            "args[0]",
            lambda d: (_leaky_rule(0.1), (_mixed(d),)),
            "bwd slope 0.1 instead of 0.01 for x < 0 only",
        ),
        bad(
            "vjp/layernorm_missing_mean",
            "fd",
            "args[0]",
            ft.partial(_b_layernorm, missing_mean=True),
            "layer norm bwd without the mean(g) term",
        ),
        bad(
            "vjp/tiny_bug",
            "autodiff",
            "args[0]",
            lambda d: (_sin_vjp(lambda x, g: (g * jnp.cos(x) * (1 + _bug(d)),)), (_mixed(d),)),
            "bwd off by a relative 1.5e-5 (f32) / 1e-11 (f64): below FD resolution",
        ),
        bad(
            "vjp/vmap_only",
            "vmap",
            "args[0]",
            lambda d: (_mean_square_rule(True), (_normal(8, (5,), d),)),
            "numpy bwd divides by x.shape[0]: wrong only under vmap",
        ),
        bad(
            "vjp/jit_only",
            "jit",
            None,
            sin(_jit_only_rule()),
            "bwd calls np.asarray on its residual: fails under jit",
        ),
        bad(
            "vjp/second_order_stop_gradient",
            "second-order",
            "args[0]",
            lambda d: (
                _sin_vjp(
                    lambda c, g: (g * c,), fwd_res=lambda x: jax.lax.stop_gradient(jnp.cos(x))
                ),
                (_mixed(d),),
            ),
            "fwd saves stop_gradient(cos x): first derivative right, second wrong",
            order=2,
        ),
        bad(
            "vjp/positive_domain_bug",
            "fd",
            "args[0]",
            lambda d: (
                _vjp(jnp.log, lambda x: (jnp.log(x), x), lambda x, g: (g / (x + 0.01),)),
                (pos(d),),
            ),
            "log rule with a shifted denominator",
        ),
    ]


# ----------------------------------------------------------------------------------
# custom_jvp rules.


def _jvp(fun: Callable, rule: Callable, **kw: Any) -> Any:
    op = jax.custom_jvp(fun, **kw)
    op.defjvp(rule)
    return op


def _sin_jvp(tangent: Callable, primal: Callable = jnp.sin) -> Any:
    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        return primal(x), tangent(x, t)

    return _jvp(jnp.sin, rule)


_SIN_JVP_OK = _sin_jvp(lambda x, t: t * jnp.cos(x))


def _gelu_jvp(approx_primal: bool) -> Any:
    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        y = jax.nn.gelu(x, approximate=True) if approx_primal else _gelu(x)
        return y, t * _gelu_grad(x)

    return _jvp(_gelu, rule)


def _pytree_jvp(bug: bool) -> Any:
    def fun(p):
        return p["a"] * p["b"], {"s": jnp.sin(p["a"])}

    def rule(primals, tangents):
        (p,), (t,) = primals, tangents
        out = fun(p)
        dp = t["a"] * p["b"] + p["a"] * t["b"] * (1.5 if bug else 1.0)
        return out, (dp, {"s": jnp.cos(p["a"]) * t["a"]})

    return _jvp(fun, rule)


def _power_jvp() -> Any:
    """x ** n with an int32 exponent argument: its tangent is float0."""

    def rule(primals, tangents):
        (x, n), (t, _) = primals, tangents
        return x**n, n * x ** (n - 1) * t

    return _jvp(lambda x, n: x**n, rule)


def _mean_square_jvp(batch_axis_bug: bool) -> Any:
    def host_weights(x):
        n = x.shape[0] if batch_axis_bug else x.shape[-1]
        return (2.0 * x / n).astype(x.dtype)

    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        method = "expand_dims" if batch_axis_bug else "sequential"
        w = jax.pure_callback(
            host_weights, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method=method
        )
        return jnp.mean(x**2), jnp.sum(w * t)

    return _jvp(lambda x: jnp.mean(x**2), rule)


def _callback_tangent_jvp() -> Any:
    """The tangent goes through a pure_callback: right in forward mode, not transposable."""

    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        t2 = jax.pure_callback(
            lambda a: np.asarray(a),
            jax.ShapeDtypeStruct(t.shape, t.dtype),
            t,
            vmap_method="sequential",
        )
        return jnp.sin(x), t2 * jnp.cos(x)

    return _jvp(jnp.sin, rule)


def _jax_rule(module: Any, name: str) -> Any:
    op = getattr(module, name)
    assert isinstance(op, jax.custom_jvp), f"{module.__name__}.{name} is no longer a jax.custom_jvp"
    return op


def _matrix(dtype: Any) -> jax.Array:
    return jnp.asarray([[2.0, 0.3, 0.1], [0.2, 1.5, -0.4], [0.3, 0.1, -1.8]], jnp.float32).astype(
        dtype
    )


def _jvp_cases() -> list[RuleCase]:
    ok = lambda name, build, note, order=1: RuleCase(
        name=name,
        kind="jvp",
        broken=False,
        expected_check=None,
        expected_path=None,
        build=build,
        note=note,
        order=order,
    )  # noqa: E731
    bad = lambda name, check, path, build, note, order=1: RuleCase(
        name=name,
        kind="jvp",
        broken=True,
        expected_check=check,
        expected_path=path,
        build=build,
        note=note,
        order=order,
    )  # noqa: E731
    sin = lambda op: lambda d: (op, (_mixed(d),))  # noqa: E731
    away = lambda d: jnp.asarray([-1.5, -0.2, 0.3, 2.5, 7.0], jnp.float32).astype(d)  # noqa: E731
    return [
        ok("jvp/sin", sin(_SIN_JVP_OK), "correct sin rule", order=2),
        ok(
            "jvp/pytree",
            lambda d: (_pytree_jvp(False), ({"a": _normal(1, (4,), d), "b": _normal(2, (4,), d)},)),
            "dict input, (array, dict) output",
        ),
        ok(
            "jvp/int_arg",
            lambda d: (
                _power_jvp(),
                (jnp.abs(_normal(3, (4,), d)) + 0.5, jnp.asarray(3, jnp.int32)),
            ),
            "int32 exponent argument (float0 tangent)",
            order=2,
        ),
        ok(
            "jvp/callback_weights",
            lambda d: (_mean_square_jvp(False), (_normal(8, (5,), d),)),
            "tangent weights from pure_callback, vmap_method='sequential'",
        ),
        ok(
            "jax/relu",
            lambda d: (jax.nn.relu, (_mixed(d),)),
            "jax.nn.relu (custom_jvp), |x| >= 0.4",
        ),
        ok(
            "jax/relu6",
            lambda d: (jax.nn.relu6, (away(d),)),
            "jax.nn.relu6 (custom_jvp), away from 0 and 6",
        ),
        ok(
            "jax/softmax",
            lambda d: (
                _jax_rule(_nn_src, "_softmax"),
                (_normal(14, (2, 4), d), -1, None, -jnp.inf),
            ),
            "jax.nn.softmax's rule (_softmax): nondiff axis, initial=-inf held",
        ),
        ok(
            "jax/slogdet",
            lambda d: (_jax_rule(_linalg_src, "_slogdet_lu"), (_matrix(d),)),
            "jnp.linalg.slogdet's rule for n >= 3 (_slogdet_lu): (sign, logabsdet)",
        ),
        ok(
            "jax/det",
            lambda d: (_jax_rule(_linalg_src, "_det"), (_matrix(d),)),
            "jnp.linalg.det's rule (_det)",
        ),
        ok(
            "jax/pinv",
            lambda d: (_jax_rule(_linalg_src, "_pinv"), (_matrix(d), None, False)),
            "jnp.linalg.pinv's rule (_pinv): nondiff rtol, hermitian",
        ),
        ok(
            "jax/logit",
            lambda d: (
                jax.scipy.special.logit,
                (jnp.asarray([0.1, 0.35, 0.6, 0.9], jnp.float32).astype(d),),
            ),
            "jax.scipy.special.logit (custom_jvp)",
            order=2,
        ),
        ok(
            "jax/xlogy",
            lambda d: (
                jax.scipy.special.xlogy,
                (_normal(15, (4,), d), jnp.asarray([0.3, 1.2, 2.5, 0.8], jnp.float32).astype(d)),
            ),
            "jax.scipy.special.xlogy (custom_jvp, two arguments)",
        ),
        ok(
            "jax/log1mexp",
            lambda d: (
                _jax_rule(_nn_src, "log1mexp"),
                (jnp.asarray([0.2, 0.9, 2.5], jnp.float32).astype(d),),
            ),
            "jax.nn.log1mexp (custom_jvp)",
        ),
        ok(
            "jax/log_ndtr",
            lambda d: (jax.scipy.special.log_ndtr, (_mixed(d), 3)),
            "jax.scipy.special.log_ndtr (custom_jvp, nondiff series_order)",
        ),
        ok(
            "jax/frexp",
            lambda d: (
                _jax_rule(_ufuncs_src, "_frexp"),
                (jnp.asarray([0.3, 1.7, -5.5, 12.0], jnp.float32).astype(d),),
            ),
            "jnp.frexp's rule (_frexp): an int32 exponent output",
        ),
        ok(
            "jvp/gelu",
            lambda d: (_gelu_jvp(False), (_mixed(d),)),
            "jax.nn.gelu (a plain function in jax 0.10.2) with its exact derivative",
            order=2,
        ),
        bad(
            "jvp/sin_sign",
            "fd",
            "args[0]",
            sin(_sin_jvp(lambda x, t: -t * jnp.cos(x))),
            "tangent has the wrong sign",
        ),
        bad(
            "jvp/pytree_bug",
            "fd",
            "args[0]['b']",
            lambda d: (_pytree_jvp(True), ({"a": _normal(1, (4,), d), "b": _normal(2, (4,), d)},)),
            "the tangent from args[0]['b'] is 1.5x too large",
        ),
        bad(
            "jvp/approx_primal",
            "primal",
            "out",
            lambda d: (_gelu_jvp(True), (_mixed(d),)),
            "the rule's primal uses the tanh approximation of gelu",
        ),
        bad(
            "jvp/tangent_wrong_shape",
            "structure",
            "out",
            sin(_sin_jvp(lambda x, t: (t * jnp.cos(x))[None])),
            "tangent output of shape (1, n)",
        ),
        bad(
            "jvp/tangent_wrong_dtype",
            "structure",
            "out",
            sin(_sin_jvp(lambda x, t: (t * jnp.cos(x)).astype(jnp.bfloat16))),
            "bfloat16 tangent output",
        ),
        bad(
            "jvp/jvp_raises",
            "primal",
            None,
            sin(_sin_jvp(lambda x, t: t @ jnp.ones((x.shape[0] + 1,), x.dtype))),
            "the rule raises a shape error",
        ),
        bad(
            "jvp/affine",
            "linearity",
            "out",
            sin(_sin_jvp(lambda x, t: t * jnp.cos(x) + 1e-3)),
            "the tangent has a constant term",
        ),
        bad(
            "jvp/affine_adjoint",
            "adjoint",
            None,
            sin(_sin_jvp(lambda x, t: t * jnp.cos(x) + 1e-3)),
            "the constant term breaks <u, Jv> = <J^T u, v>",
        ),
        bad(
            "jvp/callback_tangent",
            "adjoint",
            None,
            lambda d: (_callback_tangent_jvp(), (_mixed(d),)),
            "tangent through pure_callback: fine forward, jax.grad impossible",
        ),
        bad(
            "jvp/stop_gradient_tangent",
            "adjoint",
            None,
            sin(_sin_jvp(lambda x, t: jax.lax.stop_gradient(t) * jnp.cos(x))),
            "stop_gradient on the tangent: fine forward, not transposable",
        ),
        bad(
            "jvp/negative_branch",
            "fd",
            "args[0]",
            lambda d: (
                _jvp(
                    lambda x: jnp.where(x > 0, x, 0.01 * x),
                    lambda p, t: (
                        jnp.where(p[0] > 0, p[0], 0.01 * p[0]),
                        jnp.where(p[0] > 0, t[0], 0.1 * t[0]),
                    ),
                ),
                (_mixed(d),),
            ),
            "tangent slope 0.1 instead of 0.01 for x < 0 only",
        ),
        bad(
            "jvp/tiny_bug",
            "autodiff",
            "out",
            lambda d: (_sin_jvp(lambda x, t: t * jnp.cos(x) * (1 + _bug(d))), (_mixed(d),)),
            "tangent off by a relative 1.5e-5 (f32) / 1e-11 (f64): below FD resolution",
        ),
        bad(
            "jvp/vmap_only",
            "vmap",
            "tangent out",
            lambda d: (_mean_square_jvp(True), (_normal(8, (5,), d),)),
            "numpy tangent weights divide by x.shape[0]: wrong only under vmap",
        ),
        bad(
            "jvp/jit_only",
            "jit",
            None,
            sin(_sin_jvp(lambda x, t: t * jnp.asarray(np.cos(np.asarray(x))))),
            "the rule calls np.asarray on the primal: fails under jit",
        ),
        bad(
            "jvp/second_order_stop_gradient",
            "second-order",
            "args[0]",
            sin(_sin_jvp(lambda x, t: t * jax.lax.stop_gradient(jnp.cos(x)))),
            "stop_gradient(cos x) in the tangent: first derivative right, second wrong",
            order=2,
        ),
    ]


def rule_cases() -> tuple[RuleCase, ...]:
    """Every catalogue case: custom_vjp rules first, then custom_jvp rules (including JAX's own)."""
    return tuple(_vjp_cases() + _jvp_cases())
