"""Check JAX derivatives against finite differences, and say exactly where they are wrong."""

from ._errors import GradCheckError as GradCheckError
from ._format import format_report as format_report
from ._grad import assert_grad_correct as assert_grad_correct
from ._grad import check_grad as check_grad
from ._grad import numerical_grad as numerical_grad
from ._progress import ProgressBar as ProgressBar
from ._result import ElementReport as ElementReport
from ._result import GradCheckResult as GradCheckResult
from ._result import LeafReport as LeafReport
from ._result import TaylorReport as TaylorReport
from ._tolerance import Tolerance as Tolerance

__version__ = "0.1.0"
