"""Functions `vmap` cannot batch (a `pure_callback` without `vmap_method`) are evaluated
sequentially (`jax.lax.map`), and the report says so (`_engine.batching_problem`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_one_sequential_note

import jaxcheck
from jaxcheck import _engine


def _callback(fn, x):
    return jax.pure_callback(fn, jax.ShapeDtypeStruct(x.shape, x.dtype), x)  # no vmap_method


def _callback_sin(bug: bool):
    """sin as a numpy callback in a custom_vjp; the bwd (also a callback) flips the sign."""

    @jax.custom_vjp
    def np_sin(x):
        return _callback(np.sin, x)

    def bwd(x, g):
        return ((-g if bug else g) * _callback(np.cos, x),)

    np_sin.defvjp(lambda x: (np_sin(x), x), bwd)
    return np_sin


X = jnp.array([0.3, -0.7, 1.1], jnp.float32)
SEQUENTIAL = "f cannot be batched with vmap (NotImplementedError: vmap is only supported for the pure_callback"


def test_unbatchable_reason_is_jaxs_error():
    reason = _engine.batching_problem(
        lambda: jax.eval_shape(jax.vmap(_callback_sin(False)), X[None])
    )
    assert reason.startswith("NotImplementedError: vmap is only supported for the pure_callback")
    assert _engine.batching_problem(lambda: jax.eval_shape(jax.vmap(jnp.sin), X[None])) is None


@pytest.mark.parametrize("bug", [False, True], ids=["correct", "broken"])
def test_check_grad_of_a_callback_rule(bug):
    rule = _callback_sin(bug)
    result = jaxcheck.check_grad(lambda x: jnp.sum(rule(x)), (X,), locate_rules=False)
    assert result.status == ("failed" if bug else "passed"), str(result)
    assert_one_sequential_note(result, SEQUENTIAL)
    if bug:
        assert result.failed_leaves[0].path == "args[0]"


@pytest.mark.parametrize("bug", [False, True], ids=["correct", "broken"])
def test_check_vjp_of_a_callback_rule(bug):
    result = jaxcheck.check_vjp(_callback_sin(bug), (X,), locate_rules=False)
    assert result.status == ("failed" if bug else "passed"), str(result)
    assert result.notes[0].startswith(SEQUENTIAL)
    assert result.to_dict()["notes"] == list(result.notes)
    if bug:
        assert result.failed_blocks[0].worst.where in {"[0] -> [0]", "[1] -> [1]", "[2] -> [2]"}


def test_unbatchable_derivative_alone_is_noted():
    # f batches (jnp), but its bwd multiplies the cotangent inside a callback.
    @jax.custom_vjp
    def scale(x):
        return 2.0 * x

    scale.defvjp(lambda x: (2.0 * x, None), lambda _, g: (_callback(lambda a: 2.0 * a, g),))
    result = jaxcheck.check_vjp(scale, (X,), locate_rules=False)
    assert result.passed, str(result)
    assert result.notes == (
        "the VJP of f cannot be batched with vmap (NotImplementedError: vmap is only supported "
        "for the pure_callback primitive when vmap_method is one of 'sequential', "
        "'sequential_unrolled', 'expand_dims', 'broadcast_all', or 'legacy_vectorized'. Got "
        "vmap_method=None.): Jacobian products computed one at a time (jax.lax.map)",
    )


def test_batchable_functions_have_no_notes():
    assert jaxcheck.check_grad(lambda x: jnp.sum(jnp.sin(x)), (X,)).notes == ()
