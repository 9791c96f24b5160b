"""f's rounding noise and secant scale, measured along random directions (`_noise`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck import _noise
from jaxcheck._problem import build_problem


def _line(fn, sigma: float, seed: int = 0, rows: int = 3) -> np.ndarray:
    """(rows, K, 1) values of fn at equally spaced t plus independent noise of sd `sigma`."""
    t = np.arange(_noise.NOISE_POINTS, dtype=np.float64) * 1e-5
    rng = np.random.default_rng(seed)
    return np.stack([fn(t) + sigma * rng.standard_normal(t.size) for _ in range(rows)])[..., None]


@pytest.mark.parametrize("sigma", [1e-12, 1e-6, 1e-2])
def test_estimate_recovers_the_noise_of_a_smooth_function(sigma):
    estimates = [
        _noise.estimate(_line(lambda t: np.exp(3 * t) + t**2, sigma, seed))[0] for seed in range(20)
    ]
    assert 0.7 * sigma < np.median(estimates) < 1.3 * sigma
    assert 0.4 * sigma < min(estimates) and max(estimates) < 2.0 * sigma


def test_estimate_sees_no_noise_in_a_smooth_polynomial():
    # Differences of orders 4 to 6 remove a cubic exactly (up to float64 rounding).
    values = _line(lambda t: 2 + t - 3 * t**3, 0.0)
    assert _noise.estimate(values)[0] < 1e-15


def test_estimate_ignores_non_finite_rows_and_is_zero_without_finite_values():
    values = _line(np.sin, 1e-6)
    values[0, 3, 0] = np.nan
    assert 0.3e-6 < _noise.estimate(values)[0] < 3e-6
    assert _noise.estimate(np.full((2, _noise.NOISE_POINTS, 1), np.inf))[0] == 0.0


def test_offsets_are_equally_spaced_around_zero_then_the_secant_steps():
    t = _noise.offsets(np.dtype(np.float32))
    tiny = t[: _noise.NOISE_POINTS]
    assert tiny[_noise.NOISE_POINTS // 2] == 0.0
    np.testing.assert_allclose(np.diff(tiny), tiny[1] - tiny[0])
    assert tiny[1] - tiny[0] == pytest.approx(_noise.NOISE_STEP * np.finfo(np.float32).eps)
    assert list(t[-2:]) == [-_noise.SECANT_STEP, _noise.SECANT_STEP]


def test_cancellation_noise_is_measured_far_above_eps_times_f():
    # gelu(x, approximate=True) = 0.5 x (1 + tanh(z)): 1 + tanh(z) cancels far left, so f's
    # rounding is eps * |0.5 x|, not eps * |f| (issue 10 item 2).
    x = jnp.linspace(-6.0, -4.0, 8)
    with jax.enable_x64(True):
        p = build_problem("vjp", lambda v: jax.nn.gelu(v, approximate=True), (x.astype("f8"),))
        f = np.abs(np.asarray(jax.nn.gelu(x.astype("f8"), approximate=True)))
        noise = p.ev.noise
    eps = np.finfo(np.float64).eps
    assert np.all(noise > 100 * eps * f)
    assert np.all(noise < 16 * eps * 3.0)  # a few ulps of the intermediates' size


def test_noise_of_a_benign_function_is_a_few_ulps_of_f():
    with jax.enable_x64(True):
        x = jnp.linspace(0.5, 2.0, 8, dtype="f8")
        p = build_problem("vjp", jnp.sin, (x,))
        assert np.all(p.ev.noise <= 8 * np.finfo(np.float64).eps * np.abs(np.sin(x)))


def test_secant_scale_sees_f_change_where_its_gradient_vanishes():
    # det of a rank-1 matrix: every derivative is exactly 0, yet f moves over 10% steps.
    m = np.outer([1.0, 2.0, 3.0], [0.5, -1.0, 2.0])
    with jax.enable_x64(True):
        p = build_problem("grad", jnp.linalg.det, (jnp.asarray(m),))
        assert np.all(np.asarray(jax.grad(jnp.linalg.det)(jnp.asarray(m))) == 0)
        assert p.ev.measured.secant[0] > 1e-3


def test_a_constant_output_has_no_noise_and_no_secant():
    with jax.enable_x64(True):
        p = build_problem(
            "vjp", lambda x: jnp.stack([jnp.sum(x), 0.0 * x[0] + 1.0]), (jnp.ones(3),)
        )
        measured = p.ev.measured
    assert measured.noise[1] == 0.0
    assert measured.secant[1] == 0.0
    assert measured.secant[0] > 0.0
