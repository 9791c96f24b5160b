"""A catalogue of correct and deliberately broken derivatives.

Each `GradCase` builds a scalar loss, the point at which to check it and the
keyword arguments for `jaxcheck.check_grad`. A correct checker reports
"passed" for every case with `broken=False`, and "failed", naming `bad_path`
(and `bad_index` where given), for every case with `broken=True`. The test
suite and the verdict-quality benchmarks both run this catalogue.

Everything is deterministic: data comes from fixed `jax.random` keys, drawn in
float32 and cast to the requested dtype, so both precisions check the same
points. Arrays are built inside `build(dtype)`; to check in float64, call
`build` and the checker inside `with jax.enable_x64(True):`.

Example:
  >>> case = {c.name: c for c in grad_cases()}["vjp/sin_sign_error"]
  >>> setup = case.build(jnp.float32)
  >>> case.bad_path, setup.args[0].shape
  ('args[0]', (16,))
"""

import dataclasses
import functools as ft
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

PyTree = Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class CaseSetup:
    """A loss, the point at which to check it, and options for the checker.

    Attributes:
      f: Scalar-valued loss, called as `f(*args)`.
      args: Tuple of pytrees at which to check `f`.
      kwargs: Extra keyword arguments for `check_grad`, e.g. `argnums`, `grad_fn`.
      true_f: The same function as `f` with trustworthy derivatives (plain JAX
        ops instead of custom rules), or `None` when `jax.grad(f)` is already the
        truth. Used to prove the catalogue itself sound.
    """

    f: Callable[..., Any]
    args: tuple[PyTree, ...]
    kwargs: dict[str, Any]
    true_f: Callable[..., Any] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradCase:
    """One catalogue entry.

    Attributes:
      name: Readable id, e.g. "mlp/bias_bug".
      broken: Whether a correct checker must report "failed".
      bad_path: For broken cases, the leaf a checker must name: "args[i]" followed
        by `jax.tree_util.keystr` of the leaf inside that argument.
      build: `build(dtype) -> CaseSetup`, dtype `jnp.float32` or `jnp.float64`.
      note: What the case exercises or what the planted bug is.
      bad_index: For broken cases with a single wrong element, its index.
      expect_nonsmooth: Whether the point sits exactly on a kink, so a checker
        should flag at least one element of `args[0]` as nonsmooth.
    """

    name: str
    broken: bool
    bad_path: str | None
    build: Callable[[Any], CaseSetup]
    note: str = ""
    bad_index: tuple[int, ...] | None = None
    expect_nonsmooth: bool = False


# ----------------------------------------------------------------------------
# Deterministic data.


def _normal(seed: int, shape, dtype, scale: float = 1.0) -> jax.Array:
    x = jax.random.normal(jax.random.key(seed), shape, jnp.float32)
    return (scale * x).astype(dtype)


def _uniform(seed: int, shape, dtype, lo: float, hi: float) -> jax.Array:
    x = jax.random.uniform(jax.random.key(seed), shape, jnp.float32, lo, hi)
    return x.astype(dtype)


