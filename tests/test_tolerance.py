"""Step policy and default tolerances."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck import _flatten, _tolerance


def test_steps_scale_with_each_leaf_and_are_exact():
    args = ({"big": jnp.array([1e3, -2e3]), "small": jnp.array([1e-3, 0.0]), "zero": jnp.zeros(2)},)
    layout, diff, _ = _flatten.build_layout(args, (0,))
    theta = _flatten.ravel_leaves(layout, diff)
    dtypes = tuple(np.dtype(np.float32) for _ in layout.diff)
    h = _tolerance.steps(layout, theta, dtypes, None)
    rel = _tolerance.relative_step(np.float32)
    # scale = max(|x_i|, min(1, rms of the leaf)): each element by its own size
    np.testing.assert_allclose(h[:2], rel * np.array([1e3, 2e3]))
    assert h[2] == pytest.approx(rel * 1e-3) and h[3] == pytest.approx(rel * np.sqrt(0.5e-6))
    np.testing.assert_allclose(h[4:], rel)
    points = _tolerance.stencil_points(
        theta, h, np.zeros(theta.size, np.int8), (np.dtype(np.float32),)
    )
    np.testing.assert_array_equal(points, points.astype(np.float32).astype(np.float64))
    assert np.all(np.diff(points, axis=1) > 0)


def test_mixed_scales_in_one_leaf_get_their_own_steps():
    layout, diff, _ = _flatten.build_layout((jnp.array([1e-8, 1.0, 1e8, -3e3, 0.0]),), (0,))
    h = _tolerance.steps(layout, _flatten.ravel_leaves(layout, diff), (np.dtype(np.float32),), None)
    rel = _tolerance.relative_step(np.float32)
    np.testing.assert_allclose(h, rel * np.array([1.0, 1.0, 1e8, 3e3, 1.0]))


def test_user_eps_is_absolute():
    layout, diff, _ = _flatten.build_layout((jnp.array([1e3, 1.0]),), (0,))
    h = _tolerance.steps(layout, _flatten.ravel_leaves(layout, diff), (np.dtype(np.float32),), 1e-2)
    np.testing.assert_array_equal(h, [1e-2, 1e-2])


def test_relative_step_is_cube_root_of_eps():
    assert _tolerance.relative_step(np.float64) == pytest.approx(
        np.finfo(np.float64).eps ** (1 / 3)
    )
    assert 4e-3 < _tolerance.relative_step(np.float32) < 6e-3


def test_default_tolerances_by_dtype():
    assert _tolerance.default_tolerance(np.dtype(np.float32)).rtol == 2e-5
    assert _tolerance.default_tolerance(np.dtype(np.float64)).rtol == 1e-10
    assert _tolerance.default_tolerance(np.dtype(np.complex64)).rtol == 2e-5
    assert _tolerance.default_tolerance(np.dtype(jnp.bfloat16)).rtol > 1e-3
