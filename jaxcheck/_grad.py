"""`check_grad`, `numerical_grad` and `assert_grad_correct`: the full gradient check."""

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _grad_full, _probe, _summary
from ._diagnose import explained
from ._errors import raise_unless_passed
from ._jacobian import check_jacobian
from ._jacobian_result import JacobianCheckResult
from ._orders import check_orders, validate_order
from ._problem import Problem, build_problem, native_if_float64_fails
from ._problem import function_name as function_name
from ._problem import validate_options as validate_options
from ._result import GradCheckResult
from ._summary import GradFindings
from ._taylor import evidence

PyTree = Any
# mode="auto" runs full mode while its estimated time stays within this many seconds.
DEFAULT_BUDGET = 10.0


def choose_mode(p: Problem, mode: str, budget: float) -> tuple[str, str]:
    """("full" or "probe", why) for the user's `mode` ("auto", "full", "probe").

    "auto" is "full" when the problem runs op by op (small) or when the full check's main
    pass, extrapolated from one chunk, takes at most `budget` seconds; "probe" beyond.
    """
    if mode != "auto":
        return mode, ""
    if p.ev.eager:
        return "full", ""
    seconds = _grad_full.estimated_seconds(p)
    if seconds <= budget:
        return "full", ""
    return "probe", (
        f"mode='auto': a full check would take about {seconds:.3g} s (more than budget="
        f"{budget:g} s), so probe mode ran"
    )


def grad_result(
    p: Problem, findings: GradFindings, mode: str, mode_note: str = ""
) -> GradCheckResult:
    """Assembles the `GradCheckResult`: verdict, evidence (Taylor test, step sweep), settings."""
    ev = p.ev
    status, reason = _summary.overall(findings.leaves)
    value = ev.f0
    if not np.all(np.isfinite(value)):
        reason = f"f(*args) = {value[0]}: the function itself is not finite at this point"
        status = "inconclusive"
    taylor, sweep = evidence(
        ev,
        p.analytic,
        p.tol.rtol,
        findings.worst,
        findings.worst_numeric,
        float(p.h[findings.worst]),
    )
    return GradCheckResult(
        name=p.name,
        status=status,
        reason=reason,
        relative_error=findings.relative_error,
        leaves=findings.leaves,
        skipped=p.layout.skipped,
        taylor=taylor,
        reference=f"{ev.reference.description}; {findings.reference}"
        + (f"; {mode_note}" if mode_note else ""),
        reference_fallback=ev.reference.fallback,
        step_policy=p.step_policy,
        eps=None if p.eps is None else float(p.eps),
        tolerance=p.tol,
        seed=p.seed,
        mode=mode,
        n_evaluations=int(ev.n_evaluations),
        devices=len(ev.devices),
        seconds=time.perf_counter() - p.start,
        hints=_summary.hints(findings.leaves, ev.reference.dtype == np.float64),
        rule_findings=p.rule_findings(status),
        notes=p.notes(),
        step_sweep=sweep,
        analytic=p.as_pytree(p.analytic),
        numeric=None if findings.numeric is None else p.as_pytree(findings.numeric),
    )