def _signed(seed: int, shape, dtype, lo: float, hi: float) -> jax.Array:
    """Magnitudes in [lo, hi] with random signs: bounded away from zero."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    mag = jax.random.uniform(k1, shape, jnp.float32, lo, hi)
    sign = jnp.where(jax.random.bernoulli(k2, 0.5, shape), 1.0, -1.0)
    return (sign * mag).astype(dtype)


def _weights(seed: int, shape, dtype) -> jax.Array:
    """Random cotangent weights in ±[0.5, 1.5], so the cotangent is not all ones."""
    return _signed(seed, shape, dtype, 0.5, 1.5)


def _weighted_sum(op: Callable, w: jax.Array) -> Callable:
    return lambda *xs: jnp.sum(w * op(*xs))


# ----------------------------------------------------------------------------
# custom_vjp rules, correct and broken. Module level, so their identity is stable.


def _unary_vjp(fn: Callable, residual: Callable, bwd: Callable) -> Callable:
    """`jax.custom_vjp(fn)` whose fwd saves `residual(x)`; `bwd(res, g)` -> tuple."""
    op = jax.custom_vjp(fn)
    op.defvjp(lambda x: (fn(x), residual(x)), bwd)
    return op


def _ident(x):
    return x


def _bump_1234(grad):
    return grad.at[1234].multiply(1.5)


_sin_ok = _unary_vjp(jnp.sin, _ident, lambda x, g: (g * jnp.cos(x),))
_sin_sign_error = _unary_vjp(jnp.sin, _ident, lambda x, g: (-g * jnp.cos(x),))
_sin_ignores_g = _unary_vjp(jnp.sin, _ident, lambda x, g: (jnp.cos(x),))
_sin_wrong_residual = _unary_vjp(jnp.sin, jnp.sin, lambda y, g: (g * jnp.cos(y),))
_exp_output_residual = _unary_vjp(jnp.exp, jnp.exp, lambda y, g: (g * y,))
_square_missing_factor = _unary_vjp(jnp.square, _ident, lambda x, g: (g * x,))
_softplus_ok = _unary_vjp(jax.nn.softplus, _ident, lambda x, g: (g * jax.nn.sigmoid(x),))
_softplus_flipped = _unary_vjp(jax.nn.softplus, _ident, lambda x, g: (g * jax.nn.sigmoid(-x),))
_softplus_bump_1234 = _unary_vjp(
    jax.nn.softplus, _ident, lambda x, g: (_bump_1234(g * jax.nn.sigmoid(x)),)
)
_relu_double_slope = _unary_vjp(
    jax.nn.relu, _ident, lambda x, g: (jnp.where(x > 0, 2 * g, jnp.zeros_like(g)),)
)


def _matvec_rule(transposed_da: bool, transposed_dx: bool) -> Callable:
    """`a @ x` with a custom_vjp, optionally transposing `a`'s or `x`'s cotangent."""

    def bwd(res, g):
        a, x = res
        da = jnp.outer(x, g) if transposed_da else jnp.outer(g, x)
        dx = a @ g if transposed_dx else a.T @ g
        return da, dx

    op = jax.custom_vjp(jnp.matmul)
    op.defvjp(lambda a, x: (a @ x, (a, x)), bwd)
    return op


_matvec_ok = _matvec_rule(False, False)
_matvec_transposed_dx = _matvec_rule(False, True)
_matvec_transposed_da = _matvec_rule(True, False)


# ----------------------------------------------------------------------------
# Unary and matvec custom_vjp cases: loss = sum(w * op(x)) with fixed random w.


def _unary_build(
    dtype, *, op: Callable, true_op: Callable | None, x_fn: Callable, seed: int
) -> CaseSetup:
    x = x_fn(seed, (16,), dtype)
    w = _weights(seed + 1, (16,), dtype)
    true_f = None if true_op is None else _weighted_sum(true_op, w)
    return CaseSetup(f=_weighted_sum(op, w), args=(x,), kwargs={"argnums": 0}, true_f=true_f)


def _matvec_build(dtype, *, op: Callable) -> CaseSetup:
    a = _normal(21, (6, 6), dtype)  # not symmetric
    x = _normal(22, (6,), dtype)
    w = _weights(23, (6,), dtype)
    return CaseSetup(
        f=_weighted_sum(op, w),
        args=(a, x),
        kwargs={"argnums": (0, 1)},
        true_f=_weighted_sum(jnp.matmul, w),
    )


def _bigvec_build(dtype, *, op: Callable) -> CaseSetup:
    x = _normal(31, (5000,), dtype)
    w = _weights(32, (5000,), dtype)
    return CaseSetup(
        f=_weighted_sum(op, w),
        args=(x,),
        kwargs={"argnums": 0},
        true_f=_weighted_sum(jax.nn.softplus, w),
    )


def _vjp_cases() -> list[GradCase]:
    def unary(name, op, true_op, x_fn, seed, bad, note):
        build = ft.partial(_unary_build, op=op, true_op=true_op, x_fn=x_fn, seed=seed)
        return GradCase(
            name=name, broken=bad, bad_path="args[0]" if bad else None, build=build, note=note
        )

    normal = ft.partial(_normal, scale=1.5)
    return [
        unary("vjp/sin", _sin_ok, jnp.sin, normal, 11, False, "correct sin rule"),
        unary(
            "vjp/softplus",
            _softplus_ok,
            jax.nn.softplus,
            normal,
            12,
            False,
            "correct softplus rule",
        ),
        unary(
            "vjp/exp_output_residual",
            _exp_output_residual,
            jnp.exp,
            normal,
            13,
            False,
            "exp saving its output as residual (correct for exp)",
        ),
        GradCase(
            name="vjp/matvec",
            broken=False,
            bad_path=None,
            build=ft.partial(_matvec_build, op=_matvec_ok),
            note="correct a @ x rule",
        ),
        unary(
            "vjp/sin_sign_error",
            _sin_sign_error,
            jnp.sin,
            normal,
            14,
            True,
            "bwd returns -g*cos(x)",
        ),
        unary(
            "vjp/square_missing_factor",
            _square_missing_factor,
            jnp.square,
            normal,
            15,
            True,
            "bwd of x**2 returns g*x: factor 2 dropped",
        ),
        unary(
            "vjp/sin_ignores_cotangent",
            _sin_ignores_g,
            jnp.sin,
            normal,
            16,
            True,
            "bwd returns cos(x), as if g were 1",
        ),
        unary(
            "vjp/sin_wrong_residual",
            _sin_wrong_residual,
            jnp.sin,
            normal,
            17,
            True,
            "fwd saves sin(x); bwd takes cos of the output instead of the input",
        ),
        GradCase(
            name="vjp/matvec_transposed",
            broken=True,
            bad_path="args[1]",
            build=ft.partial(_matvec_build, op=_matvec_transposed_dx),
            note="bwd of a @ x returns a @ g instead of a.T @ g",
        ),
        GradCase(
            name="bigvec/softplus",
            broken=False,
            bad_path=None,
            build=ft.partial(_bigvec_build, op=_softplus_ok),
            note="5000-element vector, correct rule",
        ),
        GradCase(
            name="bigvec/one_element",
            broken=True,
            bad_path="args[0]",
            bad_index=(1234,),
            build=ft.partial(_bigvec_build, op=_softplus_bump_1234),
            note="5000-element vector; bwd scales element 1234 by 1.5",
        ),
    ]


# ----------------------------------------------------------------------------
# Textbook MLPs with hand-written backprop.

_L2 = 0.05


def mlp3_data(dtype) -> tuple[PyTree, jax.Array, jax.Array]:
    """Returns `(params, x, y)` for `mlp3_loss`: 403 parameters, a batch of 8."""
    sizes = (4, 16, 16, 3)
    params = {}
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"layer{i + 1}"] = {
            "W": _normal(100 + i, (m, n), dtype, 1.5 / m**0.5),
            "b": _normal(110 + i, (n,), dtype, 0.3),
        }
    x = _normal(120, (8, 4), dtype)
    y = jax.random.randint(jax.random.key(121), (8,), 0, 3, jnp.int32)
    return params, x, y


def _mlp3_forward(params, x):
    """Returns the activations [x, a1, a2] and the logits."""
    acts = [x]
    for name in ("layer1", "layer2"):
        acts.append(jnp.tanh(acts[-1] @ params[name]["W"] + params[name]["b"][None, :]))
    return acts, acts[-1] @ params["layer3"]["W"] + params["layer3"]["b"][None, :]


def mlp3_loss(params, x, y):
    """Softmax cross-entropy of a 3-layer tanh MLP plus L2 on the weights."""
    _, logits = _mlp3_forward(params, x)
    picked = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    ce = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)
    return ce + _L2 * sum(jnp.sum(layer["W"] ** 2) for layer in params.values())


def mlp3_backprop(params, x, y, *, bug: str | None = None):
    """Hand-written gradient of `mlp3_loss` w.r.t. `params`.

    Args:
      params: `{'layer1': {'W', 'b'}, 'layer2': ..., 'layer3': ...}`.
      x: Inputs, shape (batch, 4).
      y: Integer labels, shape (batch,).
      bug: None (correct), "missing_l2" (no 2λW term in layer2's W) or
        "bias" (layer2's b misses the tanh derivative).
    """
    (x, a1, a2), logits = _mlp3_forward(params, x)
    l2 = {k: 2 * _L2 * v["W"] for k, v in params.items()}
    if bug == "missing_l2":
        l2["layer2"] = 0.0
    d3 = (jax.nn.softmax(logits) - jax.nn.one_hot(y, 3, dtype=logits.dtype)) / x.shape[0]
    da2 = d3 @ params["layer3"]["W"].T
    d2 = da2 * (1 - a2**2)
    d1 = (d2 @ params["layer2"]["W"].T) * (1 - a1**2)
    return {
        "layer1": {"W": x.T @ d1 + l2["layer1"], "b": jnp.sum(d1, axis=0)},
        "layer2": {
            "W": a1.T @ d2 + l2["layer2"],
            "b": jnp.sum(da2 if bug == "bias" else d2, axis=0),
        },
        "layer3": {"W": a2.T @ d3 + l2["layer3"], "b": jnp.sum(d3, axis=0)},
    }


def _mlp3_build(dtype, *, bug: str | None, use_grad_fn: bool = True) -> CaseSetup:
    kwargs: dict[str, Any] = {"argnums": 0}
    if use_grad_fn:
        kwargs["grad_fn"] = ft.partial(mlp3_backprop, bug=bug)
    return CaseSetup(f=mlp3_loss, args=mlp3_data(dtype), kwargs=kwargs)


def _mlp2_data(dtype) -> tuple[PyTree, jax.Array, jax.Array]:
    params = {
        "W1": _normal(130, (3, 8), dtype, 0.8),
        "b1": _normal(131, (8,), dtype, 0.3),
        "W2": _normal(132, (8, 2), dtype, 0.5),
        "b2": _normal(133, (2,), dtype, 0.3),
    }
    return params, _normal(134, (8, 3), dtype), _normal(135, (8, 2), dtype)


def mlp2_loss(params, x, y):
    """Mean squared error of a 2-layer sigmoid MLP plus L2 on the weights."""
    hidden = jax.nn.sigmoid(x @ params["W1"] + params["b1"][None, :])
    out = hidden @ params["W2"] + params["b2"][None, :]
    mse = jnp.mean(jnp.sum((out - y) ** 2, axis=-1))
    return mse + _L2 * (jnp.sum(params["W1"] ** 2) + jnp.sum(params["W2"] ** 2))


def mlp2_backprop(params, x, y, *, bug: str | None = None):
    """Hand-written gradient of `mlp2_loss`; `bug="b2"` drops b2's factor 2."""
    h = jax.nn.sigmoid(x @ params["W1"] + params["b1"][None, :])
    dout = 2 * (h @ params["W2"] + params["b2"][None, :] - y) / x.shape[0]
    dz = (dout @ params["W2"].T) * h * (1 - h)
    return {
        "W1": x.T @ dz + 2 * _L2 * params["W1"],
        "b1": jnp.sum(dz, axis=0),
        "W2": h.T @ dout + 2 * _L2 * params["W2"],
        "b2": jnp.sum(dout, axis=0) / (2 if bug == "b2" else 1),
    }


def _mlp2_build(dtype, *, bug: str | None) -> CaseSetup:
    grad_fn = ft.partial(mlp2_backprop, bug=bug)
    return CaseSetup(f=mlp2_loss, args=_mlp2_data(dtype), kwargs={"argnums": 0, "grad_fn": grad_fn})


def _mlp_cases() -> list[GradCase]:
    return [
        GradCase(
            name="mlp/backprop",
            broken=False,
            bad_path=None,
            build=ft.partial(_mlp3_build, bug=None),
            note="3-layer tanh MLP, cross-entropy + L2, correct hand-written backprop",
        ),
        GradCase(
            name="mlp/autodiff",
            broken=False,
            bad_path=None,
            build=ft.partial(_mlp3_build, bug=None, use_grad_fn=False),
            note="3-layer tanh MLP checked through jax.grad",
        ),
        GradCase(
            name="mlp/missing_l2",
            broken=True,
            bad_path="args[0]['layer2']['W']",
            build=ft.partial(_mlp3_build, bug="missing_l2"),
            note="backprop omits the 2λW term of layer2's weights",
        ),
        GradCase(
            name="mlp/bias_bug",
            broken=True,
            bad_path="args[0]['layer2']['b']",
            build=ft.partial(_mlp3_build, bug="bias"),
            note="layer2's bias gradient misses the tanh derivative",
        ),
        GradCase(
            name="mlp_mse/backprop",
            broken=False,
            bad_path=None,
            build=ft.partial(_mlp2_build, bug=None),
            note="2-layer sigmoid MLP, MSE + L2, correct hand-written backprop",
        ),
        GradCase(
            name="mlp_mse/b2_factor",
            broken=True,
            bad_path="args[0]['b2']",
            build=ft.partial(_mlp2_build, bug="b2"),
            note="b2's gradient drops the factor 2 of the squared error",
        ),
    ]


# ----------------------------------------------------------------------------
# Badly scaled leaves: an exponential decay with amplitude ~1e3 and rate ~1e-3.


def decay_loss(params, t, data):
    """Squared misfit of `amplitude * exp(-rate * t)` to `data`."""
    model = params["amplitude"][:, None] * jnp.exp(-params["rate"][:, None] * t[None, :])
    return 0.5 * jnp.mean((model - data) ** 2) / 100


def decay_backprop(params, t, data, *, bug: bool = False):
    """Hand-written gradient of `decay_loss`; `bug=True` flips the rate's sign."""
    e = jnp.exp(-params["rate"][:, None] * t[None, :])
    r = (params["amplitude"][:, None] * e - data) / (100 * data.size)
    d_rate = jnp.sum(r * params["amplitude"][:, None] * t[None, :] * e, axis=1)
    return {"amplitude": jnp.sum(r * e, axis=1), "rate": d_rate if bug else -d_rate}


def _decay_build(dtype, *, grad_fn: bool, bug: bool = False) -> CaseSetup:
    params = {
        "amplitude": _uniform(140, (4,), dtype, 500.0, 1500.0),
        "rate": _uniform(141, (4,), dtype, 5e-4, 1.5e-3),
    }
    t = jnp.linspace(0, 2000, 16, dtype=dtype)
    a0 = _uniform(142, (4, 1), dtype, 500.0, 1500.0)
    k0 = _uniform(143, (4, 1), dtype, 5e-4, 1.5e-3)
    kwargs: dict[str, Any] = {"argnums": 0}
    if grad_fn:
        kwargs["grad_fn"] = ft.partial(decay_backprop, bug=bug)
    return CaseSetup(f=decay_loss, args=(params, t, a0 * jnp.exp(-k0 * t[None, :])), kwargs=kwargs)


def _scaled_cases() -> list[GradCase]:
    return [
        GradCase(
            name="scaled/autodiff",
            broken=False,
            bad_path=None,
            build=ft.partial(_decay_build, grad_fn=False),
            note="leaves of magnitude ~1e3 and ~1e-3, jax.grad",
        ),
        GradCase(
            name="scaled/backprop",
            broken=False,
            bad_path=None,
            build=ft.partial(_decay_build, grad_fn=True),
            note="leaves of magnitude ~1e3 and ~1e-3, correct hand-written gradient",
        ),
        GradCase(
            name="scaled/rate_sign",
            broken=True,
            bad_path="args[0]['rate']",
            build=ft.partial(_decay_build, grad_fn=True, bug=True),
            note="sign error on the ~1e-3 leaf's gradient only",
        ),
    ]


# ----------------------------------------------------------------------------
# Dropout with a fixed key argument.

_DROP = 0.25


def _dropout_forward(params, x, key):
    h = jnp.tanh(x @ params["W1"])
    mask = jax.random.bernoulli(key, 1 - _DROP, h.shape)
    hd = jnp.where(mask, h / (1 - _DROP), 0)
    return h, mask, hd, hd @ params["W2"] + params["b2"][None, :]


def dropout_loss(params, x, y, key):
    """MSE of a 2-layer tanh MLP with inverted dropout on its hidden layer."""
    return jnp.mean(jnp.sum((_dropout_forward(params, x, key)[-1] - y) ** 2, axis=-1))


def dropout_backprop(params, x, y, key, *, bug: bool = False):
    """Hand-written gradient of `dropout_loss`; `bug=True` drops 1/(1-p) in bwd."""
    h, mask, hd, out = _dropout_forward(params, x, key)
    dout = 2 * (out - y) / x.shape[0]
    dhd = dout @ params["W2"].T
    dh = jnp.where(mask, dhd if bug else dhd / (1 - _DROP), 0)
    return {"W1": x.T @ (dh * (1 - h**2)), "W2": hd.T @ dout, "b2": jnp.sum(dout, axis=0)}


def dropout_data(dtype) -> tuple[PyTree, jax.Array, jax.Array, jax.Array]:
    """Returns `(params, x, y, key)` for `dropout_loss`."""
    params = {
        "W1": _normal(150, (5, 16), dtype, 0.6),
        "W2": _normal(151, (16, 3), dtype, 0.4),
        "b2": _normal(152, (3,), dtype, 0.3),
    }
    x, y = _normal(153, (8, 5), dtype), _normal(154, (8, 3), dtype)
    return params, x, y, jax.random.key(155)


def _dropout_build(dtype, *, grad_fn: bool, bug: bool = False) -> CaseSetup:
    kwargs: dict[str, Any] = {"argnums": 0}
    if grad_fn:
        kwargs["grad_fn"] = ft.partial(dropout_backprop, bug=bug)
    return CaseSetup(f=dropout_loss, args=dropout_data(dtype), kwargs=kwargs)


def _dropout_cases() -> list[GradCase]:
    return [
        GradCase(
            name="dropout/autodiff",
            broken=False,
            bad_path=None,
            build=ft.partial(_dropout_build, grad_fn=False),
            note="dropout mask from a key argument held fixed, jax.grad",
        ),
        GradCase(
            name="dropout/backprop",
            broken=False,
            bad_path=None,
            build=ft.partial(_dropout_build, grad_fn=True),
            note="dropout, correct hand-written backprop",
        ),
        GradCase(
            name="dropout/missing_scale",
            broken=True,
            bad_path="args[0]['W1']",
            build=ft.partial(_dropout_build, grad_fn=True, bug=True),
            note="backprop through the mask forgets the 1/(1-p) scaling",
        ),
    ]


# ----------------------------------------------------------------------------
# Integer leaves inside the differentiated pytree.


def _int_build(dtype, *, op: Callable) -> CaseSetup:
    params = {
        "w": _normal(160, (16,), dtype),
        "n": jax.random.randint(jax.random.key(161), (16,), 1, 4, jnp.int32),
    }
    v = _weights(162, (16,), dtype)

    def loss(p, true_op=op):
        return jnp.sum(v * p["n"].astype(p["w"].dtype) * true_op(p["w"]))

    return CaseSetup(
        f=loss,
        args=(params,),
        kwargs={"argnums": 0},
        true_f=ft.partial(loss, true_op=jax.nn.softplus),
    )


def _int_cases() -> list[GradCase]:
    return [
        GradCase(
            name="int/autodiff",
            broken=False,
            bad_path=None,
            build=ft.partial(_int_build, op=jax.nn.softplus),
            note="params {'w': float, 'n': int32 counts}; only 'w' is differentiable",
        ),
        GradCase(
            name="int/softplus_flipped",
            broken=True,
            bad_path="args[0]['w']",
            build=ft.partial(_int_build, op=_softplus_flipped),
            note="int leaf alongside a softplus rule returning g*sigmoid(-x)",
        ),
    ]


# ----------------------------------------------------------------------------
# Kinks: relu and abs near and exactly at 0.


def _kink_x(seed: int, dtype, where: str) -> jax.Array:
    """Points at 0 ("at"), within 1e-3 of 0 ("near") or at least 0.2 away ("smooth")."""
    x = _signed(seed, (32,), dtype, 0.2, 2.0)
    if where == "near":
        x = x.at[:8].set(_signed(seed + 1, (8,), dtype, 1e-4, 1e-3))
    elif where == "at":
        x = x.at[:4].set(0)
    return x


def _kink_build(
    dtype, *, op: Callable, true_op: Callable | None, where: str, seed: int
) -> CaseSetup:
    w = _weights(seed + 2, (32,), dtype)
    true_f = None if true_op is None else _weighted_sum(true_op, w)
    return CaseSetup(
        f=_weighted_sum(op, w),
        args=(_kink_x(seed, dtype, where),),
        kwargs={"argnums": 0},
        true_f=true_f,
    )


def _kink_cases() -> list[GradCase]:
    def case(name, op, true_op, where, seed, note):
        bad = true_op is not None
        return GradCase(
            name=name,
            broken=bad,
            bad_path="args[0]" if bad else None,
            note=note,
            expect_nonsmooth=where == "at" and not bad,
            build=ft.partial(_kink_build, op=op, true_op=true_op, where=where, seed=seed),
        )

    return [
        case("kink/relu_near", jax.nn.relu, None, "near", 170, "relu within 1e-3 of 0"),
        case("kink/relu_at", jax.nn.relu, None, "at", 173, "relu exactly at 0"),
        case("kink/abs_near", jnp.abs, None, "near", 176, "abs within 1e-3 of 0"),
        case("kink/abs_at", jnp.abs, None, "at", 179, "abs exactly at 0"),
        case(
            "kink/relu_double_slope",
            _relu_double_slope,
            jax.nn.relu,
            "smooth",
            182,
            "relu rule returning 2*g for x > 0, checked away from the kink",
        ),
        case(
            "kink/relu_double_slope_at_kink",
            _relu_double_slope,
            jax.nn.relu,
            "at",
            185,
            "the same bug, with some points exactly at the kink",
        ),
    ]


# ----------------------------------------------------------------------------
# lax.scan: an Elman RNN.


def _rnn_states(params, xs, matvec=jnp.matmul):
    def step(h, x):
        h = jnp.tanh(matvec(params["W"], h) + params["U"] @ x + params["b"])
        return h, h

    return lax.scan(step, jnp.zeros_like(params["b"]), xs)[1]


def rnn_loss(params, xs, v, matvec=jnp.matmul):
    """Sum over time of `v @ h_t` for `h_t = tanh(W h_{t-1} + U x_t + b)`."""
    return jnp.sum(_rnn_states(params, xs, matvec) @ v)


def rnn_backprop(params, xs, v, *, bug: bool = False):
    """Backprop through time for `rnn_loss`; `bug=True` overwrites db per step."""
    hs = _rnn_states(params, xs)
    h_prev = jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]])

    def step(carry, inputs):
        dh_next, g = carry
        h, hp, x = inputs
        dz = (v + dh_next) * (1 - h**2)
        db = dz if bug else g["b"] + dz
        g = {"W": g["W"] + jnp.outer(dz, hp), "U": g["U"] + jnp.outer(dz, x), "b": db}
        return (params["W"].T @ dz, g), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    (_, grads), _ = lax.scan(step, (jnp.zeros_like(v), zeros), (hs, h_prev, xs), reverse=True)
    return grads


