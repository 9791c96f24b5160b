"""`order=` on check_grad / check_vjp / check_jvp (`jaxcheck._orders`), float32 and float64."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxcheck
from jaxcheck import _orders
from jaxcheck.catalogue.rule_cases import rule_cases


@jax.custom_vjp
def sin_sg(x):
    return jnp.sin(x)


# Right at order 1; at order 2 the stopped cos has no derivative, so the Hessian is 0.
sin_sg.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * lax.stop_gradient(jnp.cos(x)),))


def sin_loss(x):
    return jnp.sum(sin_sg(x))


X = jnp.array([0.5, -1.0, 1.5], jnp.float32)


def test_stop_gradient_rule_passes_order_1_and_fails_order_2_naming_the_element():
    first = jaxcheck.check_grad(sin_loss, (X,))
    assert first.passed and first.order == 1
    result = jaxcheck.check_grad(sin_loss, (X,), order=2)
    assert result.status == "failed" and result.order == 2
    lines = str(result).splitlines()
    assert lines[0].startswith("FAILED: check_jvp(grad(sin_loss)): order 2: 1 of 1 blocks wrong")
    (block,) = result.failed_blocks
    assert block.path == "args[0] -> out"
    assert block.worst.where == "[2] -> [2]"  # |sin(1.5)| is the largest missing term
    assert block.worst.analytic == 0.0
    assert block.worst.numeric == pytest.approx(-float(jnp.sin(1.5)), rel=1e-4)
    assert re.search(r"evaluations, [0-9.]+ s, order 2$", "\n".join(lines), re.M)
    assert any(
        "`sin_sg`" in finding and "second-order" in finding for finding in result.rule_findings
    )
    assert result.to_dict()["order"] == 2
    with pytest.raises(jaxcheck.GradCheckError, match=re.escape("[2] -> [2]")):
        jaxcheck.assert_grad_correct(sin_loss, (X,), order=2)


def test_stop_gradient_rule_through_check_vjp_order_2():
    assert jaxcheck.check_vjp(sin_sg, (X,)).passed
    result = jaxcheck.check_vjp(sin_sg, (X,), order=2, locate_rules=False)
    assert result.status == "failed" and result.order == 2
    assert result.name == "vjp(sin_sg)"
    assert result.reason.startswith("order 2: ")


def test_order_1_is_unchanged():
    result = jaxcheck.check_grad(sin_loss, (X,), order=1)
    assert result.order == 1 and "order" not in str(result).splitlines()[-1]
    assert result.to_dict()["order"] == 1 and result.to_dict()["notes"] == []


def test_failing_first_order_is_reported_as_order_1():
    @jax.custom_vjp
    def wrong(x):
        return jnp.sin(x)

    wrong.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (-g * jnp.cos(x),))
    result = jaxcheck.check_grad(lambda x: jnp.sum(wrong(x)), (X,), order=3, locate_rules=False)
    assert isinstance(result, jaxcheck.GradCheckResult)
    assert result.status == "failed" and result.order == 1
    assert result.reason.startswith("order 1: ")


def _mlp_loss(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def _mlp_args(dtype):
    keys = jax.random.split(jax.random.key(0), 4)
    params = {
        "w1": jax.random.normal(keys[0], (2, 3), dtype),
        "b1": jnp.linspace(-0.2, 0.2, 3, dtype=dtype),
        "w2": jax.random.normal(keys[1], (3, 1), dtype),
    }
    return (
        params,
        jax.random.normal(keys[2], (4, 2), dtype),
        jax.random.normal(keys[3], (4, 1), dtype),
    )


def test_order_2_of_a_correct_mlp_loss_passes():
    result = jaxcheck.check_grad(_mlp_loss, _mlp_args(jnp.float32), order=2)
    assert result.passed, str(result)
    assert result.order == 2 and result.reason.startswith("orders 1 to 2 passed; order 2: ")
    assert {b.input_path for b in result.blocks} == {
        "args[0]['w1']",
        "args[0]['b1']",
        "args[0]['w2']",
    }


def test_order_3_of_check_jvp_passes():
    result = jaxcheck.check_jvp(jnp.tanh, (X,), order=3)
    assert result.passed and result.order == 3, str(result)
    assert result.name == "jvp(jvp(tanh))"


@pytest.mark.parametrize("order", [0, -1])
def test_order_must_be_positive(order):
    with pytest.raises(ValueError, match=r"`order` must be a positive int"):
        jaxcheck.check_grad(sin_loss, (X,), order=order)


@pytest.mark.parametrize("order", [1.5, True, "2"])
def test_order_must_be_an_int(order):
    with pytest.raises(TypeError, match=r"`order` must be a positive int"):
        jaxcheck.check_vjp(jnp.sin, (X,), order=order)


# JAX's own differentiable lax ops, one per element of x: their second derivatives pass, in
# both precisions (a wrong one would be named by its element, the Hessian's diagonal entry).
LAX_OPS = (
    ("sin", lax.sin, 0.5),
    ("tanh", lax.tanh, -1.0),
    ("exp", lax.exp, 0.7),
    ("log", lax.log, 1.5),
    ("logistic", lax.logistic, -0.3),
    ("erf", lax.erf, 0.4),
    ("rsqrt", lax.rsqrt, 0.8),
    ("atan2", lambda x: lax.atan2(x, 1.0 + x**2), 0.9),
)


def _lax_ops_loss(x):
    return sum(op(x[i]) for i, (_, op, _) in enumerate(LAX_OPS))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=str)
def test_lax_ops_pass_at_order_2(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.array([point for _, _, point in LAX_OPS], dtype)
        result = jaxcheck.check_grad(_lax_ops_loss, (x,), order=2, locate_rules=False)
    assert result.passed and result.order == 2, str(result)
    assert result.blocks[0].n_checked == len(LAX_OPS) ** 2


# The rule catalogue at order 2 (a sample; benchmarks/bench_orders.py runs all of it).
CASES = {c.name: c for c in rule_cases()}
CAUGHT_AT = {  # the order at which a broken rule fails (None: correct, passes)
    "vjp/sin": None,
    "jvp/sin": None,
    "vjp/sin_sign": 1,
    "vjp/second_order_stop_gradient": 2,
    "jvp/second_order_stop_gradient": 2,
}
FLOAT64 = ["vjp/sin", "jvp/sin", "vjp/sin_sign", "vjp/second_order_stop_gradient"]


def _check_case(name, dtype):
    case = CASES[name]
    with jax.enable_x64(dtype == jnp.float64):
        f, args = case.build(dtype)
        check = jaxcheck.check_vjp if case.kind == "vjp" else jaxcheck.check_jvp
        result = check(f, args, order=2, locate_rules=False)
    if CAUGHT_AT[name] is None:
        assert result.passed and result.order == 2, str(result)
        return
    assert result.status == "failed" and result.order == CAUGHT_AT[name], str(result)
    paths = {b.input_path for b in result.failed_blocks} | {
        b.output_path for b in result.failed_blocks
    }
    assert CASES[name].expected_path in paths, str(result)


@pytest.mark.parametrize("name", sorted(CAUGHT_AT))
def test_catalogue_at_order_2_float32(name):
    _check_case(name, jnp.float32)


@pytest.mark.parametrize("name", FLOAT64)
def test_catalogue_at_order_2_float64(name):
    _check_case(name, jnp.float64)


def test_a_derivative_jax_cannot_differentiate_is_a_clear_error():
    @jax.custom_vjp
    def np_sin(x):
        return jnp.sin(x)

    def bwd(x, g):
        cos = jax.pure_callback(
            np.cos, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="sequential"
        )
        return (g * cos,)

    np_sin.defvjp(lambda x: (jnp.sin(x), x), bwd)
    assert jaxcheck.check_vjp(np_sin, (X,), locate_rules=False).passed
    message = (
        "`order=2`: JAX cannot differentiate `vjp(np_sin)` (the order-1 derivative of `np_sin`) to "
        "check order 2: ValueError: Pure callbacks do not support JVP."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        jaxcheck.check_vjp(np_sin, (X,), order=2, locate_rules=False)


def test_catalogue_sinc_rule_is_right_at_order_1_only():
    # Its bwd returns the constant 0 at x == 0 (a `where`), whose derivative is 0; sinc''(0) = -1/3.
    f, args = CASES["vjp/sinc_at_zero"].build(jnp.float32)
    result = jaxcheck.check_vjp(f, args, order=2, locate_rules=False)
    assert result.status == "failed" and result.order == 2, str(result)
    assert result.failed_blocks[0].worst.where == "[1] -> [1]"  # args[0][1] == 0.0
    assert result.failed_blocks[0].worst.analytic == 0.0


def test_validate_order_returns_the_int():
    assert _orders.validate_order(3) == 3
