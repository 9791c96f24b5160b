"""Argument layout: leaf classification, paths, theta round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck import _flatten


def test_paths_offsets_and_skipped_leaves():
    args = (
        {
            "b": jnp.zeros(3),
            "a": jnp.ones((2, 2)),
            "n": jnp.array(1, jnp.int32),
            "k": jax.random.key(0),
        },
        jnp.ones(4),
        "tag",
    )
    layout, diff, dynamic = _flatten.build_layout(args, (0,))
    assert [leaf.path for leaf in layout.diff] == ["args[0]['a']", "args[0]['b']"]
    assert [(leaf.offset, leaf.size) for leaf in layout.diff] == [(0, 4), (4, 3)]
    assert layout.n == 7
    assert {s.path for s in layout.skipped} == {"args[0]['n']", "args[0]['k']"}
    assert len(dynamic) == 3  # the int, the key, and args[1] (not differentiated)
    assert layout.locate(5) == (layout.diff[1], (1,), "")
    assert layout.locate(3)[1] == (1, 1)
    with pytest.raises(IndexError):
        layout.locate(7)


def test_layouts_are_equal_for_equal_shapes_so_kernels_are_reused():
    a, _, _ = _flatten.build_layout(({"w": jnp.ones(3)}, 2), (0,))
    b, _, _ = _flatten.build_layout(({"w": jnp.zeros(3)}, 2), (0,))
    c, _, _ = _flatten.build_layout(({"w": jnp.zeros(4)}, 2), (0,))
    d, _, _ = _flatten.build_layout(({"w": jnp.zeros(3)}, 3), (0,))
    assert a == b and hash(a) == hash(b)
    assert a != c and a != d


def test_complex_leaves_are_two_real_blocks_and_round_trip():
    z = jnp.array([1 + 2j, 3 - 4j], jnp.complex64)
    layout, diff, _ = _flatten.build_layout((z,), (0,))
    theta = _flatten.ravel_leaves(layout, diff)
    np.testing.assert_array_equal(theta, [1, 3, 2, -4])
    assert layout.locate(3) == (layout.diff[0], (1,), "imag")
    back = _flatten.unravel_host(layout, theta)[0]
    np.testing.assert_array_equal(back, np.asarray(z))
    traced = _flatten.unravel(layout, jnp.asarray(theta, jnp.float32), (np.dtype(np.complex64),))[0]
    np.testing.assert_array_equal(np.asarray(traced), np.asarray(z))


def test_python_floats_in_differentiated_args_become_arrays():
    layout, diff, _ = _flatten.build_layout(({"lr": 0.5, "steps": 3}, 1.5), (0,))
    assert [leaf.path for leaf in layout.diff] == ["args[0]['lr']"]
    assert any(s.path == "args[0]['steps']" and "not an array" in s.reason for s in layout.skipped)
    args = _flatten.rebuild_args(layout, diff, [])
    assert args[0]["steps"] == 3 and args[1] == 1.5


@pytest.mark.parametrize(
    "argnums, error, text",
    [
        (3, ValueError, "out of range"),
        ((), ValueError, "is empty"),
        (True, TypeError, "must be an int"),
        ([0.0], TypeError, "must be an int"),
    ],
)
def test_normalize_argnums_errors(argnums, error, text):
    with pytest.raises(error, match=text):
        _flatten.normalize_argnums(argnums, 2)


def test_normalize_argnums_forms():
    assert _flatten.normalize_argnums(None, 3) == (0, 1, 2)
    assert _flatten.normalize_argnums(-1, 3) == (2,)
    assert _flatten.normalize_argnums([0, 2], 3) == (0, 2)


def test_check_args_accepts_lists_and_rejects_arrays():
    assert _flatten.check_args([1, 2]) == (1, 2)
    with pytest.raises(TypeError, match="got a jax.Array"):
        _flatten.check_args(jnp.ones(2))


def test_ravel_output_handles_pytrees_and_complex():
    out = _flatten.ravel_output({"a": jnp.ones((2,)), "b": jnp.array(1 + 2j, jnp.complex64)})
    np.testing.assert_array_equal(np.asarray(out), [1, 1, 1, 2])
