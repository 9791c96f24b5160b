"""`check_rules`, `assert_rules_correct` and `diagnose_rules`: every custom rule inside f,
checked where it lives.

f is evaluated once (`_rule_sites.discover`); each custom rule found is checked by the
existing battery (`check_custom_vjp` / `check_custom_jvp`) at the inputs it was called
with, once per distinct call signature (or once per call site with `every_site=True`).
"""

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ._custom_jvp import check_custom_jvp
from ._custom_vjp import check_custom_vjp
from ._devices import resolve_devices
from ._errors import raise_unless_passed
from ._flatten import check_args
from ._problem import function_name, validate_options
from ._record import CheckResult, plain
from ._result import _table
from ._rule_checks import MODES, describe, first_line
from ._rule_result import RuleCheckResult, devices_note
from ._rule_sites import Site, discover

SITE_STATUSES = ("failed", "error", "inconclusive", "passed", "not reached")
CHECK_NAMES = {"fd": "finite-difference"}


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class RuleSiteReport:
    """One custom rule at one call signature (or call site), checked at its own inputs.

    Attributes:
      name: The rule's function's `__name__`.
      kind: "custom_vjp" or "custom_jvp".
      defined_at: `file.py:line` of the rule's definition ("" when Python does not know).
      call_path: Where f called it, e.g. "loss -> scan -> cell -> smooth_relu".
      iteration: Which call's inputs were used, e.g. "scan iteration 0 (the first of 3
        calls here)"; "" for a single plain call.
      input_shapes: The inputs' shapes, e.g. "(f32[3], f32[3])".
      status: "passed", "failed", "inconclusive", "error" (the check itself could not run)
        or "not reached" (traced but never run at these inputs, e.g. a `cond` branch).
      message: One sentence: the verdict's reason.
      calls: How many times the rule ran at this signature (all sites merged).
      sites: How many call sites were merged into this record.
      nested_in: "fwd/bwd" or "jvp" when found inside another rule's derivative rule.
      result: The `RuleCheckResult` of the battery (None when not run).
    """

    name: str
    kind: str
    defined_at: str
    call_path: str
    iteration: str
    input_shapes: str
    status: str
    message: str
    calls: int
    sites: int
    nested_in: str = ""
    result: RuleCheckResult | None = dataclasses.field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "error")

    @property
    def failed_checks(self) -> tuple[str, ...]:
        """Names of the battery's checks that failed or raised."""
        return tuple(c.name for c in self.result.failed_checks) if self.result else ()

    @property
    def where(self) -> str:
        """ "inside scan" (the transformations on the call path) or ""."""
        labels = [p for p in self.call_path.split(" -> ") if p in _TRANSFORMS]
        return f"inside {' / '.join(dict.fromkeys(labels))}" if labels else ""

    def to_dict(self) -> dict[str, Any]:
        data = plain(self, skip=("result",))
        data["failed_checks"] = list(self.failed_checks)
        data["result"] = self.result.to_dict() if self.result else None
        return data


_TRANSFORMS = ("scan", "while_loop", "fori_loop", "map", "cond", "switch", "vmap", "jit")
_TRANSFORMS += ("checkpoint",)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class RulesCheckResult(CheckResult):
    """The outcome of `check_rules`: one `RuleSiteReport` per rule and call signature.

    Attributes:
      name: Name of f.
      status: "passed" (every rule reached passed, or none was found), "failed" (some
        rule failed) or "inconclusive" (none failed, some rule's check was inconclusive).
      reason: One sentence explaining the status.
      rules: The reports, failed rules first, then in the order f called them.
      order, mode, seed: As passed to each rule's check.
      every_site: Whether every call site was checked (else one per signature).
      seconds: Wall time of the whole check.
      notes: Facts about the discovery (rules that could not be recorded, and why).
      devices: Devices each rule's finite differences were split over (global devices in
        a multi-process run), as in `GradCheckResult.devices`.
    """

    name: str
    status: str
    reason: str
    rules: tuple[RuleSiteReport, ...]
    order: int
    mode: str
    seed: int
    every_site: bool
    seconds: float
    notes: tuple[str, ...] = ()
    devices: int = 1

    ITEMS: ClassVar[str] = "rules"
    FAILED: ClassVar[tuple[str, ...]] = ("failed", "error")
    DICT_EXTRA: ClassVar[dict[str, Any]] = {"kind": "rules"}

    @property
    def failed_rules(self) -> tuple[RuleSiteReport, ...]:
        """The reports of the rules that failed (or whose check raised)."""
        return self._failed()

    def rule(self, name: str) -> RuleSiteReport:
        """The first report of the rule called `name` (failed ones come first).

        Raises:
          KeyError: no rule of that name was found.
        """
        return self._find(lambda r: r.name == name, f"rule {name!r}", lambda r: r.name)

    def report_lines(self) -> list[str]:
        return format_rules_result(self)


