"""Issue 10: one regression test per item, on derivative rules nobody here wrote.

Each test asserts the behaviour issue 10 demands, through the public API only. Where
the issue's premise did not hold (log_ndtr's float64 tail is an approximation mismatch,
not rounding), the test pins the true behaviour and says why.

JAX configuration is only ever changed in scoped context managers (`jax.enable_x64`,
`jax.numpy_rank_promotion`, ...), never globally; the CLI Ctrl-C case runs in a
subprocess.
"""

import os
import re
import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
import pytest
from _helpers import vjp_mutant
from jax import lax

import jaxcheck
from jaxcheck import _cli

# ----------------------------------------------------------------------------
# Item 1: numpy float64 arrays (and Python floats) with x64 off compute in float32.


def _scan_values(x):
    def body(carry, xi):
        carry = jnp.sin(carry) * xi + 0.5 * carry
        return carry, carry

    _, ys = lax.scan(body, 0.3, x)
    return ys


def _scan_loss(x):
    return jnp.sum(_scan_values(x) ** 2)


X_SCAN = np.array([0.5, -1.2, 0.8, 1.5])  # numpy float64, as JAX's own tests pass


def test_item1_numpy_float64_reported_as_f32():
    assert not jax.config.jax_enable_x64
    result = jaxcheck.check_grad(_scan_loss, (X_SCAN,))
    assert result.leaves[0].dtype == "float32"
    assert "f32[4]" in str(result)
    assert "f64[4]" not in str(result)


def test_item1_numpy_float64_uses_float32_policy():
    native = jaxcheck.check_grad(_scan_loss, (X_SCAN,))
    as_f32 = jaxcheck.check_grad(_scan_loss, (X_SCAN.astype(np.float32),))
    assert as_f32.relative_error < 1e-6
    assert native.status == "passed"
    assert native.relative_error < 1e-6
    assert native.reference == as_f32.reference
    assert native.step_policy == as_f32.step_policy
    assert native.leaves[0].worst_tolerance < 10 * as_f32.leaves[0].worst_tolerance


def test_item1_numpy_float64_scan_jacobian_passes_tightly():
    result = jaxcheck.check_vjp(_scan_values, (X_SCAN,))
    assert result.status == "passed"
    assert result.relative_error < 1e-5
    assert result.blocks[0].input_dtype == "float32"


def test_item1_numpy_float64_no_dtype_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = lambda x: _scan_loss(x) * 1.0  # a new function: no cached traces
        jaxcheck.check_grad(fresh, (X_SCAN * 1.0,))


def test_item1_numpy_float64_mutant_caught():
    def wrong(x):
        return jax.grad(_scan_loss)(x) * (1 + 1e-3)

    result = jaxcheck.check_grad(_scan_loss, (X_SCAN,), grad_fn=wrong)
    assert result.status == "failed"
    assert result.leaves[0].path == "args[0]"


def test_item1_python_float_is_weak_float32():
    result = jaxcheck.check_grad(lambda a: a * a * 1.5, (2.0,))
    assert result.status == "passed"
    assert result.leaves[0].dtype == "float32"


# ----------------------------------------------------------------------------
# Item 2: cancellation inside f (false alarms on correct rules).

GELU_X = np.linspace(-6.0, -4.0, 16)


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def test_item2_gelu_tanh_far_left_float32():
    result = jaxcheck.check_vjp(_gelu_tanh, (jnp.asarray(GELU_X, jnp.float32),))
    assert result.status == "passed", str(result)


def test_item2_gelu_tanh_far_left_float64():
    with jax.enable_x64(True):
        result = jaxcheck.check_vjp(_gelu_tanh, (jnp.asarray(GELU_X, jnp.float64),))
    assert result.status == "passed", str(result)


def test_item2_gelu_tanh_float32_uses_float64_reference():
    x = jnp.asarray(np.linspace(-6.0, -4.0, 64), jnp.float32)
    result = jaxcheck.check_grad(lambda x: jnp.sum(_gelu_tanh(x)), (x,))
    assert result.reference_fallback is None, result.reference_fallback
    assert result.status == "passed", str(result)