def _rnn_build(
    dtype, *, grad_fn: Callable | None = None, matvec: Callable = jnp.matmul
) -> CaseSetup:
    params = {
        "W": _normal(190, (6, 6), dtype, 0.5),
        "U": _normal(191, (6, 3), dtype, 0.6),
        "b": _normal(192, (6,), dtype, 0.2),
    }
    xs, v = _normal(193, (5, 3), dtype), _weights(194, (6,), dtype)
    kwargs: dict[str, Any] = {"argnums": 0}
    if grad_fn is not None:
        kwargs["grad_fn"] = grad_fn
    true_f = None if matvec is jnp.matmul else rnn_loss
    return CaseSetup(
        f=ft.partial(rnn_loss, matvec=matvec), args=(params, xs, v), kwargs=kwargs, true_f=true_f
    )


def _scan_cases() -> list[GradCase]:
    return [
        GradCase(
            name="scan/rnn_autodiff",
            broken=False,
            bad_path=None,
            build=_rnn_build,
            note="5-step tanh RNN under lax.scan, jax.grad",
        ),
        GradCase(
            name="scan/rnn_backprop",
            broken=False,
            bad_path=None,
            build=ft.partial(_rnn_build, grad_fn=rnn_backprop),
            note="5-step tanh RNN, correct hand-written backprop through time",
        ),
        GradCase(
            name="scan/rnn_bias_not_accumulated",
            broken=True,
            bad_path="args[0]['b']",
            build=ft.partial(_rnn_build, grad_fn=ft.partial(rnn_backprop, bug=True)),
            note="BPTT overwrites the bias gradient each step instead of summing",
        ),
        GradCase(
            name="scan/rnn_transposed_dW",
            broken=True,
            bad_path="args[0]['W']",
            build=ft.partial(_rnn_build, matvec=_matvec_transposed_da),
            note="custom_vjp W @ h inside the scan body returns outer(h, g) for W",
        ),
    ]