def _nothing_to_compare(p: Problem, reason: str) -> GradCheckResult:
    """The passed result of a check with no coordinates (every differentiated leaf empty)."""
    empty = np.zeros(0)
    return GradCheckResult(
        name=p.name,
        status="passed",
        reason=reason,
        relative_error=0.0,
        leaves=(),
        skipped=p.layout.skipped,
        taylor=(),
        reference=p.ev.reference.description,
        reference_fallback=None,
        step_policy=p.step_policy,
        eps=None if p.eps is None else float(p.eps),
        tolerance=p.tol,
        seed=p.seed,
        mode="full",
        n_evaluations=int(p.ev.n_evaluations),
        devices=len(p.ev.devices),
        seconds=time.perf_counter() - p.start,
        analytic=p.as_pytree(empty),
        numeric=p.as_pytree(empty),
    )


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
    with explained("numerical_grad", f, args):
        p = build_problem(
            "grad",
            f,
            args,
            argnums=argnums,
            has_aux=has_aux,
            eps=eps,
            batch_size=batch_size,
            seed=seed,
            reference=reference,
            analytic=False,
        )
        est = _grad_full.estimates(p)
        return p.as_pytree(np.asarray(est.numeric, np.float64)[:, 0])


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
    locate_rules: bool = True,
    budget: float = DEFAULT_BUDGET,
    order: int = 1,
    precision: str = "note",
) -> GradCheckResult | JacobianCheckResult:
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
        "auto" (default) is "full" when a full check fits in `budget` seconds (small problems
        always; larger ones as extrapolated from one chunk of evaluations), "probe" beyond.
      reference: "auto", "float64" or "native": where finite differences are evaluated.
      progress: Optional callback `progress(done, total)` after each chunk (once at the end
        when the finite differences run on several devices).
      devices: Devices the finite differences are split over: None (all devices of the
        arguments' platform; all global ones under `jax.distributed`), an int k (the first
        k) or a sequence of `jax.Device`. Recorded as `result.devices`.
      budget: Seconds a full check may take for `mode="auto"` to choose it (default 10).
      locate_rules: When the check fails, check every custom_vjp/custom_jvp rule inside f at
        its own call-site inputs and name the failing ones (`result.rule_findings`).
      order: Highest derivative order to check (`jax.test_util.check_grads`'s `order`). Order
        k > 1 also checks the Hessian (forward-over-reverse, `check_jvp` of `jax.grad(f)`, or
        of `grad_fn`) and, beyond, the Jacobians of Hessian-vector products along seeded
        directions (`jaxcheck._orders`), stopping at the first order that fails.
      precision: "note" (default): an element whose float32 analytic value misses the
        reference only because a right formula loses digits to float32 rounding (the same
        gradient taken in float64 agrees with the float64 reference) passes, with a note in
        the report giving the digits lost; "strict" fails it (the note says why).

    Returns:
      A `GradCheckResult` (order 1, or the order-1 check failed); for order > 1 otherwise
      the `JacobianCheckResult` of the highest order checked (or the first failing one),
      with `result.order` saying which. `str(result)` is the full report.

    Raises:
      TypeError, ValueError: misuse (non-scalar f, no float leaves, bad argnums, a
        `grad_fn` of the wrong structure, a non-deterministic f).

    Example:
      >>> jaxcheck.check_grad(lambda x: jnp.sum(jnp.sin(x)), (jnp.arange(3.0),)).status
      'passed'
    """
    if validate_order(order) > 1:
        options = dict(
            eps=eps,
            rtol=rtol,
            atol=atol,
            batch_size=batch_size,
            seed=seed,
            mode=mode,
            reference=reference,
            devices=devices,
        )
        return check_orders(
            "grad",
            f,
            args,
            order,
            first=lambda: check_grad(
                f,
                args,
                argnums=argnums,
                grad_fn=grad_fn,
                has_aux=has_aux,
                progress=progress,
                locate_rules=locate_rules,
                budget=budget,
                **options,
            ),
            check=lambda kind, fn, aux: check_jacobian(
                kind, fn, args, argnums=argnums, has_aux=aux, locate_rules=False, **options
            ),
            argnums=argnums,
            has_aux=has_aux,
            seed=seed,
            grad_fn=grad_fn,
            locate_rules=locate_rules,
            rule_options={"seed": seed, "reference": reference, "atol": atol},
        )
    start = time.perf_counter()
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
        raise ValueError(f"`budget` must be a non-negative number of seconds; got {budget!r}.")

    def run(reference: str) -> GradCheckResult:
        p = build_problem(
            "grad",
            f,
            args,
            argnums=argnums,
            has_aux=has_aux,
            eps=eps,
            rtol=rtol,
            atol=atol,
            batch_size=batch_size,
            seed=seed,
            reference=reference,
            mode=mode,
            progress=progress,
            grad_fn=grad_fn,
            devices=devices,
            locate_rules=locate_rules,
            start=start,
            precision=precision,
        )
        empty = p.nothing_to_compare()
        if empty:
            return _nothing_to_compare(p, empty)
        resolved, note = choose_mode(p, mode, budget)
        strategy = _probe.run_grad if resolved == "probe" else _grad_full.run
        return grad_result(p, strategy(p), resolved, note)

    with explained("check_grad", f, args):
        return native_if_float64_fails(run, reference)


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
    return raise_unless_passed(check_grad(f, args, **kwargs), allow_inconclusive)