@pytest.mark.parametrize("sparse", [True, False])
def test_item2_log_ndtr_float64_passes_where_it_is_computed_exactly(sparse):
    # Near x = 6, log(ndtr(x)) with ndtr rounded to 1 - 1e-9 moves in steps of 1e-16 (in a
    # value of 1e-9): the default step's estimate is off by 2e-5 while its own error
    # estimate sees no noise (the five values look like a kink). The estimates at larger
    # steps expose it (`_stencil.best_of`), in the sparse plan as in the dense one.
    with jax.enable_x64(True):
        x = jnp.linspace(-19.5, 10.0, 256)
        result = jaxcheck.check_vjp(jss.log_ndtr, (x,), sparse=sparse)
    assert result.status == "passed", str(result)
    assert result.sparsity.startswith("sparse:") == sparse, result.sparsity


@pytest.mark.parametrize(
    "low, high, error",
    [(-3.0, -2.0, 1e-7), (5.5, 8.0, 1e-3)],
    ids=["accurate-region", "cancelling-region"],
)
def test_item2_wrong_log_ndtr_rule_still_fails_after_the_larger_steps(low, high, error):
    # The larger steps (and the errors the other steps prove) must not hide a wrong rule:
    # wrong by 1e-7 where log_ndtr is computed accurately, and by 1e-3 where ndtr ~ 1
    # rounds (the finite differences there resolve ~1e-5).
    @jax.custom_jvp
    def log_ndtr(x):
        return jss.log_ndtr(x)

    @log_ndtr.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        slope = jnp.exp(jax.scipy.stats.norm.logpdf(x) - jss.log_ndtr(x))
        wrong = (x > low) & (x < high)
        return jss.log_ndtr(x), t * slope * jnp.where(wrong, 1 + error, 1.0)

    with jax.enable_x64(True):
        x = jnp.linspace(-19.5, 10.0, 96)
        for sparse in (True, False):
            result = jaxcheck.check_vjp(log_ndtr, (x,), sparse=sparse)
            assert result.status == "failed", str(result)
            worst = result.blocks[0].elements[0]
            assert low < float(x[worst.input_index]) < high, str(result)


def test_item2_log_ndtr_series_tail_is_a_true_discrepancy_not_rounding():
    # For x < -20 JAX computes log_ndtr by a 3-term asymptotic series, and its custom_jvp
    # as exp(logpdf(x) - log_ndtr(x)) of that series: the rule is the true derivative to
    # 3.8e-9 (checked against mpmath), the series' own derivative differs from it by
    # 2e-9 to 4e-9 relative. That is no rounding (f's measured noise is ~1e-16 relative),
    # so jaxcheck reports it, with the size of the discrepancy.
    with jax.enable_x64(True):
        x = jnp.linspace(-30.0, -20.5, 64)
        result = jaxcheck.check_vjp(jss.log_ndtr, (x,))
    assert result.status == "failed", str(result)
    worst = result.blocks[0].worst
    assert 1e-10 < abs(worst.analytic - worst.numeric) / abs(worst.numeric) < 1e-8


def _eigh_sign_invariant(a):
    _, v = jnp.linalg.eigh(a)
    return v * v


def test_item2_eigh_float64():
    a = np.random.RandomState(0).randn(6, 6)
    with jax.enable_x64(True):
        result = jaxcheck.check_vjp(_eigh_sign_invariant, (jnp.asarray(a + a.T),))
    assert result.status == "passed", str(result)


# ----------------------------------------------------------------------------
# Item 3: exact zero derivatives.


def test_item3_det_rank1_float32():
    m = np.outer([1.0, 2.0, 3.0], [0.5, -1.0, 2.0]).astype(np.float32)
    result = jaxcheck.check_grad(jnp.linalg.det, (jnp.asarray(m),))
    assert result.reference_fallback is None, result.reference_fallback
    assert result.status == "passed", str(result)


