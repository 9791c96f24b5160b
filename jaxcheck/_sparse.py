"""Host-side orchestration of sparse full Jacobian checks: one stencil per colour group, not
per input coordinate.

With the Jacobian's structure known (`_sparsity.detect_pattern`, from f's jaxpr) and the
columns of each input leaf coloured so that no two columns of a colour share a row
(`_coloring.color_by_leaf`), perturbing all inputs of colour c at once still isolates
every entry: output r moves only through the one column j*(c, r) of colour c in row r.
K colours cost 4 K evaluations of f instead of 4 n, and each (colour, output) slot is one
Jacobian entry, compared with the dense check's stencil (`_stencil.combine`/`assess`)
and tolerances.

Cost, by design (`benchmarks/README.md` has the numbers): pass 1 (`AnalyticPass`: the
analytic columns, reduced to the tolerances' scale) and pass 2 are each one compiled
program, one dispatch per device that loops over chunks of colours sized by a memory
budget (`_sparse_plan`); the chunks are split over `Evaluator.devices`. Pass 2 of a large
plan (`ComparePass`) evaluates, differentiates and compares on the device and returns
only per-block sums, a few worst entries, the empty-slot findings and the validation sums;
a small plan (up to HOST_SLOTS slots) keeps pass 1's columns, gets the grouped values
(`ValuesPass`) and compares them with numpy (`_sparse_compare`, written once for both),
which costs less than compiling the comparison. The validation's dense columns and random
direction run through `ValuesPass` too (no further compilation).

The rule under test runs only on the analytic side: compressed columns J s_c from one JVP
per colour, or for check_vjp from the transpose of the VJP (verified against the VJP on
a random cotangent and at a zero cotangent, as the dense path does). A wrong pattern must
not hide a bug, so the plan is validated (`_sparse_checks.py`); on any doubt the caller
runs the dense check and says why. Findings land in the dense path's `BlockAccumulator`,
so block reports read the same.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from . import _jacobian_kernels as jk
from . import _precision
from . import _sparse_checks as checks
from . import _stencil as st
from ._coloring import color_by_leaf
from ._devices import map_over_devices
from ._engine import first_line
from ._finite_diff import STENCIL
from ._flatten import call_flat
from ._jacobian_full import BlockAccumulator, transposable
from ._jacobian_kernels import SUM_NAMES
from ._pattern import Pattern
from ._problem import Problem
from ._sparse_compare import column_stats, compare_chunk, empty_carry
from ._sparse_kernels import AnalyticPass, ComparePass, Settings, ValuesPass, per_step
from ._sparse_plan import Plan, make_plan
from ._sparsity import detect_pattern
from ._summary import MAX_ELEMENTS
from ._tolerance import grown_steps, stencil_points

MAX_COLOR_SHARE = 0.5  # the sparse plan runs when colours <= this share of the inputs
SETCOL_BUDGET = 2**26  # entries of the (set, colour) -> column lookup table
# Up to this many (colour, output) slots in all, slots are compared with numpy on the host
# (and the analytic columns kept there, 4 bytes a slot): compiling the comparison costs 2 s
# of CPU, and per slot the compiled comparison takes about as much CPU as numpy (~0.1 us).
HOST_SLOTS = 2**25
N_VALIDATION_COLUMNS = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseSummary:
    """What the sparse plan did (or why it did not run).

    Attributes:
      used: Whether the findings come from the sparse plan.
      reason: Why the dense plan is needed instead ("" when used).
      n_colors: Colour groups (0 when no pattern was found).
      n_evaluations: Evaluations of f the sparse plan spent (grouped stencils and validation).
      nnz: Structural nonzeros of the pattern; density: nnz / (n m).
      validated_columns: The input coordinates re-run densely to validate the pattern.
      conservative: Primitives the pattern treats as dense within their equation.
    """

    used: bool
    reason: str = ""
    n_colors: int = 0
    n_evaluations: int = 0
    nnz: int = 0
    density: float = 1.0
    validated_columns: tuple[int, ...] = ()
    conservative: tuple[str, ...] = ()

    def describe(self) -> str:
        if not self.used:
            return f"sparse plan not used: {self.reason}"
        text = (
            f"sparse: {self.n_colors} colour groups, {self.n_evaluations} evaluations, pattern "
            f"density {self.density:.3g} ({self.nnz} structural nonzeros, from f's jaxpr), "
            f"validated on {len(self.validated_columns)} dense columns and 1 random direction"
        )
        if self.conservative:
            text += f"; treated conservatively: {', '.join(self.conservative)}"
        return text


def problem_pattern(p: Problem) -> Pattern | str:
    """The sparsity pattern of the problem's flat function (primal structure only)."""
    ev = p.ev
    spec = ev.spec

    def flat(theta: jax.Array) -> jax.Array:
        return call_flat(spec.f, spec.has_aux, spec.layout, theta, spec.dtypes, ev.dynamic)

    with ev.context():
        pattern = detect_pattern(flat, p.n, ev.theta_dtype)
    if isinstance(pattern, Pattern) and pattern.m != p.m:
        return f"the pattern has {pattern.m} rows for {p.m} outputs"
    return pattern


