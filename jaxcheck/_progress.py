"""Host-side: a terminal progress bar for long checks.

`ProgressBar` is a `progress(done, total)` callback (the one `check_grad` accepts). It
draws on an interactive terminal only, redrawing one line in place:

    check_grad(loss)  [##########..........]  1024/2048 coordinates  512/s  ~0:02 left

It stays silent when the stream is not a terminal (CI logs, pipes, files), when the
check finishes before `delay` seconds, and erases itself when done, so the report that
follows starts on a clean line.
"""

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar:
    """Draws `done/total` progress, rate and time left on a terminal stream.

    Args:
      label: Text before the bar (e.g. "check_grad(loss)").
      stream: Where to draw; `None` means `sys.stderr` (looked up at call time).
      unit: Name of the counted things.
      width: Bar width in characters.
      delay: Seconds to wait before drawing anything (short checks stay quiet).
      min_interval: Minimum seconds between redraws.
      enabled: Force drawing on or off; `None` draws only when `stream.isatty()`.
      clock: Monotonic clock in seconds (injectable for tests).

    Example:
      >>> import io
      >>> bar = ProgressBar(stream=io.StringIO())  # not a terminal: draws nothing
      >>> bar(5, 10); bar(10, 10)
      >>> bar.stream.getvalue()
      ''
    """

    def __init__(
        self,
        label: str = "",
        *,
        stream: TextIO | None = None,
        unit: str = "coordinates",
        width: int = 24,
        delay: float = 0.5,
        min_interval: float = 0.2,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.unit = unit
        self.width = int(width)
        self.delay = float(delay)
        self.min_interval = float(min_interval)
        self.enabled = _is_tty(self.stream) if enabled is None else bool(enabled)
        self.clock = clock
        self.start = clock()
        self._last_draw: float | None = None
        self._drawn_width = 0
        self._first: tuple[float, int] | None = None  # (time, done) at the first callback

    def restart(self, label: str | None = None) -> None:
        """Resets the clock (and optionally the label) for a new check."""
        self.clear()
        if label is not None:
            self.label = label
        self.start = self.clock()
        self._last_draw = None
        self._first = None

    def line(self, done: int, total: int, now: float | None = None) -> str:
        """The text of the bar for `done` out of `total` (without carriage return)."""
        now = self.clock() if now is None else now
        total = max(int(total), 1)
        done = min(max(int(done), 0), total)
        filled = int(self.width * done / total)
        bar = "#" * filled + "." * (self.width - filled)
        parts = [f"[{bar}]", f"{done}/{total} {self.unit}"]
        # The rate is measured from the first callback on: the first chunk includes compilation.
        if self._first is not None and done > self._first[1] and now > self._first[0]:
            rate = (done - self._first[1]) / (now - self._first[0])
            parts.append(f"{rate:.3g}/s" if rate < 1000 else f"{rate:,.0f}/s")
            parts.append(f"~{_duration((total - done) / rate)} left")
        return "  ".join(([self.label] if self.label else []) + parts)

    def __call__(self, done: int, total: int) -> None:
        """The `progress(done, total)` callback: redraws when due, erases itself at the end."""
        if not self.enabled:
            return
        now = self.clock()
        if self._first is None:
            self._first = (now, int(done))
        if done >= total:
            self.clear()
            return
        if now - self.start < self.delay:
            return
        if self._last_draw is not None and now - self._last_draw < self.min_interval:
            return
        text = self.line(done, total, now)
        pad = " " * max(0, self._drawn_width - len(text))
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._drawn_width = len(text)
        self._last_draw = now

    def clear(self) -> None:
        """Erases the bar if one is drawn (spaces, so it works on any terminal)."""
        if self._drawn_width:
            self.stream.write("\r" + " " * self._drawn_width + "\r")
            self.stream.flush()
            self._drawn_width = 0

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