@pytest.mark.parametrize(
    "name, fn, x",
    [
        ("sin_pi_2", jnp.sin, np.pi / 2),
        ("cos_pi", jnp.cos, np.pi),
        ("erf_10", jss.erf, 10.0),
    ],
    ids=["sin_pi_2", "cos_pi", "erf_10"],
)
def test_item3_zero_derivative_float64(name, fn, x):
    with jax.enable_x64(True):
        result = jaxcheck.check_grad(fn, (jnp.float64(x),))
    assert result.status == "passed", str(result)


# ----------------------------------------------------------------------------
# Item 4: mixed scales within one leaf.


def test_item4_mixed_scales_float32():
    x = jnp.array([1e-8, 1.0, 1e8, -3e3], jnp.float32)
    result = jaxcheck.check_grad(lambda x: jnp.sum(jnp.log1p(x**2)), (x,))
    assert result.status == "passed", str(result)
    assert result.leaves[0].n_failed == 0


def test_item4_mixed_scales_float64():
    with jax.enable_x64(True):
        x = jnp.array([1e-8, 1.0, 1e8, -3e3], jnp.float64)
        result = jaxcheck.check_grad(lambda x: jnp.sum(jnp.log1p(x**2)), (x,))
    assert result.status == "passed", str(result)


# ----------------------------------------------------------------------------
# Item 5: precision loss of a right formula in float32.


def test_item5_tanh_precision_note_not_failure():
    result = jaxcheck.check_grad(jnp.tanh, (jnp.float32(4.75),))
    assert result.status == "passed", str(result)
    assert re.search(r"precision", str(result), re.IGNORECASE)
    assert re.search(r"digits", str(result), re.IGNORECASE)


def test_item5_tanh_precision_strict_fails_with_the_note():
    result = jaxcheck.check_grad(jnp.tanh, (jnp.float32(4.75),), precision="strict")
    assert result.status == "failed", str(result)
    assert any("digits" in note for note in result.notes), str(result)
    with pytest.raises(ValueError, match="`precision`"):
        jaxcheck.check_grad(jnp.tanh, (jnp.float32(4.75),), precision="loose")


def test_item5_tanh_wrong_formula_still_fails():
    wrong = vjp_mutant(jnp.tanh, 1 + 1e-2)
    result = jaxcheck.check_grad(wrong, (jnp.float32(4.75),))
    assert result.status == "failed", str(result)


# ----------------------------------------------------------------------------
# Item 6: underflow.


def test_item6_erfc_underflow_float32():
    result = jaxcheck.check_grad(lax.erfc, (jnp.float32(10.0),))
    assert result.status != "failed", str(result)
    if result.status == "inconclusive":
        assert re.search(r"underflow|subnormal", result.reason)
    assert result.leaves[0].worst_tolerance >= float(jnp.finfo(jnp.float32).tiny)


@pytest.mark.parametrize(
    "check, options",
    [
        (jaxcheck.check_jvp, {}),
        (jaxcheck.check_vjp, {"sparse": True}),
        (jaxcheck.check_vjp, {"sparse": False}),
        (jaxcheck.check_vjp, {"mode": "probe"}),
        (jaxcheck.check_jvp, {"mode": "probe"}),
    ],
    ids=["jvp", "vjp-sparse", "vjp-dense", "vjp-probe", "jvp-probe"],
)
def test_item6_erfc_underflow_float32_jacobian(check, options):
    # JAX's testOpGradSpecialValue at erfc(10.) (a Python float, so float32): the float64
    # reference sees -4.2e-44, the float32 analytic side flushes it to -0. No Jacobian
    # tolerance may sit below float32's smallest normal number; the probes' cotangents
    # (1 / rms of f, here 1 / 2e-45) must not overflow.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = check(lax.erfc, (jnp.full((3,), 10.0),), **options)
    assert result.status == "passed", str(result)
    assert check(lax.erfc, (10.0,)).status == "passed"


# ----------------------------------------------------------------------------
# Item 7: a tiny leaf's zeroed gradient beside a large leaf.


def _two_scale_loss(p):
    return jnp.sum(p["big"] ** 2) + jnp.sum(jnp.sin(p["small"]))


TWO_SCALE = {
    "big": np.array([1000.0, 1001.0, 999.0, 1002.0], np.float32),
    "small": np.array([1e-4, -2e-4, 1.5e-4], np.float32),
}


