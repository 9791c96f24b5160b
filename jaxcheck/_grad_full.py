"""Host-side orchestration of the full gradient strategy: every coordinate, element by element.

Evaluates f around every coordinate of a kind-"grad" `Problem`, turns the values into
estimates with an error estimate (`_stencil`), classifies each analytic element against
them and summarises the leaves. Takes a problem, returns `GradFindings`; imports no entry
point.

Two points decide most coordinates. Above TWO_POINT_MIN coordinates the check runs in
passes, so that a correct gradient costs about 2n evaluations, not 4n:

  1. The 4-point stencil (+-h, +-2h) at a calibration sample (`calibration_sample`:
     CALIBRATION coordinates evenly spaced, and the first of every leaf) measures f's
     rounding noise (fourth differences), and the sample searches the ladder of steps
     (`_steps.calibrate`). Each leaf's other coordinates start on the rung that at least half
     of its sample kept (`_steps.calibrated_rungs`): h where f's rounding permits, 16 h or
     256 h where it bounds the estimate at h (a sum of many terms).
  2. f(x +- h e_i) for every other coordinate, at that step: the central difference D1_i.
  3. A coordinate is decided by D1 alone when |a_i - D1_i| <= safety * noise_i +
     rtol |D1_i| + atol_i: that is the 4-point tolerance without its truncation term,
     so it is tighter than the 4-point check, and an analytic value wrong by just the
     truncation error of D1 would be a coincidence. Every other coordinate (a mismatch,
     near the tolerance, NaN, a kink) gets +-2h as well and the full 4-point verdict:
     Richardson extrapolation, truncation estimate, kink test, and the search along its
     ladder, exactly as below the threshold, where every coordinate gets all four points.
"""

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _precision, _steps, _summary, _tolerance
from . import _stencil as st
from ._finite_diff import STENCIL
from ._problem import Problem
from ._summary import GradFindings

REFERENCE = "4-point central differences (+-h, +-2h) with Richardson extrapolation"
TWO_POINT_REFERENCE = (
    "central differences at +-h for every coordinate; +-2h and Richardson extrapolation "
    "for {extended} coordinates (a calibration sample and every one +-h did not decide)"
)
ZERO_FRACTION = 1e-3  # see zero_is_resolved
TWO_POINT_MIN = 512  # below this many coordinates every coordinate gets all four points
CALIBRATION = 64  # coordinates of the 4-point calibration sample
MEASURED_ULPS = 4.0  # least rounding allowed an analytic element, when measured (see above)
# Multiplier on the measured rounding: probes sum it over many elements in quadrature, and
# the sum of the actual errors may sit several of those standard deviations out.
MEASURED_SAFETY = 8.0


def _values(p: Problem, coords: np.ndarray, offsets: tuple[int, ...], progress=None) -> tuple:
    values, points = p.ev.stencil(coords, p.h[coords], p.batch_size, progress, offsets)
    return np.asarray(jax.device_get(values), np.float64), points


def estimates(
    p: Problem, coords: np.ndarray | None = None, measure_noise: bool = True
) -> st.Estimates:
    """The 4-point stencil over `coords` (default: every coordinate), as host `Estimates`
    (k, 1).

    `measure_noise` adds the rounding noise measured across the coordinates to the error
    estimate (meaningful over many coordinates, not over a narrowed handful).
    """
    return _estimates_and_noise(p, coords, measure_noise)[0]


def _estimates_and_noise(
    p: Problem, coords: np.ndarray | None = None, measure_noise: bool = True
) -> tuple[st.Estimates, np.ndarray]:
    """`estimates`, and the noise floor (m,) it combined the values with."""
    ev = p.ev
    coords = np.arange(ev.n) if coords is None else np.asarray(coords)
    values, points = _values(p, coords, STENCIL, p.progress)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        noise = p.noise_floor
        if measure_noise:
            noise = np.maximum(st.measured_noise_host(values, ev.f0), noise)
        est = st.combine_host(
            values, ev.f0, points, ev.theta[coords], _steps.coordinate_eps(p, coords), noise
        )
    return est, noise


