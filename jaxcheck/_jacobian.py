"""`check_vjp`, `check_jvp` and their `assert_*` twins: Jacobians of pytree -> pytree functions."""

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _jacobian_kernels as jk
from . import _summary
from ._diagnose import explained
from ._errors import raise_unless_passed
from ._jacobian_full import run_full
from ._jacobian_result import BlockReport, JacobianCheckResult, sort_blocks
from ._orders import check_orders, validate_order
from ._probe import run_probe
from ._problem import Problem, build_problem, native_if_float64_fails
from ._sparse import run_sparse

PyTree = Any
MODES = ("auto", "full", "probe")
# mode="auto" checks every entry while the Jacobian is affordable: at most FULL_MAX_ENTRIES
# entries (n * m real coordinates; the comparison streams over them) and at most
# FULL_MAX_INPUTS input coordinates (4 evaluations of f each). Beyond either, probes.
FULL_MAX_ENTRIES = 10**7
FULL_MAX_INPUTS = 20_000
DEFAULT_PROBES = 4


def resolve_mode(mode: str, n: int, m: int) -> str:
    """ "full" or "probe" for `mode` ("auto", "full", "probe") and a Jacobian of n inputs x m outputs."""
    if mode != "auto":
        return mode
    return "full" if n * m <= FULL_MAX_ENTRIES and n <= FULL_MAX_INPUTS else "probe"


def _require_forward_mode(p: Problem) -> None:
    try:
        jax.eval_shape(
            lambda v: jk.jvp_products(p.sel, p.layout, p.outs, p.diff_values, p.dynamic, v),
            jax.ShapeDtypeStruct((1, p.n), jnp.float32),
        )
    except TypeError as error:
        if "custom_vjp" in str(error):
            raise TypeError(
                f"`check_jvp` needs forward-mode autodiff, but `{p.name}` calls a custom_vjp function, which JAX "
                "cannot differentiate forward. Use `jaxcheck.check_vjp` to check its bwd rule."
            ) from error
        raise


def _hints(p: Problem, blocks: tuple[BlockReport, ...], problem: str | None) -> tuple[str, ...]:
    out = []
    what = "bwd rule / VJP" if p.kind == "vjp" else "JVP rule"
    if problem:
        out.append(
            f"make the {what} linear in its cotangent: every term it returns must be multiplied by the incoming cotangent."
        )
    for b in blocks:
        bad = [e for e in b.elements if e.kind == "mismatch"]
        if b.status != "failed":
            continue
        if not bad:
            if b.worst is None:
                out.append(
                    f"random probes of {b.path} disagree, but no single entry was narrowed down: the error is spread thinly; rerun with `mode='full'` on a smaller input."
                )
            else:
                out.append(
                    f"{b.path} has NaN/Inf in its analytic derivative: check divisions and sqrt/log at the boundary."
                )
            continue
        imaginary = ""
        if any(e.input_part == "imag" or e.output_part == "imag" for e in bad):
            imaginary = (
                " on an imaginary part: a missing or extra conjugate? JAX's VJP pairs "
                "cotangents without conjugation"
            )
        pattern = _summary.ratio_pattern(bad, imaginary)
        out.append(f"check the {what} for {b.path} at entry {bad[0].where}{pattern}.")
    if any(b.status == "inconclusive" for b in blocks):
        if p.ev.reference.dtype != np.float64:
            out.append(
                "enable float64 evaluation (`reference='float64'`, or run with jax_enable_x64) so finite differences resolve smaller derivatives."
            )
        out.append(
            "check at a point away from kinks/discontinuities, or pass a larger `eps` if f is noisy."
        )
    return tuple(out)


