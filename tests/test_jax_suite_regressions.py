"""Regressions found by running JAX's own `check_grads` tests through jaxcheck
(`benchmarks/bench_jax_suite.py`, issue 10), and issue 10 item 13 as a class: whenever
vmapping f (or its derivative) fails where the unbatched trace works, jaxcheck evaluates
sequentially (`jax.lax.map`) and says so in the report's notes, instead of letting JAX's
error escape.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_one_sequential_note

import jaxcheck
from jaxcheck import _engine

X = jnp.array([0.3, -0.7, 1.1], jnp.float32)


def _unbatchable_sin(bug: bool):
    """sin whose batching rule (a `custom_vmap` rule) raises; a custom_jvp around it gives
    reverse mode. `bug` flips the sign of the JVP rule."""

    @jax.custom_batching.custom_vmap
    def inner(x):
        return jnp.sin(x)

    @inner.def_vmap
    def _rule(axis_size, in_batched, x):
        raise ValueError("this rule does not batch")

    @jax.custom_jvp
    def sin(x):
        return inner(x)

    def jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return sin(x), (-1.0 if bug else 1.0) * jnp.cos(x) * t

    sin.defjvp(jvp)
    return sin


RULE_RAISES = "f cannot be batched with vmap (ValueError: this rule does not batch): "


# ----------------------------------------------------------------------------
# `_engine.batching_problem`: which failures of the batched trace are batching problems.


def _raise(error: Exception):
    def trace():
        raise error

    return trace


def _ok():
    return None


def test_batching_problem_not_implemented_needs_no_unbatched_trace():
    reason = _engine.batching_problem(_raise(NotImplementedError("no batching rule")))
    assert reason == "NotImplementedError: no batching rule"


def test_batching_problem_any_error_where_unbatched_works():
    reason = _engine.batching_problem(_raise(ValueError("rule failed\nmore")), _ok)
    assert reason == "ValueError: rule failed"
    tracer = jax.errors.UnexpectedTracerError("closed over a BatchTracer")
    assert _engine.batching_problem(_raise(tracer), _ok).startswith("UnexpectedTracerError")


def test_batching_problem_not_when_unbatched_fails_too():
    assert _engine.batching_problem(_raise(ValueError("f is broken")), _raise(ValueError())) is None
    assert _engine.batching_problem(_raise(ValueError("no unbatched trace given"))) is None
    assert _engine.batching_problem(_ok, _raise(ValueError())) is None


def test_batching_problem_lets_keyboard_interrupt_through():
    with pytest.raises(KeyboardInterrupt):
        _engine.batching_problem(_raise(KeyboardInterrupt()), _ok)


# ----------------------------------------------------------------------------
# Item 13 end to end: a custom_vmap rule that raises.


def test_unbatchable_sin_works_unbatched_only():
    sin = _unbatchable_sin(False)
    np.testing.assert_allclose(sin(X), jnp.sin(X), rtol=1e-6)
    with pytest.raises(ValueError, match="this rule does not batch"):
        jax.vmap(sin)(X[None])


@pytest.mark.parametrize("bug", [False, True], ids=["correct", "broken"])
def test_check_grad_falls_back_to_sequential(bug):
    sin = _unbatchable_sin(bug)
    result = jaxcheck.check_grad(lambda x: jnp.sum(sin(x)), (X,))
    assert result.status == ("failed" if bug else "passed"), str(result)
    assert_one_sequential_note(result, RULE_RAISES)


@pytest.mark.parametrize(
    "check", [jaxcheck.check_vjp, jaxcheck.check_jvp], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("bug", [False, True], ids=["correct", "broken"])
def test_check_jvp_vjp_fall_back_to_sequential(check, bug):
    result = check(_unbatchable_sin(bug), (X,))
    assert result.status == ("failed" if bug else "passed"), str(result)
    assert result.notes[0].startswith(RULE_RAISES)
    if bug:
        assert result.failed_blocks[0].worst.where in {"[0] -> [0]", "[1] -> [1]", "[2] -> [2]"}


def test_unbatchable_derivative_alone_falls_back():
    # f batches, but the bwd rule calls a custom_vmap whose rule raises.
    @jax.custom_batching.custom_vmap
    def double(g):
        return 2.0 * g

    @double.def_vmap
    def _rule(axis_size, in_batched, g):
        raise ValueError("bwd does not batch")

    @jax.custom_vjp
    def scale(x):
        return 2.0 * x

    scale.defvjp(lambda x: (2.0 * x, None), lambda _, g: (double(g),))
    result = jaxcheck.check_vjp(scale, (X,))
    assert result.passed, str(result)
    (note,) = result.notes
    assert note.startswith(
        "the VJP of f cannot be batched with vmap (ValueError: bwd does not batch): "
    )


def test_f_that_fails_unbatched_too_still_reports_its_own_error():
    def f(x):
        raise RuntimeError("f is broken")

    with pytest.raises(RuntimeError, match="f is broken"):
        jaxcheck.check_grad(f, (X,))


# ----------------------------------------------------------------------------
# Crashes on JAX's own tests.


@pytest.mark.parametrize(
    "check", [jaxcheck.check_jvp, jaxcheck.check_vjp], ids=lambda c: c.__name__
)
def test_bfloat16_outputs_are_floating_point(check):
    # lax_autodiff_test's bfloat16 cases (testBroadcastGrad0, testConcatenateGrad0, ...) were
    # refused: "`f` has no floating-point outputs" (numpy does not count bfloat16 as inexact).
    x = jnp.array([0.5, -1.25, 2.0], jnp.bfloat16)
    result = check(lambda x: jax.lax.broadcast(x, (2,)), (x,))
    assert result.status == "passed", str(result)


def test_check_jvp_of_a_custom_vjp_function_is_one_clear_error():
    # custom_api_test's custom_vjp functions checked in "fwd" mode: JAX's TypeError from
    # deep inside jaxcheck's kernels became one error that names the construct and the way out.
    @jax.custom_vjp
    def sin(x):
        return jnp.sin(x)

    sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
    with pytest.raises(TypeError, match=r"calls a `jax.custom_vjp` function") as info:
        jaxcheck.check_jvp(sin, (X,))
    assert "`jaxcheck.check_vjp` or `jaxcheck.check_grad`" in str(info.value)
    assert "forward-mode autodiff (jvp)" in str(info.value.jax_error)
    assert info.value.__suppress_context__


@pytest.mark.parametrize(
    "check", [jaxcheck.check_jvp, jaxcheck.check_vjp], ids=lambda c: c.__name__
)
def test_sparse_plan_of_a_structurally_zero_jacobian(check):
    # mutable_array_test test_scan_vjp_systematic_readonly (no carry, no xs: the scan's ys do
    # not depend on any input), on 8 CPU devices where jaxcheck takes the sparse plan: an
    # all-zero pattern crashed in `_sparse._slot_columns` (a gather from an empty table).
    def f(a, b):
        def body(c, _):
            return c, jnp.zeros((), jnp.float32)

        return jax.lax.scan(body, [], None, length=3)[1]

    result = check(f, (jnp.float32(2.4), jnp.float32(-0.3)), sparse=True)
    assert result.status == "passed", str(result)
    assert "no structural nonzeros" in str(result)


# ----------------------------------------------------------------------------
# f that places its own computation (shard_map_test, pjit_test with 8 CPU devices): the
# evaluation spread over all devices (jaxcheck's own shard_map) crashed; now it falls back to
# one device and says so. In a subprocess: the device count is fixed when jax starts.

_SHARDED_F = """
import json, jax, jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import jaxcheck

