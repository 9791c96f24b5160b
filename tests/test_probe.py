"""Probe mode: check_vjp/check_jvp/check_grad(mode="probe") find the leaf, then narrow to the element."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck import _engine


def _net(params, x, n_steps):
    h = jnp.tanh(params["W"] @ x + params["b"])
    return {"y": h * n_steps, "z": jnp.sum(x**2) + params["b"][0], "count": n_steps + 1}


def _inputs(key, dtype):
    k1, k2 = jax.random.split(key)
    params = {
        "W": jax.random.normal(k1, (6, 5), dtype),
        "b": jnp.linspace(-0.5, 0.5, 6).astype(dtype),
    }
    return params, jax.random.normal(k2, (5,), dtype), jnp.asarray(2, jnp.int32)


def _ctx(dtype):
    return jax.enable_x64(True) if dtype == jnp.float64 else jax.enable_x64(False)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("check", [jaxcheck.check_vjp, jaxcheck.check_jvp], ids=["vjp", "jvp"])
def test_correct_pytree_function_passes_in_probe_mode(key, dtype, check):
    with _ctx(dtype):
        r = check(_net, _inputs(key, dtype), mode="probe")
    assert r.status == "passed", str(r)
    assert r.mode == "probe"
    assert {s.path for s in r.skipped} == {"args[2]", "out['count']"}
    assert all(b.n_probes == 16 and b.worst is None for b in r.blocks)


def _elementwise(bug_index, factor):
    """sin with a custom_vjp whose bwd is wrong by `factor` at one element."""

    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    def bwd(x, g):
        return ((jnp.cos(x) * g).at[bug_index].multiply(factor),)

    f.defvjp(lambda x: (jnp.sin(x), x), bwd)
    return f


def test_one_element_bug_in_20000_leaf_is_narrowed_to_its_index():
    x = jnp.linspace(-3.0, 3.0, 20_000)
    r = jaxcheck.check_vjp(_elementwise(12_345, 1.5), (x,), mode="probe")
    assert r.mode == "probe" and r.status == "failed"
    block = r.block("args[0]", "out")
    assert block.worst.input_index == (12_345,) and block.worst.output_index == (12_345,)
    assert block.worst.analytic == pytest.approx(1.5 * block.worst.numeric, rel=1e-4)
    assert block.n_failed == 1 and block.worst.kind == "mismatch"
    assert "[12345] -> [12345]" in str(r)


def test_one_element_bug_in_custom_jvp_is_narrowed():
    @jax.custom_jvp
    def f(x):
        return jnp.tanh(x)

    f.defjvp(lambda p, t: (f(p[0]), ((1 - jnp.tanh(p[0]) ** 2) * t[0]).at[7_000].set(0.0)))
    x = jnp.linspace(-2.0, 2.0, 12_000)
    r = jaxcheck.check_jvp(f, (x,), mode="probe")
    assert r.status == "failed"
    assert r.blocks[0].worst.input_index == (7_000,) and r.blocks[0].worst.analytic == 0.0


def test_bug_on_one_input_leaf_and_small_output_leaf_named(key):
    @jax.custom_vjp
    def f(p, x):
        return {"big": 1e4 * jnp.tanh(p["W"] @ x), "small": 1e-4 * jnp.sum(p["b"] ** 2)}

    def bwd(res, g):
        p, x = res
        d = 1e4 * g["big"] * (1 - jnp.tanh(p["W"] @ x) ** 2)
        return {"W": jnp.outer(d, x), "b": 0.0 * 1e-4 * 2 * p["b"] * g["small"]}, p[
            "W"
        ].T @ d  # lost gradient

    f.defvjp(lambda p, x: (f(p, x), (p, x)), bwd)
    params, x, _ = _inputs(key, jnp.float32)
    r = jaxcheck.check_vjp(f, (params, x), mode="probe")
    assert [b.path for b in r.failed_blocks] == ["args[0]['b'] -> out['small']"]
    worst = r.failed_blocks[0].worst
    assert worst.analytic == 0.0 and worst.numeric != 0.0


def test_directions_of_a_leaf_do_not_depend_on_other_leaves(key):
    params, x, n = _inputs(key, jnp.float32)
    r1 = jaxcheck.check_vjp(lambda p, x: jnp.tanh(p["W"] @ x), (params, x), mode="probe")
    more = dict(params, extra=jnp.ones(3))
    r2 = jaxcheck.check_vjp(lambda p, x: jnp.tanh(p["W"] @ x), (more, x), mode="probe")
    assert r1.block("args[0]['W']").relative_error == r2.block("args[0]['W']").relative_error
    assert r1.block("args[1]").relative_error == r2.block("args[1]").relative_error


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=lambda d: d.__name__)
def test_check_grad_probe_finds_leaf_and_element(dtype):
    n = 200_000

    @jax.custom_vjp
    def act(x):
        return jnp.tanh(x)

    act.defvjp(
        lambda x: (jnp.tanh(x), jnp.tanh(x)),
        lambda y, g: ((g * (1 - y**2)).at[123_456].multiply(-1.0),),
    )

    def loss(params, x):
        return jnp.sum(act(params["w"] * x) ** 2) + jnp.sum(params["c"] ** 2)

    with _ctx(dtype):
        params = {"w": jnp.linspace(-1.0, 1.0, n).astype(dtype), "c": jnp.arange(3.0).astype(dtype)}
        x = jnp.cos(jnp.arange(n)).astype(dtype)
        r = jaxcheck.check_grad(loss, (params, x), budget=0.0)  # auto, over budget -> probe
    assert r.mode == "probe" and r.status == "failed"
    assert [l.path for l in r.failed_leaves] == ["args[0]['w']"]
    leaf = r.leaf("args[0]['w']")
    assert leaf.worst_index == (123_456,)
    assert leaf.worst_analytic == pytest.approx(-leaf.worst_numeric, rel=1e-4)
    assert r.leaf("args[0]['c']").passed
    assert "sign error" in " ".join(r.hints)


def test_check_grad_probe_passes_a_correct_loss_and_auto_stays_full_when_small(key):
    params, x, _ = _inputs(key, jnp.float32)
    loss = lambda p, x: jnp.sum(jnp.tanh(p["W"] @ x + p["b"]) ** 2)  # noqa: E731
    r = jaxcheck.check_grad(loss, (params, x), mode="probe")
    assert r.status == "passed" and r.mode == "probe" and r.numeric is None
    assert jaxcheck.check_grad(loss, (params, x)).mode == "full"
    big = (jnp.linspace(-1.0, 1.0, 4096),)
    over = jaxcheck.check_grad(lambda x: jnp.sum(x**2), big, budget=0.0)
    assert over.mode == "probe" and "(more than budget=0 s), so probe mode ran" in over.reference
    assert jaxcheck.check_grad(lambda x: jnp.sum(x**2), big, budget=1e6).mode == "full"


def test_complex_probe_passes_and_conjugation_bug_fails():
    z = (jnp.linspace(-1.0, 1.0, 50) + 1j * jnp.linspace(0.5, -0.5, 50)).astype(jnp.complex64)

    @jax.custom_vjp
    def sq(z):
        return z * z

    sq.defvjp(lambda z: (z * z, z), lambda z, g: (g * jnp.conj(2 * z),))  # JAX wants g * 2z here
    assert jaxcheck.check_vjp(
        lambda z: {"s": jnp.sin(z), "a": jnp.abs(z)}, (z,), mode="probe"
    ).passed
    assert jaxcheck.check_jvp(lambda z: jnp.sin(z) * jnp.conj(z), (z,), mode="probe").passed
    r = jaxcheck.check_vjp(sq, (z,), mode="probe")
    assert r.status == "failed"
    assert r.blocks[0].worst.input_part != r.blocks[0].worst.output_part


def test_probe_results_are_deterministic_given_the_seed(key):
    params, x, n = _inputs(key, jnp.float32)
    a = jaxcheck.check_jvp(_net, (params, x, n), mode="probe", seed=3)
    b = jaxcheck.check_jvp(_net, (params, x, n), mode="probe", seed=3)
    c = jaxcheck.check_jvp(_net, (params, x, n), mode="probe", seed=4)
    assert [x.relative_error for x in a.blocks] == [x.relative_error for x in b.blocks]
    assert [x.relative_error for x in a.blocks] != [x.relative_error for x in c.blocks]
    assert a.seed == 3


def test_check_grad_probe_reuses_compiled_code(key, monkeypatch):
    monkeypatch.setattr(_engine, "EAGER_MAX_COORDINATES", 0)  # the jitted path, as for large n
    traces = []

    def loss(p, x):
        if isinstance(x, jax.core.Tracer):
            traces.append(1)
        return jnp.sum(jnp.tanh(p["W"] @ x + p["b"]) ** 2)

    params, x, _ = _inputs(key, jnp.float32)
    jaxcheck.check_grad(loss, (params, x), mode="probe")
    count = len(traces)
    jaxcheck.check_grad(loss, (jax.tree.map(lambda a: 0.5 * a, params), x + 1.0), mode="probe")
    assert len(traces) == count


def test_probe_sees_a_small_needle_at_the_analytic_sides_own_rounding():
    """The analytic side's rounding is measured against the float64 gradient, so a float32
    probe resolves a single element wrong by 0.5% of a typical element in 40000 (2.5e-5 of the
    leaf's gradient norm, invisible to a tolerance of rtol * the leaf's largest element)."""
    w = jnp.cos(jnp.arange(40_000.0)).reshape(200, 200)
    x = jnp.sin(jnp.arange(200.0))

    def loss(w, x):
        return jnp.sum(jnp.tanh(w * x[None, :]) ** 2)

    def needle(w, x):
        return jax.grad(loss)(w, x).at[17, 101].multiply(1.005)

    good = jaxcheck.check_grad(loss, (w, x), mode="probe")
    bad = jaxcheck.check_grad(loss, (w, x), mode="probe", grad_fn=needle)
    assert good.status == "passed", str(good)
    assert bad.status == "failed" and bad.leaves[0].worst_index == (17, 101), str(bad)
    floor = good.leaves[0]
    assert floor.probe_floor is not None and floor.probe_floor / floor.gradient_norm < 1e-5
    assert "one wrong element off by less than about" in str(good)


def _wide_matrix() -> jax.Array:
    """A (2, 400000) float32 matrix (JAX's testPinv1): the float32 JVP of its pinv sums
    400000 terms and loses about three digits, beyond the probe allowance."""
    rng = np.random.RandomState(0)
    return jnp.asarray((rng.randn(2, 400_000) * 3).astype(np.float32))


def test_probe_rounding_of_a_right_formula_is_a_precision_note():
    result = jaxcheck.check_jvp(
        jnp.linalg.pinv, (_wide_matrix(),), mode="probe", locate_rules=False
    )
    assert result.status == "passed", str(result)
    assert any(n.startswith("precision:") and "probe value(s)" in n for n in result.notes), str(
        result
    )


def test_probe_precision_look_does_not_hide_a_wrong_formula():
    @jax.custom_jvp
    def pinv(x):
        return jnp.linalg.pinv(x)

    @pinv.defjvp
    def pinv_jvp(primals, tangents):
        y, t_out = jax.jvp(jnp.linalg.pinv, primals, tangents)
        return y, t_out * (1 + 3e-4)  # wrong in float64 too

    result = jaxcheck.check_jvp(pinv, (_wide_matrix(),), mode="probe", locate_rules=False)
    assert result.status == "failed", str(result)
    assert not any("probe value(s)" in n for n in result.notes), str(result)
