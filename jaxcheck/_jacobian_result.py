"""Host-side: runs after device_get; never traced.

Result records of a Jacobian check (`check_vjp` / `check_jvp`) and their text report.
The Jacobian is reported per block: one record per (differentiated input leaf, output
leaf) pair, e.g. "args[0]['W'] -> out['y']", worst first.
"""

import dataclasses
from typing import ClassVar

import numpy as np

from ._flatten import SkippedLeaf
from ._record import CheckResult, order_note
from ._result import _index_str, _num, _sci, _table, shape_str
from ._tolerance import Tolerance


@dataclasses.dataclass(frozen=True, kw_only=True)
class JacobianElement:
    """One Jacobian entry d out[output_index] / d in[input_index], both values side by side.

    Attributes:
      input_index: Multi-index inside the input leaf.
      input_part: "" for real leaves, "real" or "imag" for complex ones.
      output_index: Multi-index inside the output leaf.
      output_part: "" for real outputs, "real" or "imag" for complex ones.
      analytic: The derivative under test (from the VJP or JVP).
      numeric: The finite-difference reference.
      tolerance: The allowed |analytic - numeric| for this entry.
      kind: "mismatch", "analytic-nonfinite", "numeric-nonfinite", "nonsmooth-outside-slopes",
        "nonsmooth" (accepted) or "within-tolerance".
    """

    input_index: tuple[int, ...]
    input_part: str
    output_index: tuple[int, ...]
    output_part: str
    analytic: float
    numeric: float
    tolerance: float
    kind: str

    @property
    def abs_error(self) -> float:
        return abs(self.analytic - self.numeric)

    @property
    def where(self) -> str:
        """e.g. "[3] -> [0,1]": input element -> output element."""
        return f"{_index_str(self.input_index, self.input_part)} -> {_index_str(self.output_index, self.output_part)}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockReport:
    """Verdict for one (input leaf, output leaf) block of the Jacobian.

    Attributes:
      path: "args[0]['W'] -> out['y']".
      input_path, output_path: The two halves of `path`.
      status: "passed", "failed" or "inconclusive".
      input_shape, input_dtype, output_shape, output_dtype: The leaves' shapes and dtypes.
      relative_error: ||a - n|| / (||a|| + ||n||) over the block's finite entries (full
        mode) or over its probe values (probe mode).
      max_abs_error: max |a - n| over the same.
      worst: The entry furthest out of tolerance (None when no entry was examined,
        e.g. a passing block in probe mode).
      n_elements: Entries of the block (input size x output size, real coordinates).
      n_checked: Entries compared one by one (all in full mode; the narrowed
        sub-block in probe mode).
      n_failed: Entries out of tolerance among the checked ones.
      n_nonsmooth: Entries (or probes) at a kink.
      n_nonfinite: Entries (or probes) whose finite-difference reference is NaN/Inf.
      n_unresolved: Entries (or probes) the reference cannot resolve.
      n_probes, n_probes_failed: Probe mode: directional comparisons <u, J v> made and failed.
      reason: One sentence explaining the status.
      elements: The worst few entries (failures first).
    """

    path: str
    input_path: str
    output_path: str
    status: str
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    output_dtype: str
    relative_error: float
    max_abs_error: float
    worst: JacobianElement | None
    n_elements: int
    n_checked: int
    n_failed: int
    n_nonsmooth: int
    n_nonfinite: int
    n_unresolved: int
    reason: str
    n_probes: int = 0
    n_probes_failed: int = 0
    elements: tuple[JacobianElement, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _severity(item) -> float:
    if item.status == "passed":
        return 0.0
    return -float(np.nan_to_num(item.relative_error, nan=np.inf))


def sort_blocks(blocks: list[BlockReport]) -> tuple[BlockReport, ...]:
    """Failed blocks first, then inconclusive, then passed; failed and
    inconclusive ones by relative error, passed ones in argument order (their relative errors
    are rounding, which would reorder them from one machine to the next)."""
    rank = {"failed": 0, "inconclusive": 1, "passed": 2}
    return tuple(sorted(blocks, key=lambda b: (rank[b.status], _severity(b))))


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class JacobianCheckResult(CheckResult):
    """The outcome of `check_vjp` or `check_jvp`.

    Attributes:
      name: Name of the checked function.
      kind: "vjp" or "jvp": which derivative was checked.
      status: "passed", "failed" or "inconclusive".
      reason: One sentence explaining the status.
      relative_error: Global ||a - n|| / (||a|| + ||n||) over all compared values.
      blocks: One `BlockReport` per (input leaf, output leaf), worst first.
      skipped: Input leaves held fixed and output leaves not differentiated (integer, bool, key).
      reference: How the finite-difference reference was computed.
      reference_fallback: Why float64 was not used, when it was not.
      analytic_source: How the analytic Jacobian entries were obtained.
      step_policy: How steps were chosen.
      eps: The user's step, or None for the automatic policy.
      tolerance: The `Tolerance` used.
      seed: Seed of the random probe directions and cotangents.
      mode: "full" (every Jacobian entry) or "probe" (random <u, J v> per block, then narrowing).
      n_inputs, n_outputs: Real coordinates of the differentiated inputs and of the outputs.
      n_evaluations: Function evaluations spent on finite differences.
      seconds: Wall time of the check.
      devices: Devices the finite differences were split over (global devices in a
        multi-process run).
      hints: What to try next.
      sparsity: Full mode on a sparse Jacobian: colour groups, evaluations and pattern
        density, or why the dense plan ran instead ("" when not tried).
      rule_findings: On failure, the custom rules inside f that fail their own check at their
        call-site inputs, one line each (empty when none does, or `locate_rules=False`).
      order: The order of the derivative the verdict is about: `order=` as passed when every
        order up to it passed, else the first order that did not pass (see `jaxcheck._orders`).
      notes: How f was evaluated, when not as usual (e.g. sequentially, since vmap cannot
        batch it, with the number of evaluations).
    """

    name: str
    kind: str
    status: str
    reason: str
    relative_error: float
    blocks: tuple[BlockReport, ...]
    skipped: tuple[SkippedLeaf, ...]
    reference: str
    reference_fallback: str | None
    analytic_source: str
    step_policy: str
    eps: float | None
    tolerance: Tolerance
    seed: int
    mode: str
    n_inputs: int
    n_outputs: int
    n_evaluations: int
    seconds: float
    devices: int = 1
    hints: tuple[str, ...] = ()
    rule_findings: tuple[str, ...] = ()
    order: int = 1
    notes: tuple[str, ...] = ()
    sparsity: str = ""

    ITEMS: ClassVar[str] = "blocks"

    def block(self, input_path: str, output_path: str = "out") -> BlockReport:
        """The report of one block, e.g. `result.block("args[0]['W']", "out['y']")`.

        Raises:
          KeyError: no such block.
        """
        return self._find(
            lambda b: b.input_path == input_path and b.output_path == output_path,
            f"block {input_path!r} -> {output_path!r}",
            lambda b: b.path,
        )

    @property
    def failed_blocks(self) -> tuple[BlockReport, ...]:
        return self._failed()

    def report_lines(self) -> list[str]:
        return format_jacobian_result(self)


def format_jacobian_result(r: JacobianCheckResult) -> list[str]:
    """The report's lines: verdict, block table, worst entries, settings, hints."""
    lines = [f"{r.status.upper()}: check_{r.kind}({r.name}): {r.reason}"]
    over = "probe values" if r.mode == "probe" else "Jacobian entries"
    lines.append(
        f"  relative error ||a-n||/(||a||+||n||) = {_sci(r.relative_error)} over all {over}"
    )
    rows = []
    for b in r.blocks:
        w = b.worst
        counted = (
            f"{b.n_failed}/{b.n_checked}"
            if r.mode == "full"
            else f"{b.n_probes_failed}/{b.n_probes}"
        )
        rows.append(
            [
                b.path,
                b.status,
                f"{shape_str(b.input_dtype, b.input_shape)} -> {shape_str(b.output_dtype, b.output_shape)}",
                _sci(b.relative_error),
                "-" if w is None else w.where,
                "-" if w is None else _num(w.analytic),
                "-" if w is None else _num(w.numeric),
                "-" if w is None else _sci(w.tolerance),
                counted,
                str(b.n_nonsmooth),
            ]
        )
    failed_header = "failed" if r.mode == "full" else "probes failed"
    lines.append("")
    lines += _table(
        [
            "block",
            "status",
            "arrays",
            "rel.err",
            "worst",
            "analytic",
            "numeric",
            "tolerance",
            failed_header,
            "kinks",
        ],
        rows,
    )
    for b in r.blocks:
        bad = [e for e in b.elements if e.kind not in ("nonsmooth", "within-tolerance")]
        if b.status == "passed" or not bad:
            if b.status != "passed":
                lines += ["", f"  {b.path}: {b.reason}"]
            continue
        lines += ["", f"  {b.path}: {b.reason}"]
        lines += _table(
            ["input -> output", "analytic", "numeric", "|error|", "tolerance", "finding"],
            [
                [
                    e.where,
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
    for s in r.skipped:
        lines.append(f"  skipped {s.path} ({shape_str(s.dtype, s.shape)}): {s.reason}")
    lines.append(f"  reference: {r.reference}")
    if r.reference_fallback:
        lines.append(f"  float64 not used: {r.reference_fallback}")
    lines.append(f"  analytic: {r.analytic_source}")
    lines.append(f"  steps: {r.step_policy}")
    if r.sparsity:
        lines.append(f"  sparsity: {r.sparsity}")
    tol = r.tolerance
    if tol.atol is not None:
        atol = f"{tol.atol:.1e} per entry"
    elif r.mode == "probe":
        atol = (
            "per probe (rtol * rms of the analytic product's terms + rounding floor, in quadrature)"
        )
    else:
        atol = "per entry (rtol * row max over the input leaf + rounding floor)"
    lines.append(
        f"  tolerance: {tol.safety:g} x estimated FD error + rtol {tol.rtol:.1e} x |numeric| + atol {atol}"
    )
    lines.append(
        f"  mode {r.mode}, seed {r.seed}, {r.n_inputs} inputs x {r.n_outputs} outputs (real coordinates), "
        f"{r.n_evaluations} evaluations{f', {r.devices} devices' if r.devices > 1 else ''}, "
        f"{r.seconds:.2f} s" + order_note(r.order)
    )
    for note in r.notes:
        lines.append(f"  note: {note}")
    for finding in r.rule_findings:
        lines.append(f"  rule: {finding}")
    for hint in r.hints:
        lines.append(f"  try: {hint}")
    return lines