def _dense(reason: str, **fields: object) -> tuple[None, str, SparseSummary]:
    return None, reason, SparseSummary(used=False, reason=reason, **fields)


def run_sparse(
    p: Problem, pattern: Pattern | None = None, max_colors: int | None = None
) -> tuple[BlockAccumulator | None, str, SparseSummary]:
    """Checks every structural Jacobian entry with grouped finite differences.

    Args:
      p: The problem (as for `_jacobian_full.run_full`).
      pattern: A pattern to use instead of the detected one (tests: a deliberately wrong one).
      max_colors: Run only with at most this many colour groups (None: no limit but
        MAX_COLOR_SHARE of the inputs).

    Returns:
      (accumulator, source, summary). With the sparse plan: the `BlockAccumulator` of the
      dense path, the analytic source, and the summary. Without (no useful pattern, too
      many colours, or any validation doubt): (None, the reason, summary); run `run_full`.
    """
    if pattern is None:
        pattern = problem_pattern(p)
    if isinstance(pattern, str):
        return _dense(f"no usable sparsity pattern: {pattern}")
    bounds = [(leaf.offset, leaf.offset + leaf.size) for leaf in p.layout.diff]
    colors, leaf_of_color = color_by_leaf(pattern, bounds)
    n_colors = int(leaf_of_color.size)
    info = {
        "n_colors": n_colors,
        "nnz": pattern.nnz,
        "density": pattern.density,
        "conservative": pattern.conservative,
    }
    if pattern.nnz == 0:  # an all-zero pattern: no slot to look up (the dense path checks zeros)
        return _dense("the pattern has no structural nonzeros", **info)
    if n_colors > MAX_COLOR_SHARE * p.n:
        return _dense(
            f"{n_colors} colour groups for {p.n} inputs: not worth the sparse plan", **info
        )
    if max_colors is not None and n_colors > max_colors:
        return _dense(f"{n_colors} colour groups: more than {max_colors} to evaluate", **info)
    if pattern.n_sets * n_colors > SETCOL_BUDGET:
        return _dense("the colour lookup table would be too large", **info)
    ev = p.ev
    points = stencil_points(ev.theta, p.h, ev.coord_dtype_codes, ev.real_dtypes)
    if np.any(points[:, 2] <= points[:, 1]) or np.any(points[:, 3] <= points[:, 0]):
        return _dense("a finite-difference step is too small to change its coordinate", **info)
    plan = make_plan(p, pattern, colors, leaf_of_color)
    start_evals = ev.n_evaluations
    rng = np.random.default_rng([p.seed & 0xFFFFFFFF, 0x5BA45E])
    val_cols = np.sort(rng.choice(p.n, size=min(p.n, N_VALIDATION_COLUMNS), replace=False))
    direction = ev.random_directions(1, "sparse-validation")[0] * p.h
    u = rng.standard_normal(p.m)
    run = _Run(p, plan, points, direction, val_cols)
    try:
        analytic = run.analytic_pass(u)
    except Exception as error:  # noqa: BLE001 - the dense plan runs f its own way
        # Only then ask why (a trace of its own): a bwd rule that cannot be transposed.
        why = transposable(p) if p.kind == "vjp" else None
        if why is not None:
            return _dense(f"the VJP cannot be transposed ({why})", **info)
        # f that places its own computation (a jit on a mesh of its own) cannot run inside
        # the passes' map over devices; the dense plan evaluates it where it can, and an f
        # that fails everywhere reports its own error there.
        return _dense(f"the sparse passes failed ({first_line(error)})", **info)
    if p.kind == "vjp":
        why = checks.vjp_problem(p, plan, u, analytic)
        if why is not None:
            return _dense(why, **info)
    found = run.compare_pass(analytic, [points])
    if _in_doubt(found) and p.eps is None:
        # Noise-bound or narrowly failing slots: every slot again at larger steps too, each keeping
        # the estimate with the smallest proven error (as the dense plan's `Retake`).
        grown = grown_steps(p.h, p.scales)
        if grown:
            more = [
                stencil_points(ev.theta, h, ev.coord_dtype_codes, ev.real_dtypes) for h in grown
            ]
            found = run.compare_pass(analytic, [points] + more)
            p.grown_steps += p.n
    why = _rescue_needed(p, found)
    if why is not None:
        return _dense(why, **info)
    acc = BlockAccumulator(p)
    _fill(acc, p, found)
    why = checks.empty_slot_problem(p, plan, found["zero"]) or checks.validation_problem(
        p, pattern, analytic["leaf_max"], val_cols, direction, found, run.validation_values()
    )
    summary = SparseSummary(
        used=why is None,
        reason=why or "",
        n_evaluations=ev.n_evaluations - start_evals,
        validated_columns=tuple(int(j) for j in val_cols),
        **info,
    )
    if why is not None:
        return None, why, summary
    what = "JVPs J s_c" if p.kind == "jvp" else "the transpose of the VJP, J s_c"
    source = (
        f"compressed columns from {what} for each colour group s_c (vmapped), "
        "entries recovered from the pattern; " + summary.describe()
    )
    return acc, source, summary


