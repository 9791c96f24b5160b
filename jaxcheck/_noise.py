"""Host-side: the rounding noise of f, measured from its values along random directions.

A finite difference divides f's own rounding error by the step, so the reference is only
as good as the estimate of that error. Rounding is usually a few ulps of |f|, but not
under cancellation: `1 + tanh(z)` far left, `mean(x**2) - mean(x)**2` at a large mean, the
LU of a singular matrix, an eigensolver. There f's error scales with its intermediate
values, which jaxcheck cannot see, and a model based on |f| underestimates it by orders
of magnitude (issue 10 item 2).

So the noise is measured, per output element, the way ECnoise does (More & Wild,
"Estimating computational noise", SIAM J. Sci. Comput. 33(3), 2011): f at K equally spaced
points x + k delta v along a few random directions v, with delta so small (NOISE_STEP
ulps of each coordinate's scale) that the smooth part of f contributes nothing to their
differences of orders 4 to 6. What is left in those differences is rounding, and

    sigma_k**2 = gamma_k * mean((Delta^k f)**2),    gamma_k = (k!)**2 / (2k)!

estimates its standard deviation for independent errors. The orders are pooled (mean of
sigma_k**2) over every direction. An output that does not change at all has no measured
noise (sigma = 0); the model floor of `_stencil.combine` still applies there.

The same kernel call evaluates f at x +- SECANT_STEP v as well: how much f changes over a
tenth of each coordinate's scale (`secant_scale`), a yardstick for derivatives of f near x
that does not vanish where the derivative itself does (det of a rank-1 matrix, sin at
pi/2), for deciding that a derivative of about zero is right (`_grad_full.zero_is_resolved`).
"""

import math
from typing import NamedTuple

import numpy as np

# Points per direction: with the two secant points, the length of the evidence kernel's step
# grid (`_engine.EVIDENCE_STEPS`), so the measurement reuses that kernel's compilation.
NOISE_POINTS = 17
SECANT_STEP = 0.1
# Spacing of the points, in units of eps(dtype) * the coordinate's scale.
NOISE_STEP = 1024.0
# Orders of the difference table that are pooled.
ORDERS = (4, 5, 6)
# The stencil's noise floor is this many measured standard deviations of one f value: its
# 4-point estimate carries about 0.95 sigma / h of noise, and the tolerance (safety 3 on
# floor / 2h) then allows about 6 of those, for the largest of thousands of entries and an
# estimate of sigma that is itself uncertain by a few tens of percent.
NOISE_SIGMAS = 4.0


def offsets(dtype: np.dtype) -> np.ndarray:
    """(NOISE_POINTS + 2,) multipliers t of a unit-scaled direction: NOISE_POINTS equally
    spaced and centred on 0, then -SECANT_STEP and +SECANT_STEP."""
    delta = NOISE_STEP * float(np.finfo(dtype).eps)
    half = NOISE_POINTS // 2
    tiny = delta * np.arange(-half, NOISE_POINTS - half, dtype=np.float64)
    return np.concatenate([tiny, [-SECANT_STEP, SECANT_STEP]])


class Measurement(NamedTuple):
    """f's rounding noise and secant scale per output, each (m,) float64."""

    noise: np.ndarray
    secant: np.ndarray


def measure(values: np.ndarray, directions: np.ndarray, scales: np.ndarray) -> Measurement:
    """The measurement from f's values at `offsets` along each direction.

    Args:
      values: (rows, NOISE_POINTS + 2, m) f at x + t v for t in `offsets`.
      directions: (rows, n) the directions v; scales: (n,) the coordinates' scales.

    Returns:
      `Measurement`: `estimate` of the first NOISE_POINTS values, and the secant scale: the
      root mean square over directions of (|f(x + s v) - f(x)| + |f(x - s v) - f(x)|) /
      (2 s |v / scales|), s = SECANT_STEP, which is about |df/dx_i| * scale_i for an f that
      changes like that along every coordinate (0 where not finite).
    """
    noise = estimate(values[:, :NOISE_POINTS])
    center = np.asarray(values[:, NOISE_POINTS // 2], np.float64)
    change = np.abs(values[:, -2] - center) + np.abs(values[:, -1] - center)
    length = np.linalg.norm(directions / scales, axis=1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        slope = change / (2 * SECANT_STEP * length)
        ok = np.isfinite(slope)
        secant = np.sqrt(np.sum(np.where(ok, slope, 0.0) ** 2, axis=0) / np.maximum(ok.sum(0), 1))
    return Measurement(noise, np.where(np.isfinite(secant), secant, 0.0))


# `estimate` works through this many outputs at a time (its temporaries stay small).
COLUMNS_PER_PASS = 2**16


def _gamma(k: int) -> float:
    return math.factorial(k) ** 2 / math.factorial(2 * k)


def estimate(values: np.ndarray) -> np.ndarray:
    """Standard deviation of the rounding error of each output, from equally spaced values.

    Args:
      values: (rows, K, m) f at K equally spaced points along each of `rows` directions.

    Returns:
      (m,) float64, the pooled ECnoise estimate; 0 where no row is finite.
    """
    m = values.shape[2]
    if m > COLUMNS_PER_PASS:  # bounded temporaries: a few copies of one slice at a time
        parts = [
            estimate(values[:, :, start : start + COLUMNS_PER_PASS])
            for start in range(0, m, COLUMNS_PER_PASS)
        ]
        return np.concatenate(parts)
    values = np.asarray(values, np.float64)
    total = np.zeros(m)
    count = np.zeros(m)
    finite_rows = np.all(np.isfinite(values), axis=1)  # (rows, m)
    safe = np.where(finite_rows[:, None, :], values, 0.0)
    for k in ORDERS:
        diff = np.diff(safe, n=k, axis=1)  # (rows, K - k, m)
        with np.errstate(over="ignore", invalid="ignore"):
            sigma2 = _gamma(k) * np.mean(np.square(diff), axis=1)  # (rows, m)
        ok = finite_rows & np.isfinite(sigma2)
        total += np.sum(np.where(ok, sigma2, 0.0), axis=0)
        count += np.sum(ok, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = np.sqrt(total / count)
    return np.where(count > 0, sigma, 0.0)


def floor(sigma: np.ndarray) -> np.ndarray:
    """The stencil's noise floor per output (see NOISE_SIGMAS)."""
    return NOISE_SIGMAS * np.asarray(sigma, np.float64)