def finish(
    p: Problem,
    blocks: list[BlockReport],
    mode: str,
    relative_error: float,
    source: str,
    problem: str | None = None,
    sparsity: str = "",
) -> JacobianCheckResult:
    """Assembles the `JacobianCheckResult` from block reports."""
    ordered = sort_blocks(blocks)
    status, reason = _summary.overall(ordered, noun="blocks")
    if problem and status != "failed":
        status, reason = "failed", problem
    elif problem:
        reason = f"{reason}; {problem}"
    if not np.all(np.isfinite(p.ev.f0)):
        status, reason = "inconclusive", "f(*args) is not finite at this point"
    ev = p.ev
    reference = (
        ev.reference.description
        + "; 4-point central differences (+-h, +-2h) with Richardson extrapolation"
    )
    if mode == "probe":
        reference += ", along random directions per input leaf, contracted with random cotangents per output leaf"
    return JacobianCheckResult(
        name=p.name,
        kind=p.kind,
        status=status,
        reason=reason,
        relative_error=float(relative_error),
        blocks=ordered,
        skipped=p.skipped,
        reference=reference,
        reference_fallback=ev.reference.fallback,
        analytic_source=source,
        step_policy=p.step_policy,
        eps=None if p.eps is None else float(p.eps),
        tolerance=p.tol,
        seed=p.seed,
        mode=mode,
        n_inputs=int(p.n),
        n_outputs=int(p.m),
        n_evaluations=int(ev.n_evaluations),
        devices=len(ev.devices),
        seconds=time.perf_counter() - p.start,
        hints=_hints(p, ordered, problem),
        rule_findings=p.rule_findings(status),
        sparsity=sparsity,
        notes=p.notes(),
    )


def _check(
    kind: str,
    f: Callable,
    args: tuple,
    mode: str,
    n_probes: int,
    sparse: bool | None,
    **options: Any,
) -> JacobianCheckResult:
    start = time.perf_counter()
    if isinstance(n_probes, bool) or not isinstance(n_probes, (int, np.integer)) or n_probes < 1:
        raise ValueError(f"`n_probes` must be a positive int; got {n_probes!r}.")
    if sparse is not None and not isinstance(sparse, bool):
        raise TypeError(f"`sparse` must be None (automatic), True or False; got {sparse!r}.")

    def run(reference: str) -> JacobianCheckResult:
        return _run(
            kind, f, args, mode, n_probes, sparse, start, {**options, "reference": reference}
        )

    with explained(f"check_{kind}", f, args):
        return native_if_float64_fails(run, options.get("reference", "auto"))


def _run(
    kind: str,
    f: Callable,
    args: tuple,
    mode: str,
    n_probes: int,
    sparse: bool | None,
    start: float,
    options: dict,
) -> JacobianCheckResult:
    p = build_problem(kind, f, args, mode=mode, start=start, **options)
    empty = p.nothing_to_compare()
    if empty:
        result = finish(p, [], "full", 0.0, "none (nothing to compare)")
        return dataclasses.replace(result, status="passed", reason=empty)
    if kind == "jvp":
        _require_forward_mode(p)
    resolved = resolve_mode(mode, p.n, p.m)
    acc, source, sparsity = None, "", ""
    if mode != "probe" and (sparse or (sparse is None and not p.ev.eager)):
        # In auto mode as many colour groups as full mode would take input coordinates.
        limit = FULL_MAX_INPUTS if mode == "auto" else None
        acc, source, summary = run_sparse(p, max_colors=limit)
        sparsity = summary.describe()
    if acc is None and resolved == "probe":
        blocks, relerr, source = run_probe(p, n_probes)
        return finish(p, blocks, "probe", relerr, source, sparsity=sparsity)
    problem = None
    if acc is None:
        acc, source, problem = run_full(p)
    blocks = [acc.report(i, o) for i in range(p.n_in) for o in range(p.n_out)]
    if problem and problem.startswith("the VJP cannot be transposed"):
        source, problem = f"{source}; {problem}", None
    return finish(p, blocks, "full", acc.relative_error(), source, problem, sparsity=sparsity)


