"""`check_grad`, `numerical_grad` and `assert_grad_correct`: the full gradient check."""

import functools as ft
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from . import _stencil as st
from . import _summary, _tolerance
from ._devices import resolve_devices
from ._engine import Evaluator
from ._errors import GradCheckError
from ._finite_diff import analytic_grad
from ._flatten import (
    ArgLayout,
    build_layout,
    check_args,
    normalize_argnums,
    ravel_leaves,
    rebuild_args,
    unravel_host,
)
from ._result import GradCheckResult
from ._taylor import evidence

PyTree = Any
ZERO_FRACTION = 1e-3  # see _zero_is_resolved
MODES = ("full", "probe", "auto")


def function_name(f: Callable) -> str:
    """A readable name for a user function (unwrapping partials and jit wrappers)."""
    while isinstance(f, ft.partial):
        f = f.func
    return getattr(f, "__name__", None) or type(f).__name__


def validate_options(
    *,
    f: Callable,
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    has_aux: bool = False,
) -> None:
    """Checks the common keyword options of every `check_*` function.

    Raises:
      TypeError, ValueError: naming the bad argument and what to pass instead.
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable; got {type(f).__name__}.")
    for name, value in (("eps", eps), ("rtol", rtol), ("atol", atol)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"`{name}` must be a float or None; got {type(value).__name__}.")
        if not np.isfinite(value) or value < 0 or (name == "eps" and value == 0):
            raise ValueError(
                f"`{name}` must be a finite {'positive' if name == 'eps' else 'non-negative'} number; got {value!r}."
            )
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive int or None (automatic); got {batch_size!r}."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int; got {type(seed).__name__}.")
    if not isinstance(has_aux, bool):
        raise TypeError(f"`has_aux` must be a bool; got {type(has_aux).__name__}.")


def _scalar_value(f: Callable, args: tuple, has_aux: bool) -> np.ndarray:
    """f(*args) evaluated eagerly, validated to be a real scalar."""
    out = f(*args)
    if has_aux:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError("`has_aux=True` but `f` does not return a pair `(value, aux)`.")
        out = out[0]
    leaves = jtu.tree_leaves(out)
    if len(leaves) != 1 or np.shape(leaves[0]) != ():
        desc = (
            type(out).__name__ if len(leaves) != 1 else f"an array of shape {np.shape(leaves[0])}"
        )
        raise ValueError(
            f"`f` must return a scalar (shape ()); it returned {desc}. Reduce it (e.g. with `jnp.sum`) "
            "or use `jaxcheck.check_vjp` for vector-valued functions."
        )
    value = np.asarray(jax.device_get(leaves[0]))
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(
            f"`f` must return a real floating-point scalar; it returned dtype {value.dtype}."
        )
    return value.astype(np.float64).reshape(1)


def deterministic_value(f: Callable, args: tuple, has_aux: bool) -> np.ndarray:
    """Evaluates f twice; they must agree bit for bit.

    Raises:
      ValueError: f returned different values (hidden randomness or state).
    """
    first = _scalar_value(f, args, has_aux)
    second = _scalar_value(f, args, has_aux)
    if not np.array_equal(first, second, equal_nan=True):
        raise ValueError(
            f"`f` is not deterministic: two calls at the same arguments returned {first[0]!r} and {second[0]!r}. "
            "Pass the PRNG key as an argument and hold it fixed (e.g. `f(params, x, key)` with a fixed "
            "`jax.random.key(0)`), and avoid numpy/Python randomness or mutable state inside f."
        )
    return first


@ft.partial(jax.jit, static_argnums=(0, 1))
def _call_jitted(fn: Callable, layout: ArgLayout, diff_values: list, dynamic: list) -> Any:
    return fn(*rebuild_args(layout, diff_values, dynamic))


def _user_gradient(
    grad_fn: Callable,
    args: tuple,
    argnums: int | Sequence[int],
    layout: ArgLayout,
    diff_values: list,
    dynamic: list,
) -> list:
    """Calls the user's `grad_fn(*args)` and checks its structure, shapes and dtypes.

    Returns:
      One gradient array per differentiated leaf.

    Raises:
      ValueError, TypeError: the output does not match the differentiated arguments.
    """
    if not callable(grad_fn):
        raise TypeError(f"`grad_fn` must be callable or None; got {type(grad_fn).__name__}.")
    try:
        out = _call_jitted(grad_fn, layout, diff_values, dynamic)
    except (
        jax.errors.ConcretizationTypeError,
        jax.errors.TracerArrayConversionError,
        jax.errors.TracerBoolConversionError,
    ):
        out = grad_fn(*args)  # not jittable: call it as the user would
    single = isinstance(argnums, (int, np.integer))
    nums = layout.argnums
    outs = (out,) if single else out
    if not single and (not isinstance(outs, (tuple, list)) or len(outs) != len(nums)):
        raise ValueError(
            f"`grad_fn` must return a tuple of {len(nums)} gradients (one per entry of `argnums`={tuple(argnums)}); "
            f"got {type(out).__name__}{'' if not isinstance(out, (tuple, list)) else f' of length {len(out)}'}."
        )
    first_slot = np.cumsum([0] + [jtu.tree_structure(a).num_leaves for a in args])
    per_arg = {}
    for argnum, g in zip(nums, outs):
        treedef = jtu.tree_structure(args[argnum])
        try:
            per_arg[argnum] = treedef.flatten_up_to(g)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"`grad_fn` output for args[{argnum}] does not match its structure: expected {treedef}, "
                f"got {jtu.tree_structure(g)}. Return a pytree shaped like args[{argnum}]."
            ) from error
    grads = []
    for leaf in layout.diff:
        g = per_arg[leaf.argnum][leaf.slot - first_slot[leaf.argnum]]
        where = f"`grad_fn` output at {leaf.path}"
        if g is None or not hasattr(g, "shape"):
            raise TypeError(
                f"{where} must be an array of shape {leaf.shape}; got {type(g).__name__}."
            )
        if tuple(g.shape) != leaf.shape:
            raise ValueError(
                f"{where} has shape {tuple(g.shape)}, but the parameter has shape {leaf.shape}."
            )
        if np.dtype(g.dtype) != leaf.dtype:
            raise TypeError(
                f"{where} has dtype {g.dtype}, but the parameter has dtype {leaf.dtype}. "
                f"Return gradients in the parameters' dtype (e.g. `.astype(jnp.{leaf.dtype})`)."
            )
        grads.append(g)
    return grads


def _theta_vector(layout: ArgLayout, grads: list) -> np.ndarray:
    """Gradient leaves as a real theta-coordinate vector (complex: JAX convention -> d/dRe, d/dIm)."""
    return ravel_leaves(
        layout, [np.conj(np.asarray(g)) if np.iscomplexobj(g) else g for g in jax.device_get(grads)]
    )


def _as_pytree(
    layout: ArgLayout, flat: np.ndarray, argnums: int | Sequence[int], args: tuple
) -> PyTree:
    """Theta-coordinate vector -> pytree shaped like the differentiated arguments (others None)."""
    pieces = unravel_host(layout, flat)
    slots: list[Any] = [None] * layout.n_slots
    for leaf, piece in zip(layout.diff, pieces):
        slots[leaf.slot] = np.conj(piece).astype(leaf.dtype) if leaf.is_complex else piece
    full = jtu.tree_unflatten(layout.treedef, slots)
    if isinstance(argnums, (int, np.integer)):
        return full[layout.argnums[0]]
    return tuple(full[a] for a in layout.argnums)


def _step_policy(eps: float | None, dtype: np.dtype) -> str:
    if eps is not None:
        return f"user eps = {eps:.3g} (absolute, every coordinate)"
    return f"h_i = {_tolerance.relative_step(dtype):.2e} * max(|x_i|, rms of its leaf) ({dtype} eps**(1/3)); stencil at +-h, +-2h"


def _finite_differences(
    ev: Evaluator, h: np.ndarray, batch_size: int | None, progress: Callable | None
) -> st.Estimates:
    """Runs the full stencil over every coordinate; returns host (numpy) `Estimates` of shape (n, 1)."""
    values, points = ev.stencil(np.arange(ev.n), h, batch_size, progress)
    values = np.asarray(jax.device_get(values), np.float64)
    eps = np.array([float(jnp.finfo(d).eps) for d in ev.real_dtypes])[ev.coord_dtype_codes][:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        noise = st.measured_noise_host(values, ev.f0)
        return st.combine_host(values, ev.f0, points, ev.theta, eps, noise)


def numerical_grad(
    f: Callable,
    args: tuple,
    *,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    eps: float | None = None,
    batch_size: int | None = None,
    reference: str = "auto",
    seed: int = 0,
) -> PyTree:
    """The finite-difference gradient of a scalar `f(*args)`, shaped like the differentiated arguments.

    Central differences at +-h and +-2h for every coordinate, combined by Richardson
    extrapolation, evaluated as a jitted `vmap` over chunks of coordinates.

    Args:
      f: Scalar-valued function, called as `f(*args)`.
      args: Tuple of pytrees.
      argnums: Which arguments to differentiate, as in `jax.grad`.
      has_aux: Whether f returns `(value, aux)`.
      eps: Absolute step; `None` picks one per coordinate from its dtype and magnitude.
      batch_size: Coordinates per vmapped chunk; `None` picks one that bounds memory.
      reference: "auto" (evaluate in float64 when faithful), "float64" or "native".
      seed: Seed for the float64 precision probe.

    Returns:
      A pytree like `args[argnums]` (a tuple of them for tuple `argnums`) of numpy arrays;
      non-float leaves are None.

    Example:
      >>> g = jaxcheck.numerical_grad(lambda x: jnp.sum(x ** 2), (jnp.arange(3.0),))
      >>> np.round(g, 4).tolist()
      [0.0, 2.0, 4.0]
    """
    validate_options(f=f, eps=eps, batch_size=batch_size, seed=seed, has_aux=has_aux)
    args = check_args(args)
    nums = normalize_argnums(argnums, len(args))
    layout, diff_values, dynamic = build_layout(args, nums)
    value = deterministic_value(f, args, has_aux)
    ev = Evaluator(f, has_aux, layout, diff_values, dynamic, reference, value, seed)
    est = _finite_differences(ev, ev.steps(eps), batch_size, None)
    numeric = np.asarray(est.numeric, np.float64)[:, 0]
    return _as_pytree(layout, numeric, argnums, args)


def check_grad(
    f: Callable,
    args: tuple,
    *,
    argnums: int | Sequence[int] = 0,
    grad_fn: Callable | None = None,
    has_aux: bool = False,
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    mode: str = "auto",
    reference: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    devices: Any = None,
) -> GradCheckResult:
    """Checks the gradient of a scalar `f(*args)` against finite differences, element by element.

    The analytic gradient is `jax.grad(f, argnums)` (exercising any custom_vjp/custom_jvp
    inside f) or the user's hand-written `grad_fn(*args)`. The reference differentiates
    every float coordinate with a 4-point central stencil and Richardson extrapolation,
    evaluated in float64 when f can be evaluated faithfully there, with an error estimate
    per element; tolerances derive from that estimate and the analytic dtype's rounding.
    Integer, boolean and PRNG-key leaves are held fixed and listed as skipped.

    Args:
      f: Scalar-valued function, called as `f(*args)`.
      args: Tuple of pytrees at which to check.
      argnums: Which arguments to differentiate (int or tuple), as in `jax.grad`.
      grad_fn: Optional hand-written gradient `grad_fn(*args)`, shaped like `args[argnums]`.
      has_aux: Whether f returns `(value, aux)`.
      eps: Absolute finite-difference step; `None` picks one per coordinate.
      rtol: Relative allowance for the analytic gradient's rounding; `None` uses the dtype default.
      atol: Absolute allowance; `None` derives one per leaf.
      batch_size: Coordinates per vmapped chunk; `None` bounds memory automatically.
      seed: Seed for the random directions (Taylor test, precision probe). Recorded.
      mode: "full" checks every coordinate; "probe" compares directional derivatives <g, v> along
        random directions per leaf and narrows a failing leaf to its worst elements (for large n);
        "auto" (default) is "full" up to `jaxcheck._probe.GRAD_FULL_MAX` coordinates, "probe" beyond.
      reference: "auto", "float64" or "native": where finite differences are evaluated.
      progress: Optional callback `progress(done, total)` after each chunk (once at the end
        when the finite differences run on several devices).
      devices: Devices the finite differences are split over: None (all devices of the
        arguments' platform; all global ones under `jax.distributed`), an int k (the first
        k) or a sequence of `jax.Device`. Recorded as `result.devices`.

    Returns:
      A `GradCheckResult`; `str(result)` is the full report.

    Raises:
      TypeError, ValueError: misuse (non-scalar f, no float leaves, bad argnums, a
        `grad_fn` of the wrong structure, a non-deterministic f).

    Example:
      >>> jaxcheck.check_grad(lambda x: jnp.sum(jnp.sin(x)), (jnp.arange(3.0),)).status
      'passed'
    """
    start = time.perf_counter()
    validate_options(
        f=f, eps=eps, rtol=rtol, atol=atol, batch_size=batch_size, seed=seed, has_aux=has_aux
    )
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
    args = check_args(args)
    devices = resolve_devices(devices, args)
    if mode != "full":
        from ._probe import check_grad_probe, grad_mode

        if grad_mode(mode, args, argnums) == "probe":
            kw = dict(
                argnums=argnums,
                grad_fn=grad_fn,
                has_aux=has_aux,
                eps=eps,
                rtol=rtol,
                atol=atol,
                batch_size=batch_size,
            )
            return check_grad_probe(
                f,
                args,
                **kw,
                seed=seed,
                reference=reference,
                progress=progress,
                start=start,
                devices=devices,
            )
    nums = normalize_argnums(argnums, len(args))
    layout, diff_values, dynamic = build_layout(args, nums)
    value = deterministic_value(f, args, has_aux)
    if grad_fn is not None:
        grads = _user_gradient(grad_fn, args, argnums, layout, diff_values, dynamic)
    else:
        _, grads = analytic_grad(f, has_aux, layout, list(diff_values), dynamic)
    analytic = _theta_vector(layout, grads)
    ev = Evaluator(f, has_aux, layout, diff_values, dynamic, reference, value, seed, devices)
    h = ev.steps(eps)
    est = _finite_differences(ev, h, batch_size, progress)
    native_dtype = np.result_type(*[jnp.finfo(leaf.dtype).dtype for leaf in layout.diff])
    tol = _tolerance.default_tolerance(native_dtype)
    if rtol is not None or atol is not None:
        tol = _tolerance.Tolerance(
            rtol=tol.rtol if rtol is None else float(rtol),
            atol=None if atol is None else float(atol),
        )
    numeric = np.asarray(est.numeric, np.float64)[:, 0]
    atol_vec = _element_atol(layout, ev.theta, numeric, tol, native_dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        assessment = st.assess_host(est, analytic[:, None], tol.rtol, atol_vec[:, None], tol.safety)
    code, tolerance, resolved = (np.asarray(x)[:, 0] for x in assessment)
    resolved = _zero_is_resolved(analytic, numeric, tolerance, resolved)
    leaves = []
    for leaf in layout.diff:
        sl = slice(leaf.offset, leaf.offset + leaf.size)
        leaves.append(
            _summary.summarize_leaf(
                path=leaf.path,
                shape=leaf.shape,
                dtype=str(leaf.dtype),
                analytic=analytic[sl],
                numeric=numeric[sl],
                tolerance=np.asarray(tolerance, np.float64)[sl],
                code=code[sl],
                resolved=resolved[sl],
                index_of=ft.partial(_local_index, layout, leaf.offset),
            )
        )
    leaves = _summary.sort_worst_first(leaves)
    status, reason = _summary.overall(leaves)
    if not np.all(np.isfinite(value)):
        status, reason = (
            "inconclusive",
            f"f(*args) = {value[0]}: the function itself is not finite at this point",
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.nan_to_num(
            np.abs(analytic - numeric) / np.asarray(tolerance, np.float64), nan=np.inf
        )
    worst = int(np.argmax(ratio))
    taylor, sweep = evidence(ev, analytic, tol.rtol, worst, float(numeric[worst]), float(h[worst]))
    return GradCheckResult(
        name=function_name(f),
        status=status,
        reason=reason,
        relative_error=_summary.normalized_distance(analytic, numeric),
        leaves=leaves,
        skipped=layout.skipped,
        taylor=taylor,
        reference=ev.reference.description
        + "; 4-point central differences (+-h, +-2h) with Richardson extrapolation",
        reference_fallback=ev.reference.fallback,
        step_policy=_step_policy(eps, ev.reference.dtype),
        eps=None if eps is None else float(eps),
        tolerance=tol,
        seed=int(seed),
        mode="full",
        n_evaluations=int(ev.n_evaluations),
        devices=len(ev.devices),
        seconds=time.perf_counter() - start,
        hints=_summary.hints(leaves, ev.reference.dtype == np.float64),
        step_sweep=sweep,
        analytic=_as_pytree(layout, analytic, argnums, args),
        numeric=_as_pytree(layout, numeric, argnums, args),
    )


def _local_index(layout: ArgLayout, offset: int, k: int) -> tuple[tuple[int, ...], str]:
    _, index, part = layout.locate(offset + k)
    return index, part


def _element_atol(
    layout: ArgLayout,
    theta: np.ndarray,
    numeric: np.ndarray,
    tol: _tolerance.Tolerance,
    native_dtype: np.dtype,
) -> np.ndarray:
    """Absolute tolerance per coordinate: the user's atol, or rtol * leaf max + rounding floor."""
    if tol.atol is not None:
        return np.full(numeric.shape, tol.atol)
    scales = _tolerance.coordinate_scales(layout, theta)
    effect = np.abs(numeric) * scales
    sensitivity = float(np.max(effect[np.isfinite(effect)], initial=0.0))
    out = _tolerance.floor_atol(native_dtype, sensitivity, scales)
    for leaf in layout.diff:
        sl = slice(leaf.offset, leaf.offset + leaf.size)
        block = numeric[sl]
        out[sl] += tol.rtol * float(np.max(np.abs(block[np.isfinite(block)]), initial=0.0))
    return out