def _two_scale_wrong(p):
    return {"big": 2 * p["big"], "small": jnp.zeros_like(p["small"])}


def test_item7_zeroed_small_leaf_never_passes():
    args = ({k: jnp.asarray(v) for k, v in TWO_SCALE.items()},)
    result = jaxcheck.check_grad(_two_scale_loss, args, grad_fn=_two_scale_wrong)
    assert result.status in ("failed", "inconclusive"), str(result)
    small = result.leaf("args[0]['small']")
    assert small.status in ("failed", "inconclusive"), str(result)
    if small.status == "inconclusive":
        assert re.search(r"resolve", small.reason), str(result)


# ----------------------------------------------------------------------------
# Item 8: rounding floors near zero let a 1e-3 VJP error through.

X_SMALL = (np.random.RandomState(0).randn(3) * 1e-3).astype(np.float32)  # jtu.rand_small


@pytest.mark.parametrize("op", [lax.exp, lax.exp2], ids=lambda op: op.__name__)
def test_item8_small_points_mutant_caught(op):
    result = jaxcheck.check_vjp(vjp_mutant(op, 1 + 1e-3), (jnp.asarray(X_SMALL),))
    assert result.status == "failed", str(result)
    assert result.blocks[0].status == "failed"


def test_item8_erfc_small_points_mutant_caught():
    # Caught at these points today; the erfc misses are at other rand_small draws
    # (see tests/test_real_cases.py, lax op suites).
    result = jaxcheck.check_vjp(vjp_mutant(lax.erfc, 1 + 1e-3), (jnp.asarray(X_SMALL),))
    assert result.status == "failed", str(result)


# ----------------------------------------------------------------------------
# Item 9: every JAX config a user may set.


def _matrix_function(x):
    return jnp.tanh(x) @ x


X_40 = np.random.RandomState(1).randn(40, 40).astype(np.float32)


@pytest.mark.parametrize("kind", ["check_vjp", "check_jvp"])
def test_item9_rank_promotion_raise(kind):
    with jax.numpy_rank_promotion("raise"):
        result = getattr(jaxcheck, kind)(_matrix_function, (jnp.asarray(X_40),))
    assert result.status == "passed", str(result)


def test_item9_rank_promotion_raise_small_grad():
    with jax.numpy_rank_promotion("raise"):
        result = jaxcheck.check_grad(lambda x: jnp.sum(jnp.sin(x) ** 2), (jnp.linspace(-1, 1, 8),))
    assert result.status == "passed"


_CONFIGS = {
    "dtype_promotion_strict": lambda: jax.numpy_dtype_promotion("strict"),
    "enable_checks": lambda: jax.enable_checks(True),
    "disable_jit": jax.disable_jit,
    "debug_nans": lambda: jax.debug_nans(True),
    "x64": lambda: jax.enable_x64(True),
}


@pytest.mark.parametrize("config", list(_CONFIGS))
@pytest.mark.parametrize("kind", ["check_grad", "check_vjp"])
def test_item9_configs_plain_function(config, kind):
    f = (lambda x: jnp.sum(jnp.sin(x) ** 2)) if kind == "check_grad" else jnp.sin
    with _CONFIGS[config]():
        x = jnp.linspace(-1.0, 1.0, 8)
        result = getattr(jaxcheck, kind)(f, (x,))
    assert result.status == "passed", str(result)


@pytest.mark.parametrize("kind", ["check_jvp", "check_vjp", "check_grad"])
def test_item9_enable_checks_log_ndtr(kind):
    f = (lambda x: jnp.sum(jss.log_ndtr(x))) if kind == "check_grad" else jss.log_ndtr
    with jax.enable_checks(True):
        result = getattr(jaxcheck, kind)(f, (jnp.linspace(-3.0, 3.0, 8),))
    assert result.status == "passed", str(result)


# ----------------------------------------------------------------------------
# Item 10: empty outputs and empty leaves.


def test_item10_empty_complex_output_passes():
    result = jaxcheck.check_vjp(jnp.linalg.pinv, (jnp.zeros((1, 0), jnp.complex64),))
    assert result.status == "passed"
    assert re.search(r"empty|nothing to compare", result.reason)


