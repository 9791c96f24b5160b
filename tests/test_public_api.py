"""The public surface: exactly these names, each documented."""

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib

import jaxcheck

REPO = Path(__file__).resolve().parents[1]

PUBLIC = {
    "BlockReport",
    "CheckReport",
    "ElementReport",
    "GradCheckError",
    "GradCheckResult",
    "JacobianCheckResult",
    "JacobianElement",
    "LeafReport",
    "ProgressBar",
    "RuleCheckResult",
    "RuleSiteReport",
    "RulesCheckResult",
    "StepSweep",
    "TaylorReport",
    "Tolerance",
    "assert_custom_jvp_correct",
    "assert_custom_vjp_correct",
    "assert_grad_correct",
    "assert_jvp_correct",
    "assert_rules_correct",
    "assert_vjp_correct",
    "check_custom_jvp",
    "check_custom_vjp",
    "check_grad",
    "check_jvp",
    "check_rules",
    "check_vjp",
    "format_report",
    "numerical_grad",
}


def test_exported_names_are_pinned():
    exported = {
        n
        for n in dir(jaxcheck)
        if not n.startswith("_") and not inspect.ismodule(getattr(jaxcheck, n))
    }
    assert exported == PUBLIC


def test_every_public_name_has_a_docstring():
    for name in PUBLIC:
        assert inspect.getdoc(getattr(jaxcheck, name)), name


def test_checks_take_data_positionally_and_options_by_keyword():
    for name in (
        "check_grad",
        "check_vjp",
        "check_jvp",
        "check_custom_vjp",
        "check_custom_jvp",
        "check_rules",
    ):
        params = list(inspect.signature(getattr(jaxcheck, name)).parameters.values())
        assert [p.name for p in params[:2]] == ["f", "args"], name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:]), name


def test_assertion_error_type():
    assert issubclass(jaxcheck.GradCheckError, AssertionError)
    assert jaxcheck.GradCheckError.__module__ == "jaxcheck"


# equinox is in the `test` extra only: jaxcheck imports and checks rules without it.
WITHOUT_EQUINOX = textwrap.dedent(
    """
    import sys

    sys.modules["equinox"] = None  # `import equinox` now raises ImportError
    import jax
    import jax.numpy as jnp

    import jaxcheck

    f = jax.custom_vjp(jnp.sin)
    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
    assert jaxcheck.check_custom_vjp(f, (jnp.array([0.5, -1.0]),)).passed
    assert jaxcheck.check_rules(lambda x: jnp.sum(f(x)), (jnp.array([0.5, -1.0]),)).passed
    print("ok")
    """
)


def test_equinox_is_optional(strict_env):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("equinox") for dep in project["dependencies"])
    assert any(dep.startswith("equinox") for dep in project["optional-dependencies"]["test"])
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_EQUINOX],
        env=strict_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
