"""`_diagnose.explained`: JAX's errors caused by f become one clear error (issue 10 items 12, 15)."""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jaxcheck

X = jnp.linspace(0.5, 1.0, 3)


def _while_loss(x):
    return jnp.sum(lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] * 1.1, c[1] + 1), (x, 0))[0])


@jax.custom_vjp
def wrong_shape(a, b):
    return a * b


wrong_shape.defvjp(lambda a, b: (a * b, (a, b)), lambda res, g: (g[:2], g))


@pytest.mark.parametrize("kind", ["check_grad", "check_vjp"])
def test_while_loop_reverse_mode_names_construct_and_remedy(kind):
    with pytest.raises(ValueError, match="reverse mode through lax.while_loop") as info:
        getattr(jaxcheck, kind)(_while_loss, (X,))
    assert "jaxcheck.check_jvp" in str(info.value)
    assert info.value.__cause__ is None and info.value.jax_error is not None


def test_while_loop_forward_mode_works():
    assert jaxcheck.check_jvp(_while_loss, (X,)).status == "passed"


def test_bwd_cotangent_shape_named():
    with pytest.raises(TypeError) as info:
        jaxcheck.check_vjp(wrong_shape, (X, X), argnums=(0, 1))
    message = str(info.value)
    assert message.startswith(
        "`check_vjp` cannot differentiate f: the custom_vjp rule `wrong_shape`"
    )
    assert re.search(r"float32\[2\] cotangent for the input of float32\[3\]", message)


@pytest.mark.parametrize("kind", ["check_grad", "check_vjp", "check_jvp"])
def test_not_traceable_names_f(kind):
    def f(x):
        return jnp.sum(x) if float(x[0]) > 0 else -jnp.sum(x)

    g = f if kind == "check_grad" else (lambda x: f(x) * x)
    with pytest.raises(TypeError, match=r"jaxcheck needs a jax-traceable `f`: `" + kind):
        getattr(jaxcheck, kind)(g, (X,))


# Issue 10 item 10: empty inputs and outputs pass with "nothing to compare".


def test_empty_leaf_beside_a_full_one_is_checked():
    x, y = jnp.zeros((0,), jnp.float32), jnp.linspace(0.1, 1.0, 3)
    result = jaxcheck.check_vjp(lambda x, y: (2 * x, jnp.sin(y)), (x, y), argnums=(0, 1))
    assert result.status == "passed" and result.n_inputs == 3


def test_empty_everything_reasons_and_numerical_grad():
    x = jnp.zeros((0,), jnp.float32)
    result = jaxcheck.check_grad(jnp.sum, (x,))
    assert (
        result.reason == "nothing to compare: the differentiated inputs are empty (args[0]: f32[0])"
    )
    assert jaxcheck.numerical_grad(jnp.sum, (x,)).shape == (0,)
    out_empty = jaxcheck.check_jvp(lambda x: x[:0], (jnp.ones(3),))
    assert out_empty.status == "passed"
    assert out_empty.reason == "nothing to compare: every output of f is empty (out: f32[0])"
