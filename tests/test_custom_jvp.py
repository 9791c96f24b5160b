"""check_custom_jvp / assert_custom_jvp_correct: every check both ways, float32 and float64, JAX's own rules."""

import functools as ft
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck.catalogue.rule_cases import rule_cases

CASES = {c.name: c for c in rule_cases() if c.kind == "jvp"}
# Float64 runs a subset (time): a correct rule and a broken rule for every check.
F64 = (
    "jvp/sin",
    "jvp/pytree",
    "jvp/int_arg",
    "jax/relu",
    "jax/softmax",
    "jax/logit",
    "jvp/sin_sign",
    "jvp/approx_primal",
    "jvp/tangent_wrong_shape",
    "jvp/affine",
    "jvp/callback_tangent",
    "jvp/negative_branch",
    "jvp/tiny_bug",
    "jvp/vmap_only",
    "jvp/jit_only",
    "jvp/second_order_stop_gradient",
)


@ft.cache
def checked(name):
    """`check_custom_jvp` of a float32 catalogue case with its default options, computed once
    per test process: the catalogue test and the tests that read its findings share it."""
    f, args = CASES[name].build(jnp.float32)
    return jaxcheck.check_custom_jvp(f, args, order=CASES[name].order)


def verify(case, dtype):
    """A correct rule passes every check; a broken one is caught by its check, naming its path."""
    if dtype == jnp.float32:
        result = checked(case.name)
    else:
        f, args = case.build(dtype)
        result = jaxcheck.check_custom_jvp(f, args, order=case.order)
    report = str(result)
    if not case.broken:
        assert result.status == "passed", report
        assert all(
            c.status == "passed" or (c.status == "skipped" and not c.inconclusive)
            for c in result.checks
        ), report
        return result
    check = result.check(case.expected_check)
    assert result.status == "failed", report
    assert check.status in ("failed", "error"), report
    if case.expected_path is not None:
        assert check.where.startswith(case.expected_path), report
        if case.expected_path.startswith("args["):
            assert check.argument == case.expected_path[: case.expected_path.index("]") + 1], report
    row = [line for line in report.splitlines() if line.startswith(f"  {case.expected_check} ")]
    assert row and check.status in row[0] and (case.expected_path or "") in row[0], report
    return result


@pytest.mark.parametrize("case", list(CASES.values()), ids=lambda c: c.name)
def test_catalogue_float32(case):
    verify(case, jnp.float32)


@pytest.mark.parametrize("name", F64)
def test_catalogue_float64(name):
    with jax.enable_x64(True):
        verify(CASES[name], jnp.float64)


def run(name, dtype=jnp.float32, **kw):
    if dtype == jnp.float32 and not kw:
        return checked(name)
    f, args = CASES[name].build(dtype)
    return jaxcheck.check_custom_jvp(f, args, order=CASES[name].order, **kw)


# -- JAX's own rules ----------------------------------------------------------------------------


def test_which_jax_functions_are_custom_rules():
    """What the catalogue relies on in jax 0.10.2: these are rule objects, these are plain functions."""
    assert isinstance(jax.nn.relu, jax.custom_jvp) and isinstance(jax.nn.relu6, jax.custom_jvp)
    assert isinstance(jax.scipy.special.logit, jax.custom_jvp) and isinstance(
        jax.scipy.special.xlogy, jax.custom_jvp
    )
    # softmax / slogdet / det dispatch to private custom_jvp objects; gelu and logsumexp are plain functions.
    for fn in (jax.nn.softmax, jnp.linalg.slogdet, jax.nn.gelu, jax.scipy.special.logsumexp):
        assert not isinstance(fn, (jax.custom_jvp, jax.custom_vjp))
    with pytest.raises(TypeError, match="jitted function"):
        jaxcheck.check_custom_jvp(jnp.linalg.slogdet, (jnp.eye(3),))


def test_softmax_rule_holds_the_infinite_initial_fixed():
    result = run("jax/softmax")
    assert result.passed, str(result)
    assert any("args[3] holds NaN/Inf" in n for n in result.notes) and any(
        "nondiff_argnums=(1,)" in n for n in result.notes
    )


