"""Host-side: the text report with optional terminal colour.

`str(result)` is plain text and never contains ANSI escape codes (it goes into
exception messages, logs and CI output). `format_report(result, color=True)` adds colour
for an interactive terminal: the verdict word, the status words of the tables and the
"try:" lines. It works for any result whose `str()` follows the report convention (a
first line `PASSED|FAILED|INCONCLUSIVE: ...`).
"""

import os
import re
from typing import Any, TextIO

RESET = "\x1b[0m"
STYLES = {
    "passed": "\x1b[32m",  # green
    "failed": "\x1b[31m",  # red
    "inconclusive": "\x1b[33m",  # yellow
    "mismatch": "\x1b[31m",
    "try": "\x1b[36m",  # cyan
}
BOLD = "\x1b[1m"
_WORDS = re.compile(r"\b(passed|failed|inconclusive|mismatch)\b")
_VERDICT = re.compile(r"^(PASSED|FAILED|INCONCLUSIVE)\b")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def should_color(stream: TextIO) -> bool:
    """Whether to colour output for `stream`: a terminal, `NO_COLOR` unset, `TERM` not "dumb".

    `NO_COLOR` is the cross-tool convention of https://no-color.org.
    """
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def strip_ansi(text: str) -> str:
    """`text` without ANSI colour codes."""
    return _ANSI.sub("", text)


def _paint(line: str, first: bool) -> str:
    if first:
        match = _VERDICT.match(line)
        if match:
            word = match.group(1)
            return BOLD + STYLES[word.lower()] + word + RESET + line[len(word) :]
        return line
    stripped = line.lstrip()
    if stripped.startswith("try:"):
        indent = line[: len(line) - len(stripped)]
        return indent + STYLES["try"] + "try:" + RESET + stripped[4:]
    return _WORDS.sub(lambda m: STYLES[m.group(1)] + m.group(1) + RESET, line)


def format_report(result: Any, color: bool = False) -> str:
    """The report of `result`; with `color=True`, ANSI-coloured for a terminal.

    Args:
      result: Any jaxcheck result (`GradCheckResult`, ...); its `str()` is the report.
      color: Add ANSI colours. Column alignment is unchanged (codes have no width).

    Returns:
      The report text. With `color=False` this is exactly `str(result)`.
    """
    text = str(result)
    if not color:
        return text
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        is_header = i + 1 < len(lines) and lines[i + 1].strip().startswith(
            "--"
        )  # a table's column names
        out.append(line if is_header else _paint(line, i == 0))
    return "\n".join(out)
