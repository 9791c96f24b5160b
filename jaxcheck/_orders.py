"""Host-side: `order=` on `check_grad`, `check_vjp` and `check_jvp`.

An order-k check is a chain of order-1 checks, as `jax.test_util.check_grads` builds it:
order 1 checks f itself; order j + 1 checks the Jacobian of the j-th derivative map D_j
(computed through the rules JAX itself uses) against finite differences of D_j, with the
same verdict machinery (per-element tolerances, float64 reference, kinks, three-way
verdict). The maps:

- `check_grad`: D_1 = `jax.grad(f, argnums)` (a pytree like the differentiated
  arguments), whose Jacobian, the Hessian, is checked forward-over-reverse with
  `check_jvp` (reverse-over-reverse with `check_vjp` where forward mode is impossible);
  D_j = x -> jvp(D_{j-1}, x, v_j) for j > 1.
- `check_vjp`: D_j = x -> vjp(D_{j-1}, x)(u_j), checked with `check_vjp`.
- `check_jvp`: D_j = x -> jvp(D_{j-1}, x, v_j), checked with `check_jvp`.

The cotangents u_j and tangents v_j are seeded standard-normal draws, rounded to their
leaves' dtypes (so the float64 reference evaluates exactly the same map). Orders are
checked from 1 up; the first one that does not pass is the result, its `order` field and
reason naming it. This module composes the entry points it is handed (it imports none).
"""

import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._flatten import normalize_argnums
from ._problem import function_name

PyTree = Any
# check(kind, fn, has_aux) -> result: an order-1 `check_vjp` ("vjp") or `check_jvp` ("jvp").
Check = Callable[[str, Callable, bool], Any]


def validate_order(order: Any) -> int:
    """`order` as an int.

    Raises:
      TypeError, ValueError: `order` is not a positive int.
    """
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise TypeError(
            f"`order` must be a positive int (1: first derivatives, 2: also second derivatives, "
            f"...); got {type(order).__name__}."
        )
    if order < 1:
        raise ValueError(
            f"`order` must be a positive int (1: first derivatives, 2: also second "
            f"derivatives, ...); got {order!r}."
        )
    return int(order)


