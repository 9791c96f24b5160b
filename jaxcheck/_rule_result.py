"""Host-side: runs after device_get; never traced.

Result records of a custom-rule check (`check_custom_vjp` / `check_custom_jvp`) and
their text report.
"""

import dataclasses
from typing import Any, ClassVar

from ._record import CheckResult, plain
from ._result import _table

CHECK_STATUSES = ("passed", "failed", "skipped", "error")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckReport:
    """The verdict of one named check of a custom rule.

    Attributes:
      name: The check: "primal", "structure", "linearity", "fd", "autodiff", "adjoint",
        "vmap", "jit" or "second-order".
      status: "passed", "failed", "skipped" or "error" (the rule raised, or JAX could not
        transform it).
      message: One sentence: the finding, or why the check was skipped.
      argument: The argument the finding is about, e.g. "args[1]", when there is one.
      path: The leaf the finding is about: an input leaf ("args[1]['w']") or an output
        leaf ("out[0]"), when there is one.
      index: The element inside that leaf, when there is one.
      details: Further lines for the report (values, tolerances, shapes, what to try).
      inconclusive: For a skipped check: True when it was meant to give evidence but could
        not (e.g. finite differences could not resolve the derivative); False when the
        skip is informational (the check does not apply).
      seconds: Wall time of this check.
      results: Nested result objects (the `GradCheckResult`s of the fd check).
    """

    name: str
    status: str
    message: str
    argument: str | None = None
    path: str | None = None
    index: tuple[int, ...] | None = None
    details: tuple[str, ...] = ()
    inconclusive: bool = False
    seconds: float = dataclasses.field(default=0.0, compare=False)
    results: tuple[Any, ...] = dataclasses.field(default=(), compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def where(self) -> str:
        """`path[index]` (or the argument) as one string; "" when the finding has no place."""
        text = self.path or self.argument or ""
        if self.index and text:
            text += "[" + ",".join(str(i) for i in self.index) + "]"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; nested results via their own `to_dict()`."""
        data = plain(self, skip=("results",))
        data["results"] = [r.to_dict() for r in self.results if hasattr(r, "to_dict")]
        return data


def overall_status(checks: tuple[CheckReport, ...]) -> tuple[str, str]:
    """(status, reason) of a set of checks.

    "failed" if any check failed or raised; else "inconclusive" if a check meant to give
    evidence could not; else "passed".
    """
    bad = [c for c in checks if c.status in ("failed", "error")]
    if bad:
        first = bad[0]
        where = f" at {first.where}" if first.where else ""
        names = ", ".join(c.name for c in bad)
        return (
            "failed",
            f"{len(bad)} of {len(checks)} checks failed ({names}); {first.name}{where}: {first.message}",
        )
    unsure = [c for c in checks if c.status == "skipped" and c.inconclusive]
    if unsure:
        return (
            "inconclusive",
            f"{', '.join(c.name for c in unsure)} inconclusive: {unsure[0].message}",
        )
    ran = [c for c in checks if c.status == "passed"]
    skipped = [c.name for c in checks if c.status == "skipped"]
    extra = f" ({', '.join(skipped)} not applicable)" if skipped else ""
    return "passed", f"all {len(ran)} checks passed{extra}"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class RuleCheckResult(CheckResult):
    """The outcome of `check_custom_vjp` or `check_custom_jvp`.

    Attributes:
      name: Name of the checked function.
      kind: "custom_vjp" or "custom_jvp".
      status: "passed" (every check passed or was skipped as not applicable), "failed"
        (some check failed or raised) or "inconclusive" (nothing failed, but a check meant
        to give evidence could not, e.g. finite differences at a kink).
      reason: One sentence explaining the status.
      checks: One `CheckReport` per check, in the order they ran.
      order: 1, or 2 when second derivatives were checked.
      mode: The finite-difference mode ("full" or "probe").
      seed: Seed of every random cotangent, tangent, batch and direction. Recorded.
      seconds: Wall time of the whole check.
      notes: Facts about the setup (held-fixed leaves, nondiff arguments).
      devices: Devices the finite differences were split over (global devices in a
        multi-process run), as in `GradCheckResult.devices`.
    """

    name: str
    kind: str
    status: str
    reason: str
    checks: tuple[CheckReport, ...]
    order: int
    mode: str
    seed: int
    seconds: float
    notes: tuple[str, ...] = ()
    devices: int = 1

    ITEMS: ClassVar[str] = "checks"
    FAILED: ClassVar[tuple[str, ...]] = ("failed", "error")

    def check(self, name: str) -> CheckReport:
        """The report of the check called `name`.

        Raises:
          KeyError: no check of that name ran.
        """
        return self._find(lambda c: c.name == name, f"check {name!r}", lambda c: c.name)

    @property
    def failed_checks(self) -> tuple[CheckReport, ...]:
        return self._failed()

    @property
    def fd_results(self) -> tuple[Any, ...]:
        """The nested finite-difference results (`GradCheckResult`s) of the fd check."""
        for c in self.checks:
            if c.name == "fd":
                return c.results
        return ()

    def report_lines(self) -> list[str]:
        return format_rule_result(self)


def format_rule_result(r: RuleCheckResult) -> list[str]:
    """The report's lines: verdict, check table, the details of every failing check, settings."""
    fn = "check_custom_vjp" if r.kind == "custom_vjp" else "check_custom_jvp"
    lines = [f"{r.status.upper()}: {fn}({r.name}): {r.reason}", ""]
    rows = [[c.name, c.status, c.where or "-", c.message] for c in r.checks]
    lines += _table(["check", "status", "where", "finding"], rows)
    for c in r.checks:
        if c.status == "passed" or (c.status == "skipped" and not c.inconclusive) or not c.details:
            continue
        lines += ["", f"  {c.name}: {c.message}"]
        lines += ["    " + d if d else "" for d in c.details]
    lines.append("")
    for note in r.notes:
        lines.append(f"  note: {note}")
    lines.append(
        f"  order {r.order}, mode {r.mode}, seed {r.seed}{devices_note(r.devices)}, "
        f"{r.seconds:.2f} s"
    )
    return lines


def devices_note(devices: int) -> str:
    """ ", 4 devices" for a report's footer when the finite differences ran on several."""
    return f", {devices} devices" if devices > 1 else ""