def test_relu_at_points_away_from_the_kink():
    x = jnp.array([-1.5, -0.02, 0.015, 2.0], jnp.float32)  # |x| > 1e-2
    assert jaxcheck.check_custom_jvp(jax.nn.relu, (x,)).passed


# -- findings ------------------------------------------------------------------------------------


def test_branch_bug_is_caught_along_x():
    result = run("jvp/negative_branch")
    fd = result.check("fd")
    assert fd.status == "failed" and fd.path == "args[0]"
    if fd.index is not None:  # check_jvp located the entry: a negative x
        x = np.asarray(CASES["jvp/negative_branch"].build(jnp.float32)[1][0])
        assert x[fd.index] < 0


def test_pytree_bug_names_the_input_leaf():
    fd = run("jvp/pytree_bug").check("fd")
    assert fd.argument == "args[0]" and fd.path == "args[0]['b']" and "-> out[0]" in fd.message


def test_structure_messages():
    shape = run("jvp/tangent_wrong_shape").check("structure")
    assert shape.path == "out" and "shape (1, 5); the output has shape (5,)" in shape.message
    dtype = run("jvp/tangent_wrong_dtype").check("structure")
    assert "dtype bfloat16; expected float32" in dtype.message


def test_integer_output_takes_a_float0_tangent():
    result = run("jax/frexp")
    assert result.passed and result.check("structure").status == "passed"
    # frexp's f.fun works on the bits: JAX's autodiff of it is zero where the rule is right
    assert (
        result.check("autodiff").status == "skipped"
        and "inaccurate" in result.check("autodiff").message
    )


def test_exceptions_in_the_rule_are_findings():
    result = run("jvp/jvp_raises")
    primal = result.check("primal")
    assert (
        primal.status == "error"
        and primal.message.startswith("jvp raised TypeError:")
        and "f32[5]" in primal.message
    )
    assert all(c.status == "skipped" for c in result.checks[1:])


def test_affine_tangent_fails_linearity_and_adjoint():
    result = run("jvp/affine")
    assert (
        result.check("linearity").status == "failed"
        and "zero tangent" in result.check("linearity").message
    )
    adjoint = result.check("adjoint")
    assert adjoint.status == "failed" and "<u, J v>" in adjoint.message


@pytest.mark.parametrize("name", ["jvp/callback_tangent", "jvp/stop_gradient_tangent"])
def test_forward_correct_but_not_transposable(name):
    result = run(name)
    assert result.check("fd").status == "passed" and result.check("linearity").status == "passed"
    adjoint = result.check("adjoint")
    assert adjoint.status == "error" and "transpose" in adjoint.message
    assert any("jax.grad" in d for d in adjoint.details)


def test_tiny_bug_is_below_fd_resolution_but_caught_by_autodiff():
    result = run("jvp/tiny_bug")
    assert result.check("fd").status == "passed"
    assert (
        result.check("autodiff").status == "failed"
        and result.check("autodiff").argument == "args[0]"
    )


def test_vmap_only_bug():
    result = run("jvp/vmap_only")
    assert result.check("vmap").status == "failed" and result.check("jit").status == "passed"
    assert result.check("fd").status == "passed" and any(
        "vmap" in d for d in result.check("fd").details
    )


def test_jit_only_bug():
    jit = run("jvp/jit_only").check("jit")
    assert jit.status == "error" and "TracerArrayConversionError" in jit.message


def test_second_order_bug_passes_order_1():
    f, args = CASES["jvp/second_order_stop_gradient"].build(jnp.float32)
    assert jaxcheck.check_custom_jvp(f, args).passed
    assert CASES["jvp/second_order_stop_gradient"].order == 2
    second = run("jvp/second_order_stop_gradient").check("second-order")  # order=2
    assert second.status == "failed" and second.path == "args[0]"


# -- result, assert twin, misuse ---------------------------------------------------------------------


