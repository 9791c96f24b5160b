"""`to_json()` / `to_dict()`: strict JSON, round trip, and exactly the fields docs/json_schema.md documents."""

import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import jaxcheck

SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "json_schema.md"


def documented_fields() -> dict[str, set[str]]:
    """{section heading: field names} from the tables of docs/json_schema.md."""
    sections: dict[str, set[str]] = {}
    kind = heading = None
    for line in SCHEMA_DOC.read_text().splitlines():
        if line.startswith("## "):
            kind = heading = line[3:].strip()
        elif line.startswith("### "):
            heading = f"{kind} / {line[4:].strip()}"
        elif heading and (m := re.match(r"^\| `([a-z_]+)` \|", line)):
            sections.setdefault(heading, set()).add(m.group(1))
    return sections


def section(title_start: str, sub: str) -> set[str]:
    docs = documented_fields()
    matches = [k for k in docs if k.startswith(title_start) and k.endswith(sub)]
    assert len(matches) == 1, (title_start, sub, list(docs))
    return docs[matches[0]]


def loss(params, x, n):
    h = jnp.tanh(x @ params["w"] + params["b"][None, :])
    return jnp.sum(h**2) * n


def wrong_grad(params, x, n):
    floats = {"w": params["w"], "b": params["b"]}
    g = jax.grad(lambda p: loss({**p, "step": params["step"]}, x, n))(floats)
    return {"w": g["w"], "b": 1.5 * g["b"], "step": params["step"]}  # b's gradient is wrong


@pytest.fixture(scope="module")
def failed_result() -> jaxcheck.GradCheckResult:
    params = {
        "w": jnp.full((3, 2), 0.3, jnp.float32),
        "b": jnp.array([0.1, -0.2], jnp.float32),
        "step": jnp.array(3),
    }
    x = jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(4, 3)
    result = jaxcheck.check_grad(loss, (params, x, 2.0), grad_fn=wrong_grad)
    assert result.status == "failed" and result.failed_leaves[0].path == "args[0]['b']"
    return result


def strict_loads(text: str):
    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=reject)


def test_round_trip(failed_result):
    data = strict_loads(failed_result.to_json())
    assert data == json.loads(json.dumps(failed_result.to_dict()))
    assert strict_loads(json.dumps(data)) == data
    assert data["schema_version"] == 1 and data["kind"] == "grad"
    assert data["status"] == "failed" and data["passed"] is False


def test_values_match_the_result(failed_result):
    data = strict_loads(failed_result.to_json())
    worst = data["leaves"][0]
    leaf = failed_result.leaves[0]
    assert worst["path"] == "args[0]['b']" == leaf.path
    assert worst["shape"] == [2] and worst["dtype"] == "float32"
    assert (
        worst["worst_analytic"] == leaf.worst_analytic
        and worst["worst_numeric"] == leaf.worst_numeric
    )
    element = worst["elements"][0]
    assert element["kind"] == "mismatch"
    assert math.isclose(
        element["analytic"] / element["numeric"], 1.5, rel_tol=1e-4
    )  # the planted factor
    assert data["skipped"][0]["path"] == "args[0]['step']"
    assert data["seed"] == 0 and data["tolerance"]["rtol"] == failed_result.tolerance.rtol
    sweep = data["step_sweep"]
    assert sweep["path"] == "args[0]['b']" and len(sweep["steps"]) == len(sweep["estimates"]) > 3
    assert sweep["analytic"] == failed_result.step_sweep.analytic


@pytest.mark.parametrize(
    "sub, get",
    [
        ("Top level", lambda d: d),
        ("`leaves[]`", lambda d: d["leaves"][0]),
        ("`leaves[].elements[]`", lambda d: d["leaves"][0]["elements"][0]),
        ("`skipped[]`", lambda d: d["skipped"][0]),
        ("`taylor[]`", lambda d: d["taylor"][0]),
        ("`tolerance`", lambda d: d["tolerance"]),
        ("`step_sweep`", lambda d: d["step_sweep"]),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_grad_fields_are_exactly_the_documented_ones(failed_result, sub, get):
    documented = section('kind = "grad"', sub)
    actual = set(get(failed_result.to_dict()))
    assert documented - actual == set(), (
        "documented in docs/json_schema.md but missing from to_dict()"
    )
    assert actual - documented == set(), (
        "present in to_dict() but not documented in docs/json_schema.md"
    )


def test_nonfinite_values_are_strings_so_the_json_is_strict():
    x = jnp.array([jnp.nan, 1.0], jnp.float32)
    result = jaxcheck.check_grad(lambda v: jnp.sum(v[1] ** 2) + 0.0 * jnp.sum(v), (x,))
    data = strict_loads(result.to_json())  # json.dumps would otherwise write the non-standard NaN
    assert data["status"] == "inconclusive"
    assert [e["numeric"] for e in data["leaves"][0]["elements"]] == ["nan", "nan"]
    assert math.isnan(float(data["leaves"][0]["elements"][0]["numeric"]))


def test_rule_result_fields_are_exactly_the_documented_ones(failed_result):
    rule = pytest.importorskip("jaxcheck._rule_result")
    check = rule.CheckReport(
        name="fd",
        status="failed",
        message="bwd disagrees",
        path="args[0]",
        index=(1,),
        results=(failed_result,),
    )
    result = rule.RuleCheckResult(
        name="my_sin",
        kind="custom_vjp",
        status="failed",
        reason="fd failed",
        checks=(check,),
        order=1,
        mode="full",
        seed=0,
        seconds=0.1,
    )
    data = strict_loads(result.to_json())
    assert set(data) == section('kind = "custom_vjp"', "Top level")
    assert set(data["checks"][0]) == section('kind = "custom_vjp"', "`checks[]`")
    assert data["checks"][0]["results"][0]["kind"] == "grad"


def test_points_wrapper_is_documented():
    # The CLI writes this wrapper for `--points K`; test_cli.py checks the written keys.
    documented = section('kind = "points"', "")  # the single table of that section
    assert documented == {"schema_version", "kind", "function", "factory", "status", "points"}


@pytest.fixture(scope="module")
def jacobian_result():
    jacobian = pytest.importorskip("jaxcheck._jacobian")

    @jax.custom_vjp
    def double_cos(x):
        return jnp.sin(x)

    double_cos.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (2.0 * g * jnp.cos(x),))  # wrong by 2
    result = jacobian.check_vjp(double_cos, (jnp.array([0.1, 0.2, 0.3], jnp.float32),))
    assert result.status == "failed"
    return result


@pytest.mark.parametrize(
    "sub, get",
    [
        ("Top level", lambda d: d),
        ("`blocks[]`", lambda d: d["blocks"][0]),
        ("`blocks[].elements[]` (and `blocks[].worst`)", lambda d: d["blocks"][0]["elements"][0]),
        ("`blocks[].elements[]` (and `blocks[].worst`)", lambda d: d["blocks"][0]["worst"]),
    ],
    ids=["top", "blocks", "elements", "worst"],
)
def test_jacobian_fields_are_exactly_the_documented_ones(jacobian_result, sub, get):
    data = strict_loads(jacobian_result.to_json())
    assert data["kind"] == "vjp" and data["schema_version"] == 1
    documented = section('kind = "vjp"', sub)
    actual = set(get(data))
    assert documented - actual == set(), (
        "documented in docs/json_schema.md but missing from to_dict()"
    )
    assert actual - documented == set(), (
        "present in to_dict() but not documented in docs/json_schema.md"
    )
