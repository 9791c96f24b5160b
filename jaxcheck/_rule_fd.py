"""Finite-difference evidence for custom rules: the engine's directional stencil, and check_vjp/check_jvp reports."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _noise, _summary, _tolerance
from . import _stencil as st
from ._engine import Evaluator
from ._flatten import build_layout, ravel_leaves, unravel_host
from ._result import LeafReport, shape_str
from ._rule_checks import (
    MirrorFn,
    OutLeaf,
    Target,
    guarded,
    jit_or_eager,
    leaf_normal,
    locate,
    out_leaves,
)
from ._rule_compare import argument_of, fmt, ravel_tangent
from ._rule_result import CheckReport

PyTree = Any


@dataclasses.dataclass
class Directional:
    """G's derivative along one direction per free leaf vs finite differences of G."""

    status: str  # passed / failed / inconclusive
    reason: str
    reports: list[
        tuple[str, LeafReport]
    ]  # (input leaf path of the direction, output leaf report), worst first
    reference: str
    fallback: str | None
    x64: bool
    tangents: list[list[np.ndarray]]  # per direction: a tangent for every free leaf (native dtypes)
    numeric: np.ndarray  # (b, m)
    analytic: np.ndarray  # (b, m)
    tolerance: np.ndarray  # (b, m)
    outs: tuple[OutLeaf, ...]
    step: str
    n_evaluations: int


