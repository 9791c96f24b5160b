"""Host-side orchestration of sparse full Jacobian checks: one stencil per colour, not per input.

With the Jacobian's structure known (`_sparsity.detect_pattern`, from f's jaxpr) and its
columns coloured so that no two columns of a colour share a row, perturbing all inputs
of colour c at once still isolates every entry: output r moves only through the one
column j*(c, r) of colour c in row r. So K colours cost 4 K evaluations of f instead of
4 n, and each (colour, output) slot is one Jacobian entry J[r, j*], compared with the
same stencil machinery (`_stencil.combine`/`assess`) and tolerances as the dense check.

  analytic: compressed columns J s_c (s_c = sum of e_j over colour c) from one JVP per
    colour, or for check_vjp from the transpose of the VJP (verified against the VJP on a
    random cotangent and at a zero cotangent, as the dense path does). The rule under test
    only ever runs on this side.
  validation: a wrong pattern must not hide a bug, so (1) every slot with no entry must see
    no change in f, (2) a few random columns are re-run densely (4 evaluations each) and
    must be zero outside the pattern and equal the grouped entries inside it, and (3) the
    directional derivative of f along one random direction must equal the pattern's
    entries times that direction. Any doubt: the caller runs the dense check, and says why.

Findings land in the dense path's `BlockAccumulator`, so block reports are unchanged.
"""

import dataclasses
import functools as ft
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _jacobian_kernels as jk
from . import _stencil as st
from ._finite_diff import STENCIL, EvalSpec
from ._flatten import call_flat
from ._jacobian_full import FLUSH_EVERY, BlockAccumulator, transposable
from ._problem import Problem
from ._sparsity import Pattern, detect_pattern
from ._tolerance import stencil_points

SLOT_BUDGET = 2**19  # (colour, output) slots compared per chunk
MAX_COLOR_SHARE = 0.5  # the sparse plan runs when colours <= this share of the inputs
SETCOL_BUDGET = 2**26  # entries of the (set, colour) -> column lookup table
KEEP_ANALYTIC = 2**25
HOST_SLOTS = (
    2**22
)  # up to this many slots in all, the comparison runs in numpy on the host  # compressed analytic entries kept between the two passes
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


# ----------------------------------------------------------------------------------
# Traced, jitted kernels.


def _slot_columns(setcol, row_key, chunk, rep, xp=jnp):
    """(kc, m) column j* of each (colour, output) slot (-1: none) and a column to step (jj)."""
    jstar = setcol[xp.maximum(row_key, 0)[None, :], xp.maximum(chunk, 0)[:, None]]
    jstar = xp.where((row_key[None, :] >= 0) & (chunk[:, None] >= 0), jstar, -1)
    jj = xp.where(jstar >= 0, jstar, rep[xp.maximum(chunk, 0)][:, None])
    return jstar, jj


@ft.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _compressed_analytic(kind, sel, layout, outs, diff_values, dynamic, colors, chunk, tables, u):
    """Compressed columns J s_c (kc, m), their per-input-leaf maxima (L_in, m) and J s_c . u."""
    setcol, row_key, rep, in_ids = tables
    S = (colors[None, :] == chunk[:, None]).astype(jk._in_dtype(layout))
    if kind == "jvp":
        lin = jk._jvp_linear(sel, layout, outs, diff_values, dynamic)
        C = jax.vmap(lin)(S)
    else:
        m = sum(o.size for o in outs)
        vjp, u_dtype = jk._vjp_linear(sel, layout, outs, diff_values, dynamic)
        transpose = jax.linear_transpose(vjp, jax.ShapeDtypeStruct((m,), u_dtype))
        C = jax.vmap(lambda v: transpose(v)[0])(S)
    jstar, jj = _slot_columns(setcol, row_key, chunk, rep)
    absC = jnp.where(jnp.isfinite(C) & (jstar >= 0), jnp.abs(C), 0)
    ids = in_ids[jj]
    leaf_max = jnp.stack(
        [jnp.max(jnp.where(ids == k, absC, 0), axis=0) for k in range(len(layout.diff))]
    )
    Cf = jnp.where(jnp.isfinite(C), C, 0)
    u = u.astype(Cf.dtype)
    return C, leaf_max, Cf @ u, jnp.abs(Cf) @ jnp.abs(u)


