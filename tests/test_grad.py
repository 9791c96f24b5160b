"""check_grad / assert_grad_correct / numerical_grad: verdicts both ways, misuse, evidence."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck


@jax.custom_vjp
def swapped_sin(x):
    return jnp.sin(x)


swapped_sin.defvjp(
    lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.sin(x),)
)  # bug: sin instead of cos


@jax.custom_vjp
def good_sin(x):
    return jnp.sin(x)


good_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))


def _params(key, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "layer1": {"w": jax.random.normal(k1, (3, 4), dtype), "b": jnp.zeros((4,), dtype)},
        "layer2": {"w": jax.random.normal(k2, (4,), dtype), "b": jax.random.normal(k3, (), dtype)},
    }


def _loss(params, x, op=jnp.tanh):
    h = op(x @ params["layer1"]["w"] + params["layer1"]["b"][None, :])
    return jnp.sum((h @ params["layer2"]["w"] + params["layer2"]["b"]) ** 2) + 0.1 * jnp.sum(
        params["layer1"]["w"] ** 2
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=lambda d: jnp.dtype(d).name)
def test_correct_pytree_loss_passes(key, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        params = _params(key, dtype)
        x = jax.random.normal(jax.random.fold_in(key, 1), (5, 3), dtype)
        result = jaxcheck.check_grad(_loss, (params, x))
    assert result.status == "passed", str(result)
    assert [leaf.status for leaf in result.leaves] == ["passed"] * 4
    assert {leaf.path for leaf in result.leaves} == {
        "args[0]['layer1']['w']",
        "args[0]['layer1']['b']",
        "args[0]['layer2']['w']",
        "args[0]['layer2']['b']",
    }
    assert result.relative_error < (1e-6 if dtype == jnp.float32 else 1e-9)
    assert all(t.verdict == "consistent" for t in result.taylor)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=lambda d: jnp.dtype(d).name)
def test_broken_rule_fails_naming_leaf_and_element(key, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.linspace(-2.0, 2.0, 7, dtype=dtype)
        w = jax.random.normal(key, (7,), dtype)
        result = jaxcheck.check_grad(
            lambda p: jnp.sum(w * swapped_sin(p["a"])) + jnp.sum(p["b"] ** 2), ({"a": x, "b": x},)
        )
    assert result.status == "failed"
    assert [leaf.path for leaf in result.failed_leaves] == ["args[0]['a']"]
    assert result.leaf("args[0]['b']").status == "passed"
    bad = result.leaves[0]
    assert bad.path == "args[0]['a']" and bad.n_failed >= 6
    k = bad.worst_index[0]
    np.testing.assert_allclose(bad.worst_analytic, float(w[k] * jnp.sin(x[k])), rtol=1e-5)
    np.testing.assert_allclose(bad.worst_numeric, float(w[k] * jnp.cos(x[k])), rtol=1e-5, atol=1e-6)
    assert any(t.verdict == "inconsistent" for t in result.taylor)


def test_assert_grad_correct_raises_with_report(key):
    x = jnp.linspace(-2.0, 2.0, 5)
    with pytest.raises(jaxcheck.GradCheckError, match=re.escape("args[0]")) as info:
        jaxcheck.assert_grad_correct(lambda x: jnp.sum(swapped_sin(x) * jnp.arange(1.0, 6.0)), (x,))
    assert isinstance(info.value, AssertionError)
    assert info.value.result.status == "failed"
    assert str(info.value) == str(info.value.result)
    assert jaxcheck.assert_grad_correct(lambda x: jnp.sum(good_sin(x)), (x,)).passed


def test_hand_written_grad_fn_both_ways(key):
    params = _params(key)
    x = jax.random.normal(jax.random.fold_in(key, 1), (5, 3))
    true = jax.grad(_loss)(params, x)
    assert jaxcheck.check_grad(_loss, (params, x), grad_fn=lambda p, x: true).passed
    wrong = jax.tree_util.tree_map(lambda g: g, true)
    wrong["layer1"]["b"] = true["layer1"]["b"].at[2].multiply(1.01)
    result = jaxcheck.check_grad(_loss, (params, x), grad_fn=lambda p, x: wrong)
    assert result.status == "failed"
    assert [l.path for l in result.failed_leaves] == ["args[0]['layer1']['b']"]
    assert result.failed_leaves[0].worst_index == (2,)


def test_grad_fn_structure_errors_name_the_path(key):
    params = _params(key)
    x = jnp.ones((2, 3))
    true = jax.grad(_loss)(params, x)
    missing = {"layer1": true["layer1"]}
    with pytest.raises(ValueError, match="does not match its structure"):
        jaxcheck.check_grad(_loss, (params, x), grad_fn=lambda p, x: missing)
    bad_shape = {**true, "layer2": {**true["layer2"], "w": jnp.zeros((5,))}}
    with pytest.raises(ValueError, match=re.escape("args[0]['layer2']['w'] has shape (5,)")):
        jaxcheck.check_grad(_loss, (params, x), grad_fn=lambda p, x: bad_shape)
    with jax.enable_x64(True):  # without x64, JAX itself canonicalises float64 to float32
        bad_dtype = {**true, "layer2": {**true["layer2"], "b": np.zeros((), np.float64)}}
        with pytest.raises(TypeError, match=re.escape("args[0]['layer2']['b'] has dtype float64")):
            jaxcheck.check_grad(_loss, (params, x), grad_fn=lambda p, x: bad_dtype)
    with pytest.raises(ValueError, match="tuple of 2 gradients"):
        jaxcheck.check_grad(_loss, (params, x), argnums=(0, 1), grad_fn=lambda p, x: true)


def test_argnums_tuple_and_negative(key):
    a = jnp.array([0.5, -1.0])
    b = jnp.array([2.0, 0.3, 1.0])
    f = lambda a, b: jnp.sum(jnp.sin(a)) * jnp.sum(b**2)
    result = jaxcheck.check_grad(f, (a, b), argnums=(0, -1))
    assert result.passed
    assert {l.path for l in result.leaves} == {"args[0]", "args[1]"}
    assert isinstance(result.analytic, tuple) and len(result.analytic) == 2
    only_b = jaxcheck.check_grad(f, (a, b), argnums=1)
    assert [l.path for l in only_b.leaves] == ["args[1]"]


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"argnums": 2}, ValueError, "`argnums`=2 is out of range"),
        ({"argnums": "0"}, TypeError, "`argnums` must be an int or a tuple of ints"),
        ({"argnums": (0, 0)}, ValueError, "names an argument twice"),
        ({"eps": -1.0}, ValueError, "`eps` must be a finite positive number"),
        ({"rtol": float("nan")}, ValueError, "`rtol` must be a finite non-negative"),
        ({"batch_size": 0}, ValueError, "`batch_size` must be a positive int"),
        ({"mode": "fast"}, ValueError, "`mode` must be one of"),
        ({"reference": "f16"}, ValueError, "`reference` must be one of"),
        ({"seed": 1.5}, TypeError, "`seed` must be an int"),
    ],
)
def test_bad_options_get_clear_errors(kwargs, error, pattern):
    with pytest.raises(error, match=re.escape(pattern)):
        jaxcheck.check_grad(lambda x, y: jnp.sum(x * y), (jnp.ones(2), jnp.ones(2)), **kwargs)


def test_misuse_errors():
    with pytest.raises(TypeError, match=re.escape("Did you mean `args=(x,)`?")):
        jaxcheck.check_grad(jnp.sum, jnp.ones(3))
    with pytest.raises(ValueError, match=re.escape("`f` must return a scalar")):
        jaxcheck.check_grad(jnp.sin, (jnp.ones(3),))
    with pytest.raises(ValueError, match="Nothing to differentiate"):
        jaxcheck.check_grad(lambda n: jnp.sum(n * 1.0), (jnp.arange(3),))
    with pytest.raises(TypeError, match="`f` must be callable"):
        jaxcheck.check_grad("loss", (jnp.ones(3),))
    with pytest.raises(TypeError, match="does not return a pair"):
        jaxcheck.check_grad(lambda x: jnp.sum(x), (jnp.ones(3),), has_aux=True)


def test_nondeterministic_function_is_stopped():
    rng = np.random.default_rng(0)
    f = lambda x: jnp.sum(x * rng.normal())
    with pytest.raises(ValueError, match="not deterministic: .* hold it fixed"):
        jaxcheck.check_grad(f, (jnp.ones(3),))


def test_dropout_with_fixed_key_is_checked(key):
    def loss(w, x, key):
        keep = jax.random.bernoulli(key, 0.7, x.shape)
        return jnp.sum(jnp.tanh(jnp.where(keep, x * w / 0.7, 0.0)))

    w = jax.random.normal(key, (16,))
    x = jax.random.normal(jax.random.fold_in(key, 1), (16,))
    result = jaxcheck.check_grad(loss, (w, x, jax.random.key(3)))
    assert result.passed, str(result)
    assert (
        result.reference_fallback is not None
        and "float64 value differs" in result.reference_fallback
    )
    assert result.reference.startswith("native float32")


def test_integer_and_key_leaves_are_skipped_and_listed(key):
    params = {
        "w": jnp.array([0.3, -0.2]),
        "count": jnp.array(3, jnp.int32),
        "key": jax.random.key(0),
        "flag": True,
    }
    f = lambda p: jnp.sum(p["w"] ** 2) * p["count"] * (2.0 if p["flag"] else 1.0)
    result = jaxcheck.check_grad(f, (params,))
    assert result.passed
    assert [l.path for l in result.leaves] == ["args[0]['w']"]
    reasons = {s.path: s.reason for s in result.skipped}
    assert "int32 is not a floating-point dtype" in reasons["args[0]['count']"]
    assert "PRNG key" in reasons["args[0]['key']"]
    assert "not an array" in reasons["args[0]['flag']"]


@pytest.mark.parametrize("point", [0.0, 1e-7, 1e-3])
def test_kinks_are_not_false_alarms(point):
    x = jnp.array([point, -point, 1.5, -0.7], jnp.float32)
    for op in (jax.nn.relu, jnp.abs):
        result = jaxcheck.check_grad(
            lambda x: jnp.sum(jnp.array([1.0, 2.0, 3.0, 4.0]) * op(x)), (x,)
        )
        assert result.status == "passed", str(result)
        if point == 0.0:
            assert result.leaves[0].n_nonsmooth >= 1


def test_wrong_rule_at_smooth_points_next_to_kinks_is_caught():
    @jax.custom_vjp
    def relu(x):
        return jnp.maximum(x, 0.0)

    relu.defvjp(lambda x: (relu(x), x), lambda x, g: (jnp.where(x > 0, 2.0 * g, 0.0),))
    x = jnp.array([0.0, 1.5, -0.7, 2.0])
    result = jaxcheck.check_grad(lambda x: jnp.sum(relu(x)), (x,))
    assert result.status == "failed"
    assert result.leaves[0].n_failed == 2


def test_nan_in_analytic_is_reported_with_location():
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(
        lambda x: (jnp.sin(x), x),
        lambda x, g: (jnp.where(jnp.arange(x.size) == 2, jnp.nan, g * jnp.cos(x)),),
    )
    result = jaxcheck.check_grad(lambda x: jnp.sum(f(x)), (jnp.linspace(0.0, 1.0, 4),))
    assert result.status == "failed"
    leaf = result.leaves[0]
    assert leaf.worst_index == (2,) and leaf.elements[0].kind == "analytic-nonfinite"


def test_nan_function_value_is_inconclusive():
    result = jaxcheck.check_grad(lambda x: jnp.sum(jnp.log(x)), (jnp.array([-1.0, 2.0]),))
    assert result.status == "inconclusive"
    assert "not finite" in result.reason
    with pytest.raises(jaxcheck.GradCheckError):
        jaxcheck.assert_grad_correct(lambda x: jnp.sum(jnp.log(x)), (jnp.array([-1.0, 2.0]),))
    assert jaxcheck.assert_grad_correct(
        lambda x: jnp.sum(jnp.log(x)), (jnp.array([-1.0, 2.0]),), allow_inconclusive=True
    )


def test_discontinuity_is_inconclusive_not_failed():
    x = jnp.array([0.0, 1.0])
    result = jaxcheck.check_grad(lambda x: jnp.sum(jnp.where(x >= 0.0, 1.0, 0.0) + x), (x,))
    assert result.status in ("passed", "inconclusive")
    assert result.status != "failed"


def test_badly_scaled_leaves_are_both_checked():
    @jax.custom_vjp
    def scaled(x):
        return jnp.sin(x * 1e3)

    scaled.defvjp(
        lambda x: (scaled(x), x), lambda x, g: (g * 1e3 * jnp.cos(x * 1e3) * 1.001,)
    )  # 0.1% bug
    params = {"big": jnp.array([1.2e3, -0.8e3, 2.5e3]), "small": jnp.array([1e-3, -2e-3, 1.5e-3])}
    good = lambda p: jnp.sum(jnp.sin(p["big"] / 1e3)) + jnp.sum(jnp.sin(p["small"] * 1e3))
    assert jaxcheck.check_grad(good, (params,)).passed
    bad = lambda p: jnp.sum(jnp.sin(p["big"] / 1e3)) + jnp.sum(scaled(p["small"]))
    result = jaxcheck.check_grad(bad, (params,))
    assert [l.path for l in result.failed_leaves] == ["args[0]['small']"]
    assert result.leaf("args[0]['big']").status == "passed"


def test_complex_leaves_follow_jax_convention():
    z = jnp.array([1.0 + 2.0j, -0.5 + 0.3j], jnp.complex64)
    f = lambda z: jnp.sum(jnp.abs(z) ** 2 + jnp.real(z) * jnp.imag(z))
    result = jaxcheck.check_grad(f, (z,))
    assert result.passed, str(result)
    np.testing.assert_allclose(result.numeric, np.asarray(jax.grad(f)(z)), rtol=1e-5)
    wrong = lambda z: jnp.conj(jax.grad(f)(z))
    failed = jaxcheck.check_grad(f, (z,), grad_fn=wrong)
    assert failed.status == "failed" and failed.leaves[0].elements[0].part == "imag"


def test_numerical_grad_matches_jax_grad(key):
    params = _params(key)
    x = jax.random.normal(key, (4, 3))
    numeric = jaxcheck.numerical_grad(_loss, (params, x))
    expected = jax.grad(_loss)(params, x)
    jax.tree_util.tree_map(
        lambda n, e: np.testing.assert_allclose(n, e, rtol=2e-5, atol=1e-5), numeric, expected
    )
    assert jax.tree_util.tree_structure(numeric) == jax.tree_util.tree_structure(expected)


def test_user_arguments_are_not_mutated():
    w = np.array([0.5, -1.5, 2.0], np.float32)
    params = {"w": w, "n": np.int32(3)}
    before = {"w": w.copy(), "n": params["n"]}
    jaxcheck.check_grad(lambda p: jnp.sum(jnp.sin(p["w"])) * p["n"], (params,))
    np.testing.assert_array_equal(params["w"], before["w"])
    assert params["w"] is w and set(params) == {"w", "n"}


def test_user_eps_is_used_and_recorded():
    result = jaxcheck.check_grad(lambda x: jnp.sum(jnp.exp(x)), (jnp.array([0.1, 0.2]),), eps=1e-3)
    assert result.passed and result.eps == 1e-3
    assert "user eps = 0.001" in result.step_policy
    with pytest.raises(ValueError, match="too small to change the value"):
        jaxcheck.check_grad(
            lambda x: jnp.sum(jnp.exp(x)), (jnp.array([1e3]),), eps=1e-30, reference="native"
        )


def test_reference_choice_and_fallback():
    f = lambda x: jnp.sum(jnp.sin(x))
    x = jnp.array([0.3, 0.7])
    assert jaxcheck.check_grad(f, (x,)).reference.startswith("float64")
    assert jaxcheck.check_grad(f, (x,), reference="native").reference.startswith("native float32")
    casts = lambda x: jnp.sum(jnp.sin(x.astype(jnp.float32)))
    with pytest.raises(ValueError, match="cannot be evaluated faithfully in float64"):
        jaxcheck.check_grad(casts, (x,), reference="float64")
    fallback = jaxcheck.check_grad(casts, (x,))
    assert fallback.passed and "returns float32" in fallback.reference_fallback


def test_same_inputs_give_the_same_report(key):
    params = _params(key)
    x = jax.random.normal(key, (4, 3))
    first = jaxcheck.check_grad(_loss, (params, x), seed=3).to_dict()
    second = jaxcheck.check_grad(_loss, (params, x), seed=3).to_dict()
    first.pop("seconds"), second.pop("seconds")
    assert first == second


def test_scan_loss_both_ways(key):
    def rnn(w, xs):
        def step(h, x):
            h = jnp.tanh(w["a"] * h + w["b"] * x)
            return h, h

        _, hs = jax.lax.scan(step, jnp.zeros(3), xs)
        return jnp.sum(hs**2)

    w = {"a": jnp.array([0.5, -0.3, 0.8]), "b": jnp.array([1.0, 0.7, -1.2])}
    xs = jax.random.normal(key, (6, 3))
    assert jaxcheck.check_grad(rnn, (w, xs)).passed
    true = jax.grad(rnn)(w, xs)
    result = jaxcheck.check_grad(
        rnn, (w, xs), grad_fn=lambda w, xs: {"a": true["a"], "b": -true["b"]}
    )
    assert [l.path for l in result.failed_leaves] == ["args[0]['b']"]
    assert any("sign error" in h for h in result.hints)


def test_fixed_float_inputs_are_widened_for_the_float64_reference(key):
    y = jax.random.uniform(key, (8,), jnp.float32, 0.5, 2.0)
    x = jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32)
    result = jaxcheck.check_grad(lambda x, y: jnp.sum(jax.lax.atan2(x, y)), (x, y))
    assert result.passed and result.reference_fallback is None
    assert result.reference.startswith("float64")


def test_cancellation_noise_is_not_mistaken_for_kinks(key):
    x = jax.random.normal(key, (64,), jnp.float32)
    w = jax.random.normal(jax.random.fold_in(key, 1), (64,), jnp.float32) * 1e3
    f = lambda x: jnp.sum(w * x) - jnp.sum(w * 0.999 * x)  # linear, heavy cancellation
    result = jaxcheck.check_grad(f, (x,), reference="native")
    assert result.status in ("passed", "inconclusive")
    assert result.leaves[0].n_nonsmooth == 0


def test_constant_offset_does_not_hide_a_bug():
    f = lambda x: jnp.sum(jnp.sin(x)) + 1e6
    x = jnp.linspace(0.1, 1.0, 8)
    assert jaxcheck.check_grad(f, (x,), mode="full").passed
    result = jaxcheck.check_grad(f, (x,), grad_fn=lambda x: jnp.cos(x).at[3].add(0.5), mode="full")
    assert result.status == "failed" and result.leaves[0].worst_index == (3,)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=lambda d: jnp.dtype(d).name)
def test_leaf_with_exactly_zero_gradient_passes(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        f = lambda x, y: jnp.sum(x**2)
        result = jaxcheck.check_grad(
            f, (jnp.arange(1.0, 4.0, dtype=dtype), jnp.ones(3, dtype)), argnums=(0, 1)
        )
        assert result.status == "passed", str(result)
        wrong = jaxcheck.check_grad(
            f,
            (jnp.arange(1.0, 4.0, dtype=dtype), jnp.ones(3, dtype)),
            argnums=(0, 1),
            grad_fn=lambda x, y: (2 * x, 0.1 * y),
        )
        assert [l.path for l in wrong.failed_leaves] == ["args[1]"]


@pytest.mark.parametrize("n", [64, 600], ids=["four-point", "two-point"])
def test_noise_bound_is_judged_per_coordinate_not_per_pair(n, monkeypatch):
    # Each coordinate's eps must reach `noise_bound` as (k, 1): as (k,) it broadcast against
    # the (k, 1) estimates into a (k, k) matrix (6.8 GB at n = 2e4 instead of 1 GB) and
    # judged every coordinate with the first one's dtype.
    from jaxcheck import _grad_full

    shapes = []
    real = _grad_full.st.noise_bound_host

    def noise_bound(est, *args, **kwargs):
        out = real(est, *args, **kwargs)
        shapes.append((out.shape, est.numeric.shape))
        return out

    monkeypatch.setattr(_grad_full.st, "noise_bound_host", noise_bound)
    x = jnp.linspace(0.5, 1.5, n, dtype=jnp.float32)
    result = jaxcheck.check_grad(lambda v: jnp.sum(jnp.sin(v) * v), (x,), mode="full")
    assert result.status == "passed", str(result)
    assert shapes and all(out == est for out, est in shapes), shapes