def directional(
    target: Target,
    G: Callable[[list], PyTree],
    analytic_fn: Callable[[list], PyTree],
    *,
    salt: str,
    seed: int,
    eps: float | None,
    rtol: float | None,
    atol: float | None,
    reference: str,
    out_prefix: str = "out",
    label: str = "G",
    devices: Any = None,
) -> Directional:
    """Checks `analytic_fn(v)` (the derivative of G along v) against the 4-point stencil of G along v.

    One direction per free leaf (zero elsewhere), so a failure names the input leaf; the
    output element is located inside G's output. Directions are scaled per coordinate
    like the engine's steps (`coordinate_scales`) and rounded to the native dtypes, so the
    analytic and the numeric derivative see exactly the same direction. The evaluations
    of G are split over `devices` (see `_devices.resolve_devices`).
    """
    mirror = target.mirror()
    layout, diff_values, dynamic = build_layout(mirror, target.fd_argnums)
    assert [l.path for l in layout.diff] == target.free_paths
    g0 = guarded(label, G, target.free_values, inputs=target.free_values)
    outs, _ = out_leaves(g0, out_prefix)
    native_value = ravel_tangent(g0)
    ev = Evaluator(
        MirrorFn(target, G, name=label),
        False,
        layout,
        diff_values,
        dynamic,
        reference,
        native_value,
        seed,
        devices=devices,
    )
    scales = _tolerance.coordinate_scales(layout, ev.theta)
    rows = []
    for leaf in layout.diff:
        z = np.zeros(layout.n)
        block = slice(leaf.offset, leaf.offset + leaf.size)
        raw = leaf_normal(seed, salt, leaf.path, (leaf.size,), np.float64)
        z[block] = (
            raw * scales[block] if eps is None else raw / max(float(np.max(np.abs(raw))), 1e-30)
        )
        rows.append(z)
    tangents = [
        [np.asarray(t).astype(d) for t, d in zip(unravel_host(layout, z), target.free_dtypes)]
        for z in rows
    ]
    dirs = np.stack([ravel_leaves(layout, t) for t in tangents])
    h = float(eps) if eps is not None else _tolerance.relative_step(ev.reference.dtype)
    ts = (np.array([-2.0, -1.0, 1.0, 2.0]) * h).astype(ev.theta_dtype).astype(np.float64)
    values = ev.along(dirs, ts)
    analytic_call = jit_or_eager(analytic_fn)
    analytic = np.stack(
        [ravel_tangent(guarded(f"the derivative of {label}", analytic_call, t)) for t in tangents]
    )
    b, m = analytic.shape
    with ev.context():
        dt = ev.theta_dtype
        est = st.combine(
            jnp.asarray(values, dt),
            jnp.asarray(ev.f0, dt),
            jnp.asarray(np.broadcast_to(ts, (b, 4)), dt),
            jnp.zeros((b,), dt),
            noise_floor=jnp.asarray(_noise.floor(ev.noise), dt),
        )
        numeric = np.asarray(jax.device_get(est.numeric), np.float64)
    native = np.result_type(*target.free_dtypes)
    tol = _tolerance.default_tolerance(native)
    rt = tol.rtol if rtol is None else float(rtol)
    eps_native = float(np.finfo(native).eps)
    atol_arr = np.zeros((b, m))
    for o in outs:
        sl = slice(o.offset, o.offset + o.size)
        if atol is not None:
            atol_arr[:, sl] = float(atol)
            continue
        block = numeric[:, sl]
        peak = np.max(np.where(np.isfinite(block), np.abs(block), 0.0), axis=1, initial=0.0)
        g_peak = float(np.max(np.abs(native_value[sl]), initial=0.0)) if o.size else 0.0
        atol_arr[:, sl] = (rt * peak + 16 * eps_native * g_peak)[:, None]
    with ev.context():
        dt = ev.theta_dtype
        assessment = st.assess(
            est,
            jnp.asarray(analytic, dt),
            jnp.asarray(rt, dt),
            jnp.asarray(atol_arr, dt),
            jnp.asarray(tol.safety, dt),
        )
        code, tolerance, resolved = (np.asarray(x) for x in jax.device_get(assessment))
    tolerance = tolerance.astype(np.float64)
    # G bitwise constant over the whole stencil and an exactly zero analytic derivative: resolved.
    constant = np.all(values == ev.f0[None, None, :], axis=1) & (analytic == 0)
    resolved = resolved | constant
    reports, per_direction = [], []
    floats = [o for o in outs if o.inexact and o.size]
    float_pos = (
        np.concatenate([np.arange(o.offset, o.offset + o.size) for o in floats])
        if floats
        else np.zeros(0, int)
    )
    for j, leaf in enumerate(layout.diff):
        for o in floats:
            sl = slice(o.offset, o.offset + o.size)
            rep = _summary.summarize_leaf(
                path=o.path,
                shape=o.shape,
                dtype=str(o.dtype),
                analytic=analytic[j, sl],
                numeric=numeric[j, sl],
                tolerance=tolerance[j, sl],
                code=code[j, sl],
                resolved=resolved[j, sl],
                index_of=lambda k, o=o: locate([o], o.offset + k)[1:],
            )
            reports.append((leaf.path, rep))
        if (
            float_pos.size
        ):  # resolution is judged over the whole output: a constant output leaf (a sign) is fine
            p = float_pos
            per_direction.append(
                _summary.summarize_leaf(
                    path="all outputs",
                    shape=(int(p.size),),
                    dtype="float64",
                    analytic=analytic[j, p],
                    numeric=numeric[j, p],
                    tolerance=tolerance[j, p],
                    code=code[j, p],
                    resolved=resolved[j, p],
                    index_of=lambda k: ((k,), ""),
                )
            )
    rank = {"failed": 0, "inconclusive": 1, "passed": 2}
    reports.sort(key=lambda r: (rank[r[1].status], -np.nan_to_num(r[1].relative_error, nan=np.inf)))
    if any(r.status == "failed" for _, r in reports):
        status, reason = _summary.overall(tuple(r for _, r in reports if r.status == "failed"))
    elif any(r.status == "inconclusive" for r in per_direction):
        status, reason = _summary.overall(tuple(per_direction))
        reports.sort(key=lambda r: (r[1].n_unresolved + r[1].n_nonfinite == 0, -r[1].n_unresolved))
    else:
        status, reason = (
            "passed",
            f"all {len(reports)} (direction, output leaf) pairs match finite differences",
        )
    step = (
        f"t = +-{h:.2e}, +-{2 * h:.2e} along directions scaled per coordinate"
        if eps is None
        else f"user eps {h:.3g} along unit directions"
    )
    return Directional(
        status,
        reason,
        reports,
        ev.reference.description,
        ev.reference.fallback,
        ev.reference.x64,
        tangents,
        numeric,
        analytic,
        tolerance,
        outs,
        step,
        ev.n_evaluations,
    )


