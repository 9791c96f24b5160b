"""Host-side: runs after device_get; never traced.

Result records of a gradient check and their text report.
"""

import dataclasses
from typing import Any, ClassVar

import numpy as np

from ._flatten import SkippedLeaf
from ._record import CheckResult, order_note, read_only
from ._tolerance import Tolerance

PyTree = Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class ElementReport:
    """One element of a leaf, with both values side by side.

    Attributes:
      index: Multi-index inside the leaf.
      part: "" for real leaves, "real" or "imag" for complex ones.
      analytic: The derivative under test.
      numeric: The finite-difference reference.
      tolerance: The allowed |analytic - numeric| for this element.
      kind: "mismatch", "analytic-nonfinite", "numeric-nonfinite", "nonsmooth-outside-slopes",
        "nonsmooth" (accepted) or "within-tolerance".
    """

    index: tuple[int, ...]
    part: str
    analytic: float
    numeric: float
    tolerance: float
    kind: str

    @property
    def abs_error(self) -> float:
        return abs(self.analytic - self.numeric)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeafReport:
    """Verdict for one differentiated leaf.

    Attributes:
      path: e.g. "args[0]['layer2']['b']".
      status: "passed", "failed" or "inconclusive".
      shape, dtype: The leaf's shape and dtype.
      relative_error: ||a - n|| / (||a|| + ||n||) over the leaf's finite elements.
      max_abs_error: max |a - n|.
      worst_index: Index of the element furthest out of tolerance (relative to its tolerance).
      worst_analytic, worst_numeric, worst_tolerance: That element's values.
      n_elements: Number of checked (real) coordinates.
      n_failed: Elements out of tolerance (including non-finite analytic values).
      n_nonsmooth: Elements at a kink (accepted when the analytic value lies between the one-sided slopes).
      n_nonfinite: Elements whose finite-difference reference is NaN/Inf.
      n_unresolved: Elements whose reference error exceeds half their magnitude.
      reason: One sentence explaining the status.
      elements: The worst few elements (failures first), for the report.
      probe_floor: Probe mode: the smallest error of one element the probes would see (a
        typical element; absolute), or None in full mode.
      gradient_norm: Probe mode: the norm of the leaf's analytic gradient, or None.
    """

    path: str
    status: str
    shape: tuple[int, ...]
    dtype: str
    relative_error: float
    max_abs_error: float
    worst_index: tuple[int, ...]
    worst_analytic: float
    worst_numeric: float
    worst_tolerance: float
    n_elements: int
    n_failed: int
    n_nonsmooth: int
    n_nonfinite: int
    n_unresolved: int
    reason: str
    elements: tuple[ElementReport, ...] = ()
    probe_floor: float | None = None
    gradient_norm: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepSweep:
    """Central-difference estimates of one element's derivative across step sizes.

    Plotting |estimate - numeric| against the step shows the V of truncation error
    (right, falls like h**2) and rounding error (left, grows like 1/h).

    Attributes:
      path, index, part: The element (the worst one of the check).
      steps: Step sizes, largest first.
      estimates: (f(x + h) - f(x - h)) / 2h at each step.
      chosen_step: The step the check used for this element.
      numeric: The check's finite-difference reference for this element.
      analytic: The analytic derivative of this element.
      dtype: The dtype f was evaluated in.
    """

    path: str
    index: tuple[int, ...]
    part: str
    steps: tuple[float, ...]
    estimates: tuple[float, ...]
    chosen_step: float
    numeric: float
    analytic: float
    dtype: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaylorReport:
    """The step-free second line of evidence for one differentiated argument.

    The remainder |f(x + h v) - f(x) - h <g, v>| shrinks like h**2 when g is right
    and like h when it is wrong.

    Attributes:
      argnum: The differentiated argument.
      slope: Fitted log-log slope of the remainder over h (None without enough usable points).
      n_points: Number of step sizes above the rounding floor used in the fit.
      verdict: "consistent", "inconsistent", "unclear" or "no-data".
    """

    argnum: int
    slope: float | None
    n_points: int
    verdict: str


