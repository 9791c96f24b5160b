"""Per-dtype tolerances and the finite-difference step policy (host-side numpy)."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from ._flatten import ArgLayout


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tolerance:
    """How far an analytic derivative may be from its finite-difference reference.

    An element passes when `|analytic - numeric| <= safety * fd_error + rtol * |numeric| + atol`,
    where `fd_error` is the estimated error of the finite-difference reference itself.
    By default `atol` is `rtol * max|numeric|` over the leaf plus a floor of
    `16 * eps * max_j(|g_j| * scale_j) / scale_i` (the analytic value's own rounding).

    Attributes:
      rtol: Relative allowance for the analytic derivative's own rounding.
      atol: Absolute allowance; `None` derives it per leaf as described above.
      safety: Multiplier on the estimated finite-difference error.
    """

    rtol: float
    atol: float | None = None
    safety: float = 3.0


# Rounding allowance of the analytic derivative, by the dtype it is computed in. A
# backward pass accumulates a few dozen ulps of error in practice.
_DEFAULT_RTOL = {
    np.dtype(np.float64): 1e-10,
    np.dtype(np.float32): 2e-5,
    np.dtype(np.float16): 1e-2,
}
_FLOOR_ULPS = 16.0


def default_tolerance(dtype: np.dtype) -> Tolerance:
    """The default `Tolerance` for an analytic derivative computed in `dtype`."""
    real = (
        np.dtype(jnp.finfo(dtype).dtype)
        if np.issubdtype(dtype, np.complexfloating)
        else np.dtype(dtype)
    )
    rtol = _DEFAULT_RTOL.get(real)
    if rtol is None:  # bfloat16 and other narrow floats
        rtol = float(np.sqrt(jnp.finfo(real).eps))
    return Tolerance(rtol=rtol)


def floor_atol(dtype: np.dtype, sensitivity: float, scales: np.ndarray) -> np.ndarray:
    """Absolute floor per coordinate for numerically-zero derivatives.

    `sensitivity` is the largest single-coordinate effect on f, max_j |g_j| * scale_j.
    An analytic derivative is computed from terms of about that size, so it carries
    rounding of a few ulps of it; over coordinate i's own scale that is
    floor_i = ulps * eps * sensitivity / scale_i. (Unlike |f|, this ignores constant
    offsets in f, and it keeps a leaf of 1e3 next to a leaf of 1e-3 apart.)
    """
    return _FLOOR_ULPS * float(jnp.finfo(dtype).eps) * sensitivity / scales


def relative_step(dtype: np.dtype) -> float:
    """The central-difference step relative to a coordinate's scale: eps ** (1/3)."""
    return float(jnp.finfo(dtype).eps) ** (1.0 / 3.0)


def magnitudes(block: np.ndarray) -> np.ndarray:
    """Per-element scale of one leaf's values: max(|x|, rms of the leaf), or |x| and 1 when
    the rms is zero or not finite."""
    rms = float(np.sqrt(np.mean(np.square(block)))) if block.size else 0.0
    return np.maximum(np.abs(block), rms if rms > 0 and np.isfinite(rms) else 1.0)


def coordinate_scales(layout: ArgLayout, theta: np.ndarray) -> np.ndarray:
    """Per-coordinate scale: each element's own magnitude, max(|theta_i|, floor), where the
    floor is min(1, rms of its leaf) (1 for an all-zero leaf).

    Each element is scaled by itself, so an element of size 1 beside one of 1e8 in the same
    leaf gets a step of its own size (not one from the leaf's rms). The floor keeps zeros
    and tiny elements from getting vanishing steps: it is 1 (the usual max(|x_i|, 1)) for
    leaves of magnitude 1 or more, and the leaf's rms for smaller leaves, so a leaf of
    magnitude 1e-3 still gets steps of its own size.
    """
    scales = np.abs(theta).astype(np.float64)
    for leaf in layout.diff:
        block = theta[leaf.offset : leaf.offset + leaf.size]
        rms = float(np.sqrt(np.mean(np.square(block)))) if block.size else 0.0
        floor = min(rms, 1.0) if rms > 0 and np.isfinite(rms) else 1.0
        scales[leaf.offset : leaf.offset + leaf.size] = np.maximum(
            scales[leaf.offset : leaf.offset + leaf.size], floor
        )
    return scales


def steps(
    layout: ArgLayout, theta: np.ndarray, leaf_dtypes: tuple[np.dtype, ...], eps: float | None
) -> np.ndarray:
    """Step per coordinate: `eps` if given (absolute), else relative_step(dtype) * scale.

    Args:
      layout: The argument layout.
      theta: (n,) float64 point.
      leaf_dtypes: The dtype each differentiated leaf is evaluated in.
      eps: The user's absolute step, or None.
    """
    if eps is not None:
        return np.full(theta.shape, float(eps))
    rel = np.empty_like(theta)
    for leaf, dtype in zip(layout.diff, leaf_dtypes):
        rel[leaf.offset : leaf.offset + leaf.size] = relative_step(dtype)
    return rel * coordinate_scales(layout, theta)


# Larger steps for noise-bound coordinates (`_stencil.noise_bound`): these multiples of the
# step, but never beyond a hundredth of the coordinate's scale, where Richardson's error
# estimate stops being a bound (in float32 that leaves about twice the default step).
GROWTH = (16.0, 256.0)
MAX_GROWN_STEP = 1e-2


def grown_steps(h: np.ndarray, scales: np.ndarray) -> list[np.ndarray]:
    """The larger steps to try for coordinates with steps `h` and scales `scales`: GROWTH
    times h, capped at MAX_GROWN_STEP * scale (never below h); steps that the cap makes no
    larger than the previous one are left out."""
    out, previous = [], h
    for growth in GROWTH:
        step = np.maximum(h, np.minimum(h * growth, MAX_GROWN_STEP * scales))
        if np.all(step <= previous * (1 + 1e-9)):
            break
        out.append(step)
        previous = step
    return out


def stencil_points(
    theta: np.ndarray,
    h: np.ndarray,
    dtype_codes: np.ndarray,
    dtypes: tuple[np.dtype, ...],
    offsets=(-2, -1, 1, 2),
) -> np.ndarray:
    """The stencil's coordinate values, rounded to the dtype f is evaluated in.

    Rounding first and differencing the rounded values later keeps every step exact.

    Args:
      theta, h: (k,) coordinates and their steps.
      dtype_codes: (k,) index into `dtypes` of each coordinate's evaluation dtype.
      dtypes: The distinct real evaluation dtypes.
      offsets: Stencil offsets in units of h.

    Returns:
      (k, len(offsets)) float64 array of exactly representable values.
    """
    raw = theta[:, None] + np.asarray(offsets, np.float64)[None, :] * h[:, None]
    out = np.empty_like(raw)
    for code, dtype in enumerate(dtypes):
        mask = dtype_codes == code
        out[mask] = raw[mask].astype(dtype).astype(np.float64)
    return out