def test_item10_empty_leaf_grad():
    result = jaxcheck.check_grad(lambda x: jnp.sum(x), (jnp.zeros((0,), jnp.float32),))
    assert result.status == "passed"
    assert re.search(r"empty|nothing to compare", result.reason)


def test_item10_empty_leaf_vjp():
    result = jaxcheck.check_vjp(lambda x: 2 * x, (jnp.zeros((0,), jnp.float32),))
    assert result.status == "passed"


# ----------------------------------------------------------------------------
# Item 11: nondiff_argnums with defaults; equinox.filter_custom_vjp.


def test_item11_log_ndtr_default_series_order():
    result = jaxcheck.check_custom_jvp(jss.log_ndtr, (jnp.linspace(-3.0, 3.0, 8),))
    assert result.status == "passed", str(result)


def test_item11_softmax_rule_default_axis():
    from jax._src.nn.functions import _softmax

    x = jnp.linspace(-1.0, 2.0, 5)
    result = jaxcheck.check_custom_jvp(_softmax, (x,))
    assert result.status == "passed", str(result)


def test_item11_equinox_filter_custom_vjp():
    eqx = pytest.importorskip("equinox")

    @eqx.filter_custom_vjp
    def scale(x, factor):
        return x * factor

    @scale.def_fwd
    def scale_fwd(perturbed, x, factor):
        return x * factor, None

    @scale.def_bwd
    def scale_bwd(residuals, g, perturbed, x, factor):
        return g * factor

    result = jaxcheck.check_custom_vjp(scale, (jnp.linspace(0.0, 1.0, 4), 3.0))
    assert result.status == "passed", str(result)


# ----------------------------------------------------------------------------
# Item 12: while_loop and bad bwd arity: a finding or one clear error, not JAX's traceback.


def _while_loss(x):
    def body(carry):
        value, count = carry
        return value * 1.1, count + 1

    return jnp.sum(lax.while_loop(lambda c: c[1] < 3, body, (x, 0))[0])


def test_item12_while_loop_names_construct_and_remedy():
    with pytest.raises((ValueError, TypeError)) as info:
        result = jaxcheck.check_grad(_while_loss, (jnp.linspace(0.5, 1.0, 3),))
        assert result.status != "passed"
        raise ValueError(str(result))
    message = str(info.value)
    assert "while_loop" in message
    assert "check_jvp" in message


@jax.custom_vjp
def foo(a, b):
    return a * b


foo.defvjp(lambda a, b: (a * b, (a, b)), lambda res, g: (g * res[1],))


def test_item12_bad_bwd_arity_named():
    x = jnp.linspace(0.5, 1.0, 3)
    with pytest.raises((ValueError, TypeError)) as info:
        result = jaxcheck.check_grad(lambda a, b: jnp.sum(foo(a, b)), (x, x), argnums=(0, 1))
        raise ValueError(str(result))
    message = str(info.value)
    assert "`foo`" in message
    assert re.search(r"1 cotangent.* 2 inputs", message)


def test_item12_bad_bwd_arity_custom_vjp_reports_structure():
    x = jnp.linspace(0.5, 1.0, 3)
    result = jaxcheck.check_custom_vjp(foo, (x, x))
    assert result.status == "failed"
    assert "1 cotangent" in result.reason


# ----------------------------------------------------------------------------
# Item 13: f that cannot be batched: evaluate sequentially and say so.


