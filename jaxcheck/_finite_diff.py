"""Traced: everything here runs under jit and vmap.

The finite-difference kernels. Each takes the flat real vector theta, evaluates the
user's function at perturbed copies of it (vectorised with `vmap`), and returns the
raw function values; combining them into derivative estimates is `_stencil.py`'s job.

Kernels are jitted with the `EvalSpec` as a static argument, so calling a check again
with arguments of the same structure, shapes and dtypes reuses the compiled code.
"""

import functools as ft
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from ._flatten import ArgLayout, call_flat, rebuild_args

# Offsets of the stencil points, in units of the step: f(x + k h) for k in STENCIL.
STENCIL = (-2, -1, 1, 2)


class EvalSpec(NamedTuple):
    """Static (hashable) description of one evaluation setting."""

    f: Callable
    has_aux: bool
    layout: ArgLayout
    dtypes: tuple[Any, ...]  # dtype each differentiated leaf is evaluated in
    sequential: bool = False  # f has no batching rule: map with `jax.lax.map`, not `vmap`


def over_batch(fn: Callable, sequential: bool) -> Callable:
    """`fn` mapped over the leading axis of all its arguments: `jax.vmap`, or `jax.lax.map`
    (one evaluation after another inside the compiled loop; needs no batching rule)."""
    if not sequential:
        return jax.vmap(fn)
    return lambda *xs: jax.lax.map(lambda x: fn(*x), xs)


def _call(spec: EvalSpec, theta: jax.Array, dynamic: Any) -> jax.Array:
    return call_flat(spec.f, spec.has_aux, spec.layout, theta, spec.dtypes, dynamic)


@ft.partial(jax.jit, static_argnums=0)
def value_at(spec: EvalSpec, theta: jax.Array, dynamic: Any) -> jax.Array:
    """f(theta) as a real vector (m,)."""
    return _call(spec, theta, dynamic)


@ft.partial(jax.jit, static_argnums=0)
def values_at_points(spec: EvalSpec, thetas: jax.Array, dynamic: Any) -> jax.Array:
    """f at each row of thetas (b, n): (b, m), always through `jax.vmap` (traced, never run,
    to learn whether f can be batched; jit's trace cache makes a repeat check free)."""
    return jax.vmap(lambda theta: _call(spec, theta, dynamic))(thetas)


@ft.partial(jax.jit, static_argnums=0)
def values_at_coordinates(
    spec: EvalSpec, theta: jax.Array, dynamic: Any, coords: jax.Array, points: jax.Array
) -> jax.Array:
    """f with one coordinate replaced: out[j, k] = f(theta with theta[coords[j]] = points[j, k]).

    Args:
      spec: Static evaluation spec.
      theta: (n,) base point.
      dynamic: The fixed (non-differentiated) array leaves.
      coords: (b,) int32 coordinate indices.
      points: (b, K) values to put at those coordinates.

    Returns:
      (b, K, m) function values.
    """

    def one_point(i, x):
        return _call(spec, theta.at[i].set(x), dynamic)

    def one_coordinate(i, xs):
        return over_batch(lambda x: one_point(i, x), spec.sequential)(xs)

    return over_batch(one_coordinate, spec.sequential)(coords, points)


@ft.partial(jax.jit, static_argnums=0)
def values_along_directions(
    spec: EvalSpec, theta: jax.Array, dynamic: Any, directions: jax.Array, ts: jax.Array
) -> jax.Array:
    """out[j, k] = f(theta + ts[k] * directions[j]).

    Args:
      spec: Static evaluation spec.
      theta: (n,) base point.
      dynamic: The fixed array leaves.
      directions: (b, n) directions.
      ts: (K,) step multipliers (same dtype as theta).

    Returns:
      (b, K, m) function values.
    """

    def one(v, t):
        return _call(spec, theta + t * v, dynamic)

    along = lambda v: over_batch(lambda t: one(v, t), spec.sequential)(ts)  # noqa: E731
    return over_batch(along, spec.sequential)(directions)


@ft.partial(jax.jit, static_argnums=(0, 1, 2))
def analytic_grad(
    f: Callable, has_aux: bool, layout: ArgLayout, diff_values: list, dynamic: Any
) -> tuple[jax.Array, list]:
    """`jax.grad` of the scalar f with respect to the differentiated leaves.

    Returns:
      (value, grads): f's value and one gradient per differentiated leaf, in the user's dtypes.
    """

    def scalar(diff):
        out = f(*rebuild_args(layout, diff, dynamic))
        return out if has_aux else (out, None)

    (val, _), grads = jax.value_and_grad(scalar, has_aux=True)(list(diff_values))
    return val, grads