def shape_str(dtype: str, shape: tuple[int, ...]) -> str:
    """Equinox-style array summary: f32[8,3]."""
    short = {
        "float32": "f32",
        "float64": "f64",
        "float16": "f16",
        "bfloat16": "bf16",
        "complex64": "c64",
        "complex128": "c128",
    }
    return f"{short.get(dtype, dtype)}[{','.join(str(s) for s in shape)}]"


def _num(x: float) -> str:
    if x is None:
        return "-"
    if not np.isfinite(x):
        return str(x)
    return f"{x:.6g}" if x == 0 or 1e-3 <= abs(x) < 1e5 else f"{x:.4e}"


def _sci(x: float) -> str:
    return "-" if x is None else (f"{x:.1e}" if np.isfinite(x) else str(x))


def _index_str(index: tuple[int, ...], part: str = "") -> str:
    text = "[" + ",".join(str(i) for i in index) + "]"
    return f"{text}.{part}" if part else text


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [line(header), indent + "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def _path(item: Any) -> str:
    return item.path


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class GradCheckResult(CheckResult):
    """The outcome of `check_grad`.

    Attributes:
      name: Name of the checked function.
      status: "passed", "failed" or "inconclusive".
      reason: One sentence explaining the status.
      relative_error: Global ||a - n|| / (||a|| + ||n||) over all checked elements.
      leaves: One `LeafReport` per differentiated leaf, worst first.
      skipped: Leaves held fixed (integer, boolean, PRNG key, non-array).
      taylor: One `TaylorReport` per differentiated argument.
      reference: How the finite-difference reference was computed.
      reference_fallback: Why float64 was not used, when it was not.
      step_policy: How steps were chosen.
      eps: The user's step, or None for the automatic policy.
      tolerance: The `Tolerance` used.
      seed: Seed of the random probe directions.
      mode: "full" (every coordinate) or "probe".
      n_evaluations: Function evaluations spent on finite differences.
      seconds: Wall time of the check.
      devices: Devices the finite differences were split over (global devices in a
        multi-process run).
      hints: What to try next.
      notes: Remarks that do not change the verdict (e.g. float32 precision loss of a
        right formula, `precision="note"`).
      rule_findings: On failure, the custom rules inside f that fail their own check at their
        call-site inputs, one line each (empty when none does, or `locate_rules=False`).
      order: The order of the derivative the verdict is about: `order=` as passed when every
        order up to it passed, else the first order that did not pass (see `jaxcheck._orders`).
      notes: How f was evaluated, when not as usual (e.g. sequentially, since vmap cannot
        batch it, with the number of evaluations).
      step_sweep: Estimates of the worst element's derivative across step sizes (for plots).
      analytic: The analytic gradient, shaped like the differentiated arguments (numpy).
      numeric: The finite-difference gradient, same structure.
    """

    name: str
    status: str
    reason: str
    relative_error: float
    leaves: tuple[LeafReport, ...]
    skipped: tuple[SkippedLeaf, ...]
    taylor: tuple[TaylorReport, ...]
    reference: str
    reference_fallback: str | None
    step_policy: str
    eps: float | None
    tolerance: Tolerance
    seed: int
    mode: str
    n_evaluations: int
    seconds: float
    devices: int = 1
    hints: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    rule_findings: tuple[str, ...] = ()
    order: int = 1
    notes: tuple[str, ...] = ()
    step_sweep: StepSweep | None = None
    analytic: PyTree = dataclasses.field(default=None, repr=False)
    numeric: PyTree = dataclasses.field(default=None, repr=False)

    ITEMS: ClassVar[str] = "leaves"
    DICT_SKIP: ClassVar[tuple[str, ...]] = ("analytic", "numeric")

    def __post_init__(self) -> None:
        for name in ("analytic", "numeric"):
            object.__setattr__(self, name, read_only(getattr(self, name)))

    DICT_EXTRA: ClassVar[dict[str, Any]] = {"kind": "grad"}

    def leaf(self, path: str) -> LeafReport:
        """The report of the leaf at `path` (e.g. "args[0]['b']").

        Raises:
          KeyError: no differentiated leaf has that path.
        """
        return self._find(lambda l: l.path == path, f"differentiated leaf {path!r}", _path)

    @property
    def failed_leaves(self) -> tuple[LeafReport, ...]:
        return self._failed()

    def plot(self, path: Any = None) -> Any:
        """Saves (and returns) the figure of `jaxcheck._plot.plot_result`; needs `jaxcheck[plot]`."""
        from ._plot import plot_result

        return plot_result(self, path)

    def report_lines(self) -> list[str]:
        return format_grad_result(self)


def probe_floor_words(leaf: LeafReport) -> str:
    """The detection floor of probe mode for one leaf, in words a user reads."""
    share = ""
    if leaf.gradient_norm:
        share = f" ({_sci(leaf.probe_floor / leaf.gradient_norm)} of this leaf's gradient norm)"
    return (
        f"one wrong element off by less than about {_sci(leaf.probe_floor)}{share} "
        "would not be seen in probe mode"
    )


def format_grad_result(r: GradCheckResult) -> list[str]:
    """The report's lines: verdict, leaf table, worst elements, evidence, settings, hints."""
    lines = [f"{r.status.upper()}: check_grad({r.name}): {r.reason}"]
    lines.append(
        f"  relative error ||a-n||/(||a||+||n||) = {_sci(r.relative_error)} over all leaves"
    )
    rows = []
    for leaf in r.leaves:
        rows.append(
            [
                leaf.path,
                leaf.status,
                shape_str(leaf.dtype, leaf.shape),
                _sci(leaf.relative_error),
                _index_str(leaf.worst_index),
                _num(leaf.worst_analytic),
                _num(leaf.worst_numeric),
                _sci(leaf.worst_tolerance),
                f"{leaf.n_failed}/{leaf.n_elements}",
                str(leaf.n_nonsmooth),
            ]
        )
    lines.append("")
    lines += _table(
        [
            "leaf",
            "status",
            "array",
            "rel.err",
            "worst",
            "analytic",
            "numeric",
            "tolerance",
            "failed",
            "kinks",
        ],
        rows,
    )
    for leaf in r.leaves:
        bad = [e for e in leaf.elements if e.kind not in ("nonsmooth", "within-tolerance")]
        if leaf.status == "passed" or not bad:
            continue
        lines += ["", f"  {leaf.path}: {leaf.reason}"]
        lines += _table(
            ["index", "analytic", "numeric", "|error|", "tolerance", "finding"],
            [
                [
                    _index_str(e.index, e.part),
                    _num(e.analytic),
                    _num(e.numeric),
                    _sci(e.abs_error),
                    _sci(e.tolerance),
                    e.kind,
                ]
                for e in bad
            ],
            indent="    ",
        )
    lines.append("")
    for t in r.taylor:
        slope = "-" if t.slope is None else f"{t.slope:.2f}"
        lines.append(
            f"  taylor args[{t.argnum}]: remainder slope {slope} over {t.n_points} steps ({t.verdict}; 2 = right, 1 = wrong)"
        )
    for s in r.skipped:
        lines.append(f"  skipped {s.path} ({shape_str(s.dtype, s.shape)}): {s.reason}")
    lines.append(f"  reference: {r.reference}")
    if r.reference_fallback:
        lines.append(f"  float64 not used: {r.reference_fallback}")
    lines.append(f"  steps: {r.step_policy}")
    tol = r.tolerance
    atol = "per leaf (rtol * leaf max + rounding floor)" if tol.atol is None else f"{tol.atol:.1e}"
    lines.append(
        f"  tolerance: {tol.safety:g} x estimated FD error + rtol {tol.rtol:.1e} x |numeric| + atol {atol}"
    )
    on_devices = f", {r.devices} devices" if r.devices > 1 else ""
    lines.append(
        f"  mode {r.mode}, seed {r.seed}, {r.n_evaluations} evaluations{on_devices}, {r.seconds:.2f} s"
        + order_note(r.order)
    )
    for leaf in r.leaves:
        if leaf.probe_floor is not None:
            lines.append(f"  probe floor {leaf.path}: {probe_floor_words(leaf)}")
    for note in r.notes:
        lines.append(f"  note: {note}")
    for finding in r.rule_findings:
        lines.append(f"  rule: {finding}")
    for hint in r.hints:
        lines.append(f"  try: {hint}")
    return lines
