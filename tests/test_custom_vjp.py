"""check_custom_vjp / assert_custom_vjp_correct: every check both ways, float32 and float64."""

import functools as ft
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck.catalogue.rule_cases import rule_cases

CASES = {c.name: c for c in rule_cases() if c.kind == "vjp"}
# Float64 runs a subset (time): a correct rule and a broken rule for every check.
F64 = (
    "vjp/sin",
    "vjp/pytree",
    "vjp/int_arg_none",
    "vjp/callback_bwd",
    "vjp/sinc_at_zero",
    "vjp/sin_sign",
    "vjp/wrong_shape",
    "vjp/wrong_length",
    "vjp/approx_fwd",
    "vjp/affine_bwd",
    "vjp/tiny_bug",
    "vjp/vmap_only",
    "vjp/jit_only",
    "vjp/second_order_stop_gradient",
    "vjp/negative_branch",
    "vjp/layernorm_missing_mean",
)


@ft.cache
def checked(name):
    """`check_custom_vjp` of a float32 catalogue case with its default options, computed once
    per test process: the catalogue test and the tests that read its findings share it."""
    f, args = CASES[name].build(jnp.float32)
    return jaxcheck.check_custom_vjp(f, args, order=CASES[name].order)


def verify(case, dtype):
    """A correct rule passes every check; a broken one is caught by its check, naming its path."""
    if dtype == jnp.float32:
        result = checked(case.name)
    else:
        f, args = case.build(dtype)
        result = jaxcheck.check_custom_vjp(f, args, order=case.order)
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
        result = verify(CASES[name], jnp.float64)
        if not CASES[name].broken and CASES[name].name != "vjp/sinc_at_zero":
            assert (
                "float64" in result.check("autodiff").message
                or result.check("autodiff").status == "passed"
            )


def run(name, dtype=jnp.float32, **kw):
    if dtype == jnp.float32 and not kw:
        return checked(name)
    f, args = CASES[name].build(dtype)
    return jaxcheck.check_custom_vjp(f, args, order=CASES[name].order, **kw)


# -- findings name the check, the argument, the path and the element -----------------------


def test_branch_bug_is_located_on_a_negative_element():
    _, args = CASES["vjp/negative_branch"].build(jnp.float32)
    assert CASES["vjp/negative_branch"].order == 1
    fd = run("vjp/negative_branch").check("fd")
    assert fd.status == "failed" and fd.path == "args[0]"
    x = np.asarray(args[0])
    assert x[fd.index] < 0
    assert np.all(x[x > 0] > 0) and np.any(x < 0)  # the point has both branches


def test_pytree_bug_names_the_leaf_and_the_output_block():
    fd = run("vjp/pytree_bug").check("fd")
    assert fd.argument == "args[0]" and fd.path == "args[0]['b']"
    assert (
        "-> out[0]" in fd.message
    )  # the (input leaf -> output leaf) block: only out[0] depends on b


def test_layernorm_missing_mean_names_x_not_scale_or_bias():
    result = run("vjp/layernorm_missing_mean")
    assert result.check("fd").path == "args[0]" and result.check("fd").index is not None
    assert result.check("autodiff").status == "failed"  # the exact comparison agrees
    assert (
        result.check("linearity").status == "passed"
        and result.check("structure").status == "passed"
    )


def test_structure_messages():
    shape = run("vjp/wrong_shape").check("structure")
    assert shape.path == "args[0]" and "shape (1, 5); the argument has shape (5,)" in shape.message
    length = run("vjp/wrong_length").check("structure")
    assert (
        "a tuple of 1 cotangent(s); expected 2, one per differentiable argument (args[0], args[1])"
        in length.message
    )
    bare = run("vjp/not_a_tuple").check("structure")
    assert "Did you mean `return (ct,)`?" in bare.message
    dtype = run("vjp/wrong_dtype").check("structure")
    assert "dtype bfloat16; the argument has dtype float32" in dtype.message
    integer = run("vjp/int_arg_float_ct").check("structure")
    assert integer.path == "args[1]" and "float0" in integer.message and "None" in integer.message
    tree = run("vjp/pytree_wrong_structure").check("structure")
    assert tree.argument == "args[0]" and "(or None)" in tree.message


def test_malformed_bwd_skips_the_checks_that_need_it():
    result = run("vjp/wrong_length")
    assert [c.status for c in result.checks] == ["passed", "failed"] + ["skipped"] * 5
    assert all("see structure" in c.message for c in result.checks[2:])


def test_exceptions_in_the_rule_are_findings_with_shapes():
    result = run("vjp/bwd_raises")
    structure = result.check("structure")
    assert structure.status == "error"
    assert structure.message.startswith("bwd raised TypeError:")
    assert "f32[5]" in structure.message  # the shapes bwd was called with


def test_approximate_fwd_names_the_output_element():
    primal = run("vjp/approx_fwd").check("primal")
    assert primal.status == "failed" and primal.path == "out" and len(primal.index) == 1
    assert "approximation" in primal.message and "fwd" in primal.details[0]


