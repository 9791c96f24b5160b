"""`format_report`: colour only on request, never in `str(result)`; layout unchanged."""

import io

import jax
import jax.numpy as jnp
import pytest

import jaxcheck
from jaxcheck._format import format_report, should_color, strip_ansi


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def failed_result():
    def loss(p):
        return jnp.sum(jnp.sin(p["a"])) + jnp.sum(p["b"] ** 2)

    def wrong(p):
        g = jax.grad(loss)(p)
        return {"a": g["a"], "b": 3.0 * g["b"]}

    p = {"a": jnp.array([0.1, 0.2], jnp.float32), "b": jnp.array([0.5, -1.0], jnp.float32)}
    result = jaxcheck.check_grad(loss, (p,), grad_fn=wrong)
    assert result.status == "failed"
    return result


def test_str_and_plain_report_have_no_escape_codes(failed_result):
    assert "\x1b" not in str(failed_result)
    assert format_report(failed_result) == str(failed_result)
    assert format_report(failed_result, color=False) == str(failed_result)


def test_colour_changes_nothing_but_escape_codes(failed_result):
    colored = format_report(failed_result, color=True)
    assert colored != str(failed_result)
    assert strip_ansi(colored) == str(failed_result)


def test_colour_marks_verdict_status_words_and_hints(failed_result):
    lines = format_report(failed_result, color=True).split("\n")
    assert lines[0].startswith("\x1b[1m\x1b[31mFAILED\x1b[0m: check_grad(loss)")
    row = next(line for line in lines if line.lstrip().startswith("args[0]['b']"))
    assert "\x1b[31mfailed\x1b[0m" in row
    header = next(line for line in lines if line.lstrip().startswith("leaf "))
    assert "\x1b" not in header  # column names are not statuses
    hint = next(line for line in lines if "try:" in line)
    assert hint.lstrip().startswith("\x1b[36mtry:\x1b[0m")


def test_passed_verdict_is_green():
    result = jaxcheck.check_grad(lambda x: jnp.sum(x**2), (jnp.array([1.0, 2.0], jnp.float32),))
    assert format_report(result, color=True).startswith("\x1b[1m\x1b[32mPASSED\x1b[0m")


def test_should_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert should_color(FakeTTY())
    assert not should_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not should_color(FakeTTY())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not should_color(FakeTTY())


def test_any_result_with_the_report_convention():
    class Other:
        def __str__(self):
            return "INCONCLUSIVE: check_custom_vjp(f): fd inconclusive\n  fd  inconclusive  -  at a kink"

    text = format_report(Other(), color=True)
    assert text.startswith("\x1b[1m\x1b[33mINCONCLUSIVE\x1b[0m")
    assert strip_ansi(text) == str(Other())