def _failing(found: dict) -> dict:
    """The failing ones among the worst entries kept per block (`cand`), field by field."""
    cand = {name: np.asarray(v).ravel() for name, v in found["cand"].items()}
    failing = (cand["key"] >= 0) & (cand["code"] == st.FAIL)
    return {name: v[failing] for name, v in cand.items()}


def _in_doubt(found: dict) -> bool:
    """Whether some slot is noise-bound (`_stencil.noise_bound`) or one of the worst entries
    fails narrowly (`_stencil.near_miss`)."""
    sums = found["sums"].reshape(-1, len(SUM_NAMES))
    if np.any(sums[:, SUM_NAMES.index("n_noisy")] > 0):
        return True
    failing = _failing(found)
    return bool(np.any(st.near_miss(failing["a"], failing["num"])))


def _rescue_needed(p: Problem, found: dict) -> str | None:
    """Why failing entries need the dense plan's float64 second look
    (`_jacobian_full.Retake`): their float64 analytic value says they may be rounding of a
    right formula; else None (a wrong formula is wrong in float64 too: those failures
    stand, found by the sparse plan)."""
    sums = found["sums"].reshape(-1, len(SUM_NAMES))
    if not p.precision_applies or not sums[:, SUM_NAMES.index("n_failed")].any():
        return None
    failing = _failing(found)
    cols, rows = failing["col"].astype(np.int64), failing["row"].astype(np.int64)
    kernel = jk.jvp_columns if p.kind == "jvp" else jk.vjp_columns
    a64 = p.call_analytic64(kernel, cols)
    if a64 is None:
        return None
    a64 = np.asarray(a64, np.float64)[np.arange(cols.size), rows]
    a, num, tol = failing["a"], failing["num"], failing["tol"]
    could = _precision.may_be_rounding(a, num, tol, a64, p.native_noise[rows], p.scales[cols])
    if not np.any(could):
        return None
    return (
        f"{int(np.count_nonzero(could))} failing entries may be {p.tol_dtype} rounding of a "
        "right formula (the dense plan's float64 second look decides)"
    )


