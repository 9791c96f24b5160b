"""Host-side orchestration of the full gradient strategy: every coordinate, element by element.

Runs the stencil of `_engine.Evaluator` over every coordinate of a kind-"grad" `Problem`,
turns the values into estimates with an error estimate (`_stencil`), classifies each
analytic element against them and summarises the leaves. Takes a problem, returns
`GradFindings`; imports no entry point.
"""

import jax
import jax.numpy as jnp
import numpy as np

from . import _stencil as st
from . import _summary, _tolerance
from ._problem import Problem
from ._summary import GradFindings

REFERENCE = "4-point central differences (+-h, +-2h) with Richardson extrapolation"
ZERO_FRACTION = 1e-3  # see zero_is_resolved


def estimates(
    p: Problem, coords: np.ndarray | None = None, measure_noise: bool = True
) -> st.Estimates:
    """The stencil over `coords` (default: every coordinate), as host `Estimates` (k, 1).

    `measure_noise` adds the rounding noise measured across the coordinates to the error
    estimate (meaningful over many coordinates, not over a narrowed handful).
    """
    ev = p.ev
    coords = np.arange(ev.n) if coords is None else np.asarray(coords)
    values, points = ev.stencil(coords, p.h[coords], p.batch_size, p.progress)
    values = np.asarray(jax.device_get(values), np.float64)
    eps = np.array([float(jnp.finfo(d).eps) for d in ev.real_dtypes])
    eps = eps[ev.coord_dtype_codes[coords]][:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        noise = st.measured_noise_host(values, ev.f0) if measure_noise else 0.0
        return st.combine_host(values, ev.f0, points, ev.theta[coords], eps, noise)


def element_atol(p: Problem, gradient: np.ndarray, floor_dtype: np.dtype) -> np.ndarray:
    """Absolute tolerance per coordinate: the user's atol, or rtol * leaf max + rounding floor.

    Args:
      p: The problem.
      gradient: (n,) the gradient whose magnitudes set the allowances (numeric in full mode).
      floor_dtype: The dtype whose rounding sets the floor.
    """
    tol = p.tol
    if tol.atol is not None:
        return np.full(gradient.shape, tol.atol)
    effect = np.abs(gradient) * p.scales
    sensitivity = float(np.max(effect[np.isfinite(effect)], initial=0.0))
    out = _tolerance.floor_atol(floor_dtype, sensitivity, p.scales)
    for leaf in p.layout.diff:
        sl = slice(leaf.offset, leaf.offset + leaf.size)
        block = gradient[sl]
        out[sl] += tol.rtol * float(np.max(np.abs(block[np.isfinite(block)]), initial=0.0))
    return out


def zero_is_resolved(
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
    resolved = zero_is_resolved(analytic, numeric, tolerance, resolved)
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


def run(p: Problem) -> GradFindings:
    """The full strategy: every coordinate of a kind-"grad" problem."""
    coords = np.arange(p.n)
    est = estimates(p, coords)
    numeric = np.asarray(est.numeric, np.float64)[:, 0]
    atol = element_atol(p, numeric, p.tol_dtype)
    leaves, numeric, tolerance = summarize(p, coords, p.analytic, est, atol)
    worst = worst_of(p.analytic, numeric, tolerance)
    return GradFindings(
        leaves=_summary.sort_worst_first(leaves),
        relative_error=_summary.normalized_distance(p.analytic, numeric),
        worst=worst,
        worst_numeric=float(numeric[worst]),
        numeric=numeric,
        reference=REFERENCE,
    )
