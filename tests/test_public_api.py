"""The public surface: exactly these names, each documented."""

import inspect

import jaxcheck

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
