"""The pytest plugin: full report in the failure, jaxcheck frames hidden, `--jaxcheck-report DIR`."""

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import tomllib

import jaxcheck
from jaxcheck._pytest_plugin import find_check_error, report_name

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

FAILING_TEST = """
import jax.numpy as jnp
import pytest
import jaxcheck


def loss(x):
    return jnp.sum(jnp.sin(x))


def wrong_grad(x):
    return jnp.sin(x)  # should be cos(x)


@pytest.mark.parametrize("n", [3])
def test_wrong(n):
    x = jnp.linspace(0.1, 1.0, n, dtype=jnp.float32)
    jaxcheck.assert_grad_correct(loss, (x,), grad_fn=wrong_grad)


def test_right():
    jaxcheck.assert_grad_correct(loss, (jnp.linspace(0.1, 1.0, 3, dtype=jnp.float32),))
"""


def _installed() -> bool:
    """Whether the `pytest11` entry point is installed (pytest then loads the plugin itself)."""
    return any(
        ep.name == "jaxcheck" and ep.value == "jaxcheck._pytest_plugin"
        for ep in importlib.metadata.entry_points(group="pytest11")
    )


def plugin(enabled: bool = True) -> list[str]:
    # In-process runs import the already-imported plugin again: silence the harmless rewrite warning.
    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    if _installed():
        return quiet + ([] if enabled else ["-p", "no:jaxcheck"])
    return quiet + (["-p", "jaxcheck._pytest_plugin"] if enabled else [])


def test_entry_point_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"jaxcheck": "jaxcheck._pytest_plugin"}
    assert "matplotlib" in " ".join(project["optional-dependencies"]["plot"])


def test_failure_shows_the_whole_report_and_points_at_the_users_line(pytester):
    pytester.makepyfile(test_model=FAILING_TEST)
    result = pytester.runpytest(*plugin(), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert (
        "E       jaxcheck.GradCheckError: FAILED: check_grad(loss): 1 of 1 leaves wrong: args[0]"
        in out
    )
    report_lines = [line[len("E       ") :] for line in out.splitlines() if line.startswith("E  ")]
    for expected in (
        "leaf     status",
        "args[0]  failed  f32[3]",
        "index  analytic",
        "taylor args[0]",
        "reference:",
        "mode full, seed 0",
    ):
        assert any(expected in line for line in report_lines), expected
    assert not any("truncated" in line.lower() for line in out.splitlines()), (
        "pytest cut the report short"
    )
    assert ">       jaxcheck.assert_grad_correct(loss, (x,), grad_fn=wrong_grad)" in out
    line = 1 + FAILING_TEST.lstrip("\n").splitlines().index(
        "    jaxcheck.assert_grad_correct(loss, (x,), grad_fn=wrong_grad)"
    )
    assert f"test_model.py:{line}: GradCheckError" in out
    assert "_grad.py" not in out  # no jaxcheck frame in the traceback


FRAME_TEST = """
from pathlib import Path
import jaxcheck

PACKAGE = Path(jaxcheck.__file__).parent
namespace = {"GradCheckError": jaxcheck.GradCheckError}
# A helper "inside jaxcheck" that does not set __tracebackhide__.
exec(compile("def boom():\\n    raise GradCheckError('FAILED: planted report line')\\n", str(PACKAGE / "_planted_frame.py"), "exec"), namespace)


def test_helper_frame():
    namespace["boom"]()
"""


def test_jaxcheck_frames_are_hidden_by_the_plugin(pytester):
    pytester.makepyfile(test_frames=FRAME_TEST)
    with_plugin = pytester.runpytest(*plugin(), "-p", "no:cacheprovider")
    with_plugin.assert_outcomes(failed=1)
    assert "_planted_frame.py" not in with_plugin.stdout.str()
    assert (
        "E       jaxcheck.GradCheckError: FAILED: planted report line" in with_plugin.stdout.str()
    )
    without = pytester.runpytest(*plugin(enabled=False), "-p", "no:cacheprovider")
    without.assert_outcomes(failed=1)
    assert "_planted_frame.py" in without.stdout.str()  # the frame the plugin removes


def test_report_dir_saves_json_and_png_for_failing_checks_only(pytester):
    pytester.makepyfile(test_model=FAILING_TEST)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(
        *plugin(), "-p", "no:cacheprovider", "--jaxcheck-report", "reports", f"--junitxml={junit}"
    )
    result.assert_outcomes(failed=1, passed=1)
    reports = pytester.path / "reports"
    stem = "test_model.py_test_wrong_3"
    saved = sorted(p.name for p in reports.iterdir())
    data = json.loads((reports / f"{stem}.json").read_text())
    assert data["kind"] == "grad" and data["status"] == "failed" and data["schema_version"] == 1
    assert data["leaves"][0]["path"] == "args[0]"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert saved == [f"{stem}.json"]
    else:
        assert saved == [f"{stem}.json", f"{stem}.png"]
        assert (reports / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC
    out = result.stdout.str()
    assert "jaxcheck reports" in out and f"reports/{stem}.json" in out
    assert f'name="jaxcheck_report" value="reports/{stem}.json"' in junit.read_text()


def test_report_dir_finds_the_error_inside_an_exception_chain(pytester):
    pytester.makepyfile(
        test_chain=FAILING_TEST
        + """

def test_wrapped():
    try:
        test_wrong(2)
    except AssertionError as error:
        raise RuntimeError("gradient check failed in a helper") from error
"""
    )
    result = pytester.runpytest(
        *plugin(), "-p", "no:cacheprovider", "--jaxcheck-report", "out", "-k", "wrapped"
    )
    result.assert_outcomes(failed=1, deselected=2)
    data = json.loads((pytester.path / "out" / "test_chain.py_test_wrapped.json").read_text())
    assert data["status"] == "failed"


def test_no_report_dir_no_files(pytester):
    pytester.makepyfile(test_model=FAILING_TEST)
    result = pytester.runpytest(*plugin(), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1)
    assert "jaxcheck reports" not in result.stdout.str()
    assert not list(pytester.path.rglob("*.json")) and not list(pytester.path.rglob("*.png"))


def test_option_is_in_the_help(pytester):
    result = pytester.runpytest(*plugin(), "--help")
    assert re.search(r"--jaxcheck-report=DIR\s+save the JSON report", result.stdout.str())


@pytest.mark.parametrize(
    "nodeid, when, name",
    [
        ("tests/test_a.py::test_b", "call", "tests_test_a.py_test_b"),
        ("tests/test_a.py::test_b[float32-x/y]", "call", "tests_test_a.py_test_b_float32-x_y"),
        ("tests/test_a.py::TestK::test_b", "setup", "tests_test_a.py_TestK_test_b-setup"),
        ("../..", "call", "test"),
    ],
)
def test_report_name(nodeid, when, name):
    assert report_name(nodeid, when) == name


def test_report_name_stays_short_and_unique():
    a = report_name("tests/test_a.py::test_b[" + "x" * 300 + "1]")
    b = report_name("tests/test_a.py::test_b[" + "x" * 300 + "2]")
    assert len(a) <= 120 and len(b) <= 120 and a != b


def test_find_check_error():
    error = jaxcheck.GradCheckError("FAILED: x")
    try:
        try:
            raise error
        except AssertionError as inner:
            raise KeyError("outer") from inner
    except KeyError as outer:
        assert find_check_error(outer) is error
    assert find_check_error(ValueError("other")) is None
    assert find_check_error(None) is None