def _host_sin(x):
    return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def _host_cos(x):
    return jax.pure_callback(np.cos, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


@jax.custom_vjp
def host_sin(x):
    return _host_sin(x)


host_sin.defvjp(lambda x: (_host_sin(x), x), lambda x, g: (g * _host_cos(x),))


def test_item13_unbatchable_f_sequential_fallback():
    x = jnp.linspace(0.1, 1.0, 4)
    assert np.isfinite(float(jnp.sum(host_sin(x))))  # unbatched: works
    result = jaxcheck.check_grad(lambda x: jnp.sum(host_sin(x)), (x,))
    assert result.status == "passed", str(result)
    assert re.search(r"sequential", str(result))


def test_item13_custom_vjp_closing_over_user_vmap_tracer():
    # JAX's custom_api_test.test_closure_with_vmap2 (jax#8783).
    def h(z):
        def f(x):
            @jax.custom_vjp
            def g(y):
                return x * y

            g.defvjp(lambda y: (x * y, (x, x * y, y)), lambda res, w: (res[0] * w,))
            return g(z)

        return jax.vmap(f)(jnp.arange(3.0, dtype="float32")).sum()

    assert jaxcheck.check_grad(h, (jnp.float32(3.14),)).status == "passed"


# ----------------------------------------------------------------------------
# Item 14: options validated up front; Ctrl-C in the CLI; float16 grad_fn.


def test_item14_progress_validated_up_front():
    with pytest.raises(TypeError, match=r"`progress`"):
        jaxcheck.check_grad(lambda x: jnp.sum(x**2), (jnp.ones(3),), progress=5)


def test_item14_float16_grad_fn_accepted():
    x = jnp.linspace(-1.0, 1.0, 4, dtype=jnp.float16)
    f = lambda x: jnp.sum(x**2)
    result = jaxcheck.check_grad(f, (x,), grad_fn=jax.grad(f))
    assert result.status == "passed", str(result)


def test_item14_float16_grad_fn_from_float32_math():
    x = jnp.linspace(-1.0, 1.0, 4, dtype=jnp.float16)
    f = lambda x: jnp.sum(x.astype(jnp.float32) ** 2)
    result = jaxcheck.check_grad(f, (x,), grad_fn=lambda x: 2 * x.astype(jnp.float32))
    assert result.status == "passed", str(result)


SLOW_MODULE = """
import time, pathlib, numpy as np, jax, jax.numpy as jnp

def _slow(x):
    pathlib.Path({marker!r}).write_text("started")
    time.sleep(60)
    return np.sum(np.sin(x)).astype(x.dtype)

def loss(x):
    return jax.pure_callback(_slow, jax.ShapeDtypeStruct((), x.dtype), x)

def args():
    return (jnp.linspace(0.0, 1.0, 3),)
"""


def test_item14_cli_ctrl_c_exits_130_with_one_line(tmp_path):
    marker = tmp_path / "started"
    module = tmp_path / "slowmod.py"
    module.write_text(SLOW_MODULE.format(marker=str(marker)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxcheck", "check", f"{module}:loss", "--args", f"{module}:args"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180  # a loaded CI machine imports JAX slowly
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "the slow function never started"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and "Warning" not in line]
    assert lines == ["jaxcheck: interrupted"], stderr


# ----------------------------------------------------------------------------
# Item 15: read-only results; Python floats vs the CLI help; non-traceable f.


@pytest.mark.parametrize("field", ["analytic", "numeric"])
def test_item15_result_arrays_read_only(field):
    result = jaxcheck.check_grad(lambda x: jnp.sum(jnp.sin(x)), (jnp.linspace(0.0, 1.0, 3),))
    with pytest.raises(ValueError):
        getattr(result, field)[0] = 5.0


def test_item15_python_numbers_code_and_help_agree():
    result = jaxcheck.check_grad(lambda a, x: a * jnp.sum(x), (2.0, jnp.ones(3)), argnums=(0, 1))
    differentiated = any(leaf.path == "args[0]" for leaf in result.leaves)
    help_text = " ".join(_cli.CHECK_EPILOG.split())
    says_fixed = "Python numbers are allowed and held fixed" in help_text
    assert differentiated != says_fixed


def _not_traceable(x):
    if x.sum() > 0:  # a Python `if` on a traced value
        return jnp.sum(x)
    return -jnp.sum(x)


def test_item15_not_traceable_message():
    with pytest.raises((TypeError, ValueError)) as info:
        jaxcheck.check_grad(_not_traceable, (jnp.ones(3),))
    assert not isinstance(info.value, jax.errors.TracerBoolConversionError)
    assert re.search(r"jax-traceable", str(info.value))
    assert re.search(r"`f`", str(info.value))