def _two_point(
    p: Problem, values: np.ndarray, points: np.ndarray, coords: np.ndarray, noise_floor: Any
) -> st.Estimates:
    """Estimates from f(x +- h) alone: D1, with the rounding noise as its whole error
    estimate and no kink evidence (one-sided slopes all equal to D1)."""
    fm, fp = values[:, 0, :], values[:, 1, :]
    xm, xp = points[:, 0, None], points[:, 1, None]
    d1 = xp - xm
    numeric = (fp - fm) / d1
    fscale = np.maximum(np.maximum(np.abs(fm), np.abs(fp)), np.abs(p.ev.f0)[None, :])
    noise = np.maximum(st.NOISE_ULPS * _steps.coordinate_eps(p, coords) * fscale, noise_floor) / d1
    return st.Estimates(numeric, noise, noise, np.broadcast_to(numeric, (4,) + numeric.shape))


def _assemble(n: int, parts: list[tuple[np.ndarray, st.Estimates]]) -> st.Estimates:
    """Estimates (n, 1) from disjoint (rows, estimates) parts, later parts overwriting."""
    out = st.Estimates(np.zeros((n, 1)), np.zeros((n, 1)), np.zeros((n, 1)), np.zeros((4, n, 1)))
    for rows, est in parts:
        _steps.put_rows(out, rows, est)
    return out


def two_point_estimates(p: Problem) -> tuple[st.Estimates, np.ndarray, int]:
    """Estimates for every coordinate, spending about 2n evaluations (module docstring).

    Returns:
      (estimates (n, 1), atol (n,) per element, how many coordinates got four points).
    """
    ev, tol = p.ev, p.tol
    sample = calibration_sample(p)
    values, points = ev.stencil_subset(sample, p.h[sample], p.batch_size)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        noise = np.maximum(st.measured_noise_host(values, ev.f0), p.noise_floor)
        eps = _steps.coordinate_eps(p, sample)
        sampled = st.combine_host(values, ev.f0, points, ev.theta[sample], eps, noise)
    partial = np.full(p.n, np.nan)
    partial[sample] = sampled.numeric[:, 0]
    atol = element_atol(p, partial, p.tol_dtype)
    # Every other coordinate starts on the rung its leaf's sample chose.
    sampled, start = _steps.calibrate(p, sample, sampled, atol[sample], noise)
    rest = np.setdiff1d(np.arange(p.n), sample)
    rungs, _ = _steps.ladder(p, rest)
    start_rest = start[rest]
    p.h[rest] = np.choose(start_rest, rungs)
    _note_calibration(p, start)
    inner, inner_points = _values(p, rest, (-1, 1), p.progress)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        est = _two_point(p, inner, inner_points, rest, noise)
        numeric = partial.copy()
        numeric[rest] = est.numeric[:, 0]
        atol = element_atol(p, numeric, p.tol_dtype)
        mine = atol[rest]
        tolerance = tol.safety * est.fd_error[:, 0] + tol.rtol * np.abs(numeric[rest]) + mine
        undecided = ~(np.abs(p.analytic[rest] - numeric[rest]) <= tolerance)  # True for NaN/Inf
        eps = _steps.coordinate_eps(p, rest)
    rows = np.flatnonzero(undecided)
    four = rest[rows]
    more, more_points = ev.stencil_subset(four, p.h[four], p.batch_size, (-2, 2))
    values = np.stack([more[:, 0], inner[rows, 0], inner[rows, 1], more[:, 1]], axis=1)
    points = np.stack(
        [more_points[:, 0], inner_points[rows, 0], inner_points[rows, 1], more_points[:, 1]],
        axis=1,
    )
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        est4 = st.combine_host(values, ev.f0, points, ev.theta[four], eps[rows], noise)
    est4 = _steps.search(p, four, est4, atol[four], noise, start_rest[rows])
    merged = _assemble(p.n, [(rest, est), (four, est4), (sample, sampled)])
    return merged, atol, int(sample.size + four.size)