def grad_cases() -> tuple[GradCase, ...]:
    """Returns the main catalogue: MLPs, custom_vjp rules, scaling, keys, ints, kinks, scan."""
    return tuple(
        _mlp_cases()
        + _vjp_cases()
        + _scaled_cases()
        + _dropout_cases()
        + _int_cases()
        + _kink_cases()
        + _scan_cases()
    )


# ----------------------------------------------------------------------------
# Elementwise jax.lax ops, optionally with a relative bug planted in their VJP.


class _Domain(NamedTuple):
    lo: float
    hi: float
    signed: bool = False  # magnitudes in [lo, hi] with random signs

    def sample(self, seed: int, dtype) -> jax.Array:
        draw = _signed if self.signed else _uniform
        return draw(seed, (64,), dtype, self.lo, self.hi)


def _cube(x):
    return lax.integer_pow(x, 3)


_WIDE, _UNIT, _POS = _Domain(-2.0, 2.0), _Domain(-0.9, 0.9), _Domain(0.2, 3.0)
_AWAY = _Domain(0.3, 2.0, signed=True)
# (name, op, domain of each argument); domains keep a margin from singularities,
# branch cuts and kinks (bessel_i*e have one at 0).
_ELEMENTWISE_OPS: tuple[tuple[str, Callable, tuple[_Domain, ...]], ...] = (
    ("exp", lax.exp, (_WIDE,)),
    ("exp2", lax.exp2, (_WIDE,)),
    ("log", lax.log, (_POS,)),
    ("log1p", lax.log1p, (_Domain(-0.7, 2.0),)),
    ("expm1", lax.expm1, (_WIDE,)),
    ("sin", lax.sin, (_Domain(-3.0, 3.0),)),
    ("cos", lax.cos, (_Domain(-3.0, 3.0),)),
    ("tan", lax.tan, (_Domain(-1.2, 1.2),)),
    ("tanh", lax.tanh, (_WIDE,)),
    ("asin", lax.asin, (_UNIT,)),
    ("acos", lax.acos, (_UNIT,)),
    ("atan", lax.atan, (_Domain(-3.0, 3.0),)),
    ("atan2", lax.atan2, (_AWAY, _AWAY)),
    ("sinh", lax.sinh, (_WIDE,)),
    ("cosh", lax.cosh, (_WIDE,)),
    ("asinh", lax.asinh, (_Domain(-3.0, 3.0),)),
    ("acosh", lax.acosh, (_Domain(1.2, 3.0),)),
    ("atanh", lax.atanh, (_UNIT,)),
    ("erf", lax.erf, (_WIDE,)),
    ("erfc", lax.erfc, (_WIDE,)),
    ("erf_inv", lax.erf_inv, (_UNIT,)),
    ("pow", lax.pow, (_Domain(0.5, 2.0), _WIDE)),
    ("sqrt", lax.sqrt, (_POS,)),
    ("rsqrt", lax.rsqrt, (_POS,)),
    ("cbrt", lax.cbrt, (_Domain(0.2, 3.0, signed=True),)),
    ("logistic", lax.logistic, (_Domain(-4.0, 4.0),)),
    ("div", lax.div, (_WIDE, _Domain(0.5, 2.0, signed=True))),
    ("mul", lax.mul, (_WIDE, _WIDE)),
    ("integer_pow", _cube, (_WIDE,)),
    ("square", lax.square, (_WIDE,)),
    ("abs", lax.abs, (_AWAY,)),
    ("max", lax.max, (_Domain(0.5, 2.0, signed=True), _Domain(-0.2, 0.2))),
    ("bessel_i0e", lax.bessel_i0e, (_Domain(0.3, 3.0, signed=True),)),
    ("bessel_i1e", lax.bessel_i1e, (_Domain(0.3, 3.0, signed=True),)),
    ("lgamma", lax.lgamma, (_Domain(0.5, 4.0),)),
    ("digamma", lax.digamma, (_Domain(0.5, 4.0),)),
)