class _SlotGrid:
    """Stencil points of a (colour, output) slot grid, shaped for `_stencil.combine`.

    `combine` reads `points[:, k, None]` and `x0[:, None]` (one coordinate per row, the
    same for every output); here every slot (c, r) steps its own column j*(c, r), so the
    view returns the (kc, m) grid for offset k instead.
    """

    def __init__(self, grid: jax.Array):
        self.grid = grid  # (kc, m, 4) points or (kc, m) base values

    def __getitem__(self, index: tuple) -> jax.Array:
        if self.grid.ndim == 3:
            return self.grid[:, :, index[1]]
        return self.grid


jax.tree_util.register_pytree_node(
    _SlotGrid, lambda g: ((g.grid,), None), lambda _, c: _SlotGrid(*c)
)


@ft.partial(jax.jit, static_argnums=0)
def _grouped_values(spec: EvalSpec, theta, dynamic, colors, chunk, P) -> jax.Array:
    """f with all inputs of each colour in `chunk` set to their stencil points: (kc, 4, m)."""

    def point(c, k):
        x = jnp.where(colors == c, P[:, k], theta)
        return call_flat(spec.f, spec.has_aux, spec.layout, x, spec.dtypes, dynamic)

    offsets = jnp.arange(len(STENCIL))
    return jax.vmap(lambda c: jax.vmap(lambda k: point(c, k))(offsets))(chunk)


def _segment_max(data, seg, n_seg, xp):
    if xp is jnp:
        return jax.ops.segment_max(data, seg, n_seg)
    out = np.full((n_seg,) + data.shape[1:], -np.inf, data.dtype)
    np.maximum.at(out, seg, data)
    return out


