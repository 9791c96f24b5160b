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
