"""Traced: everything here runs under jit and vmap (and, unjitted, on numpy arrays).

Turns raw stencil values f(x + k h), k in (-2, -1, 1, 2), into derivative estimates
with an error estimate, and classifies each element of an analytic derivative against
them. Works elementwise on arrays of any leading shape (b, m). Each function is written once
against an array module `xp`: `combine`/`assess` are the jitted jnp versions (for
chunks on device), `combine_host`/`assess_host` the numpy versions (no compilation, for
small results already on the host).

Estimates:
  D1 = central difference at h, D2 = central difference at 2h,
  numeric = Richardson extrapolation of (D1, D2): fourth-order accurate,
  fd_error = |D1 - D2| / 3 (the truncation error of D1, a conservative bound for the
  extrapolated value) + a rounding term proportional to eps(dtype) * |f| / h.
One-sided slopes at h and 2h detect kinks: for a smooth f, (F2 - B2) = 2 (F1 - B1);
at a kink the jump F - B does not shrink with the step.
"""

import functools as ft
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Rounding error of one function value, in units of eps(dtype) * |f|. Reductions over
# many terms round worse than one ulp, hence the margin.
NOISE_ULPS = 8.0
# Share of an element's own fourth difference |f(2h) - 4 f(h) + 6 f(0) - 4 f(-h) + f(-2h)|
# taken as its rounding noise: about 8.4 sigma of one value for independent rounding
# errors, so half of it is about 4 sigma at its median. This sees rounding at the
# stencil's own scale where the measured noise (`_noise`, at steps of ulps) does not:
# intermediates that stay on one float value over a few ulps of the input but not over h
# (1 + tanh(z) near -1 in float64).
OWN_NOISE_SHARE = 0.5
# An element is noise-bound when its rounding term exceeds NOISE_DOMINANCE times both the
# rest of its tolerance and the rounding term a benign f (rounding of a few ulps of
# |derivative| * scale) would give at the same step; it is then worth a look at larger
# steps (`noise_bound`, `best_of`, `_tolerance.grown_steps`).
NOISE_DOMINANCE = 10.0
# A failing element within this relative distance of its reference gets the larger steps
# too (`near_miss`): a stencil whose error estimate missed rounding coarser than f's own
# (`best_of`) misses by percents at most; a wrong formula stays wrong at every step.
NEAR_MISS = 0.1
# A kink must explain at least this fraction of the discrepancy to be called one.
KINK_SHARE = 0.1
# ... and its slope jump must exceed the one-sided rounding noise this many times.
KINK_NOISE_FACTOR = 10.0

# The higher-order look (`refined_truncation`): successive central-difference gaps of a smooth
# f in its asymptotic range shrink as h**2, so |D(2H) - D(4H)| = 4 |D(H) - D(2H)|; the
# look is trusted only where the measured ratio lies in this range and both gaps stand
# REFINE_SIGNAL times above their rounding noise.
ASYMPTOTIC_RATIO = (3.0, 16.0 / 3.0)
REFINE_SIGNAL = 8.0

# A tolerance this many times the size of a resolved nonzero reference decides nothing.
SWAMP_FACTOR = 100.0

# Element codes (host code maps them to words).
PASS, FAIL, NONSMOOTH, FAIL_NONSMOOTH, REF_NONFINITE, ANALYTIC_NONFINITE = range(6)


class Estimates(NamedTuple):
    """Finite-difference estimates, each (b, m)."""

    numeric: jax.Array
    fd_error: jax.Array
    noise: jax.Array
    slopes: jax.Array  # (4, b, m): backward 2h, backward h, forward h, forward 2h


class Assessment(NamedTuple):
    """Per-element verdicts, each (b, m)."""

    code: jax.Array  # int8, one of the codes above
    tolerance: jax.Array
    resolved: jax.Array  # bool: the reference is accurate enough to see a 50% error