def _slot_stats(values, analytic, chunk, P, theta, tables, consts, carry, n_out, kmax, xp=jnp):
    """Compares the slots of one chunk of colours: the entries J[r, j*(c, r)] and the empty slots.

    Written once against `xp` (numpy on the host for small problems, no compilation; jnp
    jitted on device), as `_jacobian_kernels._tile_stats` is.

    Returns:
      (stats, carry, zero): per-(chunk member, output leaf) statistics (kc * kmax, n_out)
      named as `_jacobian_kernels.STAT_NAMES`; the carried validation sums; and counts and
      the worst slot of the slots without an entry whose numeric (pattern violated) or
      analytic (rule outside the pattern) side is nonzero.
    """
    combine, assess = (st.combine, st.assess) if xp is jnp else (st.combine_host, st.assess_host)
    setcol, row_key, rep, in_ids, rank = tables
    f0, floor_in, out_scale, leaf_max, out_ids, scalars, vh, val_colors = consts
    rtol, safety, user_atol = scalars[0], scalars[1], scalars[2]
    dtype = values.dtype
    kc, m = analytic.shape
    jstar, jj = _slot_columns(setcol, row_key, chunk, rep, xp)
    entry = jstar >= 0
    zero = (jstar < 0) & (chunk[:, None] >= 0)
    # Each slot steps its own column j*: the stencil points form a (kc, m) grid per offset.
    est = combine(values, f0.astype(dtype), _SlotGrid(P[jj]), _SlotGrid(theta[jj]))
    a = analytic.astype(dtype)
    cols = xp.arange(m)[None, :]
    atol = floor_in[jj] * out_scale[None, :] + rtol * leaf_max[in_ids[jj], cols]
    atol = xp.where(user_atol >= 0, user_atol, atol).astype(dtype)
    asm = assess(est, a, rtol, atol, safety)
    num, code, tolerance, fd_error = est.numeric, asm.code, asm.tolerance, est.fd_error
    finite = xp.isfinite(a) & xp.isfinite(num)
    d = xp.where(finite, a - num, 0)
    failing = (code == st.FAIL) | (code == st.ANALYTIC_NONFINITE)
    mass = xp.where(xp.isfinite(num), xp.abs(num), 0)
    unres = ~asm.resolved & ~failing
    per_elem = {
        "ssd": d * d,
        "ssa": xp.where(finite, a * a, 0),
        "ssn": xp.where(finite, num * num, 0),
        "n": xp.ones_like(a),
        "n_failed": failing,
        "n_anf": code == st.ANALYTIC_NONFINITE,
        "n_ref_nf": code == st.REF_NONFINITE,
        "n_kink_out": code == st.FAIL_NONSMOOTH,
        "n_nonsmooth": (code == st.NONSMOOTH) | (code == st.FAIL_NONSMOOTH),
        "n_unres": unres,
        "mass": mass,
        "mass_unres": xp.where(unres, mass, 0),
    }
    key = xp.where(entry, jk.element_key(code, xp.abs(a - num), tolerance, xp), -1.0)
    if xp is jnp:  # materialise once (see `_tile_stats`)
        per_elem, key, num, tolerance, code, d, fd_error = jax.lax.optimization_barrier(
            (per_elem, key, num, tolerance, code, d, fd_error)
        )
    # Segment = (chunk position, rank of j* in its colour, output leaf of r); no entry: dropped.
    n_seg = kc * kmax * n_out
    seg = ((xp.arange(kc)[:, None] * kmax + rank[jj]) * n_out + out_ids[None, :]).ravel()
    seg = xp.where(entry.ravel(), seg, n_seg)
    # Slots without an entry fall into the dropped last segment: no masking needed.
    if xp is jnp:
        names = tuple(per_elem)
        stacked = jnp.stack([per_elem[k].astype(dtype).ravel() for k in names], axis=1)
        sums = jax.ops.segment_sum(stacked, seg, n_seg + 1)[:n_seg]
        stats = {k: sums[:, i] for i, k in enumerate(names)}
    else:
        stats = {
            k: np.bincount(seg, weights=np.ravel(v), minlength=n_seg + 1)[:n_seg]
            for k, v in per_elem.items()
        }
    stats["maxd"] = xp.maximum(_segment_max(xp.abs(d).ravel(), seg, n_seg + 1, xp)[:n_seg], 0)
    best = _segment_max(key.ravel().astype(dtype), seg, n_seg + 1, xp)
    maxima = xp.stack([best, best], axis=1)
    is_best = entry.ravel() & (key.ravel() == maxima[seg, 1])
    r_all = xp.broadcast_to(cols, (kc, m)).ravel()
    r_best = _segment_max(xp.where(is_best, r_all, -1), seg, n_seg + 1, xp)[:n_seg]
    r_safe = xp.maximum(r_best, 0).astype(xp.int32)
    pos = xp.arange(n_seg) // (kmax * n_out)
    stats["key"] = xp.where(r_best >= 0, maxima[:n_seg, 1], -1.0)
    stats["j"] = r_safe.astype(dtype)
    stats["a"] = a[pos, r_safe]
    stats["num"] = num[pos, r_safe]
    stats["tol"] = tolerance[pos, r_safe]
    stats["code"] = code[pos, r_safe].astype(dtype)
    stats = {k: v.reshape(kc * kmax, n_out) for k, v in stats.items()}
    # Slots without an entry: f must not move (else the pattern is wrong), nor the rule.
    violated = zero & ~(xp.abs(num) <= tolerance)
    outside = zero & ~violated & ~(xp.abs(a) <= tolerance)
    zero_info = xp.stack(
        [
            xp.sum(violated),
            xp.argmax(xp.where(violated, xp.abs(num), -1.0).ravel()),
            xp.sum(outside),
            xp.argmax(xp.where(outside, xp.abs(a), -1.0).ravel()),
        ]
    )
    # Validation sums: the pattern's directional derivative, and the grouped validation rows.
    vj = vh[jj].astype(dtype)
    carry = dict(carry)
    carry["dir_num"] = carry["dir_num"] + xp.sum(xp.where(entry, num * vj, 0), axis=0)
    carry["dir_err"] = carry["dir_err"] + xp.sum(xp.where(entry, fd_error * xp.abs(vj), 0), 0)
    hit = chunk[:, None] == val_colors[None, :]
    has, where = xp.any(hit, axis=0), xp.argmax(hit, axis=0)
    carry["val_num"] = xp.where(has[:, None], num[where], carry["val_num"])
    carry["val_err"] = xp.where(has[:, None], fd_error[where], carry["val_err"])
    return stats, carry, zero_info


