"""Host-side: step-free and step-sweep evidence from evaluations along directions.

Taylor remainder: for a direction v, r(h) = |f(x + h v) - f(x) - h <g, v>| shrinks like
h**2 when the gradient g is right and like h when it is wrong. The slope of log r
against log h is fitted over the smallest steps whose remainder stands above the
rounding floor.

Step sweep: central differences of the worst element at many step sizes, for the
truncation/rounding V-plot. Both share one kernel call (one compilation).
"""

import jax.numpy as jnp
import numpy as np

from ._engine import EVIDENCE_STEPS as STEPS
from ._engine import Evaluator, evidence_rows
from ._result import StepSweep, TaylorReport
from ._tolerance import coordinate_scales

FIT_POINTS = 3
FLOOR_ULPS = 64.0


def evidence(
    evaluator: Evaluator,
    analytic: np.ndarray,
    analytic_rtol: float,
    worst: int,
    numeric_worst: float,
    chosen_step: float,
) -> tuple[tuple[TaylorReport, ...], StepSweep]:
    """Runs the Taylor-remainder test per differentiated argument and the step sweep.

    Args:
      evaluator: The function at the point.
      analytic: (n,) analytic gradient in theta coordinates (float64).
      analytic_rtol: Relative rounding of the analytic gradient (its error grows like h).
      worst: Theta coordinate of the worst element (for the step sweep).
      numeric_worst: The check's reference value for that element.
      chosen_step: The step the check used for that element.

    Returns:
      (one `TaylorReport` per differentiated argument, the `StepSweep`).
    """
    layout = evaluator.layout
    argnums = sorted({leaf.argnum for leaf in layout.diff})
    scales = coordinate_scales(layout, evaluator.theta)
    z = evaluator.random_directions(1, "taylor")[0] * scales
    directions = np.zeros((evidence_rows(layout), layout.n))
    for row, argnum in enumerate(argnums):
        for leaf in layout.diff:
            if leaf.argnum == argnum:
                directions[row, leaf.offset : leaf.offset + leaf.size] = z[
                    leaf.offset : leaf.offset + leaf.size
                ]
    directions[-2, worst] = scales[worst]
    directions[-1, worst] = -scales[worst]
    values = evaluator.along(directions, STEPS)[:, :, 0]  # (A + 2, K)
    f0 = float(evaluator.f0[0])
    eps = float(jnp.finfo(evaluator.reference.dtype).eps)
    reports = []
    for row, argnum in enumerate(argnums):
        v = directions[row]
        remainder = np.abs(values[row] - f0 - STEPS * float(analytic @ v))
        floor = FLOOR_ULPS * eps * np.maximum(
            abs(f0), np.abs(values[row])
        ) + STEPS * analytic_rtol * float(np.abs(analytic) @ np.abs(v))
        usable = np.isfinite(remainder) & (remainder > 4 * floor)
        idx = np.flatnonzero(usable)[-FIT_POINTS:]
        if idx.size < FIT_POINTS or np.any(np.diff(idx) != 1):
            reports.append(
                TaylorReport(argnum=argnum, slope=None, n_points=int(idx.size), verdict="no-data")
            )
            continue
        slope = float(np.polyfit(np.log(STEPS[idx]), np.log(remainder[idx]), 1)[0])
        verdict = "consistent" if slope >= 1.8 else "inconsistent" if slope <= 1.2 else "unclear"
        reports.append(
            TaylorReport(argnum=argnum, slope=slope, n_points=int(idx.size), verdict=verdict)
        )
    leaf, index, part = layout.locate(worst)
    steps = STEPS * scales[worst]
    estimates = (values[-2] - values[-1]) / (2 * steps)
    sweep = StepSweep(
        path=leaf.path,
        index=index,
        part=part,
        steps=tuple(float(h) for h in steps),
        estimates=tuple(float(e) for e in estimates),
        chosen_step=float(chosen_step),
        numeric=float(numeric_worst),
        analytic=float(analytic[worst]),
        dtype=str(evaluator.reference.dtype),
    )
    return tuple(reports), sweep
