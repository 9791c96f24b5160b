"""Host-side: runs after device_get; never traced.

Aggregates per-element verdicts (codes from `_stencil.assess`) into leaf reports,
an overall status, and hints on what to try next.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from . import _stencil as st
from ._result import ElementReport, LeafReport

# A leaf is inconclusive when more than this share of its gradient mass sits in
# elements the finite-difference reference cannot resolve.
UNRESOLVED_SHARE = 0.5
MAX_ELEMENTS = 5

_KIND = {
    st.FAIL: "mismatch",
    st.FAIL_NONSMOOTH: "nonsmooth-outside-slopes",
    st.ANALYTIC_NONFINITE: "analytic-nonfinite",
    st.REF_NONFINITE: "numeric-nonfinite",
    st.NONSMOOTH: "nonsmooth",
}
FAILING = (st.FAIL, st.ANALYTIC_NONFINITE)


@dataclasses.dataclass(frozen=True)
class GradFindings:
    """What a gradient strategy (full or probe) found, before the report is assembled.

    Attributes:
      leaves: One `LeafReport` per differentiated leaf, worst first.
      relative_error: The normalised distance over what was compared.
      worst: Theta coordinate of the worst element (for the step sweep).
      worst_numeric: Its finite-difference value.
      numeric: The full finite-difference gradient (n,), or None (probe mode).
      reference: How the reference was computed, beyond its precision.
    """

    leaves: tuple[LeafReport, ...]
    relative_error: float
    worst: int
    worst_numeric: float
    numeric: np.ndarray | None
    reference: str


def normalized_distance(a: np.ndarray, n: np.ndarray) -> float:
    """||a - n|| / (||a|| + ||n||) over finite entries; 0 when both are zero."""
    ok = np.isfinite(a) & np.isfinite(n)
    a, n = a[ok], n[ok]
    denom = float(np.linalg.norm(a) + np.linalg.norm(n))
    return float(np.linalg.norm(a - n)) / denom if denom > 0 else 0.0


def status_from_counts(
    *,
    n: int,
    n_failed: int,
    n_analytic_nonfinite: int,
    n_nonfinite: int,
    n_kink_outside: int,
    n_nonsmooth: int,
    n_unresolved: int,
    unresolved_share: float,
    what: str = "elements",
) -> tuple[str, str]:
    """(status, reason) of one leaf (or Jacobian block) from its element counts.

    Shared by `summarize_leaf` and the streaming Jacobian/probe checks, which never hold
    all elements at once. `what` names the compared items ("elements", "probes").
    """
    if n_failed:
        reason = f"{n_failed} of {n} {what} out of tolerance"
        if n_analytic_nonfinite:
            reason += f" ({n_analytic_nonfinite} analytic NaN/Inf)"
        return "failed", reason
    if n_nonfinite:
        return (
            "inconclusive",
            f"finite differences are NaN/Inf at {n_nonfinite} of {n} {what} (f is not finite within a step)",
        )
    if n_kink_outside:
        return "inconclusive", (
            f"{n_kink_outside} of {n} {what} sit at a kink where the analytic value lies outside "
            "the one-sided slopes; check at a point away from the kink"
        )
    if unresolved_share > UNRESOLVED_SHARE:
        return "inconclusive", (
            f"the finite-difference reference cannot resolve {n_unresolved} of {n} {what} "
            "(rounding noise, non-smoothness or the rounding allowance exceeds the derivative)"
        )
    reason = f"all {what} within tolerance"
    if n_nonsmooth:
        reason += f"; {n_nonsmooth} at a kink, accepted between the one-sided slopes"
    return "passed", reason


def summarize_leaf(
    *,
    path: str,
    shape: tuple[int, ...],
    dtype: str,
    analytic: np.ndarray,
    numeric: np.ndarray,
    tolerance: np.ndarray,
    code: np.ndarray,
    resolved: np.ndarray,
    index_of: "callable",
) -> LeafReport:
    """Builds a `LeafReport` from flat per-element arrays of one leaf.

    Args:
      path: The leaf's path.
      shape, dtype: The leaf's shape and dtype name.
      analytic, numeric, tolerance, code, resolved: Flat (k,) arrays for its elements.
      index_of: Maps a flat position (0..k-1) to (multi-index, part).

    Returns:
      The leaf's report, with the worst few elements attached.
    """
    diff = np.abs(analytic - numeric)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(tolerance > 0, diff / tolerance, np.where(diff > 0, np.inf, 0.0))
    failing = np.isin(code, FAILING)
    nonfinite_ref = code == st.REF_NONFINITE
    kink_outside = code == st.FAIL_NONSMOOTH
    # Worst element: failing ones first, then by error relative to tolerance.
    rank = np.where(failing, 2.0, np.where(nonfinite_ref | kink_outside, 1.0, 0.0))
    order_key = np.where(np.isnan(ratio), np.inf, ratio)
    order = np.lexsort((-order_key, -rank))
    n_failed = int(failing.sum())
    n_nonsmooth = int(np.sum((code == st.NONSMOOTH) | (code == st.FAIL_NONSMOOTH)))
    n_nonfinite = int(nonfinite_ref.sum())
    mass = np.abs(np.where(np.isfinite(numeric), numeric, 0.0))
    unresolved = ~resolved & ~failing
    n_unresolved = int(unresolved.sum())
    total = float(mass.sum())
    share = (
        float(mass[unresolved].sum()) / total if total > 0 else (n_unresolved / max(1, code.size))
    )
    status, reason = status_from_counts(
        n=int(code.size),
        n_failed=n_failed,
        n_analytic_nonfinite=int(np.sum(code == st.ANALYTIC_NONFINITE)),
        n_nonfinite=n_nonfinite,
        n_kink_outside=int(kink_outside.sum()),
        n_nonsmooth=n_nonsmooth,
        n_unresolved=n_unresolved,
        unresolved_share=share,
    )
    elements = []
    for k in order[:MAX_ELEMENTS]:
        c = int(code[k])
        if c == st.PASS and status == "passed":
            break
        index, part = index_of(int(k))
        elements.append(
            ElementReport(
                index=index,
                part=part,
                analytic=float(analytic[k]),
                numeric=float(numeric[k]),
                tolerance=float(tolerance[k]),
                kind=_KIND.get(c, "within-tolerance"),
            )
        )
    worst = int(order[0]) if order.size else 0
    worst_index, _ = index_of(worst) if order.size else ((), "")
    finite = np.isfinite(diff)
    return LeafReport(
        path=path,
        status=status,
        shape=tuple(shape),
        dtype=dtype,
        relative_error=normalized_distance(analytic, numeric),
        max_abs_error=float(np.max(diff[finite])) if np.any(finite) else float("nan"),
        worst_index=worst_index,
        worst_analytic=float(analytic[worst]) if order.size else 0.0,
        worst_numeric=float(numeric[worst]) if order.size else 0.0,
        worst_tolerance=float(tolerance[worst]) if order.size else 0.0,
        n_elements=int(code.size),
        n_failed=n_failed,
        n_nonsmooth=n_nonsmooth,
        n_nonfinite=n_nonfinite,
        n_unresolved=n_unresolved,
        reason=reason,
        elements=tuple(elements),
    )


def _severity(item) -> float:
    if item.status == "passed":
        return 0.0
    return -float(np.nan_to_num(item.relative_error, nan=np.inf))


def ratio_pattern(bad: Sequence, imaginary: str = "") -> str:
    """The pattern of the failing elements' analytic / numeric ratios, in words (" (...)"), or "".

    The same ratio (within 1%) across the failing elements names a sign error, a zero (a
    dropped term) or a constant factor; a constant factor is named only for two or more
    elements and a ratio at least 5% from 1 (a near miss of a few entries is not a pattern).
    `imaginary` is added to a sign error's words (the conjugation hint of complex blocks).
    """
    ratios = [e.analytic / e.numeric for e in bad if e.numeric != 0 and np.isfinite(e.numeric)]
    if not ratios or not np.allclose(ratios, ratios[0], rtol=1e-2):
        return ""
    q = ratios[0]
    if abs(q + 1) < 1e-2:
        return f" (analytic = -numeric: a sign error{imaginary})"
    if abs(q) < 1e-6:
        return " (analytic is zero: a dropped term or a stop_gradient?)"
    if len(ratios) >= 2 and abs(q - 1) >= 0.05:
        return f" (analytic / numeric = {q:.4g} everywhere: a constant factor?)"
    return ""


def sort_worst_first(leaves: list[LeafReport]) -> tuple[LeafReport, ...]:
    """Failed leaves first, then inconclusive, then passed; failed and
    inconclusive ones by relative error, passed ones in argument order (their relative errors
    are rounding, which would reorder them from one machine to the next)."""
    rank = {"failed": 0, "inconclusive": 1, "passed": 2}
    return tuple(sorted(leaves, key=lambda l: (rank[l.status], _severity(l))))


def overall(leaves: tuple[LeafReport, ...], noun: str = "leaves") -> tuple[str, str]:
    """(status, reason) for a set of leaf reports (`noun`: "leaves", or "blocks" for Jacobian blocks)."""
    failed = [l for l in leaves if l.status == "failed"]
    inconclusive = [l for l in leaves if l.status == "inconclusive"]
    if failed:
        names = ", ".join(l.path for l in failed[:3]) + (" ..." if len(failed) > 3 else "")
        return (
            "failed",
            f"{len(failed)} of {len(leaves)} {noun} wrong: {names} ({failed[0].reason})",
        )
    if inconclusive:
        names = ", ".join(l.path for l in inconclusive[:3])
        return (
            "inconclusive",
            f"{len(inconclusive)} of {len(leaves)} {noun} inconclusive: {names} ({inconclusive[0].reason})",
        )
    kinks = sum(l.n_nonsmooth for l in leaves)
    extra = f"; {kinks} element(s) at a kink accepted" if kinks else ""
    return "passed", f"all {len(leaves)} {noun} match finite differences{extra}"


def hints(leaves: tuple[LeafReport, ...], reference_is_float64: bool) -> tuple[str, ...]:
    """What to try next, from the pattern of the failures."""
    out = []
    for leaf in leaves:
        bad = [e for e in leaf.elements if e.kind == "mismatch"]
        if leaf.status == "failed" and bad:
            pattern = ratio_pattern(bad)
            out.append(
                f"check the derivative for {leaf.path} at element {list(bad[0].index)}{pattern}."
            )
        elif leaf.status == "failed":
            out.append(
                f"{leaf.path} has NaN/Inf in its analytic derivative: check divisions and sqrt/log at the boundary."
            )
    if any(l.status == "inconclusive" for l in leaves):
        if not reference_is_float64:
            out.append(
                "enable float64 evaluation (`reference='float64'`, or run with jax_enable_x64) so finite differences resolve smaller derivatives."
            )
        if any(l.status == "inconclusive" and l.n_nonfinite for l in leaves):
            out.append(
                "f is NaN/Inf within a step of the point: move away from the domain boundary, or pass a smaller absolute `eps`."
            )
        else:
            out.append(
                "check at a point away from kinks/discontinuities, or pass a larger `eps` if f is noisy."
            )
    return tuple(out)
