"""Check JAX derivatives against finite differences, and say exactly where they are wrong."""

from ._custom_jvp import assert_custom_jvp_correct as assert_custom_jvp_correct
from ._custom_jvp import check_custom_jvp as check_custom_jvp
from ._custom_vjp import assert_custom_vjp_correct as assert_custom_vjp_correct
from ._custom_vjp import check_custom_vjp as check_custom_vjp
from ._errors import GradCheckError as GradCheckError
from ._format import format_report as format_report
from ._grad import assert_grad_correct as assert_grad_correct
from ._grad import check_grad as check_grad
from ._grad import numerical_grad as numerical_grad
from ._jacobian import assert_jvp_correct as assert_jvp_correct
from ._jacobian import assert_vjp_correct as assert_vjp_correct
from ._jacobian import check_jvp as check_jvp
from ._jacobian import check_vjp as check_vjp
from ._jacobian_result import BlockReport as BlockReport
from ._jacobian_result import JacobianCheckResult as JacobianCheckResult
from ._jacobian_result import JacobianElement as JacobianElement
from ._progress import ProgressBar as ProgressBar
from ._result import ElementReport as ElementReport
from ._result import GradCheckResult as GradCheckResult
from ._result import LeafReport as LeafReport
from ._result import StepSweep as StepSweep
from ._result import TaylorReport as TaylorReport
from ._rule_result import CheckReport as CheckReport
from ._rule_result import RuleCheckResult as RuleCheckResult
from ._rules import RulesCheckResult as RulesCheckResult
from ._rules import RuleSiteReport as RuleSiteReport
from ._rules import assert_rules_correct as assert_rules_correct
from ._rules import check_rules as check_rules
from ._tolerance import Tolerance as Tolerance

__version__ = "0.1.0"
