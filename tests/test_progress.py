"""The terminal progress bar: drawn only on a TTY, rate and time left, erased when done."""

import io

import jax.numpy as jnp
import pytest

import jaxcheck
from jaxcheck._progress import ProgressBar


class FakeTTY(io.StringIO):
    """A stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_bar(stream, clock, **kwargs):
    return ProgressBar(
        "check_grad(loss)", stream=stream, clock=clock, delay=0.0, min_interval=0.0, **kwargs
    )


def test_draws_done_total_rate_and_time_left_on_a_tty():
    stream, clock = FakeTTY(), Clock()
    bar = make_bar(stream, clock)
    clock.now += 3.0  # the first chunk (compilation) is excluded from the rate
    bar(10, 110)
    first = stream.getvalue()
    assert first.startswith("\r") and "check_grad(loss)" in first and "10/110 coordinates" in first
    assert "/s" not in first  # no rate from a single point in time
    clock.now += 2.0
    bar(60, 110)  # 50 coordinates in 2 s -> 25/s, 50 left -> 2 s
    last = stream.getvalue().rsplit("\r", 1)[1]
    assert "60/110 coordinates" in last
    assert "25/s" in last
    assert "~0:02 left" in last
    assert "[" + "#" * 13 + "." * 11 + "]" in last  # 60/110 of 24 characters


def test_erased_when_done_so_the_report_starts_clean():
    stream, clock = FakeTTY(), Clock()
    bar = make_bar(stream, clock)
    bar(1, 4)
    drawn = len(stream.getvalue()) - 1
    bar(4, 4)
    assert stream.getvalue().endswith("\r" + " " * drawn + "\r")


def test_silent_when_not_a_terminal():
    stream, clock = io.StringIO(), Clock()
    bar = make_bar(stream, clock)
    for done in (1, 2, 3, 4):
        clock.now += 1.0
        bar(done, 4)
    assert stream.getvalue() == ""


def test_forced_on_and_off():
    assert ProgressBar(stream=io.StringIO(), enabled=True).enabled
    assert not ProgressBar(stream=FakeTTY(), enabled=False).enabled


def test_quiet_before_delay_and_between_redraws():
    stream, clock = FakeTTY(), Clock()
    bar = ProgressBar(stream=stream, clock=clock, delay=1.0, min_interval=0.5)
    clock.now += 0.5
    bar(1, 10)
    assert stream.getvalue() == ""  # a check finishing within `delay` never draws
    clock.now += 0.6
    bar(2, 10)
    assert stream.getvalue().count("\r") == 1
    clock.now += 0.1
    bar(3, 10)
    assert stream.getvalue().count("\r") == 1  # too soon to redraw
    clock.now += 0.5
    bar(4, 10)
    assert stream.getvalue().count("\r") == 2


def test_long_durations_show_hours():
    stream, clock = FakeTTY(), Clock()
    bar = make_bar(stream, clock)
    bar(1, 100_000)
    clock.now += 1.0
    bar(2, 100_000)  # 1/s, 99998 s left
    assert "~27:46:38 left" in stream.getvalue()


def test_shorter_redraw_is_padded_over_the_longer_line():
    stream, clock = FakeTTY(), Clock()
    bar = make_bar(stream, clock)
    bar(1, 1000)
    bar.label = ""  # the next line is shorter by the label's width (same time: no rate yet)
    bar(2, 1000)
    first, second = stream.getvalue().split("\r")[1:]
    assert len(second) == len(first) and second.endswith(" " * len("check_grad(loss)  "))


def test_check_grad_reports_progress_per_chunk():
    calls = []
    x = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32)
    result = jaxcheck.check_grad(
        lambda v: jnp.sum(jnp.sin(v)),
        (x,),
        batch_size=4,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert result.passed
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_check_grad_drives_the_bar_to_a_clean_line():
    stream = FakeTTY()
    bar = ProgressBar("check_grad", stream=stream, delay=0.0, min_interval=0.0)
    x = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32)
    jaxcheck.check_grad(lambda v: jnp.sum(jnp.sin(v)), (x,), batch_size=4, progress=bar)
    text = stream.getvalue()
    assert "4/10 coordinates" in text and "8/10 coordinates" in text
    assert text.endswith("\r")  # erased at the end


@pytest.mark.parametrize(
    "seconds, text", [(0, "0:00"), (59.6, "1:00"), (61, "1:01"), (3600, "1:00:00")]
)
def test_duration_format(seconds, text):
    from jaxcheck._progress import _duration

    assert _duration(seconds) == text