def format_rules_result(r: RulesCheckResult) -> list[str]:
    """Verdict, a table of the rules, then each failing rule's findings."""
    lines = [f"{r.status.upper()}: check_rules({r.name}): {r.reason}"]
    if r.rules:
        rows = [
            [
                s.name,
                s.kind,
                s.status,
                ", ".join(s.failed_checks) or "-",
                s.defined_at or "?",
                s.input_shapes,
                s.call_path,
            ]
            for s in r.rules
        ]
        header = ["rule", "kind", "status", "failed checks", "defined at", "inputs", "call path"]
        lines += ["", *_table(header, rows)]
    for s in r.rules:
        if s.status in ("passed", "not reached"):
            continue
        at = f" ({s.defined_at})" if s.defined_at else ""
        lines += ["", f"  {s.name}{at} at {s.call_path}:"]
        if s.iteration:
            lines.append(f"    inputs of {s.iteration}")
        if s.result is None:
            lines.append(f"    {s.message}")
            continue
        lines += ["    " + line if line else "" for line in str(s.result).splitlines()]
    lines.append("")
    for note in r.notes:
        lines.append(f"  note: {note}")
    per = "call site" if r.every_site else "call signature"
    lines.append(
        f"  one check per {per}; order {r.order}, mode {r.mode}, seed {r.seed}"
        f"{devices_note(r.devices)}, {r.seconds:.2f} s"
    )
    return lines


def _validate_argnums(argnums: Any, n: int) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) and not isinstance(argnums, bool) else argnums
    try:
        nums = tuple(nums)
    except TypeError:
        nums = None
    if not nums or not all(isinstance(i, int) and not isinstance(i, bool) for i in nums):
        raise TypeError(f"`argnums` must be an int or a tuple of ints; got {argnums!r}.")
    for i in nums:
        if not -n <= i < n:
            raise ValueError(f"`argnums` {argnums!r} is out of range for {n} argument(s).")
    return tuple(i % n for i in nums)


def _group(sites: Sequence[Site], every_site: bool) -> list[list[Site]]:
    """Sites with one signature (and, with `every_site`, one call line and path) together;
    within a group, sites that ran come first."""
    groups: dict[tuple, list[Site]] = {}
    for site in sites:
        key = (site.key, site.call_path, site.line) if every_site else site.key
        groups.setdefault(key, []).append(site)
    return [sorted(g, key=lambda s: s.args is None) for g in groups.values()]


def _check_site(group: list[Site], options: dict) -> RuleSiteReport:
    site = group[0]
    calls = sum(s.calls for s in group)
    common = dict(
        name=site.name,
        kind=site.kind,
        defined_at=site.defined_at,
        call_path=site.call_path,
        iteration=site.iteration,
        calls=calls,
        sites=len(group),
        nested_in=site.nested_in,
    )
    if site.args is None:
        why = site.problem or "traced but never run at these inputs (e.g. a cond branch not taken)"
        status = "error" if site.problem else "not reached"
        return RuleSiteReport(**common, input_shapes="?", status=status, message=why)
    shapes = describe(site.args)
    check = check_custom_vjp if site.kind == "custom_vjp" else check_custom_jvp
    try:
        result = check(site.rule, site.args, **options)
    except Exception as error:  # noqa: BLE001 - one rule's misuse must not hide the others
        message = f"{check.__name__} could not run: {type(error).__name__}: {first_line(error)}"
        return RuleSiteReport(**common, input_shapes=shapes, status="error", message=message)
    return RuleSiteReport(
        **common, input_shapes=shapes, status=result.status, message=result.reason, result=result
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _verdict(reports: Sequence[RuleSiteReport], n_sites: int) -> tuple[str, str]:
    if not reports:
        return "passed", "no custom_vjp or custom_jvp rules were found while evaluating f"
    failed = [r for r in reports if r.failed]
    unsure = [r for r in reports if r.status == "inconclusive"]
    reached = [r for r in reports if r.status != "not reached"]
    found = f"{_plural(len(reports), 'rule')} found at {_plural(n_sites, 'call site')}"
    if failed:
        names = ", ".join(dict.fromkeys(r.name for r in failed))
        first = failed[0]
        checks = ", ".join(first.failed_checks) or "error"
        return "failed", (
            f"{len(failed)} of {len(reached)} rules failed ({names}); "
            f"{first.name} fails {checks}; {found}"
        )
    if unsure:
        names = ", ".join(dict.fromkeys(r.name for r in unsure))
        return "inconclusive", f"{len(unsure)} rule(s) inconclusive ({names}); {found}"
    unreached = len(reports) - len(reached)
    extra = f" ({unreached} not reached at these inputs)" if unreached else ""
    return "passed", f"all {_plural(len(reached), 'rule')} checked passed{extra}; {found}"


def check_rules(
    f: Callable,
    args: tuple,
    *,
    argnums: int | Sequence[int] = 0,
    order: int = 1,
    every_site: bool = False,
    mode: str = "auto",
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    reference: str = "auto",
    devices: Any = None,
) -> RulesCheckResult:
    """Finds every `jax.custom_vjp` / `jax.custom_jvp` call inside f and checks each rule there.

    f is evaluated once; every custom rule it calls, also inside `jit`, `lax.scan`,
    `lax.cond`, `lax.while_loop`, `vmap`, `checkpoint` and other rules (their primal, fwd,
    bwd or jvp), is recorded with its actual inputs (inside loops those of iteration 0,
    under `vmap` those of batch element 0) and checked by `check_custom_vjp` /
    `check_custom_jvp` at them: primal, structure, linearity, finite differences, autodiff
    of the primal, vmap, jit (and second order with `order=2`). Unlike `check_grad` of a
    loss, this catches rule bugs the loss cannot show, e.g. a bwd that ignores its
    cotangent under `jnp.sum`.

    Args:
      f: The function, called as `f(*args)`.
      args: Tuple of arguments.
      argnums: The arguments the caller differentiates (as in `check_grad`); validated
        and recorded. Every rule is checked in all its own inputs, whatever feeds them.
      order: 1, or 2 to check second derivatives through each rule.
      every_site: Check each call site (place in the code) separately, instead of once
        per rule and call signature.
      mode, eps, rtol, atol, seed, reference: Passed to each rule's check.
      devices: Devices every rule's finite differences are split over: None (all devices
        of the arguments' platform; all global devices in a multi-process run), an int k
        (the first k) or a sequence of `jax.Device`. Recorded as `result.devices`.

    Returns:
      A `RulesCheckResult`; `str(result)` is the full report.

    Raises:
      TypeError, ValueError: misuse of the options.
      Exception: whatever `f(*args)` raises.

    Example:
      >>> import jax
      >>> result = jaxcheck.check_rules(lambda x: jnp.sum(jax.nn.relu(x)), (jnp.ones(3),))
      >>> result.status, [rule.name for rule in result.rules]
      ('passed', ['relu'])
    """
    start = time.perf_counter()
    validate_options(f=f, eps=eps, rtol=rtol, atol=atol, seed=seed)
    args = check_args(args)
    _validate_argnums(argnums, len(args))
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"`order` must be 1 or 2 (check second derivatives too); got {order!r}.")
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
    devices = resolve_devices(devices, args)  # misuse raises here, not once per rule
    found = discover(f, args)
    options = dict(
        order=order, mode=mode, eps=eps, rtol=rtol, atol=atol, seed=seed, reference=reference
    )
    options["devices"] = devices
    reports = [_check_site(g, options) for g in _group(found.sites, bool(every_site))]
    reports.sort(key=lambda r: SITE_STATUSES.index(r.status) if r.failed else 2)
    status, reason = _verdict(reports, len(found.sites))
    return RulesCheckResult(
        name=function_name(f),
        status=status,
        reason=reason,
        rules=tuple(reports),
        order=int(order),
        mode=mode,
        seed=int(seed),
        every_site=bool(every_site),
        seconds=time.perf_counter() - start,
        notes=found.notes,
        devices=len(devices),
    )