def calibration_sample(p: Problem) -> np.ndarray:
    """CALIBRATION coordinates evenly spaced over theta, and the first of every leaf (each
    leaf's steps are calibrated on its own sample, `_steps.calibrated_rungs`)."""
    spread = np.linspace(0, p.n - 1, CALIBRATION).round().astype(np.int64)
    firsts = [leaf.offset for leaf in p.layout.diff if leaf.size]
    return np.unique(np.concatenate([spread, np.asarray(firsts, np.int64)]))


def _note_calibration(p: Problem, start: np.ndarray) -> None:
    """Records the leaves whose steps start above h (`Problem.calibrated_growth`)."""
    for leaf in p.layout.diff:
        sl = slice(leaf.offset, leaf.offset + leaf.size)
        if leaf.size and np.any(start[sl] > 0):
            growth = float(np.median(p.h[sl] / p.h_default[sl]))
            p.calibrated_growth.append((leaf.path, growth))


def element_atol(
    p: Problem,
    gradient: np.ndarray,
    floor_dtype: np.dtype,
    measured: np.ndarray | None = None,
) -> np.ndarray:
    """Absolute tolerance per coordinate: the user's atol, or rtol * leaf max + rounding floor.

    Args:
      p: The problem.
      gradient: (n,) the gradient whose magnitudes set the allowances (numeric in full mode).
      floor_dtype: The dtype whose rounding sets the floor.
      measured: (n,) the analytic side's measured rounding, or None. Where given, it
        replaces rtol * leaf max when smaller (never loosens the allowance).
    """
    tol = p.tol
    if tol.atol is not None:
        return np.full(gradient.shape, tol.atol)
    effect = np.abs(gradient) * p.scales
    out = np.zeros(gradient.shape, np.float64)
    for leaf in p.layout.diff:
        sl = slice(leaf.offset, leaf.offset + leaf.size)
        block = gradient[sl]
        # The floor of a leaf comes from its own sensitivity, never from another leaf's: a
        # leaf of 1e-4 beside one of 1e3 keeps a floor of its own size (issue 10 item 7).
        mine = effect[sl]
        sensitivity = float(np.max(mine[np.isfinite(mine)], initial=0.0))
        out[sl] = _tolerance.floor_atol(floor_dtype, sensitivity, p.scales[sl])
        rounding = tol.rtol * float(np.max(np.abs(block[np.isfinite(block)]), initial=0.0))
        out[sl] += rounding if measured is None else np.minimum(rounding, measured[sl])
    # No allowance below the smallest normal number of the analytic side's dtype: values
    # beneath it are subnormal or flushed to zero (issue 10 item 6).
    return np.maximum(out, float(jnp.finfo(p.tol_dtype).tiny))


def measured_rounding(p: Problem) -> np.ndarray | None:
    """(n,) the analytic gradient's own rounding, measured against the same gradient computed
    in float64 (`Problem.analytic_float64`): MEASURED_SAFETY * |a - a64|, at least MEASURED_ULPS ulps
    of |a| in the analytic dtype; None when no float64 gradient is available."""
    a64 = p.analytic_float64
    if a64 is None:
        return None
    eps = float(np.finfo(p.tol_dtype).eps)
    with np.errstate(invalid="ignore"):
        gap = np.abs(p.analytic - a64)
        out = np.maximum(MEASURED_SAFETY * gap, MEASURED_ULPS * eps * np.abs(p.analytic))
    return np.where(np.isfinite(out), out, np.inf)