def directional_report(
    name: str, what: str, d: Directional, extra: Sequence[str] = ()
) -> CheckReport:
    """The `CheckReport` of a directional finite-difference comparison."""
    settings = (
        f"reference: {d.reference}; stencil {d.step}; {d.n_evaluations} evaluations",
        *((f"float64 not used: {d.fallback}",) if d.fallback else ()),
        *extra,
    )
    if d.status == "passed":
        return CheckReport(
            name=name,
            status="passed",
            message=f"{what} matches finite differences along {len({p for p, _ in d.reports})} leaf direction(s)",
            details=settings,
        )
    along, rep = d.reports[0]
    bad = [e for e in rep.elements if e.kind not in ("within-tolerance", "nonsmooth")] or list(
        rep.elements
    )
    lines = [
        f"along {along} (a seeded random direction in that leaf only), output {rep.path} ({shape_str(rep.dtype, rep.shape)}): {rep.reason}"
    ]
    lines += [
        f"  {rep.path}[{','.join(map(str, e.index))}]{'.' + e.part if e.part else ''}: analytic {fmt(e.analytic)} vs numeric {fmt(e.numeric)} (|error| {e.abs_error:.2e}, tolerance {e.tolerance:.2e}, {e.kind})"
        for e in bad[:5]
    ]
    others = [f"{p} -> {r.path}" for p, r in d.reports[1:] if r.status == d.status][:6]
    if others:
        lines.append("also " + d.status + ": " + "; ".join(others))
    if d.status == "failed":
        e = bad[0]
        message = f"{what} along {along} disagrees with finite differences at {rep.path}[{','.join(map(str, e.index))}]: {fmt(e.analytic)} vs {fmt(e.numeric)}"
        return CheckReport(
            name=name,
            status="failed",
            message=message,
            argument=argument_of(along),
            path=along,
            index=None,
            details=tuple(lines) + settings,
        )
    return CheckReport(
        name=name,
        status="skipped",
        inconclusive=True,
        message=f"inconclusive: {d.reason}",
        argument=argument_of(along),
        path=along,
        details=tuple(lines) + settings,
    )


def jacobian_backend(name: str) -> Callable | None:
    """`jaxcheck.check_vjp` / `check_jvp` when this version of jaxcheck has them, else None."""
    try:
        from . import _jacobian
    except ImportError:
        return None
    return getattr(_jacobian, name, None)


def jacobian_report(res: Any, what: str, rule: str, extra: Sequence[str] = ()) -> CheckReport:
    """The fd `CheckReport` of a `JacobianCheckResult` (every Jacobian entry, or probes per block)."""
    lines = tuple(extra) + ("", *str(res).splitlines())
    if res.status == "failed":
        b = res.failed_blocks[0]
        w = b.worst
        where_in = b.input_path + (_idx(w.input_index) if w is not None else "")
        where_out = b.output_path + (_idx(w.output_index) if w is not None else "")
        values = (
            f": {rule} gives {fmt(w.analytic)}, finite differences {fmt(w.numeric)}"
            if w is not None
            else f" ({b.reason})"
        )
        return CheckReport(
            name="fd",
            status="failed",
            message=f"{what} disagrees with finite differences at {where_in} -> {where_out}{values}",
            argument=argument_of(b.input_path),
            path=b.input_path,
            index=None if w is None else tuple(w.input_index),
            details=lines,
            results=(res,),
        )
    if res.status == "inconclusive":
        return CheckReport(
            name="fd",
            status="skipped",
            inconclusive=True,
            message=f"inconclusive: {res.reason}",
            details=lines,
            results=(res,),
        )
    scope = "every Jacobian entry" if res.mode == "full" else "random projections of every block"
    return CheckReport(
        name="fd",
        status="passed",
        results=(res,),
        message=f"{what} matches finite differences over {scope} ({res.n_inputs} x {res.n_outputs}; relative error {res.relative_error:.1e}; {res.reference.split(';')[0]})",
    )


def _idx(index: Sequence[int]) -> str:
    return "[" + ",".join(str(i) for i in index) + "]"