_slot_stats_jit = jax.jit(ft.partial(_slot_stats, xp=jnp), static_argnums=(8, 9))


# ----------------------------------------------------------------------------------
# Host orchestration.


class _Tables:
    """Host lookups of one colouring: members of each colour and the slot -> column table."""

    def __init__(self, pattern: Pattern, colors: np.ndarray, n_colors: int):
        n = pattern.n
        self.colors = colors.astype(np.int32)
        self.n_colors = n_colors
        sizes = np.bincount(colors, minlength=n_colors)
        self.kmax = int(max(1, sizes.max()))
        order = np.argsort(colors, kind="stable")
        starts = np.cumsum(sizes) - sizes
        self.rank = np.zeros(n, np.int32)
        self.rank[order] = np.arange(n) - starts[colors[order]]
        self.members = np.full((n_colors, self.kmax), -1, np.int64)
        self.members[colors, self.rank] = np.arange(n)
        self.rep = np.where(self.members[:, 0] >= 0, self.members[:, 0], 0).astype(np.int32)
        n_sets = pattern.set_ptr.size - 1
        self.setcol = np.full((n_sets, n_colors), -1, np.int32)
        set_ids = np.repeat(np.arange(n_sets), np.diff(pattern.set_ptr))
        self.setcol[set_ids, colors[pattern.set_cols]] = pattern.set_cols
        self.row_key = pattern.row_set.astype(np.int32)


def _dense(reason: str, **fields: Any) -> tuple[None, str, SparseSummary]:
    return None, reason, SparseSummary(used=False, reason=reason, **fields)


def _in_str(p: Problem, j: int) -> str:
    leaf, index, part = p.layout.locate(int(j))
    return f"{leaf.path}{list(index)}{f' ({part})' if part else ''}"


def _out_str(p: Problem, r: int) -> str:
    out, index, part = p.out_leaf(int(r))
    return f"{out.path}{list(index)}{f' ({part})' if part else ''}"


def _where(p: Problem, j: int, r: int) -> str:
    return f"d {_out_str(p, r)} / d {_in_str(p, j)}"