def test_tiny_bug_is_below_fd_resolution_but_caught_by_autodiff():
    result = run("vjp/tiny_bug")
    assert result.check("fd").status == "passed"
    assert (
        result.check("autodiff").status == "failed" and result.check("autodiff").path == "args[0]"
    )


def test_vmap_only_bug():
    result = run("vjp/vmap_only")
    vmap = result.check("vmap")
    assert vmap.status == "failed" and "batch element" in vmap.message
    assert result.check("jit").status == "passed"
    assert result.check("fd").status == "passed"  # the eager VJP is right
    assert any(
        "vmap" in d for d in result.check("fd").details
    )  # fd said it avoided the vmapped Jacobian


def test_jit_only_bug_is_an_error_finding():
    jit = run("vjp/jit_only").check("jit")
    assert jit.status == "error" and "TracerArrayConversionError" in jit.message


def test_second_order_bug_passes_order_1():
    f, args = CASES["vjp/second_order_stop_gradient"].build(jnp.float32)
    assert jaxcheck.check_custom_vjp(f, args).passed
    assert CASES["vjp/second_order_stop_gradient"].order == 2
    second = run("vjp/second_order_stop_gradient").check("second-order")  # order=2
    assert second.status == "failed" and second.path == "args[0]"


def test_autodiff_skipped_when_fun_autodiff_is_not_finite():
    result = run("vjp/sinc_at_zero")
    autodiff = result.check("autodiff")
    assert (
        autodiff.status == "skipped"
        and not autodiff.inconclusive
        and "not finite" in autodiff.message
    )
    assert result.passed


def test_autodiff_skipped_when_fun_is_a_callback():
    fun = lambda x: jax.pure_callback(
        np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="sequential"
    )  # noqa: E731
    f = jax.custom_vjp(fun)
    f.defvjp(lambda x: (fun(x), x), lambda x, g: (g * jnp.cos(x),))
    result = jaxcheck.check_custom_vjp(f, (jnp.array([0.3, -1.2, 2.0], jnp.float32),))
    assert result.passed, str(result)
    assert (
        result.check("autodiff").status == "skipped"
        and "not differentiable by JAX" in result.check("autodiff").message
    )


def test_nondiff_array_argument_and_note():
    f = jax.custom_vjp(lambda x, w: jnp.sin(x) * w, nondiff_argnums=(1,))
    f.defvjp(lambda x, w: (jnp.sin(x) * w, x), lambda w, x, g: (g * jnp.cos(x) * w,))
    result = jaxcheck.check_custom_vjp(
        f, (jnp.array([0.5, -1.0], jnp.float32), jnp.array([2.0, 3.0], jnp.float32))
    )
    assert result.passed, str(result)
    assert any("nondiff_argnums=(1,)" in n for n in result.notes)


def test_no_float_inputs_skips_the_numeric_checks():
    f = jax.custom_vjp(lambda n: n * 2.0)
    f.defvjp(lambda n: (n * 2.0, None), lambda _, g: (None,))
    result = jaxcheck.check_custom_vjp(f, (jnp.arange(3),))
    assert result.passed
    assert {c.name: c.status for c in result.checks}["fd"] == "skipped"


# -- the result object and the assert twin -----------------------------------------------------


def test_report_layout_and_json():
    result = run("vjp/sin_sign")
    lines = str(result).splitlines()
    assert (
        lines[0].startswith("FAILED: check_custom_vjp(sin): ")
        and "fd" in lines[0]
        and "args[0]" in lines[0]
    )
    assert re.match(r"\s+check\s+status\s+where\s+finding$", lines[2])
    assert [l.split()[0] for l in lines[4:11]] == [
        "primal",
        "structure",
        "linearity",
        "fd",
        "autodiff",
        "vmap",
        "jit",
    ]
    data = json.loads(result.to_json())
    assert data["kind"] == "custom_vjp" and data["status"] == "failed" and data["passed"] is False
    fd = data["checks"][3]
    assert fd["name"] == "fd" and fd["path"] == "args[0]" and fd["results"][0]["status"] == "failed"
    assert result.fd_results and result.fd_results[0].status == "failed"


def test_deterministic_given_the_seed():
    a, b = run("vjp/sin_sign", seed=3), run("vjp/sin_sign", seed=3)
    keys = ("name", "status", "message", "argument", "path", "index")
    strip = lambda r: json.dumps([{k: c[k] for k in keys} for c in r.to_dict()["checks"]])  # noqa: E731
    assert strip(a) == strip(b) and a.seed == 3


def test_assert_twin():
    f, args = CASES["vjp/sin"].build(jnp.float32)
    assert jaxcheck.assert_custom_vjp_correct(f, args).passed
    f, args = CASES["vjp/sin_sign"].build(jnp.float32)
    with pytest.raises(
        jaxcheck.GradCheckError, match=re.escape("FAILED: check_custom_vjp(sin)")
    ) as info:
        jaxcheck.assert_custom_vjp_correct(f, args)
    assert info.value.result.check("fd").path == "args[0]"
    assert str(info.value) == str(info.value.result)


