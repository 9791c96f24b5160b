"""Rounding of a right formula told from a wrong formula (`_precision`, issue 10 item 5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import vjp_mutant

import jaxcheck
from jaxcheck import _jacobian_full, _precision

SATURATED = jnp.asarray([4.75, 5.0, -4.9, 5.3], jnp.float32)  # tanh' = 1 - tanh**2 cancels


def test_allowance_is_two_digits_or_the_noise_over_the_scale():
    a64 = np.array([1.0, 1e-9, 0.0])
    got = _precision.allowance(a64, np.array([1e-12]), np.array([1.0, 1.0, 1e-3]))
    np.testing.assert_allclose(got, [1e-2, 256e-12, 256e-9])


def test_digits_lost_counts_all_digits_for_a_wiped_out_value():
    eps = float(np.finfo(np.float32).eps)
    got = _precision.digits_lost(np.array([1.0 + 1e-3, 0.0, 5.0]), np.array([1.0, 2e-6, 0.0]), eps)
    full = np.log10(1 / eps)
    np.testing.assert_allclose(got, [np.log10(1e-3 / eps), full, full], rtol=1e-6)


def test_only_narrower_analytic_sides_get_the_second_look():
    assert _precision.applies(True, np.dtype(np.float32))
    assert _precision.applies(True, np.dtype(np.complex64))
    assert not _precision.applies(True, np.dtype(np.float64))
    assert not _precision.applies(False, np.dtype(np.float32))


@pytest.mark.parametrize("on_device", [False, True], ids=["host-tiles", "device-tiles"])
@pytest.mark.parametrize("check", [jaxcheck.check_vjp, jaxcheck.check_jvp])
def test_saturated_tanh_passes_with_a_precision_note(check, on_device, monkeypatch):
    if on_device:  # tiles compared by the jitted tile_stats, as large Jacobians are
        monkeypatch.setattr(_jacobian_full, "HOST_ENTRIES", 0)
    result = check(jnp.tanh, (SATURATED,), sparse=False)
    assert result.status == "passed", str(result)
    (note,) = [n for n in result.notes if n.startswith("precision:")]
    assert "digits to float32 rounding of a right formula" in note
    assert "args[0] -> out" in note


def test_saturated_tanh_fails_under_precision_strict():
    result = jaxcheck.check_vjp(jnp.tanh, (SATURATED,), precision="strict")
    assert result.status == "failed", str(result)
    assert any('`precision="strict"`' in n for n in result.notes)


def test_a_wrong_formula_is_not_rescued_at_the_same_points():
    result = jaxcheck.check_vjp(vjp_mutant(jnp.tanh, lambda dtype: 1 + 1e-3), (SATURATED,))
    assert result.status == "failed", str(result)
    assert not any(n.startswith("precision:") for n in result.notes)


@pytest.mark.parametrize("check", [jaxcheck.check_vjp, jaxcheck.check_grad])
def test_an_approximate_rule_below_the_float32_resolution_is_judged_as_exact(check):
    # A rule 1e-6 off in every precision (an ODE adjoint at its solver's tolerance), whose
    # float32 value also loses digits to saturation: the float32 comparison (rtol 2e-5)
    # cannot tell 1e-6 from exact, so its failure is rounding; float64's own tolerance
    # (~1e-10) would have kept it failing.
    f = vjp_mutant(jnp.tanh, 1 + 1e-6)
    result = check((lambda v: jnp.sum(f(v))) if check is jaxcheck.check_grad else f, (SATURATED,))
    assert result.status == "passed", str(result)
    assert any(n.startswith("precision:") for n in result.notes), result.notes


def test_a_float32_only_error_beyond_rounding_is_not_rescued():
    # Right in float64, 5% off in float32: not rounding (more than two digits, far more
    # than f's rounding over the scale), so the float64 agreement does not excuse it.
    factor = lambda dtype: 1.05 if dtype == jnp.float32 else 1.0
    x = jnp.linspace(0.5, 2.0, 4, dtype=jnp.float32)
    result = jaxcheck.check_vjp(vjp_mutant(jnp.sin, factor), (x,))
    assert result.status == "failed", str(result)


def test_check_grad_notes_a_derivative_that_float32_wipes_out():
    x = jnp.linspace(-6.0, -4.0, 16, dtype=jnp.float32)
    result = jaxcheck.check_grad(lambda v: jnp.sum(jax.nn.gelu(v, approximate=True)), (x,))
    assert result.status == "passed", str(result)
    assert result.reference_fallback is None
    assert any("lose up to" in n and "float64" in n for n in result.notes), result.notes


SATURATED_COMPLEX = jnp.asarray([6.589 - 1.943j, 0.5 + 0.3j, -5.2 + 0.9j], jnp.complex64)


@pytest.mark.parametrize("factor", [1.0, 1 + 1e-3], ids=["right", "wrong"])
def test_saturated_complex_tanh_rounds_as_one_complex_value(factor):
    # JAX's own testOpGrad (tanh, complex64): 1 - tanh(z)**2 with |tanh(z)| ~ 1 loses five
    # digits, in the imaginary part as in the real one, while f's imaginary output is small;
    # the rounding allowance of a complex entry follows the complex value (both parts).
    f = jnp.tanh if factor == 1.0 else vjp_mutant(jnp.tanh, factor)
    result = jaxcheck.check_vjp(f, (SATURATED_COMPLEX,))
    assert result.status == ("passed" if factor == 1.0 else "failed"), str(result)
