"""The assertion error raised by every `assert_*` function."""

from typing import Any


class GradCheckError(AssertionError):
    """A derivative disagrees with its reference (or the check was inconclusive).

    The message is the full report; the result object is kept on `.result`.

    Attributes:
      result: The result object (`GradCheckResult` or `RuleCheckResult`) that failed.
    """

    __module__ = "jaxcheck"

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


def raise_unless_passed(result: Any, allow_inconclusive: bool = False) -> Any:
    """The tail of every `assert_*`: returns `result` if it passed, else raises.

    Args:
      result: A check result (anything with `status` and a `__str__` report).
      allow_inconclusive: Accept an inconclusive verdict too.

    Returns:
      `result`, when its status is "passed" (or "inconclusive" and that is allowed).

    Raises:
      GradCheckError: the check failed (or was inconclusive); the message is the report.
    """
    __tracebackhide__ = True
    if result.status == "failed" or (result.status == "inconclusive" and not allow_inconclusive):
        raise GradCheckError(str(result), result)
    return result