def test_report_and_json():
    result = run("jvp/sin_sign")
    lines = str(result).splitlines()
    assert lines[0].startswith("FAILED: check_custom_jvp(sin): ") and "args[0]" in lines[0]
    names = [l.split()[0] for l in lines[4:12]]
    assert names == ["primal", "structure", "linearity", "fd", "autodiff", "adjoint", "vmap", "jit"]
    data = json.loads(result.to_json())
    assert (
        data["kind"] == "custom_jvp"
        and data["checks"][3]["name"] == "fd"
        and data["checks"][3]["status"] == "failed"
    )


def test_assert_twin():
    assert jaxcheck.assert_custom_jvp_correct(
        jax.nn.relu, (jnp.array([-1.0, 2.0], jnp.float32),)
    ).passed
    f, args = CASES["jvp/sin_sign"].build(jnp.float32)
    with pytest.raises(
        jaxcheck.GradCheckError, match=re.escape("FAILED: check_custom_jvp(sin)")
    ) as info:
        jaxcheck.assert_custom_jvp_correct(f, args)
    assert info.value.result.check("fd").status == "failed"


def test_misuse_is_a_clear_type_error():
    x = (jnp.ones(3),)
    with pytest.raises(TypeError, match=r"`f` must be a `jax.custom_jvp` function"):
        jaxcheck.check_custom_jvp(jnp.sin, x)
    vjp_rule = jax.custom_vjp(jnp.sin)
    vjp_rule.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
    with pytest.raises(
        TypeError,
        match=r"`f` is a `jax.custom_vjp` function \(sin\); use `jaxcheck.check_custom_vjp`",
    ):
        jaxcheck.check_custom_jvp(vjp_rule, x)
    with pytest.raises(TypeError, match=r"no rule defined yet: call `@f.defjvp`"):
        jaxcheck.check_custom_jvp(jax.custom_jvp(jnp.sin), x)
    with pytest.raises(ValueError, match="`order` must be 1 or 2"):
        jaxcheck.check_custom_jvp(jax.nn.relu, x, order=0)


# issue 10 item 11: nondiff arguments with defaults are bound as JAX binds them


@ft.partial(jax.custom_jvp, nondiff_argnums=(1,))
def power_sum(x, p=2):
    return jnp.sum(x**p)


power_sum.defjvp(
    lambda p, primals, tangents: (
        power_sum(primals[0], p),
        jnp.sum(p * primals[0] ** (p - 1) * tangents[0]),
    )
)


def test_nondiff_argnums_with_defaults_are_bound_as_jax_does():
    from jax._src.nn.functions import _softmax  # jax.nn.softmax's rule: nondiff_argnums=(1,)

    from jaxcheck._rule_checks import Target, bind_defaults

    x = jnp.array([0.3, -1.2, 2.0], jnp.float32)
    for rule in (_softmax, jax.scipy.special.log_ndtr):
        assert Target(rule, bind_defaults(rule, (x,)), "jvp").nondiff == (1,)
    result = jaxcheck.check_custom_jvp(power_sum, (x,))  # JAX calls it as power_sum(x)
    assert result.status == "passed", result
    assert "nondiff_argnums=(1,): args[1] held fixed" in result.notes


def _cumsum_rule(right: bool):
    """cumsum with a jvp that walks its tangent with a traced index inside a scan."""

    @jax.custom_jvp
    def cumsum(x):
        return jnp.cumsum(x)

    @cumsum.defjvp
    def cumsum_jvp(primals, tangents):
        (x,), (t,) = primals, tangents

        def body(total, i):
            total = total + t[i]
            return total, total

        _, sums = jax.lax.scan(body, jnp.zeros((), t.dtype), jnp.arange(t.shape[0]))
        return cumsum(x), sums if right else sums[::-1]

    return cumsum


def test_jvp_gets_jax_arrays_it_can_index_with_a_tracer():
    x = jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float32)
    right = jaxcheck.check_custom_jvp(_cumsum_rule(right=True), (x,))
    assert right.status == "passed", str(right)
    wrong = jaxcheck.check_custom_jvp(_cumsum_rule(right=False), (x,))
    assert wrong.status == "failed", str(wrong)