def _seeded(like: PyTree, seed: int, salt: str) -> PyTree:
    """Standard-normal host arrays shaped like the inexact leaves of `like` (ShapeDtypeStructs),
    rounded to their dtypes; float0 zeros for the other leaves (JAX's tangent of an int)."""
    paths, treedef = jtu.tree_flatten_with_path(like)
    out = []
    for path, leaf in paths:
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
        if not jnp.issubdtype(dtype, jnp.inexact):
            out.append(np.zeros(shape, jax.dtypes.float0))
            continue
        stream = zlib.crc32(f"{salt}:{jtu.keystr(path)}".encode())
        rng = np.random.Generator(np.random.PCG64([int(seed) & 0xFFFFFFFF, stream]))
        draw = rng.standard_normal(shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            draw = draw + 1j * rng.standard_normal(shape)
        out.append(np.asarray(draw, dtype))
    return jtu.tree_unflatten(treedef, out)


def _cast_like(values: PyTree, like: PyTree) -> PyTree:
    """Traced: host (co)tangents in the dtypes of the primal values `like` (float64 under the
    float64 reference; float0 leaves unchanged)."""

    def cast(v: np.ndarray, x: Any) -> Any:
        if v.dtype == jax.dtypes.float0:
            return v
        return jnp.asarray(v).astype(jnp.result_type(x))

    return jtu.tree_map(cast, values, like)


def _of_diff(fn: Callable, has_aux: bool, args: tuple, nums: tuple[int, ...]) -> Callable:
    """fn as a function of the differentiated arguments alone (the others fixed to `args`)."""

    def restricted(*diff: Any) -> Any:
        full = list(args)
        for i, d in zip(nums, diff):
            full[i] = d
        out = fn(*full)
        return out[0] if has_aux else out

    return restricted


def _single(argnums: Any) -> bool:
    return isinstance(argnums, (int, np.integer))


def derivative_map(
    kind: str,
    fn: Callable,
    args: tuple,
    *,
    argnums: Any,
    has_aux: bool,
    seed: int,
    level: int,
    name: str,
) -> Callable:
    """The derivative map of `fn` whose order-1 check is one order higher (module docstring).

    Args:
      kind: "grad" (D = jax.grad(fn)), "vjp" (D = x -> vjp(fn, x)(u)) or "jvp"
        (D = x -> jvp(fn, x, v)).
      fn: The function (f, or the previous derivative map), called as `fn(*args)`.
      args: The point (for the structure of the seeded vectors).
      argnums: The differentiated arguments, as the user passed them (None: all).
      has_aux: Whether fn returns `(value, aux)`.
      seed, level: Seed the (co)tangent of this level.
      name: The map's `__name__` in reports, e.g. "grad(loss)".

    Returns:
      D, called as `D(*args)`; its output mirrors `args[argnums]` (kinds "grad", "vjp") or
      fn's output (kind "jvp").
    """
    nums = normalize_argnums(argnums, len(args))
    single = _single(argnums)
    if kind == "grad":
        grad = jax.grad(fn, argnums=argnums, has_aux=has_aux, allow_int=True)

        def mapped(*call_args: Any) -> Any:
            out = grad(*call_args)
            return out[0] if has_aux else out

    elif kind == "vjp":
        out_shape = jax.eval_shape(_of_diff(fn, has_aux, args, nums), *[args[i] for i in nums])
        cotangent = _seeded(out_shape, seed, f"order{level}-cotangent")

        def mapped(*call_args: Any) -> Any:
            primal = _of_diff(fn, has_aux, call_args, nums)
            out, pullback = jax.vjp(primal, *[call_args[i] for i in nums])
            grads = pullback(_cast_like(cotangent, out))
            return grads[0] if single else grads

    elif kind == "jvp":
        in_shape = jax.eval_shape(lambda *a: a, *[args[i] for i in nums])
        tangent = _seeded(in_shape, seed, f"order{level}-tangent")

        def mapped(*call_args: Any) -> Any:
            primals = tuple(call_args[i] for i in nums)
            primal = _of_diff(fn, has_aux, call_args, nums)
            return jax.jvp(primal, primals, _cast_like(tangent, primals))[1]

    else:  # pragma: no cover - callers pass one of the three
        raise ValueError(f"unknown derivative kind {kind!r}")
    mapped.__name__ = name
    return mapped


def _forward_mode_problem(fn: Callable, args: tuple, nums: tuple[int, ...]) -> bool:
    """Whether forward mode cannot differentiate fn (it calls a custom_vjp function)."""
    primals = tuple(args[i] for i in nums)
    try:
        jax.eval_shape(lambda *p: jax.jvp(_of_diff(fn, False, args, nums), p, p)[1], *primals)
    except TypeError as error:
        return "custom_vjp" in str(error)
    except Exception:  # noqa: BLE001 - other problems surface in the check itself
        return False
    return False


def _labelled(result: Any, order: int, requested: int, seconds: float, evaluations: int) -> Any:
    """The result of one order, its reason and `order` saying which, with the whole chain's
    cost (seconds, evaluations of all orders checked)."""
    if result.passed:
        reason = f"orders 1 to {requested} passed; order {order}: {result.reason}"
    else:
        reason = f"order {order}: {result.reason}"
    return dataclasses.replace(
        result, order=order, reason=reason, seconds=seconds, n_evaluations=evaluations
    )


def check_orders(
    kind: str,
    f: Callable,
    args: tuple,
    order: int,
    *,
    first: Callable[[], Any],
    check: Check,
    argnums: int | Sequence[int] | None,
    has_aux: bool,
    seed: int,
    grad_fn: Callable | None = None,
    locate_rules: bool = True,
    rule_options: dict[str, Any] | None = None,
) -> Any:
    """Checks orders 1 to `order` of f and returns the first failing (or the last) result.

    Args:
      kind: "grad", "vjp" or "jvp": the entry point's derivative.
      f, args: As passed to the entry point.
      order: The highest order to check (>= 2).
      first: Runs the entry point's own order-1 check (its result is order 1's).
      check: `check(kind, D, has_aux)`: the order-1 `check_vjp`/`check_jvp` of a map D at
        `args`, with the entry point's options.
      argnums, has_aux, seed: As passed to the entry point.
      grad_fn: `check_grad`'s hand-written gradient: D_1 in place of `jax.grad(f)`.
      locate_rules: When an order above 1 fails, check the custom rules inside f at that
        order (at most 2) at their call sites and name the failing ones (`rule_findings`).
      rule_options: Options for that rule check (seed, reference, atol).

    Returns:
      A `GradCheckResult` (when order 1 of `check_grad` does not pass) or a
      `JacobianCheckResult`, with `order` set.
    """
    start = time.perf_counter()
    result = first()
    evaluations = result.n_evaluations
    if not result.passed:
        return _labelled(result, 1, order, time.perf_counter() - start, evaluations)
    name = function_name(f)
    nums = normalize_argnums(argnums, len(args))
    fn, fn_has_aux, map_kind = f, has_aux, kind
    check_kind = "vjp" if kind == "vjp" else "jvp"
    for level in range(1, order):
        name = f"{map_kind}({name})"
        if level == 1 and grad_fn is not None:
            name = function_name(grad_fn)
            fn = grad_fn
        else:
            fn = derivative_map(
                map_kind,
                fn,
                args,
                argnums=argnums,
                has_aux=fn_has_aux,
                seed=seed,
                level=level,
                name=name,
            )
        fn_has_aux = False
        if level == 1 and kind == "grad" and _forward_mode_problem(fn, args, nums):
            check_kind = "vjp"  # the gradient calls a custom_vjp: reverse-over-reverse
        map_kind = check_kind
        try:
            result = check(check_kind, fn, False)
        except (TypeError, ValueError, NotImplementedError) as error:
            # Order 1 passed at these arguments and options: the derivative is the problem.
            raise ValueError(
                f"`order={order}`: JAX cannot differentiate `{name}` (the order-{level} "
                f"derivative of `{function_name(f)}`) to check order {level + 1}: "
                f"{type(error).__name__}: {str(error).strip().splitlines()[0]} Check at "
                f"`order={level}`, or give the non-differentiable part a custom rule."
            ) from error
        evaluations += result.n_evaluations
        if not result.passed:
            if locate_rules and result.status == "failed":
                result = dataclasses.replace(
                    result, rule_findings=_rule_findings(f, args, nums, level + 1, rule_options)
                )
            return _labelled(result, level + 1, order, time.perf_counter() - start, evaluations)
    return _labelled(result, order, order, time.perf_counter() - start, evaluations)


def _rule_findings(
    f: Callable, args: tuple, nums: tuple[int, ...], order: int, options: dict[str, Any] | None
) -> tuple[str, ...]:
    """The custom rules inside f that fail their own check at `order` (at most 2)."""
    from ._rules import diagnose_rules  # a real cycle: the rule battery runs checks

    return diagnose_rules(f, args, argnums=nums, order=min(order, 2), **(options or {}))
