"""Report wording, pinned line by line (as jaxtyping pins its messages), and result records."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import pytest

import jaxcheck
from jaxcheck._result import ElementReport, shape_str


@jax.custom_vjp
def _swapped_sin(x):
    return jnp.sin(x)


_swapped_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.sin(x),))


def loss(p):
    return jnp.sum(jnp.array([1.0, 2.0]) * _swapped_sin(p["w"])) + p["b"] ** 2


@pytest.fixture(scope="module")
def failed() -> jaxcheck.GradCheckResult:
    return jaxcheck.check_grad(loss, ({"w": jnp.array([0.5, 1.0]), "b": jnp.array(0.3)},))


NUM = r"-?[0-9.]+(e[-+][0-9]+)?"


def test_failed_report_lines(failed):
    lines = str(failed).splitlines()
    assert (
        lines[0]
        == "FAILED: check_grad(loss): 1 of 2 leaves wrong: args[0]['w'] (2 of 2 elements out of tolerance)"
    )
    assert re.fullmatch(
        rf"  relative error \|\|a-n\|\|/\(\|\|a\|\|\+\|\|n\|\|\) = {NUM} over all leaves", lines[1]
    )
    assert lines[2] == ""
    assert lines[3].split() == [
        "leaf",
        "status",
        "array",
        "rel.err",
        "worst",
        "analytic",
        "numeric",
        "tolerance",
        "failed",
        "kinks",
    ]
    assert lines[5].split()[:5] == ["args[0]['w']", "failed", "f32[2]", lines[5].split()[3], "[1]"]
    assert lines[5].split()[5:7] == [
        "1.68294",
        "1.0806",
    ]  # 2 sin(1) vs 2 cos(1): both values side by side
    assert lines[5].split()[-2:] == ["2/2", "0"]
    assert lines[6].split()[:3] == ["args[0]['b']", "passed", "f32[]"]
    assert lines[8] == "  args[0]['w']: 2 of 2 elements out of tolerance"
    assert lines[9].split() == ["index", "analytic", "numeric", "|error|", "tolerance", "finding"]
    assert lines[11].split()[0] == "[1]" and lines[11].split()[-1] == "mismatch"
    assert lines[12].split()[0] == "[0]" and lines[12].split()[-1] == "mismatch"
    text = "\n".join(lines)
    assert (
        "  taylor args[0]: remainder slope 1.00 over 3 steps (inconsistent; 2 = right, 1 = wrong)"
        in text
    )
    assert (
        "  reference: float64 (f re-evaluated with x64 enabled); 4-point central differences (+-h, +-2h) with Richardson extrapolation"
        in text
    )
    assert (
        "  steps: h_i = 6.06e-06 * max(|x_i|, min(1, rms of its leaf)) (float64 eps**(1/3)); stencil at +-h, +-2h"
        in text
    )
    assert (
        "  tolerance: 3 x estimated FD error + rtol 2.0e-05 x |numeric| + atol per leaf (rtol * leaf max + rounding floor)"
        in text
    )
    assert re.search(r"  mode full, seed 0, [0-9]+ evaluations, [0-9.]+ s", text)
    assert lines[-1] == "  try: check the derivative for args[0]['w'] at element [1]."


def test_passed_report_first_line_and_no_try_line():
    result = jaxcheck.check_grad(lambda x: jnp.sum(jnp.sin(x)), (jnp.arange(3.0),))
    text = str(result)
    assert (
        text.splitlines()[0]
        == "PASSED: check_grad(<lambda>): all 1 leaves match finite differences"
    )
    assert "try:" not in text and "\x1b[" not in text


def test_records_are_plain_python_and_json_round_trips(failed):
    leaf = failed.leaves[0]
    for field in dataclasses.fields(leaf):
        value = getattr(leaf, field.name)
        optional = field.name in ("probe_floor", "gradient_norm")  # None outside probe mode
        allowed = (str, int, float, tuple) + ((type(None),) if optional else ())
        assert type(value) in allowed, (field.name, type(value))
    assert all(type(i) is int for i in leaf.worst_index)
    data = json.loads(failed.to_json())
    assert data["status"] == "failed" and data["passed"] is False
    assert data["leaves"][0]["path"] == "args[0]['w']"
    assert data["step_sweep"]["path"] == "args[0]['w']"
    assert failed.leaf("args[0]['b']").status == "passed"
    with pytest.raises(KeyError, match="no differentiated leaf"):
        failed.leaf("args[0]['nope']")


def test_full_pytrees_are_reachable(failed):
    assert set(failed.analytic) == {"w", "b"} and set(failed.numeric) == {"w", "b"}
    assert failed.numeric["w"].shape == (2,)


def test_results_have_no_truthiness_shortcut(failed):
    assert not hasattr(type(failed), "__bool__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        failed.status = "passed"  # type: ignore[misc]


@pytest.mark.parametrize(
    "dtype, shape, text",
    [("float32", (8,), "f32[8]"), ("float64", (2, 3), "f64[2,3]"), ("int32", (), "int32[]")],
)
def test_shape_str(dtype, shape, text):
    assert shape_str(dtype, shape) == text


def _elements(*pairs):
    return [
        ElementReport(index=(k,), part="", analytic=a, numeric=n, tolerance=1e-9, kind="mismatch")
        for k, (a, n) in enumerate(pairs)
    ]


@pytest.mark.parametrize(
    "pairs, words",
    [
        ([(2.0, 1.0), (4.0, 2.0)], "analytic / numeric = 2 everywhere: a constant factor?"),
        ([(-1.0, 1.0), (2.0, -2.0)], "analytic = -numeric: a sign error"),
        ([(0.0, 1.0), (0.0, 3.0)], "analytic is zero: a dropped term or a stop_gradient?"),
        # A near miss of a few entries (odeint's adjoint: 0.9995) is not a constant factor,
        # and neither is one element.
        ([(0.9995, 1.0), (0.9996, 1.0)], None),
        ([(2.0, 1.0)], None),
        ([(2.0, 1.0), (3.0, 1.0)], None),
    ],
)
def test_ratio_pattern_names_a_pattern_only_where_there_is_one(pairs, words):
    from jaxcheck._summary import ratio_pattern

    pattern = ratio_pattern(_elements(*pairs))
    assert pattern == ("" if words is None else f" ({words})")
