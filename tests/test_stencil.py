"""Stencil combination and element classification, on exactly known functions."""

import jax
import numpy as np
import pytest

from jaxcheck import _stencil as st

OFFSETS = np.array([-2.0, -1.0, 1.0, 2.0])


def _estimates(fn, x0, h, xp_host=True):
    points = (x0 + OFFSETS * h)[None, :]
    values = np.array([[fn(p)] for p in points[0]], np.float64)[None]
    f0 = np.array([fn(x0)], np.float64)
    combine = st.combine_host if xp_host else st.combine
    return combine(values, f0, points, np.array([x0]))


def test_richardson_is_exact_for_quartic_polynomials():
    est = _estimates(lambda x: 3 * x**4 - x**3 + 2 * x, 0.7, 1e-2)
    assert est.numeric[0, 0] == pytest.approx(12 * 0.7**3 - 3 * 0.7**2 + 2, rel=1e-12)
    assert est.fd_error[0, 0] > 0


def test_host_and_jitted_versions_agree():
    host = _estimates(np.sin, 0.3, 1e-3)
    with jax.enable_x64(True):
        dev = _estimates(np.sin, 0.3, 1e-3, xp_host=False)
        for name, a, b in zip(st.Estimates._fields, host, dev):
            # The rounding term includes the fourth difference of the values, a difference of
            # nearly equal numbers that XLA (fused multiply-adds) and numpy round
            # differently in its last ~1e-13: relatively 1e-3 of it, 1e-6 of fd_error.
            rtol = {"noise": 1e-2, "fd_error": 1e-6}.get(name, 1e-12)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, err_msg=name)


def _code(fn, analytic, x0=0.0, h=1e-3):
    est = _estimates(fn, x0, h)
    return int(st.assess_host(est, np.array([[analytic]]), 1e-10, 1e-12, 3.0).code[0, 0])


def test_codes_for_smooth_functions():
    assert _code(np.sin, np.cos(0.5), x0=0.5) == st.PASS
    assert _code(np.sin, -np.cos(0.5), x0=0.5) == st.FAIL
    assert _code(np.sin, np.nan, x0=0.5) == st.ANALYTIC_NONFINITE
    with np.errstate(invalid="ignore", divide="ignore"):  # log of 0 and -1e-3 on purpose
        assert _code(lambda x: np.log(x), 1.0, x0=1e-3, h=1e-3) == st.REF_NONFINITE


@pytest.mark.parametrize("offset", [0.0, 0.3e-3, 0.9e-3, 1.5e-3])
def test_kinks_inside_the_stencil_are_not_failures(offset):
    relu = lambda x: max(x - offset, 0.0)
    for analytic in (0.0, 1.0) if offset == 0.0 else (0.0,):
        assert _code(relu, analytic) in (st.PASS, st.NONSMOOTH)


def test_kink_with_analytic_outside_the_one_sided_slopes():
    assert _code(abs, 3.0) == st.FAIL_NONSMOOTH
    assert _code(abs, 0.0) == st.NONSMOOTH


def test_tolerance_formula():
    est = _estimates(np.exp, 0.0, 1e-4)
    a = st.assess_host(est, np.array([[1.0]]), 1e-3, 0.5, 3.0)
    assert a.tolerance[0, 0] == pytest.approx(
        3.0 * est.fd_error[0, 0] + 1e-3 * abs(est.numeric[0, 0]) + 0.5
    )


def _refined(fn, x0, big_h):
    """`refined_truncation` of the stencil at +-H, +-2H with the one at +-2H, +-4H."""
    near = _estimates(fn, x0, big_h)
    points = (x0 + OFFSETS * 2 * big_h)[None, :]
    values = np.array([[fn(p)] for p in points[0]], np.float64)[None]
    f0 = np.array([fn(x0)], np.float64)
    return near, st.refined_truncation_host(near, values, f0, points, np.array([x0]))


def test_the_higher_order_look_bounds_the_extrapolated_values_own_error():
    # atan at 1000 with H = 1.55 (256 h in float64): D(H) is off by ~2e-12, the extrapolated
    # value by ~1e-17; the look brings the bound from the first to the rounding level.
    near, refined = _refined(np.arctan, 1000.0, 1.55)
    truth = 1.0 / (1.0 + 1000.0**2)
    error = abs(refined.numeric[0, 0] - truth)
    assert near.fd_error[0, 0] > 1e-12
    assert error <= refined.fd_error[0, 0] < 1e-14
    assert refined.numeric[0, 0] == near.numeric[0, 0]


@pytest.mark.parametrize(
    "fn, x0, big_h",
    [
        (lambda x: np.sin(40.0 * x), 0.3, 0.02),  # H not small against f's period: no
        (np.exp, 0.0, 1e-6),  # truncation far below rounding: nothing to refine
    ],
    ids=["outside-asymptotic-range", "rounding-bound"],
)
def test_the_higher_order_look_changes_nothing_it_cannot_trust(fn, x0, big_h):
    near, refined = _refined(fn, x0, big_h)
    assert refined.fd_error[0, 0] == near.fd_error[0, 0]
