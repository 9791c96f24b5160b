"""Host-side: the Taylor-remainder test, a step-free second line of evidence.

For a direction v, r(h) = |f(x + h v) - f(x) - h <g, v>| shrinks like h**2 when the
gradient g is right and like h when it is wrong. The slope of log r against log h is
fitted over the smallest steps whose remainder stands above the rounding floor.
"""

import numpy as np

from ._engine import Evaluator
from ._result import TaylorReport
from ._tolerance import coordinate_scales

STEPS = 10.0 ** -np.arange(1.0, 6.5, 0.5)  # 1e-1 ... 1e-6, half decades
FIT_POINTS = 3
FLOOR_ULPS = 64.0


def taylor_test(evaluator: Evaluator, analytic: np.ndarray, analytic_rtol: float) -> tuple[TaylorReport, ...]:
    """Runs the Taylor-remainder test once per differentiated argument.

    Args:
      evaluator: The function at the point.
      analytic: (n,) analytic gradient in theta coordinates (float64).
      analytic_rtol: Relative rounding of the analytic gradient (its error grows like h).

    Returns:
      One `TaylorReport` per differentiated argument.
    """
    layout = evaluator.layout
    argnums = sorted({leaf.argnum for leaf in layout.diff})
    z = evaluator.random_directions(1, "taylor")[0] * coordinate_scales(layout, evaluator.theta)
    directions = np.zeros((len(argnums), layout.n))
    for row, argnum in enumerate(argnums):
        for leaf in layout.diff:
            if leaf.argnum == argnum:
                directions[row, leaf.offset : leaf.offset + leaf.size] = z[leaf.offset : leaf.offset + leaf.size]
    values = evaluator.along(directions, STEPS)[:, :, 0]  # (A, K)
    f0 = float(evaluator.f0[0])
    eps = float(np.finfo(evaluator.reference.dtype).eps)
    reports = []
    for row, argnum in enumerate(argnums):
        v = directions[row]
        slope_gv = float(analytic @ v)
        remainder = np.abs(values[row] - f0 - STEPS * slope_gv)
        floor = FLOOR_ULPS * eps * np.maximum(abs(f0), np.abs(values[row])) + STEPS * analytic_rtol * float(np.abs(analytic) @ np.abs(v))
        usable = np.isfinite(remainder) & (remainder > 4 * floor)
        idx = np.flatnonzero(usable)[-FIT_POINTS:]
        if idx.size < FIT_POINTS or np.any(np.diff(idx) != 1):
            reports.append(TaylorReport(argnum=argnum, slope=None, n_points=int(idx.size), verdict="no-data"))
            continue
        slope = float(np.polyfit(np.log(STEPS[idx]), np.log(remainder[idx]), 1)[0])
        verdict = "consistent" if slope >= 1.8 else "inconsistent" if slope <= 1.2 else "unclear"
        reports.append(TaylorReport(argnum=argnum, slope=slope, n_points=int(idx.size), verdict=verdict))
    return tuple(reports)