def _combine(
    values: jax.Array,
    f0: jax.Array,
    points: jax.Array,
    x0: jax.Array,
    eps: Any = None,
    noise_floor: Any = 0.0,
    own_share: float = OWN_NOISE_SHARE,
    xp: Any = jnp,
) -> Estimates:
    """Combines stencil values into derivative estimates.

    Args:
      values: (b, 4, m) f at the stencil points (-2h, -h, h, 2h).
      f0: (m,) f at the base point.
      points: (b, 4) the perturbed coordinate's values (exactly representable).
      x0: (b,) the coordinate's base value.
      eps: Machine epsilon of the dtype f was evaluated in, scalar or (b, 1); default
        that of `values.dtype`.
      noise_floor: Measured rounding noise of one f value, scalar or (m,) (see
        `measured_noise`); the noise estimate is at least this.
      own_share: Share of each element's own fourth difference taken as rounding noise
        (OWN_NOISE_SHARE; 0 leaves it out).

    Returns:
      `Estimates` of the derivative of each of the m outputs along each of the b coordinates.
    """
    fm2, fm1, fp1, fp2 = (values[:, k, :] for k in range(4))
    xm2, xm1, xp1, xp2 = (points[:, k, None] for k in range(4))
    x0 = x0[:, None]
    f0 = f0[None, :]  # explicit ranks: users run with jax_numpy_rank_promotion="raise"
    if xp.ndim(noise_floor) == 1:
        noise_floor = noise_floor[None, :]
    d1, d2 = xp1 - xm1, xp2 - xm2
    own = own_share * _smooth_fourth(fm2, fm1, f0, fp1, fp2, xp)
    c1 = (fp1 - fm1) / d1
    c2 = (fp2 - fm2) / d2
    ratio2 = (d2 / d1) ** 2
    numeric = (ratio2 * c1 - c2) / (ratio2 - 1)
    truncation = xp.abs(c1 - c2) / (ratio2 - 1)
    eps = jnp.finfo(values.dtype).eps if eps is None else eps
    # The four slices, not `max(axis=1)`: XLA:CPU reduces a short non-minor axis ~10x slower.
    fscale = ft.reduce(xp.maximum, [xp.abs(f) for f in (fm2, fm1, fp1, fp2)])
    fscale = xp.maximum(fscale, xp.abs(f0))
    noise = xp.maximum(xp.maximum(NOISE_ULPS * eps * fscale, noise_floor), own) / d1
    slopes = xp.stack(
        [
            (f0 - fm2) / (x0 - xm2),
            (f0 - fm1) / (x0 - xm1),
            (fp1 - f0) / (xp1 - x0),
            (fp2 - f0) / (xp2 - x0),
        ]
    )
    return Estimates(numeric, truncation + noise, noise, slopes)


def _assess(
    est: Estimates,
    analytic: jax.Array,
    rtol: jax.Array,
    atol: jax.Array,
    safety: jax.Array,
    xp: Any = jnp,
) -> Assessment:
    """Classifies each analytic element against the finite-difference estimate.

    Tolerance per element: `safety * fd_error + rtol * |numeric| + atol`.

    Args:
      est: `Estimates` (b, m).
      analytic: (b, m) analytic derivative.
      rtol: Scalar relative tolerance for the analytic value's own rounding.
      atol: (b, m) or scalar absolute tolerance.
      safety: Scalar multiplier on the estimated finite-difference error.

    Returns:
      `Assessment` with a code per element.
    """
    analytic = xp.asarray(analytic).astype(est.numeric.dtype)
    numeric = est.numeric
    diff = xp.abs(analytic - numeric)
    tolerance = safety * est.fd_error + rtol * xp.abs(numeric) + atol
    mismatch = ~(diff <= tolerance)
    backward2, backward1, forward1, forward2 = est.slopes
    jump1 = forward1 - backward1
    jump2 = forward2 - backward2
    # A kink's slope jump does not shrink with the step: jump2 ~ jump1 (same sign, ratio
    # >= 1 for a kink within h), where smooth curvature gives jump2 = 2 jump1 and noise
    # gives unrelated signs. The jump must also stand far above the rounding noise.
    kink = (
        (xp.abs(jump1) >= KINK_SHARE * diff)
        & (jump1 * jump2 > 0)
        & (xp.abs(jump2) >= 0.8 * xp.abs(jump1))
        & (xp.abs(jump2 - 2 * jump1) > 0.25 * xp.abs(jump1))
        & (xp.abs(jump1) > KINK_NOISE_FACTOR * 2 * est.noise)
        & (xp.abs(jump1) > tolerance)
    )
    slopes = list(est.slopes)  # four slices (see `_combine`'s fscale)
    inside = (analytic >= ft.reduce(xp.minimum, slopes) - tolerance) & (
        analytic <= ft.reduce(xp.maximum, slopes) + tolerance
    )
    ref_ok = ft.reduce(xp.logical_and, [xp.isfinite(x) for x in [numeric, est.fd_error, *slopes]])
    code = xp.where(
        ~xp.isfinite(analytic),
        ANALYTIC_NONFINITE,
        xp.where(
            ~ref_ok,
            REF_NONFINITE,
            xp.where(
                kink,
                xp.where(mismatch & ~inside, FAIL_NONSMOOTH, NONSMOOTH),
                xp.where(mismatch, FAIL, PASS),
            ),
        ),
    ).astype(xp.int8)
    resolved = safety * est.fd_error <= xp.maximum(
        0.5 * xp.abs(numeric), rtol * xp.abs(numeric) + atol
    )
    resolved = resolved & ~_swamped(est, tolerance, safety, xp)
    return Assessment(code, tolerance, resolved)