jax.config.update("jax_numpy_rank_promotion", "raise")
mesh = jax.make_mesh((4,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))

def sharded(bug):
    @jax.custom_jvp
    def sin(x):
        return jnp.sin(x)

    sin.defjvp(lambda p, t: (sin(p[0]), (-1.0 if bug else 1.0) * jnp.cos(p[0]) * t[0]))
    return jax.jit(jax.shard_map(sin, mesh=mesh, in_specs=P("x"), out_specs=P("x")))

x = jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32)
out = {}
for bug in (False, True):
    for check in (jaxcheck.check_jvp, jaxcheck.check_vjp):
        r = check(sharded(bug), (x,))
        out[f"{check.__name__} {bug}"] = [r.status, list(r.notes)]
print("RESULT " + json.dumps(out))
"""


def test_f_with_its_own_shard_map_falls_back_to_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED_F], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    results = json.loads(line[len("RESULT ") :])
    for key, (status, notes) in results.items():
        assert status == ("failed" if key.endswith("True") else "passed"), key
        (note,) = notes
        assert note.startswith("f cannot be evaluated spread over the devices (ValueError: "), note
        assert "evaluated on cpu:0 only" in note


def _window_sum(x):
    """reduce_window with a Python reduction: a JVP rule, but `jax.linearize` fails."""
    init = np.float32(1.0)
    return jax.lax.reduce_window(x, init, lambda a, b: a + b, (2, 1), (1, 1), "VALID")


@pytest.mark.parametrize("bug", [False, True], ids=["correct", "broken"])
def test_check_jvp_of_a_jvp_without_linearize(bug):
    # lax_test testReduceWindowGeneralJVP: check_jvp crashed with JAX's "Linearization failed
    # to produce known values for all output primals"; the JVP is now taken with jax.jvp.
    @jax.custom_jvp
    def double(y):
        return 2.0 * y

    double.defjvp(lambda p, t: (double(p[0]), (2.2 if bug else 2.0) * t[0]))
    x = jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32).reshape(4, 2)
    with pytest.raises(ValueError, match="Linearization failed"):
        jax.linearize(_window_sum, x)
    result = jaxcheck.check_jvp(lambda x: double(_window_sum(x)), (x,))
    assert result.status == ("failed" if bug else "passed"), str(result)


def test_check_jvp_of_a_custom_vmap_function():
    @jax.custom_batching.custom_vmap
    def sin(x):
        return jnp.sin(x)

    @sin.def_vmap
    def _rule(axis_size, in_batched, x):
        return jnp.sin(x), in_batched[0]

    result = jaxcheck.check_jvp(sin, (X,))
    assert result.status == "passed", str(result)


def test_check_jvp_of_a_custom_vjp_function_under_custom_vjp3():
    # custom_api_test CustomVJP3Test (jax_custom_vjp3=True): jax.linearize raised hijax's
    # NotImplementedError ("for linearize support, subclass ... must implement `lin`").
    from jax._src import config

    with config.custom_vjp3(True):

        @jax.custom_vjp
        def sin(x):
            return jnp.sin(x)

        sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
        f = jax.vmap(sin)
        with pytest.raises(TypeError, match=r"custom_vjp function"):
            jaxcheck.check_jvp(f, (X[None],))
        assert jaxcheck.check_vjp(f, (X[None],)).status == "passed"