def check_jacobian(
    kind: str,
    f: Callable,
    args: tuple,
    *,
    mode: str = "auto",
    n_probes: int = DEFAULT_PROBES,
    sparse: bool | None = None,
    order: int = 1,
    **options: Any,
) -> JacobianCheckResult:
    """`check_vjp` (kind "vjp") or `check_jvp` ("jvp") with `options`, at any `order`."""
    if validate_order(order) == 1:
        return _check(kind, f, args, mode, n_probes, sparse, **options)
    return check_orders(
        kind,
        f,
        args,
        order,
        first=lambda: _check(kind, f, args, mode, n_probes, sparse, **options),
        check=lambda k, fn, aux: _check(
            k,
            fn,
            args,
            mode,
            n_probes,
            sparse,
            **{**options, "has_aux": aux, "locate_rules": False},
        ),
        argnums=options.get("argnums"),
        has_aux=options.get("has_aux", False),
        seed=options.get("seed", 0),
        locate_rules=options.get("locate_rules", True),
        rule_options={k: options.get(k) for k in ("seed", "reference", "atol") if k in options},
    )


_ARGS_DOC = """
    Args:
      f: Function to check, called as `f(*args)`; any pytree of arrays in and out.
      args: Tuple of pytrees at which to check.
      argnums: Which arguments to differentiate (int or tuple); `None` (default) means
        every positional argument, as `jax.vjp` does.
      mode: "full" compares every Jacobian entry; "probe" compares random projections
        <u, J v> per (input leaf, output leaf) block and narrows a failing block down to
        its worst entries; "auto" (default) is "full" while n * m <= 1e7 and n <= 2e4
        (n, m = real input and output coordinates), "probe" beyond.
      eps: Absolute finite-difference step; `None` picks one per coordinate from its dtype and scale.
      rtol: Relative allowance for the analytic side's rounding; `None` uses the dtype default.
      atol: Absolute allowance; `None` derives one per entry: rtol * (max |J[j, :]| over the
        input leaf) + a rounding floor 16 eps |f_j| / scale_i (eps of float64 where the
        entries can be computed in float64 too: see `precision`).
      batch_size: Input coordinates per tile; `None` bounds memory automatically.
      seed: Seed for random directions, cotangents and verification vectors. Recorded.
      n_probes: Random directions per input leaf (and cotangents per output leaf) in probe mode.
      reference: "auto", "float64" or "native": where finite differences are evaluated.
      has_aux: Whether f returns `(output, aux)`; only `output` is differentiated.
      devices: Devices the finite differences are split over: None (all devices of the
        arguments' platform; all global ones under `jax.distributed`), an int k (the first
        k) or a sequence of `jax.Device`. Recorded as `result.devices`.
      locate_rules: When the check fails, check every custom_vjp/custom_jvp rule inside f at
        its own call-site inputs and name the failing ones (`result.rule_findings`).
      sparse: Full mode on a sparse Jacobian: detect its pattern from f's jaxpr, colour the
        columns and perturb a colour group per evaluation (validated against dense columns;
        any doubt falls back to dense, and `result.sparsity` says why). None (default):
        tried for problems too large to run op by op; True: always tried; False: never.
      order: Highest derivative order to check (`jax.test_util.check_grads`'s `order`): order
        k > 1 also checks the Jacobian of the map x -> (the order-1 product at x with a seeded
        cotangent or tangent), and so on up (`jaxcheck._orders`), stopping at the first order
        that fails; `result.order` says which.
      precision: "note" (default): entries whose float32 analytic values miss the reference
        only because a right formula loses digits to float32 rounding (the same entries
        computed in float64 agree with the float64 reference) pass, with a note in the
        report giving the digits lost; "strict" fails them (the note says why).

    Complex numbers are compared in the real view: a complex input is its (real, imag)
    coordinates, a complex output its (real, imag) outputs. JAX's JVP is complex-linear
    for holomorphic f and in general maps a tangent a + ib to J (a, b). JAX's VJP pairs
    cotangents bilinearly without conjugation: the cotangent ct = u_re - i u_im is the
    real cotangent (u_re, u_im), and the returned w is the real vector (Re w, -Im w) = J^T u
    (so `jax.grad` of a real f of complex z is df/dx - i df/dy).

    Integer, boolean and PRNG-key input leaves are held fixed, and such output leaves are
    not checked; both are listed in `result.skipped`.

    Returns:
      A `JacobianCheckResult`; `str(result)` is the report, worst block first.

    Raises:
      TypeError, ValueError: misuse (bad argnums or options, no float inputs or outputs,
        a non-deterministic f).
"""