def _swamped(est: Estimates, tolerance: jax.Array, safety: Any, xp: Any = jnp) -> jax.Array:
    """Elements whose reference resolves a nonzero value that their tolerance swamps.

    The reference is nonzero beyond its own error (|numeric| > safety * fd_error), yet the
    tolerance exceeds it SWAMP_FACTOR times over: any analytic value near zero would pass,
    so the element is unresolved (inconclusive), never passed.
    """
    size = xp.abs(est.numeric)
    return (size > safety * est.fd_error) & (tolerance > SWAMP_FACTOR * size)


def _kink_like(s1: Any, s2: Any, xp: Any) -> Any:
    """Second differences at h (S1) and 2h (S2) with a kink's signature: S2 ~ 2 S1 (a slope
    jump inside h), where a smooth f gives S2 = 4 S1 and rounding unrelated signs."""
    return (
        (s1 * s2 > 0) & (xp.abs(s2) >= 1.6 * xp.abs(s1)) & (xp.abs(s2 - 4 * s1) > 0.5 * xp.abs(s1))
    )


def _smooth_fourth(fm2: Any, fm1: Any, f0: Any, fp1: Any, fp2: Any, xp: Any) -> Any:
    """|fourth difference| of the stencil values, 0 where it is not finite or has a kink's
    signature (a kink is not rounding noise; the kink test below handles it)."""
    fourth = fp2 - 4 * fp1 + 6 * f0 - 4 * fm1 + fm2
    kink = _kink_like(fp1 - 2 * f0 + fm1, fp2 - 2 * f0 + fm2, xp)
    return xp.where(xp.isfinite(fourth) & ~kink, xp.abs(fourth), 0.0)


def _measured_noise(values: jax.Array, f0: jax.Array, xp: Any = jnp) -> jax.Array:
    """Rounding noise of one f value, measured from the stencil: (m,).

    The fourth difference f(2h) - 4 f(h) + 6 f(0) - 4 f(-h) + f(-2h) is h**4 times the
    fourth derivative (tiny) plus rounding noise with standard deviation about sqrt(34)
    sigma across coordinates. Its root mean square over coordinates estimates sigma;
    the RMS (unlike a median) does not collapse to zero when rounding is quantised.
    Coordinates with a kink signature (second differences S1 = f(h) - 2 f(0) + f(-h)
    and S2 at 2h with S2 ~ 2 S1 instead of the smooth 4 S1) and non-finite ones are left
    out, so a few kinks do not inflate the noise. This catches rounding far above
    eps * |f|, as in sums with heavy cancellation.
    """
    fm2, fm1, fp1, fp2 = (values[:, k, :] for k in range(4))
    center = f0[None, :]
    fourth = fp2 - 4 * fp1 + 6 * center - 4 * fm1 + fm2
    kink_like = _kink_like(fp1 - 2 * center + fm1, fp2 - 2 * center + fm2, xp)
    usable = xp.isfinite(fourth) & ~kink_like
    usable = xp.where(xp.any(usable, axis=0, keepdims=True), usable, xp.isfinite(fourth))
    squares = xp.where(usable, fourth, 0.0) ** 2
    count = xp.maximum(xp.sum(usable, axis=0), 1)
    return xp.sqrt(xp.sum(squares, axis=0) / count) / xp.sqrt(34.0)


