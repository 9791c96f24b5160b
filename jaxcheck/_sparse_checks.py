"""Host-side: why the sparse plan's findings cannot be trusted (then the dense check runs).

A wrong sparsity pattern must not hide a bug, and a transposed VJP must be the VJP:

  `vjp_problem`: the transposed-VJP columns times a random cotangent u must equal the VJP
    at u, colour by colour, and the VJP at a zero cotangent must be zero (as the dense
    path's `_jacobian_full` checks before it trusts transposed columns).
  `empty_slot_problem`: a (colour, output) slot without a pattern entry must see no
    change in f (else the pattern is too sparse) and no analytic value (else the rule has
    entries outside f's structure: the dense check names them).
  `validation_problem`: a few random columns re-run densely (4 evaluations each) must be
    zero outside the pattern and equal the grouped recovery inside it, and the
    directional derivative of f along one random direction must equal the pattern's
    entries times that direction.

Each returns None, or one sentence saying what was seen and that the dense check runs.
"""

from typing import Any

import numpy as np

from . import _stencil as st
from ._finite_diff import STENCIL
from ._pattern import Pattern
from ._problem import Problem
from ._tolerance import stencil_points


def in_str(p: Problem, j: int) -> str:
    leaf, index, part = p.layout.locate(int(j))
    return f"{leaf.path}{list(index)}{f' ({part})' if part else ''}"


def out_str(p: Problem, r: int) -> str:
    out, index, part = p.out_leaf(int(r))
    return f"{out.path}{list(index)}{f' ({part})' if part else ''}"


def vjp_problem(p: Problem, plan: Any, u: np.ndarray, analytic: dict) -> str | None:
    """Why the transposed-VJP columns cannot be trusted (as `_jacobian_full` decides)."""
    w = analytic["vjp_u0"]
    if not np.all(w[1] == 0):
        return (
            "the VJP at a zero cotangent is not zero (the bwd rule has a term that does not "
            "scale with the cotangent)"
        )
    finite = np.where(np.isfinite(w[0]), w[0], 0)
    rhs = np.bincount(plan.colors, weights=finite, minlength=plan.n_colors)
    eps = float(np.finfo(p.tol_dtype).eps)
    acu = analytic["acu"]
    scale = acu + np.sqrt(np.mean(np.square(acu)))
    if not np.all(np.abs(analytic["cu"] - rhs) <= np.sqrt(eps) * scale):
        return (
            "the VJP and its transpose disagree on a random cotangent (the VJP is not linear "
            "in its cotangent)"
        )
    return None


def empty_slot_problem(p: Problem, plan: Any, zero: dict) -> str | None:
    """Why slots without an entry disqualify the pattern (f moved) or the plan (the rule did)."""
    violated, outside = zero["violated"], zero["outside"]
    if violated["count"] > 0:
        color, r = violated["color"], violated["row"]
        return (
            f"the sparsity pattern is too sparse: output {out_str(p, r)} changes with the "
            f"inputs of colour group {color} ({plan.members(color).size} inputs) although the "
            f"pattern has no entry there ({violated['count']} such slots); dense check instead"
        )
    if outside["count"] > 0:
        return (
            "the analytic derivative has entries outside f's structural pattern (output "
            f"{out_str(p, outside['row'])}, colour group {outside['color']}); "
            "dense check instead, to name them"
        )
    return None


def _atol_rows(p: Problem, leaf_max: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Per-entry absolute tolerance of columns j (k,) over all outputs: (k, m)."""
    if p.user_atol >= 0:
        return np.full((j.size, p.m), p.user_atol)
    return p.floor_in[j][:, None] * p.out_scale[None, :] + p.tol.rtol * leaf_max[p.in_ids[j]]


def validation_problem(
    p: Problem,
    pattern: Pattern,
    leaf_max: np.ndarray,
    val_cols: np.ndarray,
    direction: np.ndarray,
    found: dict,
    values: np.ndarray,
) -> str | None:
    """Random dense columns and one random direction against the grouped recovery.

    Args:
      p: The problem; pattern: the pattern the plan used; leaf_max: (L_in, m) tolerances' scale.
      val_cols: (q,) the columns to re-run densely; direction: (n,) the random direction
        (already scaled by the steps).
      found: The compare pass's merged results: `val_num`/`val_err` (q, m) grouped recovery
        of the validation columns, `dir_num`/`dir_err` (m,) the pattern's entries times the
        direction.
      values: (q + 1, 4, m) f at the validation columns' own stencils, then at theta + t v
        for the direction v (`_sparse._Run.validation_values`).
    """
    ev, safety, rtol = p.ev, p.tol.safety, p.tol.rtol
    ts = np.asarray(STENCIL, np.float64)
    points = stencil_points(
        ev.theta[val_cols], p.h[val_cols], ev.coord_dtype_codes[val_cols], ev.real_dtypes
    )
    with np.errstate(all="ignore"):
        dense = st.combine_host(values[:-1], ev.f0, points, ev.theta[val_cols])
        atol = _atol_rows(p, leaf_max, val_cols)
        for i, j in enumerate(val_cols):
            d, err = dense.numeric[i], dense.fd_error[i]
            inside = pattern.column_rows(int(j))
            g, gerr = found["val_num"][i], found["val_err"][i]
            out_bad = ~inside & ~(np.abs(d) <= safety * err + atol[i])
            in_bad = inside & ~(np.abs(g - d) <= safety * (err + gerr) + rtol * np.abs(d) + atol[i])
            if np.any(out_bad):
                r = int(np.argmax(out_bad))
                return (
                    "the sparsity pattern is too sparse: the dense finite-difference column of "
                    f"{in_str(p, j)} is nonzero at {out_str(p, r)} ({d[r]:.4g}), outside the "
                    "pattern; dense check instead"
                )
            if np.any(in_bad):
                r = int(np.argmax(in_bad))
                return (
                    f"the grouped recovery of d {out_str(p, r)} / d {in_str(p, j)} ({g[r]:.4g}) "
                    f"disagrees with its dense finite difference ({d[r]:.4g}): the pattern "
                    "misses entries; dense check instead"
                )
        est = st.combine_host(values[-1:], ev.f0, ts[None, :], np.zeros(1))
        dn, derr = est.numeric[0], est.fd_error[0]
        pn, perr = found["dir_num"], found["dir_err"]
        if p.user_atol >= 0:
            atol_dir = p.user_atol * np.abs(direction).sum()
        else:
            weight = np.bincount(p.in_ids, weights=np.abs(direction), minlength=p.n_in)
            atol_dir = p.out_scale * float(np.sum(p.floor_in * np.abs(direction)))
            atol_dir = atol_dir + rtol * (weight @ leaf_max)
        bad = ~(np.abs(dn - pn) <= safety * (derr + perr) + rtol * np.abs(dn) + atol_dir)
    if np.any(bad):
        r = int(np.argmax(bad))
        return (
            "the sparsity pattern misses entries: along a random direction, the finite "
            f"difference of {out_str(p, r)} ({dn[r]:.4g}) differs from the pattern's entries "
            f"times the direction ({pn[r]:.4g}); dense check instead"
        )
    return None
