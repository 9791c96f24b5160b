"""Host-side: precision loss of a right formula, told from a wrong formula (issue 10 item 5).

A float32 derivative can be far from the float64 reference although its formula is right:
`1 - tanh(x)**2` near saturation, `1 + tanh(z)` far left in gelu, the LU of a singular
matrix all lose digits to rounding. The float64 reference cannot tell rounding from a bug,
but the same derivative computed in float64 can: a wrong formula is wrong there too. So a
failing element of a float32 (or narrower) check whose float64 analytic value agrees with
the float64 reference, and whose native value differs from the float64 one by no more than
the native dtype's rounding (`allowance`), is reported as a precision note with the digits
lost. With `precision="note"` (the default) it passes; with `precision="strict"` it fails.

What counts as rounding: a relative PRECISION_LOSS_MAX of the float64 value (two digits
kept), or NOISE_FACTOR times f's own rounding in the native dtype over the coordinate's
scale. The second covers a derivative that rounding wipes out (the float32 derivative of
gelu at -5 is exactly 0): f's measured rounding (`Evaluator.noise`, in float64 and scaled
to the native eps) shows how large its intermediates are, and a derivative assembled from
them carries a comparable error per unit of the input's scale. Only code that computes a
different formula in different dtypes could hide under it, and the note names it.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from ._flatten import ArgLayout

PRECISION_LOSS_MAX = 1e-2
NOISE_FACTOR = 256.0


def applies(reference_x64: bool, analytic_dtype: np.dtype) -> bool:
    """Whether a float64 analytic side can tell rounding from a bug: the reference is float64
    and the analytic side is computed in a narrower dtype."""
    return reference_x64 and float(jnp.finfo(analytic_dtype).eps) > float(
        jnp.finfo(jnp.float64).eps
    )


def native_noise(noise: np.ndarray, noise_dtype: np.dtype, analytic_dtype: np.dtype) -> np.ndarray:
    """(m,) f's rounding in the analytic side's dtype: its measured noise (in `noise_dtype`)
    scaled by the ratio of the two dtypes' eps."""
    ratio = float(jnp.finfo(analytic_dtype).eps) / float(jnp.finfo(noise_dtype).eps)
    return np.asarray(noise, np.float64) * ratio


def allowance(analytic64, noise, scale, xp=np):
    """How far a native analytic value may be from the float64 one as rounding: the larger of
    PRECISION_LOSS_MAX * |analytic64| and NOISE_FACTOR * noise / scale (broadcast together).

    Args:
      analytic64: The float64 analytic values.
      noise: f's rounding in the native dtype, per output (`native_noise`).
      scale: The input coordinate's scale (`_tolerance.coordinate_scales`).
    """
    return xp.maximum(PRECISION_LOSS_MAX * xp.abs(analytic64), NOISE_FACTOR * noise / scale)


def may_be_rounding(analytic, numeric, tolerance, analytic64, noise, scale) -> np.ndarray:
    """Host: which failing entries may be rounding of a right formula: the float64 analytic
    value is within the entry's tolerance of the reference, and the native one within
    `allowance` of the float64 one (broadcast together).

    Args:
      analytic, numeric, tolerance: The failing entries as first compared.
      analytic64: Their float64 analytic values; noise, scale: as for `allowance`.
    """
    near = allowance(analytic64, noise, scale)
    with np.errstate(invalid="ignore"):
        return (np.abs(analytic64 - numeric) <= tolerance) & (np.abs(analytic - analytic64) <= near)


def digits_lost(analytic, analytic64, eps: float, xp=np):
    """Decimal digits a native value loses against the float64 one, with `eps` the native
    dtype's machine epsilon (all of them when the float64 value is zero or the native one
    is off by more than its size). Works traced (`xp=jnp`) and on the host."""
    size = xp.abs(analytic64)
    relative = xp.abs(analytic - analytic64) / xp.where(size > 0, size, 1.0)
    relative = xp.where((size > 0) & xp.isfinite(relative), xp.minimum(relative, 1.0), 1.0)
    return xp.log10(xp.maximum(relative, eps) / eps)


def verdict_words(precision: str) -> str:
    """How the rescued elements count, in the note's words."""
    if precision == "note":
        return 'passed as precision loss (`precision="strict"` makes it a failure)'
    return 'failed (`precision="strict"`)'


def _wide(dtype: np.dtype) -> np.dtype:
    if np.issubdtype(dtype, np.complexfloating):
        return np.dtype(np.complex128)
    return np.dtype(np.float64)


def widened_layout(layout: ArgLayout) -> ArgLayout:
    """The layout with every differentiated leaf in float64 (complex128)."""
    diff = tuple(dataclasses.replace(leaf, dtype=_wide(leaf.dtype)) for leaf in layout.diff)
    return dataclasses.replace(layout, diff=diff)


def widened_outs(outs: tuple) -> tuple:
    """Output leaves (`_jacobian_kernels.OutLeaf`) in float64 (complex128)."""
    return tuple(dataclasses.replace(o, dtype=_wide(o.dtype)) for o in outs)