def _noise_bound(
    est: Estimates,
    d1: jax.Array,
    scale: jax.Array,
    eps: Any,
    rtol: Any,
    atol: Any,
    safety: Any,
    analytic: Any = None,
    xp: Any = jnp,
) -> jax.Array:
    """Elements whose estimate is bound by f's rounding noise (see NOISE_DOMINANCE).

    Cancellation inside f, a coordinate much smaller than the scale on which f varies
    (exp at x = 1e-3: a step of 1e-3 eps**(1/3)), or a leaf whose effect on f is tiny
    beside another leaf's: the default step is too small there, and a larger one resolves
    the derivative better. An output that does not move at all along the coordinate is
    noise-bound only where the `analytic` derivative (when given) says it must have, beyond
    the tolerance: f's value is stuck on one float over the stencil (log(ndtr(x)) near
    ndtr = 1), which no rounding estimate sees; elsewhere its derivative is zero.

    Args:
      est: `Estimates` (b, m); d1: (b,) the distance between the points at +-h; scale:
        (b,) the coordinates' scales (or both (b, m): each entry its own coordinate, as
        in the sparse plan's slots); eps: machine epsilon of the evaluation dtype, scalar
        or (b, 1).
      rtol, atol: The analytic side's allowance (scalar and scalar or (b, m)).

    Returns:
      (b, m) boolean mask.
    """
    size = xp.abs(est.numeric)
    moved = xp.any(est.slopes != 0, axis=0)
    per_step = scale / d1
    per_step = per_step if per_step.ndim == 2 else per_step[:, None]
    benign = NOISE_ULPS * eps * size * per_step
    noisy = (
        moved
        & xp.isfinite(est.fd_error)
        & (safety * est.noise > NOISE_DOMINANCE * (rtol * size + atol))
        & (est.noise > NOISE_DOMINANCE * benign)
    )
    if analytic is None:
        return noisy
    tolerance = safety * est.fd_error + rtol * size + atol
    stuck = ~moved & xp.isfinite(analytic) & (xp.abs(analytic) > tolerance)
    return noisy | stuck


def _refined_truncation(
    near: Estimates,
    values: jax.Array,
    f0: jax.Array,
    points: jax.Array,
    x0: jax.Array,
    eps: Any = None,
    noise_floor: Any = 0.0,
    xp: Any = jnp,
) -> Estimates:
    """`near` (stencil at +-H, +-2H) with the error of its extrapolated value, not of D(H).

    `fd_error` bounds the extrapolated value's error by the truncation of D(H) (O(H**2)),
    far too loose where the extrapolated value's own truncation (O(H**4)) is what matters:
    a step grown to escape f's rounding noise (atan at x = 1000 in float64) meets the
    O(H**2) bound long before the O(H**4) error. With `wide`, the stencil at +-2H, +-4H,
    the extrapolated values N(H) and N(2H) differ by 15 times N(H)'s O(H**4) error, so that
    error is |N(H) - N(2H)| / 15 (the second level of Richardson's table). At such steps a
    fourth difference is mostly f's fourth derivative, not rounding: where it grows as
    H**4 from `near` to `wide` (its noise term 8 times larger at twice the step, within a
    factor of 2), `near`'s rounding is `wide_rounding` (wide's noise without its own fourth
    difference, `_combine(own_share=0)`) scaled to `near`'s step. Trusted only in the
    asymptotic range (ASYMPTOTIC_RATIO, REFINE_SIGNAL); elsewhere `near` is unchanged.

    Args:
      near: `Estimates` (b, m) of the stencil at +-H, +-2H.
      values, f0, points, x0, eps, noise_floor: The stencil at +-2H, +-4H, as for `_combine`.

    Returns:
      `near` with `fd_error` = min(its own, |N(H) - N(2H)| / 15 + its rounding).
    """
    wide = _combine(values, f0, points, x0, eps, noise_floor, xp=xp)
    wide_rounding = _combine(values, f0, points, x0, eps, noise_floor, own_share=0.0, xp=xp).noise
    growth = wide.noise / xp.where(near.noise > 0, near.noise, xp.inf)
    smooth_fourth = (growth >= 4.0) & (growth <= 16.0)
    rounding = xp.where(smooth_fourth, xp.minimum(2.0 * wide_rounding, near.noise), near.noise)
    wide_noise = xp.where(smooth_fourth, wide_rounding, wide.noise)
    t_near = near.fd_error - near.noise
    t_wide = wide.fd_error - wide.noise
    with_signal = (t_near > REFINE_SIGNAL * rounding) & (t_wide > REFINE_SIGNAL * wide_noise)
    low, high = ASYMPTOTIC_RATIO
    ratio = xp.where(with_signal, t_wide / xp.where(with_signal, t_near, 1.0), 0.0)
    refined = xp.abs(near.numeric - wide.numeric) / 15.0 + rounding
    trusted = with_signal & (ratio >= low) & (ratio <= high) & xp.isfinite(refined)
    fd_error = xp.where(trusted, xp.minimum(refined, near.fd_error), near.fd_error)
    return near._replace(fd_error=fd_error, noise=xp.where(trusted, rounding, near.noise))


def near_miss(analytic: Any, numeric: Any, xp: Any = np) -> Any:
    """Whether |analytic - numeric| <= NEAR_MISS * max(|analytic|, |numeric|) (see NEAR_MISS)."""
    return xp.abs(analytic - numeric) <= NEAR_MISS * xp.maximum(xp.abs(analytic), xp.abs(numeric))