def zero_is_resolved(
    analytic: np.ndarray,
    numeric: np.ndarray,
    tolerance: np.ndarray,
    resolved: np.ndarray,
    own_scale: np.ndarray | float = 0.0,
    swamped: np.ndarray | bool = False,
    tiny: float = 0.0,
) -> np.ndarray:
    """Marks numerically-zero elements as resolved when a spurious gradient would show.

    An element whose analytic and numeric values are both within tolerance of zero is
    decided (not inconclusive) when its tolerance is below 0.1% of the largest gradient or
    of f's own derivative scale (`own_scale`: |f| or f's secant scale (`_noise.measure`),
    over the coordinate's scale: sin at pi/2, det of a rank-1 matrix), or when every
    gradient is exactly zero: a wrong nonzero value would have failed. An element whose
    nonzero reference is swamped by its tolerance (`_stencil.swamped`) is never rescued:
    its reference is not zero. Analytic and reference both below `tiny` (the dtype's
    smallest normal number) is an underflow, decided.
    """
    finite = np.isfinite(numeric)
    scale = float(np.max(np.abs(numeric[finite]), initial=0.0))
    near_zero = (np.abs(analytic) <= tolerance) & (np.abs(numeric) <= tolerance) & ~swamped
    # f's own scale is the yardstick only when no element stands out of its tolerance: a
    # large leaf's |f| must not make a small leaf's unresolved reference look decided.
    yardstick = np.maximum(scale, own_scale) if np.all(near_zero | ~finite) else scale
    visible = tolerance <= ZERO_FRACTION * yardstick
    if scale == 0:
        visible = visible | (analytic == 0)
    # Below the smallest normal number of the analytic side's dtype a derivative underflows:
    # an analytic zero (flushed) beside a subnormal-sized reference is the right value.
    underflow = (np.abs(numeric) < tiny) & (np.abs(analytic) < tiny)
    return resolved | (near_zero & visible) | underflow


def precision_loss(
    p: Problem,
    coords: np.ndarray,
    analytic: np.ndarray,
    est: st.Estimates,
    code: np.ndarray,
    tolerance: np.ndarray,
) -> np.ndarray:
    """Tells rounding of a right formula from a wrong formula (`_precision`, issue 10 item 5).

    Returns:
      The codes, with rescued elements PASS under `precision="note"`; the note goes to
      `p.precision_notes`.
    """
    if not np.any(code == st.FAIL) or p.analytic_float64 is None:
        return code
    wide = np.asarray(p.analytic_float64, np.float64)[coords]
    numeric = np.asarray(est.numeric, np.float64)[:, 0]
    leaf_max = np.zeros(coords.shape)
    for leaf in p.layout.diff:
        mine = (coords >= leaf.offset) & (coords < leaf.offset + leaf.size)
        block = np.abs(numeric[mine])
        leaf_max[mine] = float(np.max(block[np.isfinite(block)], initial=0.0))
    allowance = _precision.allowance(wide, p.native_noise[0], p.scales[coords])
    flat = st.Estimates(*(np.asarray(x, np.float64)[..., 0] for x in est))
    rtol64 = _tolerance.default_tolerance(np.dtype(np.float64)).rtol
    with np.errstate(invalid="ignore", over="ignore"):
        rescued = st.precision_rescue_host(
            flat, code, analytic, wide, allowance, tolerance, rtol64, leaf_max, p.tol.safety
        )
    if not np.any(rescued):
        return code
    eps = float(jnp.finfo(p.tol_dtype).eps)
    digits = _precision.digits_lost(analytic[rescued], wide[rescued], eps)
    k = int(np.argmax(digits))
    where = p.locate(int(coords[rescued][k]))
    index = f"[{','.join(str(i) for i in where[1])}]" if where[1] else ""
    p.precision_notes.append(
        f"precision: {int(rescued.sum())} element(s) lose up to {float(digits[k]):.1f} digits "
        f"to {p.tol_dtype} rounding of a right formula, worst {where[0].path}{index}: analytic "
        f"{float(analytic[rescued][k]):.6g} in {p.tol_dtype}, {float(wide[rescued][k]):.6g} in "
        f"float64, reference {float(numeric[rescued][k]):.6g}; "
        f"{_precision.verdict_words(p.precision)}"
    )
    if p.precision == "note":
        code = np.where(rescued, st.PASS, code).astype(code.dtype)
    return code