def _chunk_size(p: Problem, n_colors: int) -> int:
    if p.batch_size:
        return int(min(p.batch_size, n_colors))
    k = min(4 * p.ev.auto_batch_size(len(STENCIL)), SLOT_BUDGET // max(1, p.m), n_colors)
    return int(2 ** int(np.floor(np.log2(max(1, k)))))


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
    if p.kind == "vjp":
        why = transposable(p)
        if why is not None:
            return _dense(f"the VJP cannot be transposed ({why})")
    if pattern is None:
        pattern = problem_pattern(p)
    if isinstance(pattern, str):
        return _dense(f"no usable sparsity pattern: {pattern}")
    colors, n_colors = pattern.color_columns()
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
    if (pattern.set_ptr.size - 1) * n_colors > SETCOL_BUDGET:
        return _dense("the colour lookup table would be too large", **info)
    ev = p.ev
    P = stencil_points(ev.theta, p.h, ev.coord_dtype_codes, ev.real_dtypes)
    if np.any(P[:, 2] <= P[:, 1]) or np.any(P[:, 3] <= P[:, 0]):
        return _dense("a finite-difference step is too small to change its coordinate", **info)
    tab = _Tables(pattern, colors, n_colors)
    start_evals = ev.n_evaluations
    rng = np.random.default_rng([p.seed & 0xFFFFFFFF, 0x5BA45E])
    val_cols = np.sort(rng.choice(p.n, size=min(p.n, N_VALIDATION_COLUMNS), replace=False))
    vh = ev.random_directions(1, "sparse-validation")[0] * p.h
    u = rng.standard_normal(p.m)
    kc = _chunk_size(p, n_colors)
    chunks = [np.arange(s, s + kc) for s in range(0, n_colors, kc)]
    chunks = [np.where(c < n_colors, c, -1).astype(np.int32) for c in chunks]

    # Pass 1: compressed analytic columns, their per-leaf maxima (tolerances), J s_c . u.
    a_tables = (
        jnp.asarray(tab.setcol),
        jnp.asarray(tab.row_key),
        jnp.asarray(tab.rep),
        jnp.asarray(p.in_ids),
    )
    colors_dev = jnp.asarray(tab.colors)
    keep = n_colors * p.m <= KEEP_ANALYTIC
    analytic, leaf_max = [], np.zeros((p.n_in, p.m))
    cu, acu = np.zeros(n_colors), np.zeros(n_colors)

    def analytic_chunk(c: np.ndarray) -> tuple:
        return _compressed_analytic(
            p.kind,
            p.sel,
            p.layout,
            p.outs,
            p.diff_values,
            p.dynamic,
            colors_dev,
            jnp.asarray(c),
            a_tables,
            jnp.asarray(u),
        )

    for c in chunks:
        C, lm, cu_c, acu_c = analytic_chunk(c)
        lm, cu_c, acu_c = jax.device_get((lm, cu_c, acu_c))
        leaf_max = np.maximum(leaf_max, np.asarray(lm, np.float64))
        real = c >= 0
        cu[c[real]], acu[c[real]] = np.asarray(cu_c)[real], np.asarray(acu_c)[real]
        analytic.append(C if keep else None)
    if p.kind == "vjp":
        why = _vjp_problem(p, tab, u, cu, acu)
        if why is not None:
            return _dense(why, **info)

    # Pass 2: grouped stencils, compared slot by slot (numpy on the host when small).
    acc = BlockAccumulator(p)
    host = n_colors * p.m <= HOST_SLOTS
    with ev.context():
        dtype = np.dtype(ev.theta_dtype)
        xp = np if host else jnp
        tables = tuple(
            xp.asarray(t) for t in (tab.setcol, tab.row_key, tab.rep, p.in_ids, tab.rank)
        )
        consts = (
            ev.f0.astype(dtype), p.floor_in.astype(dtype), p.out_scale.astype(dtype),
            leaf_max.astype(dtype), p.out_ids.astype(np.int32),
            np.asarray([p.tol.rtol, p.tol.safety, p.user_atol], dtype), vh.astype(dtype),
            tab.colors[val_cols].astype(np.int32),
        )  # fmt: skip
        consts = tuple(xp.asarray(c) for c in consts)
        q = val_cols.size
        carry = {
            "dir_num": xp.zeros(p.m, dtype),
            "dir_err": xp.zeros(p.m, dtype),
            "val_num": xp.zeros((q, p.m), dtype),
            "val_err": xp.zeros((q, p.m), dtype),
        }
        P_cast = P.astype(dtype)
        theta_cast = ev.theta.astype(dtype)
        P_dev = jnp.asarray(P_cast)
        grid = (xp.asarray(P_cast), xp.asarray(theta_cast))
        pending, zeros = [], []
        for c, C in zip(chunks, analytic):
            if C is None:
                C = analytic_chunk(c)[0]
            values = _grouped_values(
                ev.spec, ev.theta_device, ev.dynamic, colors_dev, jnp.asarray(c), P_dev
            )
            if host:
                with np.errstate(all="ignore"):
                    stats, carry, zero_info = _slot_stats(
                        np.asarray(values), np.asarray(C), c, *grid, tables, consts, carry,
                        p.n_out, tab.kmax, np,
                    )  # fmt: skip
            else:
                stats, carry, zero_info = _slot_stats_jit(
                    values, C, jnp.asarray(c), *grid, tables, consts, carry, p.n_out, tab.kmax
                )
            pending.append((stats, c))
            zeros.append(zero_info)
            if len(pending) >= FLUSH_EVERY:
                _flush(acc, tab, pending)
        _flush(acc, tab, pending)
        carry, zeros = jax.device_get((carry, zeros))
    ev.n_evaluations += len(STENCIL) * n_colors

    def summary(used: bool, reason: str = "") -> SparseSummary:
        return SparseSummary(
            used=used, reason=reason, n_evaluations=ev.n_evaluations - start_evals,
            validated_columns=tuple(int(j) for j in val_cols), **info,
        )  # fmt: skip

    why = _zero_slots(p, tab, chunks, zeros) or _validate(
        p, pattern, leaf_max, val_cols, vh, carry, P, kc
    )
    if why is not None:
        return None, why, summary(False, why)
    what = "JVPs J s_c" if p.kind == "jvp" else "the transpose of the VJP, J s_c"
    source = (
        f"compressed columns from {what} for each colour group s_c (vmapped), "
        "entries recovered from the pattern; " + summary(True).describe()
    )
    return acc, source, summary(True)


def _flush(acc: BlockAccumulator, tab: _Tables, pending: list) -> None:
    """Moves finished chunks' statistics into the accumulator (one transfer)."""
    fetched = jax.device_get([s for s, _ in pending])
    for stats, (_, c) in zip(fetched, pending):
        members = np.where(c[:, None] >= 0, tab.members[np.maximum(c, 0)], -1).ravel()
        real = members >= 0
        t = {k: np.asarray(v, np.float64)[real] for k, v in stats.items()}
        acc._add(t, members[real], np.arange(acc.p.m))
    pending.clear()


def _zero_slots(p: Problem, tab: _Tables, chunks: list, zeros: list) -> str | None:
    """Why slots without an entry disqualify the pattern (f moved) or the plan (rule moved)."""
    for c, (n_viol, worst_viol, n_out, worst_out) in zip(chunks, zeros):
        m = p.m
        if n_viol > 0:
            color, r = c[int(worst_viol) // m], int(worst_viol) % m
            j = tab.members[color][tab.members[color] >= 0]
            return (
                f"the sparsity pattern is too sparse: output {_out_str(p, r)} "
                f"changes with the inputs of colour group {color} ({j.size} inputs) although the "
                f"pattern has no entry there ({int(n_viol)} such slots); dense check instead"
            )
        if n_out > 0:
            color, r = c[int(worst_out) // m], int(worst_out) % m
            return (
                f"the analytic derivative has entries outside f's structural pattern (output "
                f"{_out_str(p, r)}, colour group {color}); "
                "dense check instead, to name them"
            )
    return None


def _atol_rows(p: Problem, leaf_max: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Per-entry absolute tolerance of columns j (k,) over all outputs: (k, m)."""
    if p.user_atol >= 0:
        return np.full((j.size, p.m), p.user_atol)
    return p.floor_in[j][:, None] * p.out_scale[None, :] + p.tol.rtol * leaf_max[p.in_ids[j]]


def _dense_columns(p: Problem, cols: np.ndarray, P: np.ndarray, kc: int) -> np.ndarray:
    """Stencil values (k, 4, m) of single columns, through the grouped kernel (no new shape)."""
    ev = p.ev
    solo = np.full(p.n, -1, np.int32)
    solo[cols] = np.arange(cols.size)
    out = []
    with ev.context():
        P_dev = jnp.asarray(P.astype(ev.theta_dtype))
        for start in range(0, cols.size, kc):
            ids = np.arange(start, start + kc)
            ids = np.where(ids < cols.size, ids, -1).astype(np.int32)
            values = _grouped_values(
                ev.spec, ev.theta_device, ev.dynamic, jnp.asarray(solo), jnp.asarray(ids), P_dev
            )
            out.append(np.asarray(jax.device_get(values), np.float64)[ids >= 0])
    ev.n_evaluations += len(STENCIL) * cols.size
    return np.concatenate(out)


def _validate(p, pattern, leaf_max, val_cols, vh, carry, P, kc) -> str | None:
    """Random dense columns and one random direction against the grouped recovery."""
    ev, safety, rtol = p.ev, p.tol.safety, p.tol.rtol
    values = _dense_columns(p, val_cols, P, kc)
    with np.errstate(all="ignore"):
        dense = st.combine_host(values, ev.f0, P[val_cols], ev.theta[val_cols])
        atol = _atol_rows(p, leaf_max, val_cols)
        for i, j in enumerate(val_cols):
            d, err = dense.numeric[i], dense.fd_error[i]
            inside = _column_rows(pattern, int(j))
            g, gerr = (
                np.asarray(carry["val_num"][i], np.float64),
                np.asarray(carry["val_err"][i], np.float64),
            )
            out_bad = ~inside & ~(np.abs(d) <= safety * err + atol[i])
            in_bad = inside & ~(np.abs(g - d) <= safety * (err + gerr) + rtol * np.abs(d) + atol[i])
            if np.any(out_bad):
                r = int(np.argmax(out_bad))
                return (
                    f"the sparsity pattern is too sparse: the dense finite-difference column of "
                    f"{_in_str(p, j)} is nonzero at {_out_str(p, r)} "
                    f"({d[r]:.4g}), outside the pattern; dense check instead"
                )
            if np.any(in_bad):
                r = int(np.argmax(in_bad))
                return (
                    f"the grouped recovery of {_where(p, j, r)} ({g[r]:.4g}) disagrees with its dense "
                    f"finite difference ({d[r]:.4g}): the pattern misses entries; dense check instead"
                )
        ts = np.asarray(STENCIL, np.float64)
        along = ev.along(vh[None, :], ts)
        est = st.combine_host(along, ev.f0, ts[None, :], np.zeros(1))
        dn, derr = est.numeric[0], est.fd_error[0]
        pn, perr = (
            np.asarray(carry["dir_num"], np.float64),
            np.asarray(carry["dir_err"], np.float64),
        )
        weight = np.bincount(p.in_ids, weights=np.abs(vh), minlength=p.n_in)
        if p.user_atol >= 0:
            atol_dir = p.user_atol * np.abs(vh).sum()
        else:
            atol_dir = p.out_scale * float(np.sum(p.floor_in * np.abs(vh))) + rtol * (
                weight @ leaf_max
            )
        bad = ~(np.abs(dn - pn) <= safety * (derr + perr) + rtol * np.abs(dn) + atol_dir)
    if np.any(bad):
        r = int(np.argmax(bad))
        return (
            f"the sparsity pattern misses entries: along a random direction, the finite difference of "
            f"{_out_str(p, r)} ({dn[r]:.4g}) differs from the pattern's entries times the "
            f"direction ({pn[r]:.4g}); dense check instead"
        )
    return None


def _column_rows(pattern: Pattern, j: int) -> np.ndarray:
    """(m,) bool: the rows whose pattern holds column j."""
    positions = np.flatnonzero(pattern.set_cols == j)
    sets = np.searchsorted(pattern.set_ptr, positions, side="right") - 1
    return np.isin(pattern.row_set, sets)


def _vjp_problem(
    p: Problem, tab: _Tables, u: np.ndarray, cu: np.ndarray, acu: np.ndarray
) -> str | None:
    """Why the transposed-VJP columns cannot be trusted (as `_jacobian_full._vjp_linear_enough`)."""
    U = jnp.asarray(np.stack([u, np.zeros_like(u)]))
    w = np.asarray(
        jax.device_get(jk.vjp_products(p.sel, p.layout, p.outs, p.diff_values, p.dynamic, U)),
        np.float64,
    )
    if not np.all(w[1] == 0):
        return "the VJP at a zero cotangent is not zero (the bwd rule has a term that does not scale with the cotangent)"
    rhs = np.bincount(
        tab.colors, weights=np.where(np.isfinite(w[0]), w[0], 0), minlength=tab.n_colors
    )
    eps = float(np.finfo(p.tol_dtype).eps)
    scale = acu + np.sqrt(np.mean(np.square(acu)))
    if not np.all(np.abs(cu - rhs) <= np.sqrt(eps) * scale):
        return "the VJP and its transpose disagree on a random cotangent (the VJP is not linear in its cotangent)"
    return None


def sparse_note(summary: SparseSummary) -> str:
    """One line for the report: the sparse plan's costs, or why the dense one ran."""
    return summary.describe()