def _best_of(estimates: list[Estimates], xp: Any = jnp) -> tuple[Estimates, jax.Array]:
    """Per element, the estimate with the smallest estimated error, and which one it is (b, m).

    An estimate whose values did not move at all (f stuck on one float over the stencil)
    or whose error is not finite is never chosen over one that moved; where none did, the
    first is kept. Each error is first raised to what the other estimates prove it is at
    least: if estimate t is within its own error of the derivative, estimate s is off by at
    least |num_s - num_t| - err_t (the largest such bound over the others is kept; a wrong
    derivative is not affected: the estimates of a smooth f agree). Rounding of an intermediate coarser than f's
    own (log(ndtr(x)) with ndtr near 1: steps of 1e-16 in a value of 1e-11) can make a
    stencil's error estimate too small; the estimates at other steps expose it.
    """
    errors = [
        xp.where(xp.isfinite(e.fd_error) & xp.any(e.slopes != 0, axis=0), e.fd_error, xp.inf)
        for e in estimates
    ]
    proven = []
    for s, es in enumerate(estimates):
        bound = errors[s]
        for t, et in enumerate(estimates):
            if t != s:
                gap = xp.abs(es.numeric - et.numeric) - errors[t]
                bound = xp.maximum(bound, xp.where(xp.isfinite(gap), gap, 0))
        proven.append(bound)
    raised = xp.stack(proven)
    best = xp.argmin(raised, axis=0)  # (b, m)

    def pick(field: str) -> jax.Array:
        if field == "fd_error":
            return xp.take_along_axis(raised, best[None], axis=0)[0]
        stacked = xp.stack([getattr(e, field) for e in estimates])
        index = best[None, None] if field == "slopes" else best[None]  # slopes: (S, 4, b, m)
        return xp.take_along_axis(stacked, index, axis=0)[0]

    fd_error = pick("fd_error")
    first = estimates[0].fd_error
    est = Estimates(*(pick(name) for name in Estimates._fields))
    # Where no estimate moved, the first is kept with its own error.
    return est._replace(fd_error=xp.where(xp.isfinite(fd_error), fd_error, first)), best


def _precision_rescue(
    est: Estimates,
    code: jax.Array,
    analytic: jax.Array,
    analytic64: jax.Array,
    allowance: jax.Array,
    tolerance: jax.Array,
    rtol64: Any,
    leaf_max: Any,
    safety: Any,
    xp: Any = jnp,
) -> jax.Array:
    """Failing elements that are rounding of a right formula, not a wrong formula.

    The same derivative computed in float64 (`analytic64`) passes the comparison the native
    value failed (within `tolerance`, or within float64's own tolerance, safety * fd_error +
    rtol64 * (|numeric| + leaf_max), where that is larger), and the native value differs
    from it by at most `allowance` (the native dtype's rounding, `_precision.allowance`). A
    wrong formula is wrong in float64 too: by more than the comparison resolves, or it
    would not have failed it. An approximate rule (an ODE adjoint at its solver's
    tolerance) that the native comparison cannot tell from exact is judged as exact.

    Returns:
      Boolean mask of rescued elements (a subset of code == FAIL).
    """
    numeric = est.numeric
    a64 = analytic64.astype(numeric.dtype)
    tol64 = safety * est.fd_error + rtol64 * (xp.abs(numeric) + leaf_max)
    agrees = xp.abs(a64 - numeric) <= xp.maximum(tol64, tolerance)
    rounding = xp.abs(analytic.astype(numeric.dtype) - a64) <= allowance
    return (code == FAIL) & agrees & rounding & xp.isfinite(analytic) & xp.isfinite(a64)


combine = jax.jit(ft.partial(_combine, xp=jnp))
assess = jax.jit(ft.partial(_assess, xp=jnp))
combine_host = ft.partial(_combine, xp=np)
measured_noise = jax.jit(ft.partial(_measured_noise, xp=jnp))
measured_noise_host = ft.partial(_measured_noise, xp=np)
assess_host = ft.partial(_assess, xp=np)
swamped_host = ft.partial(_swamped, xp=np)
noise_bound = ft.partial(_noise_bound, xp=jnp)
noise_bound_host = ft.partial(_noise_bound, xp=np)
best_of = ft.partial(_best_of, xp=jnp)
best_of_host = ft.partial(_best_of, xp=np)
refined_truncation = ft.partial(_refined_truncation, xp=jnp)
refined_truncation_host = ft.partial(_refined_truncation, xp=np)
precision_rescue = ft.partial(_precision_rescue, xp=jnp)
precision_rescue_host = ft.partial(_precision_rescue, xp=np)