@ft.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _scaled_vjp(op, factor, *xs):
    return op(*xs)


def _scaled_vjp_fwd(op, factor, *xs):
    return op(*xs), xs


def _scaled_vjp_bwd(op, factor, xs, g):
    _, vjp = jax.vjp(op, *xs)
    return tuple(factor * ct for ct in vjp(g))


_scaled_vjp.defvjp(_scaled_vjp_fwd, _scaled_vjp_bwd)


def _elementwise_build(
    dtype,
    *,
    op: Callable,
    domains: tuple[_Domain, ...],
    argnum: int,
    factor: float | None,
    seed: int,
) -> CaseSetup:
    xs = tuple(d.sample(seed + i, dtype) for i, d in enumerate(domains))
    w = _weights(seed + 7, (64,), dtype)
    if factor is None:
        return CaseSetup(f=_weighted_sum(op, w), args=xs, kwargs={"argnums": argnum})
    return CaseSetup(
        f=_weighted_sum(ft.partial(_scaled_vjp, op, factor), w),
        args=xs,
        kwargs={"argnums": argnum},
        true_f=_weighted_sum(op, w),
    )


def elementwise_op_cases(rel_bug: float | None) -> tuple[GradCase, ...]:
    """Returns one case per differentiable `jax.lax` elementwise op and argument.

    Each loss is `sum(w * op(*args))` with fixed random `w`, on 64 points inside
    the op's usual domain. Two-argument ops get one case per argument
    ("lax/atan2" for `argnums=0`, "lax/atan2[1]" for `argnums=1`).

    Args:
      rel_bug: `None` for the true derivative (`broken=False`), or `r` to wrap
        the op in a `jax.custom_vjp` whose bwd returns the true VJP times `1 + r`.
    """
    cases = []
    for name, op, domains in _ELEMENTWISE_OPS:
        for argnum in range(len(domains)):
            full = f"lax/{name}" + (f"[{argnum}]" if argnum else "")
            build = ft.partial(
                _elementwise_build,
                op=op,
                domains=domains,
                argnum=argnum,
                factor=None if rel_bug is None else 1 + rel_bug,
                seed=zlib.crc32(name.encode()) % 100_000,
            )
            note = "true derivative" if rel_bug is None else f"VJP times (1 + {rel_bug:g})"
            cases.append(
                GradCase(
                    name=full,
                    broken=rel_bug is not None,
                    build=build,
                    bad_path=None if rel_bug is None else f"args[{argnum}]",
                    note=note,
                )
            )
    return tuple(cases)