def _zero_is_resolved(
    analytic: np.ndarray, numeric: np.ndarray, tolerance: np.ndarray, resolved: np.ndarray
) -> np.ndarray:
    """Marks numerically-zero elements as resolved when a spurious gradient would show.

    An element whose analytic and numeric values are both within tolerance of zero is
    decided (not inconclusive) when its tolerance is below 0.1% of the largest gradient,
    or when every gradient is exactly zero: a wrong nonzero value would have failed.
    """
    finite = np.isfinite(numeric)
    scale = float(np.max(np.abs(numeric[finite]), initial=0.0))
    near_zero = (np.abs(analytic) <= tolerance) & (np.abs(numeric) <= tolerance)
    visible = tolerance <= ZERO_FRACTION * scale if scale > 0 else analytic == 0
    return resolved | (near_zero & visible)


def assert_grad_correct(
    f: Callable, args: tuple, *, allow_inconclusive: bool = False, **kwargs: Any
) -> GradCheckResult:
    """Asserts that `check_grad(f, args, **kwargs)` passes.

    Args:
      f: As in `check_grad`.
      args: As in `check_grad`.
      allow_inconclusive: Accept an inconclusive verdict instead of failing.
      **kwargs: Passed to `check_grad`.

    Returns:
      The `GradCheckResult` when the check passes.

    Raises:
      GradCheckError: the gradient is wrong (or the check is inconclusive); the message is the report.
    """
    __tracebackhide__ = True
    result = check_grad(f, args, **kwargs)
    if result.status == "failed" or (result.status == "inconclusive" and not allow_inconclusive):
        raise GradCheckError(str(result), result)
    return result
