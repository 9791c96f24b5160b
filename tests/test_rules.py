"""check_rules / assert_rules_correct / diagnose_rules, and the call-site discovery under them.

The battery itself is tested in test_custom_vjp.py / test_custom_jvp.py; here each
construct is tested on discovery alone (cheap), and check_rules end to end on a few
models, both ways.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxcheck
from jaxcheck._rule_sites import discover
from jaxcheck._rules import _group, diagnose_line, diagnose_rules


def _softplus(x):
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@jax.custom_vjp
def smooth_relu(x):
    return _softplus(x)


smooth_relu.defvjp(lambda x: (_softplus(x), x), lambda x, g: (g / (1.0 + jnp.exp(-x)),))


@jax.custom_vjp
def scale_shift(x):
    return 2.0 * x + 1.0


def _bwd_ignores_cotangent(res, g):
    return (2.0 * jnp.ones_like(g),)  # right only when g is all ones (under jnp.sum)


scale_shift.defvjp(lambda x: (2.0 * x + 1.0, None), _bwd_ignores_cotangent)


def model_loss(params, xs):
    def cell(h, x):
        h = smooth_relu(params["w"] * h + x)
        return h, h

    h, hs = lax.scan(cell, jnp.zeros(3), xs)
    return jnp.sum(jax.nn.relu(hs)) + jnp.sum(scale_shift(h))  # relu: JAX's own custom_jvp


MODEL_ARGS = (
    {"w": jnp.array([0.5, -0.3, 0.8], jnp.float32)},
    jnp.arange(12.0, dtype=jnp.float32).reshape(4, 3) / 10,
)


@jax.custom_vjp
def wrong_sin(x):
    return jnp.sin(x)


wrong_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.sin(x),))  # should be cos


def scan_loss(x):
    def body(c, xi):
        return c + wrong_sin(xi * c + 0.5), None

    c, _ = lax.scan(body, jnp.zeros(2), x)
    return jnp.sum(c)


SCAN_ARGS = (jnp.array([[0.3, -0.7], [1.1, 0.4], [0.2, 0.9]], jnp.float32),)


@pytest.fixture(scope="module")
def model_result():
    return jaxcheck.check_rules(model_loss, MODEL_ARGS)


@pytest.fixture(scope="module")
def scan_result():
    return jaxcheck.check_rules(scan_loss, SCAN_ARGS)


# ------------------------------------------------------------------ the three-rule model


def test_check_grad_passes_on_the_model_with_a_bwd_that_ignores_its_cotangent():
    """...and, having passed, does not look at the rules (localisation costs nothing then)."""
    result = jaxcheck.check_grad(model_loss, MODEL_ARGS)
    assert result.status == "passed" and result.rule_findings == ()


def test_check_rules_fails_naming_exactly_that_rule(model_result):
    r = model_result
    assert r.status == "failed" and not r.passed
    assert [s.name for s in r.failed_rules] == ["scale_shift"]
    bad = r.rule("scale_shift")
    assert bad.kind == "custom_vjp" and bad.call_path == "model_loss -> scale_shift"
    assert bad.defined_at == f"test_rules.py:{scale_shift.fun.__code__.co_firstlineno}"
    assert {"linearity", "fd"} <= set(bad.failed_checks)
    assert bad.result.check("linearity").status == "failed"
    assert r.rules[0] is bad  # failed rules first
    assert {s.name: s.status for s in r.rules[1:]} == {
        "smooth_relu": "passed",
        "relu": "passed",  # JAX's own custom_jvp rules pass
    }
    assert r.rule("relu").kind == "custom_jvp"
    report = str(r)
    assert report.startswith("FAILED: check_rules(model_loss): 1 of 3 rules failed (scale_shift)")
    assert "  scale_shift (test_rules.py:" in report


def test_rule_inside_scan_records_iteration_zero(model_result):
    s = model_result.rule("smooth_relu")
    assert s.call_path == "model_loss -> scan -> cell -> smooth_relu"
    assert s.iteration == "scan iteration 0 (the first of 4 calls here)"
    assert s.calls == 4 and s.input_shapes == "(f32[3],)"
    assert s.where == "inside scan"
    assert model_result.rule("relu").input_shapes == "(f32[4,3],)"


def test_result_to_dict_is_json(model_result):
    data = model_result.to_dict()
    assert data["kind"] == "rules" and data["status"] == "failed"
    assert [d["name"] for d in data["rules"]][0] == "scale_shift"
    assert '"failed_checks": ["linearity"' in model_result.to_json()


# ------------------------------------------------------------------ a wrong rule in a scan body


def test_wrong_rule_in_scan_check_grad_fails_and_names_the_rule(scan_result):
    grad = jaxcheck.check_grad(scan_loss, SCAN_ARGS)
    assert grad.status == "failed"
    # Localisation beyond the leaf: the failing check names the rule at its call site.
    assert grad.rule_findings == (diagnose_line(scan_result.failed_rules[0]),)
    assert f"  rule: {grad.rule_findings[0]}" in str(grad).splitlines()
    vjp = jaxcheck.check_vjp(lambda x: scan_loss(x) * x, SCAN_ARGS, mode="full")
    assert vjp.status == "failed" and len(vjp.rule_findings) == 1
    assert "(<lambda> -> scan_loss -> scan -> body -> wrong_sin," in vjp.rule_findings[0]
    quiet = jaxcheck.check_grad(scan_loss, SCAN_ARGS, locate_rules=False)
    assert quiet.status == "failed" and quiet.rule_findings == ()
    r = scan_result
    assert [s.name for s in r.failed_rules] == ["wrong_sin"]
    s = r.failed_rules[0]
    assert s.call_path == "scan_loss -> scan -> body -> wrong_sin"
    assert s.iteration == "scan iteration 0 (the first of 3 calls here)"
    assert "fd" in s.failed_checks
    # the inputs of iteration 0: xi * 0 + 0.5
    assert "inputs of scan iteration 0 (the first of 3 calls here)" in str(r)


def test_diagnose_lines(scan_result):
    line = diagnose_line(scan_result.failed_rules[0])
    at = f"test_rules.py:{wrong_sin.fun.__code__.co_firstlineno}"
    assert line.startswith(f"the custom_vjp rule `wrong_sin` ({at}) fails its finite-difference")
    assert line.endswith(
        "at its call inside scan (scan_loss -> scan -> body -> wrong_sin, scan iteration 0)"
    )


def test_assert_rules_correct_raises_with_a_deterministic_report(scan_result):
    with pytest.raises(jaxcheck.GradCheckError) as caught:
        jaxcheck.assert_rules_correct(scan_loss, SCAN_ARGS)
    mask = lambda text: re.sub(r"\d+\.\d+ s\b", "T s", text)  # noqa: E731
    assert mask(str(caught.value)) == mask(str(scan_result))
    assert caught.value.result.failed_rules[0].name == "wrong_sin"


# ------------------------------------------------------------------ both ways: correct rules pass


def test_no_rules_passes_with_a_reason():
    r = jaxcheck.check_rules(lambda x: jnp.sum(jnp.sin(x)), (jnp.ones(3),))
    assert r.passed and r.rules == () and r.failed_rules == ()
    assert r.reason == "no custom_vjp or custom_jvp rules were found while evaluating f"
    assert diagnose_rules(lambda x: jnp.sum(jnp.sin(x)), (jnp.ones(3),)) == ()


# ------------------------------------------------------------------ discovery of each construct


@jax.custom_vjp
def good_sin(x):
    return jnp.sin(x)


good_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))

X = jnp.array([0.5, -1.0], jnp.float32)


def sites_of(f, *args):
    return discover(f, args).sites


def test_discovery_under_jit_checkpoint_and_vmap():
    inner = jax.jit(lambda y: good_sin(y) * 3.0)
    inner(X)  # traced and cached before: discovery must trace it again

    def f(x):
        a = inner(x)
        b = jax.checkpoint(lambda y: good_sin(y))(x)
        c = jax.vmap(good_sin)(jnp.stack([x, 2.0 * x, 3.0 * x]))
        return jnp.sum(a) + jnp.sum(b) + jnp.sum(c)

    paths = {s.call_path: s for s in sites_of(f, X)}
    assert set(paths) == {
        "f -> jit -> <lambda> -> good_sin",
        "f -> checkpoint -> <lambda> -> good_sin",
        "f -> vmap -> good_sin",
    }
    batched = paths["f -> vmap -> good_sin"]
    np.testing.assert_array_equal(batched.args[0], X)  # batch element 0, unbatched
    assert batched.iteration == "vmap batch element 0 (the first of 3 calls here)"
    assert np.asarray(inner(X)).shape == (2,)  # the user's cached function still works


def test_discovery_in_cond_while_and_fori():
    def f(x):
        a = lax.cond(x[0] > 0, good_sin, lambda y: -y, x)
        b = lax.cond(x[0] < 0, lambda y: good_sin(y), lambda y: -y, x)  # branch not taken
        c = lax.while_loop(lambda s: s[0] < 2, lambda s: (s[0] + 1, good_sin(s[1])), (0, x))[1]
        d = lax.fori_loop(0, 3, lambda i, y: good_sin(y), x)
        return jnp.sum(a + b + c + d)

    sites = sites_of(f, X)
    reached = [s for s in sites if s.args is not None]
    assert [s.call_path.split(" -> ")[1] for s in sites] == [
        "cond",
        "cond",
        "while_loop",
        "fori_loop",
    ]
    assert len(reached) == 3 and sites[1].args is None
    assert sites[2].iteration == "while_loop iteration 0 (the first of 2 calls here)"
    assert sites[3].iteration == "fori_loop iteration 0 (the first of 3 calls here)"


@jax.custom_vjp
def outer_rule(x):
    return 2.0 * good_sin(x)


def _outer_fwd(x):
    return 2.0 * jnp.sin(x), x


def _outer_bwd(x, g):
    return (2.0 * wrong_sin(x) * 0.0 + 2.0 * g * jnp.cos(x),)  # a rule inside bwd


outer_rule.defvjp(_outer_fwd, _outer_bwd)


def test_rules_nested_in_other_rules_primal_and_bwd():
    paths = [s.call_path for s in sites_of(lambda x: jnp.sum(outer_rule(x)), X)]
    assert paths == [
        "<lambda> -> outer_rule",
        "<lambda> -> outer_rule -> good_sin",  # inside its primal
        "<lambda> -> outer_rule -> _outer_bwd -> wrong_sin",  # inside its bwd
    ]


def test_every_site_groups_by_call_site():
    def f(x):
        a = jnp.sum(good_sin(x))
        b = jnp.sum(good_sin(2.0 * x))  # the same signature at another line
        return a + b + jnp.sum(good_sin(x[:1]))  # another signature

    sites = sites_of(f, X)
    assert [len(g) for g in _group(sites, every_site=False)] == [2, 1]
    assert [len(g) for g in _group(sites, every_site=True)] == [1, 1, 1]


# ------------------------------------------------------------------ misuse and robustness


def test_misuse_raises():
    with pytest.raises(TypeError, match=re.escape("Did you mean `args=(x,)`?")):
        jaxcheck.check_rules(jnp.sin, jnp.ones(2))
    with pytest.raises(ValueError, match="`argnums` 3 is out of range"):
        jaxcheck.check_rules(jnp.sin, (jnp.ones(2),), argnums=3)


def test_diagnose_rules_never_raises():
    def broken(x):
        raise RuntimeError("boom")

    (line,) = diagnose_rules(broken, (X,))
    assert line == "the custom rules inside f could not be checked: RuntimeError: boom"


def test_equinox_rule_is_found_under_its_own_name():
    import equinox as eqx  # in the `test` extra: this must run, not skip

    @eqx.filter_custom_vjp
    def scaled(vjp_arg, scale):
        return jnp.sin(vjp_arg) * scale

    @scaled.def_fwd
    def _fwd(perturbed, vjp_arg, scale):
        return jnp.sin(vjp_arg) * scale, vjp_arg

    @scaled.def_bwd
    def _bwd(res, g, perturbed, vjp_arg, scale):
        return g * jnp.cos(res) * scale

    (site,) = sites_of(lambda x: jnp.sum(scaled(x, 2.0)), X)  # equinox's guards skipped
    assert site.rule is scaled and site.name == "scaled" and site.kind == "custom_vjp"
    assert site.call_path == "<lambda> -> scaled" and site.args[1] == 2.0