class _Run:
    """The passes of one sparse check, on the evaluator's devices."""

    def __init__(
        self,
        p: Problem,
        plan: Plan,
        points: np.ndarray,
        direction: np.ndarray,
        val_cols: np.ndarray,
    ):
        self.p, self.plan, self.points = p, plan, points
        self.direction, self.val_cols = direction, val_cols
        self.settings = Settings(
            kind=p.kind,
            sel=p.sel,
            layout=p.layout,
            outs=p.outs,
            analytic_x64=bool(jax.config.jax_enable_x64),  # the caller's, as the dense plan
            out_slices=tuple((o.offset, o.offset + o.size) for o in p.outs),
            n_candidates=MAX_ELEMENTS,
            has_empty=plan.has_empty,
        )
        self.on_host = plan.n_colors * p.m <= HOST_SLOTS

    def analytic_pass(self, u: np.ndarray) -> dict:
        """Pass 1 (under the caller's configuration): `leaf_max` (L_in, m), per-colour `cu`
        and `acu` (K,), kind "vjp" `vjp_u0` (2, n), small plans the `columns` (chunks, kc, m)."""
        p, plan = self.p, self.plan
        u = np.asarray(u, jnp.result_type(*[jnp.finfo(o.dtype).dtype for o in p.outs]))
        out = map_over_devices(
            AnalyticPass(self.settings, keep_columns=self.on_host),
            (p.diff_values, p.dynamic, plan.tables, u),
            plan.chunks,
            p.ev.devices,
        )
        ids = plan.chunks.ravel()
        real = ids >= 0
        result = {}
        if self.on_host:  # the columns came back: reduce them here (no compilation)
            result["columns"] = np.asarray(out["columns"]).reshape(-1, *plan.chunks.shape[2:], p.m)
            columns = result["columns"].reshape(-1, p.m)[real]
            with np.errstate(all="ignore"):
                stats = column_stats(columns, plan.leaf_of_color[ids[real]], u, p.n_in, np)
            leaf_max, cu, acu = (np.asarray(x, np.float64) for x in stats)
        else:
            leaf_max = np.max(np.asarray(out["leaf_max"], np.float64), axis=0)
            cu, acu = (np.asarray(out[name], np.float64).ravel()[real] for name in ("cu", "acu"))
        result["leaf_max"] = jk.complex_row_max(p.outs, leaf_max)
        for name, values in (("cu", cu), ("acu", acu)):
            result[name] = np.zeros(plan.n_colors)
            result[name][ids[real]] = values
        if "vjp_u0" in out:
            result["vjp_u0"] = np.asarray(out["vjp_u0"][0], np.float64)
        return result

    def _consts(self, leaf_max: np.ndarray, points: np.ndarray) -> dict:
        p, ev = self.p, self.p.ev
        dtype = np.dtype(ev.theta_dtype)
        k = points.shape[1]  # 4 per step
        columns = np.empty((k + 4, p.n), dtype)  # rows gather into contiguous (kc, m) grids
        columns[:k] = points.T
        columns[k], columns[k + 1], columns[k + 2] = ev.theta, p.decided_floor_in, self.direction
        columns[k + 3] = p.scales
        return {
            "f0": ev.f0.astype(dtype),
            "out_scale": p.out_scale.astype(dtype),
            "noise_floor": p.noise_floor.astype(dtype),
            "leaf_max": leaf_max.astype(dtype),
            "scalars": np.asarray([p.tol.rtol, p.tol.safety, p.user_atol], dtype),
            "columns": columns,
            "val_colors": self.plan.colors[self.val_cols].astype(np.int32),
        }

    def compare_pass(self, analytic: dict, steps: list[np.ndarray]) -> dict:
        """Pass 2 (in the reference's precision): every slot compared, results merged.
        `steps`: the (n, 4) stencil points at each step (several: `_stencil.best_of`)."""
        p, plan, ev = self.p, self.plan, self.p.ev
        points = np.concatenate(steps, axis=1)  # (n, 4 S)
        with ev.context():
            consts = self._consts(analytic["leaf_max"], points)
            if self.on_host:
                rows = self._compare_on_host(analytic["columns"], consts, points)
            else:
                replicated = (ev.theta_device, ev.dynamic, p.diff_values, p.dynamic)
                replicated += (plan.tables, consts)
                kernel = ComparePass(self.settings, ev.spec)
                rows = map_over_devices(kernel, replicated, plan.chunks, ev.devices)
        ev.n_evaluations += points.shape[1] * plan.n_colors
        return _merge_rows(rows)

    def _values(self, colors: np.ndarray, points: np.ndarray, chunks: np.ndarray) -> np.ndarray:
        """`ValuesPass` over (calls, kc) groups, one group chunk per device and call."""
        ev = self.p.ev
        replicated = (ev.theta_device, ev.dynamic, colors, points.astype(ev.theta_dtype))
        kernel = ValuesPass(ev.spec)
        per_call = len(ev.devices)
        out = []
        for start in range(0, chunks.shape[0], per_call):
            out.append(
                map_over_devices(kernel, replicated, chunks[start : start + per_call], ev.devices)
            )
        return np.concatenate(out)

    def _compare_on_host(self, columns: np.ndarray, consts: dict, points: np.ndarray) -> dict:
        """Pass 2 for small plans: grouped values from the devices, compared with numpy
        against the columns pass 1 kept. Returns the carry with a leading row axis of 1."""
        plan = self.plan
        chunks = plan.chunks.reshape(-1, plan.chunks.shape[-1])
        tables = plan.tables
        carry = empty_carry(self.settings, consts, np)
        per_call = len(self.p.ev.devices)
        for start in range(0, chunks.shape[0], per_call):
            batch = chunks[start : start + per_call]
            values = self._values(tables["colors"], points, batch)
            with np.errstate(all="ignore"):
                for i, chunk in enumerate(batch):
                    analytic = columns[start + i]
                    grouped = per_step(values[i], points.shape[1] // len(STENCIL))
                    carry = compare_chunk(
                        self.settings, grouped, analytic, tables, consts, chunk, carry, np
                    )
        return jax.tree_util.tree_map(lambda x: np.asarray(x)[None], carry)

    def validation_values(self) -> np.ndarray:
        """f at the stencil of each validation column alone, then along the random
        direction (points theta + t v): (q + 1, 4, m), through `ValuesPass` (no new
        compilation); counted as evaluations."""
        p, plan, ev = self.p, self.plan, self.p.ev
        kc = plan.chunks.shape[-1]
        q = self.val_cols.size
        solo = np.full(p.n, -1, np.int32)
        solo[self.val_cols] = np.arange(q)
        ids = np.arange(-(-q // kc) * kc)
        chunks = np.where(ids < q, ids, -1).astype(np.int32).reshape(-1, kc)
        ts = np.asarray(STENCIL, np.float64)
        along = ev.theta[:, None] + self.direction[:, None] * ts[None, :]
        first = np.where(np.arange(kc) == 0, 0, -1).astype(np.int32)[None, :]
        with ev.context():
            columns = self._values(solo, self.points, chunks).reshape(-1, len(STENCIL), p.m)[:q]
            line = self._values(np.zeros(p.n, np.int32), along, first)[0, :1]
        ev.n_evaluations += len(STENCIL) * (q + 1)
        return np.asarray(np.concatenate([columns, line]), np.float64)


def _merge_rows(rows: dict) -> dict:
    """One result from the per-row (per-device) ones."""
    as64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    cand = {name: np.concatenate(list(v), axis=1) for name, v in rows["cand"].items()}
    zero = {}
    for name, z in rows["zero"].items():
        worst = int(np.argmax(z["size"]))
        zero[name] = {
            "count": int(np.sum(z["count"])),
            "color": int(z["color"][worst]),
            "row": int(z["row"][worst]),
        }
    return {
        "sums": np.sum(as64(rows["sums"]), axis=0),
        "maxd": np.max(as64(rows["maxd"]), axis=0),
        "cand": cand,
        "zero": zero,
        **{name: np.sum(as64(rows[name]), axis=0) for name in ("dir_num", "dir_err")},
        **{name: np.sum(as64(rows[name]), axis=0) for name in ("val_num", "val_err")},
    }


def _fill(acc: BlockAccumulator, p: Problem, found: dict) -> None:
    """Moves the block sums and the worst entries into the dense path's accumulator."""
    n_in, n_out = p.n_in, p.n_out
    sums = found["sums"].reshape(n_in, n_out, len(SUM_NAMES))
    leaves = [i for i, leaf in enumerate(p.layout.diff) if leaf.size > 0]
    first = np.asarray([p.layout.diff[i].offset for i in leaves], np.int64)
    totals = {name: sums[leaves, :, k] for k, name in enumerate(SUM_NAMES)}
    totals["maxd"] = found["maxd"].reshape(n_in, n_out)[leaves]
    blank = np.zeros((len(leaves), n_out))
    totals.update({name: blank for name in ("j", "a", "num", "tol", "code")})
    totals["key"] = blank - 1.0
    acc._add(totals, first, np.arange(p.m))  # sums per leaf, no entries
    cand = found["cand"]
    block = np.repeat(np.arange(n_in * n_out), cand["key"].shape[1])
    keep = cand["key"].ravel() >= 0
    count = int(keep.sum())
    if count == 0:
        return
    out_leaf = (block % n_out)[keep]
    entries = {name: np.zeros((count, n_out)) for name in (*SUM_NAMES, "maxd")}
    entries["key"] = np.full((count, n_out), -1.0)
    for name in ("j", "a", "num", "tol", "code"):
        entries[name] = np.zeros((count, n_out))
    slot = np.arange(count)
    source = {"key": "key", "j": "row", "a": "a", "num": "num", "tol": "tol", "code": "code"}
    for name, field in source.items():
        entries[name][slot, out_leaf] = np.asarray(cand[field], np.float64).ravel()[keep]
    acc._add(entries, np.asarray(cand["col"]).ravel()[keep].astype(np.int64), np.arange(p.m))