# -- misuse ---------------------------------------------------------------------------------------


def test_misuse_is_a_clear_type_error():
    x = (jnp.ones(3),)
    with pytest.raises(TypeError, match=r"`f` must be a `jax.custom_vjp` function.*check_grad"):
        jaxcheck.check_custom_vjp(jnp.sin, x)
    with pytest.raises(
        TypeError,
        match=r"`f` is a `jax.custom_jvp` function \(relu\); use `jaxcheck.check_custom_jvp`",
    ):
        jaxcheck.check_custom_vjp(jax.nn.relu, x)
    with pytest.raises(TypeError, match=r"no rule defined yet: call `f.defvjp\(fwd, bwd\)`"):
        jaxcheck.check_custom_vjp(jax.custom_vjp(jnp.sin), x)
    f, _ = CASES["vjp/sin"].build(jnp.float32)
    with pytest.raises(
        TypeError, match=r"`args` must be a tuple of arguments.*Did you mean `args=\(x,\)`"
    ):
        jaxcheck.check_custom_vjp(f, jnp.ones(3))
    with pytest.raises(ValueError, match="`order` must be 1 or 2"):
        jaxcheck.check_custom_vjp(f, x, order=3)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        jaxcheck.check_custom_vjp(f, x, mode="fast")


def test_probe_mode_catches_and_localizes():
    result = run("vjp/sin_sign", mode="probe")
    assert (
        result.mode == "probe"
        and result.check("fd").status == "failed"
        and result.check("fd").path == "args[0]"
    )


def test_complex_holomorphic_rule_follows_jax_convention():
    z = (jnp.array([0.3 + 0.2j, -1.0 + 0.5j], jnp.complex64),)
    right = jax.custom_vjp(jnp.sin)
    right.defvjp(
        lambda z: (jnp.sin(z), z), lambda z, ct: (ct * jnp.cos(z),)
    )  # JAX: no conjugate for holomorphic f
    assert jaxcheck.check_custom_vjp(right, z).passed
    conj = jax.custom_vjp(jnp.sin)
    conj.defvjp(lambda z: (jnp.sin(z), z), lambda z, ct: (ct * jnp.conj(jnp.cos(z)),))
    result = jaxcheck.check_custom_vjp(conj, z)
    assert result.check("fd").status == "failed" and result.check("linearity").status == "passed"


# issue 10 item 11: equinox's filter_custom_vjp (optional dependency)


def test_equinox_filter_custom_vjp_is_accepted():
    import equinox as eqx  # in the `test` extra: this must run, not skip

    @eqx.filter_custom_vjp
    def scaled(vjp_arg, scale):
        return jnp.sin(vjp_arg) * scale

    @scaled.def_fwd
    def _fwd(perturbed, vjp_arg, scale):
        return jnp.sin(vjp_arg) * scale, vjp_arg

    @scaled.def_bwd
    def _bwd(res, g, perturbed, vjp_arg, scale):
        return g * jnp.sin(res) * scale  # wrong: should be cos

    r = jaxcheck.check_custom_vjp(scaled, (jnp.array([0.5, -1.0], jnp.float32), 2.0))
    assert r.name == "scaled" and r.status == "failed"
    assert r.check("fd").status == "failed" and r.check("fd").where.startswith("args[0]")


def _cumsum_rule(reverse_bwd: bool):
    """cumsum with a bwd that walks its cotangent with a traced index inside a scan (as
    odeint's bwd does: `g[i]`), right when it sums the cotangent from the end."""

    @jax.custom_vjp
    def cumsum(x):
        return jnp.cumsum(x)

    def bwd(_, g):
        def body(total, i):
            total = total + g[i]
            return total, total

        order = jnp.arange(g.shape[0] - 1, -1, -1) if reverse_bwd else jnp.arange(g.shape[0])
        _, sums = jax.lax.scan(body, jnp.zeros((), g.dtype), order)
        return (sums[::-1] if reverse_bwd else sums,)

    cumsum.defvjp(lambda x: (cumsum(x), None), bwd)
    return cumsum


def test_bwd_gets_jax_arrays_it_can_index_with_a_tracer():
    # A numpy cotangent makes `g[i]` raise TracerArrayConversionError inside the scan, which
    # the structure, linearity and jit checks reported as failures of a right rule.
    x = jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float32)
    right = jaxcheck.check_custom_vjp(_cumsum_rule(reverse_bwd=True), (x,))
    assert right.status == "passed", str(right)
    wrong = jaxcheck.check_custom_vjp(_cumsum_rule(reverse_bwd=False), (x,))
    assert wrong.status == "failed", str(wrong)
    assert "fd" in {c.name for c in wrong.checks if c.status == "failed"}, str(wrong)
