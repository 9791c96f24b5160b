"""The jaxcheck pytest plugin (registered through the `pytest11` entry point).

When a test fails with a `jaxcheck.GradCheckError` (from any `assert_*`), pytest shows
the exception message, which is the full report table; this plugin additionally

- hides jaxcheck's own frames from the traceback, so the failure points at the user's
  line that called `assert_*` (as `__tracebackhide__` does for a single frame);
- with `--jaxcheck-report DIR`, saves each failing check's result as JSON
  (`result.to_json()`, schema in docs/json_schema.md) and, when matplotlib is
  installed, its figure as PNG, named after the test's node id, for CI artifacts. The
  paths are attached to the test report as `user_properties` (so they appear in JUnit
  XML) and listed in the terminal summary.

Disable it with `pytest -p no:jaxcheck`.
"""

import hashlib
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROPERTY = "jaxcheck_report"
_PACKAGE_DIR = Path(__file__).resolve().parent
_MAX_NAME = 120


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jaxcheck", "jaxcheck derivative checks")
    group.addoption(
        "--jaxcheck-report",
        metavar="DIR",
        default=None,
        help="save the JSON report (and PNG figure, if matplotlib is installed) of every failing jaxcheck check into DIR.",
    )


def find_check_error(exc: BaseException | None) -> Any:
    """The first `jaxcheck.GradCheckError` in `exc`'s cause/context chain, or None."""
    from ._errors import GradCheckError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, GradCheckError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def report_name(nodeid: str, when: str = "call") -> str:
    """A file-system-safe file stem for a test node id (and phase, when not "call")."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("._") or "test"
    if when != "call":
        name += f"-{when}"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(nodeid.encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 11]}-{digest}"
    return name


def _is_jaxcheck_file(filename: str) -> bool:
    try:
        path = Path(filename).resolve()
    except (OSError, ValueError):
        return False
    return _PACKAGE_DIR in path.parents


def _hide_jaxcheck_frames(excinfo: Any) -> None:
    """Unlinks jaxcheck's frames from the raw traceback (pytest re-walks it when cutting)."""
    tb = excinfo.tb
    changed = False
    while tb is not None:
        while tb.tb_next is not None and _is_jaxcheck_file(tb.tb_next.tb_frame.f_code.co_filename):
            tb.tb_next = tb.tb_next.tb_next  # writable since Python 3.7
            changed = True
        tb = tb.tb_next
    if changed:
        excinfo.traceback = type(excinfo.traceback)(excinfo.tb)


def save_report(error: Any, directory: Path, name: str) -> list[Path]:
    """Writes `<name>.json` (and `<name>.png` when matplotlib is present); returns the paths."""
    result = getattr(error, "result", None)
    if result is None or not hasattr(result, "to_json"):
        return []
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.json"]
    paths[0].write_text(result.to_json(indent=2) + "\n")
    if importlib.util.find_spec("matplotlib") is not None:
        from ._plot import plot_result

        png = directory / f"{name}.png"
        try:
            plot_result(result, png)
        except Exception:  # a figure is a bonus; never turn it into a second failure
            png.unlink(missing_ok=True)
        else:
            paths.append(png)
    return paths


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    error = None
    if call.excinfo is not None:
        error = find_check_error(call.excinfo.value)
        if error is not None and error is call.excinfo.value:
            _hide_jaxcheck_frames(call.excinfo)
    outcome = yield
    report = outcome.get_result()
    directory = item.config.getoption("jaxcheck_report")
    if error is None or directory is None or not report.failed:
        return
    try:
        paths = save_report(error, Path(directory), report_name(item.nodeid, call.when))
    except OSError as problem:
        report.sections.append(
            ("jaxcheck", f"could not save the jaxcheck report to {directory}: {problem}")
        )
        return
    if paths:
        # On the item, so the teardown report carries them (JUnit XML reads that one).
        item.user_properties.extend((PROPERTY, str(p)) for p in paths)
        if call.when == "teardown":  # that report already exists
            report.user_properties = list(report.user_properties) + [
                (PROPERTY, str(p)) for p in paths
            ]
        report.sections.append(("jaxcheck", "report saved: " + ", ".join(str(p) for p in paths)))


class _Saved:
    """Collects saved report paths from test reports (works on the xdist controller too)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":  # the last report of a test carries all its properties
            self.paths += [
                str(value)
                for key, value in getattr(report, "user_properties", ())
                if key == PROPERTY
            ]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.paths:
            terminalreporter.write_sep("-", "jaxcheck reports")
            for path in self.paths:
                terminalreporter.write_line(path)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("jaxcheck_report") is not None:
        config.pluginmanager.register(_Saved(), "jaxcheck-saved-reports")
