"""Tests for `jaxcheck.catalogue.demos`: each demo fails on its planted leaf, and passes fixed."""

import functools as ft
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck.catalogue import demos as _demos
from jaxcheck.catalogue import grad_cases as _suites

PLANTED = {
    "mlp": "args[0]['layer2']['b']",
    "layernorm": "args[0]['W']",
    "dropout": "args[0]['W1']",
    "pallas": "args[0]['W']",
}


@ft.cache
def _result(name: str, fixed: bool):
    return _demos.DEMOS[name].run(fixed)


def test_demo_names():
    assert set(_demos.DEMOS) == set(PLANTED)
    assert inspect.signature(_demos.run_demo).parameters["name"].default == "mlp"
    for name, demo in _demos.DEMOS.items():
        assert demo.name == name
        assert PLANTED[name] in demo.description


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_demo_fails_on_planted_leaf(name):
    result = _result(name, False)
    report = str(result)
    assert result.status == "failed", report
    assert not result.passed
    failed = [leaf.path for leaf in result.leaves if leaf.status == "failed"]
    assert failed == [PLANTED[name]], report
    assert PLANTED[name] in report


# "mlp" fixed is the doctest of `jaxcheck.catalogue.demos` (`run_demo("mlp", fixed=True)`).
@pytest.mark.parametrize("name", sorted(set(PLANTED) - {"mlp"}))
def test_demo_fixed_passes(name):
    result = _demos.run_demo(name, fixed=True)
    assert result.status == "passed", str(result)
    assert result.passed


def test_mlp_demo_names_worst_element():
    params, x, y = _suites.mlp3_data(jnp.float32)
    buggy = _suites.mlp3_backprop(params, x, y, bug="bias")["layer2"]["b"]
    true = jax.grad(_suites.mlp3_loss)(params, x, y)["layer2"]["b"]
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(buggy - true)), true.shape))
    (leaf,) = [leaf for leaf in _result("mlp", False).leaves if leaf.status == "failed"]
    assert leaf.worst_index == worst


def test_run_demo_unknown_name():
    with pytest.raises(ValueError, match="Did you mean `mlp`"):
        _demos.run_demo("mpl")


def test_pallas_demo_names_the_rule_and_the_worst_element():
    result = _result("pallas", False)
    (leaf,) = [leaf for leaf in result.leaves if leaf.status == "failed"]
    assert leaf.path == "args[0]['W']" and len(leaf.worst_index) == 2
    # Many entries are wrong (the backward kernel reduces over the wrong axis); the worst
    # one named is far outside its tolerance.
    assert abs(leaf.worst_analytic - leaf.worst_numeric) > 10 * leaf.worst_tolerance
    assert any("`pallas_softmax`" in line for line in result.rule_findings), str(result)