def summarize(
    p: Problem,
    coords: np.ndarray,
    analytic: np.ndarray,
    est: st.Estimates,
    atol: np.ndarray,
) -> tuple[list, np.ndarray, np.ndarray]:
    """Classifies `coords` against their estimates and summarises them per leaf.

    Returns:
      (leaf reports of the leaves `coords` touch, numeric (k,), tolerance (k,)).
    """
    tol = p.tol
    numeric = np.asarray(est.numeric, np.float64)[:, 0]
    with np.errstate(invalid="ignore", over="ignore"):
        assessment = st.assess_host(est, analytic[:, None], tol.rtol, atol[:, None], tol.safety)
    code, tolerance, resolved = (np.asarray(x)[:, 0] for x in assessment)
    tolerance = np.asarray(tolerance, np.float64)
    code = precision_loss(p, coords, analytic, est, code, tolerance)
    fscale = float(np.max(np.abs(p.ev.f0), initial=0.0))
    fscale = max(fscale if np.isfinite(fscale) else 0.0, float(p.ev.measured.secant[0]))
    own_scale = fscale / p.scales[coords]
    swamped = st.swamped_host(est, tolerance, tol.safety)[:, 0]
    tiny = float(jnp.finfo(p.tol_dtype).tiny)
    resolved = zero_is_resolved(analytic, numeric, tolerance, resolved, own_scale, swamped, tiny)
    leaves = []
    for leaf in p.layout.diff:
        mine = (coords >= leaf.offset) & (coords < leaf.offset + leaf.size)
        if not np.any(mine):
            continue
        local = coords[mine]
        leaves.append(
            _summary.summarize_leaf(
                path=leaf.path,
                shape=leaf.shape,
                dtype=str(leaf.dtype),
                analytic=analytic[mine],
                numeric=numeric[mine],
                tolerance=tolerance[mine],
                code=code[mine],
                resolved=resolved[mine],
                index_of=lambda k, local=local: p.locate(int(local[k]))[1:],
            )
        )
    return leaves, numeric, tolerance


def worst_of(analytic: np.ndarray, numeric: np.ndarray, tolerance: np.ndarray) -> int:
    """Index of the element furthest outside (or least inside) its tolerance."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.nan_to_num(np.abs(analytic - numeric) / tolerance, nan=np.inf)
    return int(np.argmax(ratio))


def estimated_seconds(p: Problem) -> float:
    """How long the full strategy's main pass would take, extrapolated from one chunk.

    Runs one chunk of the +-h pass twice (the first compiles) and scales the second's
    time to every coordinate; the evaluations are counted like any others.
    """
    ev = p.ev
    batch = p.batch_size or ev.auto_batch_size(2)
    coords = np.arange(min(p.n, batch))
    offsets = (-1, 1) if p.n >= TWO_POINT_MIN else STENCIL
    jax.block_until_ready(ev.stencil(coords, p.h[coords], coords.size, None, offsets)[0])
    start = time.perf_counter()
    jax.block_until_ready(ev.stencil(coords, p.h[coords], coords.size, None, offsets)[0])
    return (time.perf_counter() - start) * p.n / coords.size


def run(p: Problem) -> GradFindings:
    """The full strategy: every coordinate of a kind-"grad" problem."""
    coords = np.arange(p.n)
    if p.n < TWO_POINT_MIN:
        est, noise = _estimates_and_noise(p, coords)
        atol = element_atol(p, np.asarray(est.numeric, np.float64)[:, 0], p.tol_dtype)
        est = _steps.search(p, coords, est, atol, noise)
        reference = REFERENCE
    else:
        est, atol, extended = two_point_estimates(p)
        reference = TWO_POINT_REFERENCE.format(extended=extended)
    leaves, numeric, tolerance = summarize(p, coords, p.analytic, est, atol)
    worst = worst_of(p.analytic, numeric, tolerance)
    return GradFindings(
        leaves=_summary.sort_worst_first(leaves),
        relative_error=_summary.normalized_distance(p.analytic, numeric),
        worst=worst,
        worst_numeric=float(numeric[worst]),
        numeric=numeric,
        reference=reference,
    )