def assert_rules_correct(
    f: Callable, args: tuple, *, allow_inconclusive: bool = False, **kwargs: Any
) -> RulesCheckResult:
    """Asserts that `check_rules(f, args, **kwargs)` passes.

    Args:
      f, args: As in `check_rules`.
      allow_inconclusive: Accept an inconclusive verdict instead of failing.
      **kwargs: Passed to `check_rules`.

    Returns:
      The `RulesCheckResult` when every rule passes.

    Raises:
      GradCheckError: some rule failed (or was inconclusive); the message is the report.
    """
    __tracebackhide__ = True
    return raise_unless_passed(check_rules(f, args, **kwargs), allow_inconclusive)


def diagnose_line(report: RuleSiteReport) -> str:
    """One sentence naming a failing rule, where it is defined and where it was called."""
    at = f" ({report.defined_at})" if report.defined_at else ""
    checks = [CHECK_NAMES.get(c, c) for c in report.failed_checks]
    what = f"fails its {', '.join(checks)} check{'s' if len(checks) > 1 else ''}"
    if not checks:
        what = f"could not be checked ({report.message})"
    where = f" {report.where}" if report.where else ""
    iteration = f", {report.iteration.split(' (')[0]}" if report.iteration else ""
    return (
        f"the {report.kind} rule `{report.name}`{at} {what} at its call{where} "
        f"({report.call_path}{iteration})"
    )


def diagnose_rules(
    f: Callable, args: tuple, *, argnums: int | Sequence[int] = 0, **options: Any
) -> tuple[str, ...]:
    """The lines a failing `check_grad` / `check_vjp` report appends: one per failing rule.

    Never raises: when the rules cannot be found or checked, the one line says why.

    Args:
      f, args, argnums: As given to the failing check.
      **options: Passed to `check_rules` (e.g. `seed`, `rtol`); unknown ones are ignored.

    Returns:
      One line per failing custom rule; empty when f has none or every rule passes.
    """
    known = ("order", "every_site", "mode", "eps", "rtol", "atol", "seed", "reference", "devices")
    kept = {k: v for k, v in options.items() if k in known}
    try:
        result = check_rules(f, args, argnums=argnums, **kept)
    except Exception as error:  # noqa: BLE001 - a diagnosis must never hide the first failure
        return (
            f"the custom rules inside f could not be checked: {type(error).__name__}: "
            f"{first_line(error)}",
        )
    return tuple(diagnose_line(r) for r in result.failed_rules)
