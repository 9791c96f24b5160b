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