def check_vjp(
    f: Callable,
    args: tuple,
    *,
    argnums: int | Sequence[int] | None = None,
    mode: str = "auto",
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    n_probes: int = DEFAULT_PROBES,
    reference: str = "auto",
    has_aux: bool = False,
    devices: Any = None,
    locate_rules: bool = True,
    sparse: bool | None = None,
    order: int = 1,
    precision: str = "note",
) -> JacobianCheckResult:
    """Checks `jax.vjp(f, *args)` (including custom_vjp bwd rules) against finite differences.

    In full mode the VJP gives the rows e_j^T J of the Jacobian; the comparison runs
    column tile by column tile (finite differences give columns), using the transpose of
    the VJP for the columns once it is verified to agree with the rows. In probe mode
    each block is checked through <J^T u, v> against the directional derivative of
    <u, f> along v.
    {args}
    Example:
      >>> jaxcheck.check_vjp(jnp.sin, (jnp.arange(3.0),)).status
      'passed'
    """
    return check_jacobian(
        "vjp",
        f,
        args,
        mode=mode,
        n_probes=n_probes,
        order=order,
        sparse=sparse,
        argnums=argnums,
        eps=eps,
        rtol=rtol,
        atol=atol,
        batch_size=batch_size,
        seed=seed,
        reference=reference,
        has_aux=has_aux,
        devices=devices,
        locate_rules=locate_rules,
        precision=precision,
    )


def check_jvp(
    f: Callable,
    args: tuple,
    *,
    argnums: int | Sequence[int] | None = None,
    mode: str = "auto",
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    n_probes: int = DEFAULT_PROBES,
    reference: str = "auto",
    has_aux: bool = False,
    devices: Any = None,
    locate_rules: bool = True,
    sparse: bool | None = None,
    order: int = 1,
    precision: str = "note",
) -> JacobianCheckResult:
    """Checks `jax.jvp(f, ...)` (including custom_jvp rules) against finite differences.

    In full mode vmapped JVPs at input basis vectors give the columns J e_i, compared
    tile by tile with finite-difference columns. In probe mode each block is checked
    through <u, J v> against the directional derivative of <u, f> along v.
    {args}
    Example:
      >>> jaxcheck.check_jvp(jnp.sin, (jnp.arange(3.0),)).status
      'passed'
    """
    return check_jacobian(
        "jvp",
        f,
        args,
        mode=mode,
        n_probes=n_probes,
        order=order,
        sparse=sparse,
        argnums=argnums,
        eps=eps,
        rtol=rtol,
        atol=atol,
        batch_size=batch_size,
        seed=seed,
        reference=reference,
        has_aux=has_aux,
        devices=devices,
        locate_rules=locate_rules,
        precision=precision,
    )


check_vjp.__doc__ = check_vjp.__doc__.replace("{args}", _ARGS_DOC)  # type: ignore[union-attr]
check_jvp.__doc__ = check_jvp.__doc__.replace("{args}", _ARGS_DOC)  # type: ignore[union-attr]


def assert_vjp_correct(
    f: Callable, args: tuple, *, allow_inconclusive: bool = False, **kwargs: Any
) -> JacobianCheckResult:
    """Asserts that `check_vjp(f, args, **kwargs)` passes.

    Raises:
      GradCheckError: the VJP is wrong (or the check is inconclusive); the message is the report.
    """
    __tracebackhide__ = True
    return raise_unless_passed(check_vjp(f, args, **kwargs), allow_inconclusive)


def assert_jvp_correct(
    f: Callable, args: tuple, *, allow_inconclusive: bool = False, **kwargs: Any
) -> JacobianCheckResult:
    """Asserts that `check_jvp(f, args, **kwargs)` passes.

    Raises:
      GradCheckError: the JVP is wrong (or the check is inconclusive); the message is the report.
    """
    __tracebackhide__ = True
    return raise_unless_passed(check_jvp(f, args, **kwargs), allow_inconclusive)
