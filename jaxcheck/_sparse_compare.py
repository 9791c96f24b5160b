"""Traced (and host): the comparison of one chunk of (colour, output) slots with finite
differences, written once against an array module `xp`, as `_jacobian_kernels._tile_stats`
is: jnp inside the compiled `_sparse_kernels.ComparePass` (large plans), numpy on the
host for plans small enough that compiling the comparison would cost more than running
it (`_sparse.HOST_SLOTS`).

Slot (c, r) of a chunk is the entry J[r, j*] of the column j* = j*(c, r) of colour c in
row r's set (`entries`; -1: no entry). Its stencil, analytic value and tolerance are the
dense check's (`_stencil.combine`/`assess`, the same absolute tolerance rule); the
results are folded into a `carry` (`empty_carry`) of a few small arrays:

  sums (blocks, SUM_NAMES), maxd (blocks,): per (input leaf, output leaf) block, in the
    order of `_jacobian_kernels.SUM_NAMES` (every colour lies in one input leaf, so a
    colour's per-output-leaf sums belong to one block);
  cand: the worst `n_candidates` entries of each block (key, column, row, a, num, tol, code);
  zero: counts and the largest of the slots without an entry where f moved (`violated`)
    or only the analytic side did (`outside`);
  dir_num, dir_err (m,): the pattern's entries times a random direction, and their error;
  val_num, val_err (q, m): the grouped recovery of the validation columns' colours.
"""

import functools as ft
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _jacobian_kernels as jk
from . import _stencil as st

SEGMENTS = 64  # segments per (colour, output leaf) row whose maxima compete for candidates


def entries(tables: dict, chunk: Any, xp: Any = jnp) -> tuple[Any, Any, Any]:
    """(kc, m) slot -> column j* (-1: no entry), the column each slot steps (j*, else a
    member of the colour), and whether the slot holds an entry."""
    row_key = tables["row_key"]
    safe = xp.maximum(chunk, 0)
    jstar = tables["setcol"][xp.maximum(row_key, 0)[None, :], safe[:, None]]
    valid = (row_key[None, :] >= 0) & (chunk[:, None] >= 0)
    jstar = xp.where(valid, jstar, -1)
    stepped = xp.where(jstar >= 0, jstar, tables["rep"][safe][:, None])
    return jstar, stepped, jstar >= 0


def fold_rows(op: Any, x: Any, xp: Any) -> Any:
    """`op` (add, maximum) over the rows of x (kc, m): (m,). Traced, as a chain of kc
    elementwise ops: XLA:CPU reduces a non-minor axis an order of magnitude slower."""
    if xp is np:
        return op.reduce(x, axis=0)
    return ft.reduce(op, [x[i] for i in range(x.shape[0])])


def column_stats(C: Any, leaf: Any, u: Any, n_in: int, xp: Any = jnp) -> tuple[Any, Any, Any]:
    """Reductions of compressed analytic columns C (kc, m) of colours in input leaves `leaf`
    (kc,): per-(input leaf, output) max |C| (n_in, m), the tolerances' scale; C u and |C| |u|
    (kc,), to check transposed-VJP columns against the VJP. Slots without an entry hold
    zeros for a rule that follows the pattern (one that does not fails the empty-slot
    check), so no mask is needed."""
    absC = xp.where(xp.isfinite(C), xp.abs(C), 0).astype(u.dtype)
    best = [fold_rows(xp.maximum, xp.where((leaf == k)[:, None], absC, 0), xp) for k in range(n_in)]
    best = xp.stack(best)
    Cf = xp.where(xp.isfinite(C), C, 0).astype(u.dtype)
    return best, Cf @ u, absC @ xp.abs(u)


class _SlotGrid:
    """Stencil points of a (colour, output) slot grid, shaped for `_stencil.combine`.

    `combine` reads `points[:, k, None]` and `x0[:, None]` (one coordinate per row, the
    same for every output); here every slot (c, r) steps its own column j*(c, r), so the
    view returns the (kc, m) grid for offset k instead.
    """

    def __init__(self, grid: Any):
        self.grid = grid  # (4, kc, m) points (offset-major: contiguous grids) or (kc, m)

    def __getitem__(self, index: tuple) -> Any:
        if self.grid.ndim == 3:
            return self.grid[index[1]]
        return self.grid


jax.tree_util.register_pytree_node(
    _SlotGrid, lambda g: ((g.grid,), None), lambda _, c: _SlotGrid(*c)
)


def empty_carry(s: Any, consts: dict, xp: Any = jnp) -> dict:
    """The carry before the first chunk (see the module docstring)."""
    dtype, m = consts["f0"].dtype, consts["f0"].shape[0]
    nb, k = len(s.layout.diff) * len(s.outs), s.n_candidates
    q = consts["val_colors"].shape[0]

    def scalar(value: float, like: Any = dtype) -> Any:
        return xp.full((), value, like)

    return {
        "sums": xp.zeros((nb, len(jk.SUM_NAMES)), dtype),
        "maxd": xp.zeros(nb, dtype),
        "cand": {
            "key": xp.full((nb, k), -1.0, dtype),
            **{name: xp.zeros((nb, k), dtype) for name in ("a", "num", "tol", "code")},
            **{name: xp.zeros((nb, k), xp.int32) for name in ("col", "row")},
        },
        "zero": {
            name: {
                "count": scalar(0.0),
                "size": scalar(-1.0),
                "color": scalar(-1, xp.int32),
                "row": scalar(-1, xp.int32),
            }
            for name in ("violated", "outside")
        },
        "dir_num": xp.zeros(m, dtype),
        "dir_err": xp.zeros(m, dtype),
        "val_num": xp.zeros((q, m), dtype),
        "val_err": xp.zeros((q, m), dtype),
    }


def compare_chunk(
    s: Any,
    values: Any,
    analytic: Any,
    tables: dict,
    consts: dict,
    chunk: Any,
    carry: dict,
    xp: Any = jnp,
) -> dict:
    """Compares every slot of one chunk of colours and folds the results into `carry`.

    Args:
      s: The plan's `_sparse_kernels.Settings`.
      values: (kc, 4, m) f with each colour's inputs at their stencil points; or
        (S, kc, 4, m) at S steps, where each slot keeps the estimate with the smallest
        proven error (`_stencil.best_of`; noise-bound slots are then not counted).
      analytic: (kc, m) compressed analytic columns J s_c.
      tables, consts: The plan's lookups and constants (`consts["columns"]` (4 S + 4, n):
        each input's stencil points at each step, base value, rounding floor, validation
        direction and scale; `consts["noise_floor"]` (m,): each output's least rounding
        noise).
      chunk: (kc,) colour ids (-1: padding).
      carry: From `empty_carry` or the previous chunk.
      xp: `jnp` (traced) or `np` (host).
    """
    combine, assess = (st.combine, st.assess) if xp is jnp else (st.combine_host, st.assess_host)
    dtype = values.dtype
    jstar, stepped, entry = entries(tables, chunk, xp)
    real = chunk >= 0
    rtol, safety, user_atol = consts["scalars"][0], consts["scalars"][1], consts["scalars"][2]
    # Per-column data of each slot's column (rows of `columns`: the 4 stencil points, x0,
    # the rounding floor, the validation direction, the scale), each a (kc, m) grid.
    columns = consts["columns"]
    stacked = values if values.ndim == 4 else values[None]
    n_steps = stacked.shape[0]
    x0, floor, vh, scale = (columns[4 * n_steps + i][stepped] for i in range(4))
    noise_floor = consts["noise_floor"]
    grids = [columns[4 * k : 4 * k + 4][:, stepped] for k in range(n_steps)]  # (4, kc, m) each
    each = [
        combine(
            stacked[k], consts["f0"], _SlotGrid(grids[k]), _SlotGrid(x0), noise_floor=noise_floor
        )
        for k in range(n_steps)
    ]
    est = each[0] if n_steps == 1 else (st.best_of if xp is jnp else st.best_of_host)(each)[0]
    a = analytic.astype(dtype)
    leaf = tables["leaf_of_color"][xp.maximum(chunk, 0)]  # (kc,): every colour in one leaf
    atol = floor * consts["out_scale"][None, :] + rtol * consts["leaf_max"][leaf]
    tiny = float(jnp.finfo(analytic.dtype).tiny)  # no tolerance below it (issue 10 item 6)
    atol = xp.where(user_atol >= 0, user_atol, xp.maximum(atol, tiny)).astype(dtype)
    noisy = xp.zeros(entry.shape, bool)
    if n_steps == 1:
        noise_bound = st.noise_bound if xp is jnp else st.noise_bound_host
        eps = float(jnp.finfo(dtype).eps)
        d1 = grids[0][2] - grids[0][1]
        noisy = entry & noise_bound(est, d1, scale, eps, rtol, atol, safety, a)
    est, asm = _assessed(est, assess(est, a, rtol, atol, safety), xp)
    num, code, tolerance, fd_error = est.numeric, asm.code, asm.tolerance, est.fd_error
    finite = entry & xp.isfinite(a) & xp.isfinite(num)
    d = xp.where(finite, a - num, 0)
    failing = (code == st.FAIL) | (code == st.ANALYTIC_NONFINITE)
    mass = xp.where(entry & xp.isfinite(num), xp.abs(num), 0)
    unresolved = entry & ~asm.resolved & ~failing
    sums = (d * d, xp.where(finite, a * a, 0), xp.where(finite, num * num, 0), mass)
    sums += (xp.where(unresolved, mass, 0),)
    key = xp.where(entry, jk.element_key(code, xp.abs(a - num), tolerance, xp), -1.0)
    carry = dict(carry)
    carry["sums"], carry["maxd"] = _block_sums(
        s, carry, sums, code, entry, unresolved, noisy, d, leaf, real, xp
    )
    fields = {"key": key, "a": a, "num": num, "tol": tolerance, "code": code.astype(dtype)}
    carry["cand"] = _merge_candidates(s, carry["cand"], fields, jstar, leaf, real, xp)
    if s.has_empty:  # static: whether the plan has slots without an entry at all
        empty = ~entry & real[:, None]
        carry["zero"] = _empty_slots(carry["zero"], empty, num, a, tolerance, chunk, xp)
    # Validation sums: the pattern's directional derivative, and the validation colours' rows.
    carry["dir_num"] = carry["dir_num"] + fold_rows(xp.add, xp.where(entry, num * vh, 0), xp)
    dir_err = xp.where(entry, fd_error * xp.abs(vh), 0)
    carry["dir_err"] = carry["dir_err"] + fold_rows(xp.add, dir_err, xp)
    hit = chunk[:, None] == consts["val_colors"][None, :]  # (kc, q)
    has, where = xp.any(hit, axis=0), xp.argmax(hit, axis=0)
    carry["val_num"] = xp.where(has[:, None], num[where], carry["val_num"])
    carry["val_err"] = xp.where(has[:, None], fd_error[where], carry["val_err"])
    return carry


def _assessed(est: Any, asm: Any, xp: Any) -> tuple[Any, Any]:
    """The estimates and assessment the comparison reads (numeric, fd_error; code,
    tolerance, resolved), computed once. Traced, they are packed into one array behind a
    barrier: left apart, each becomes its own fusion that repeats the whole stencil
    arithmetic (several times the work), and the slopes are never written out."""
    if xp is np:
        return est, asm
    dtype = asm.tolerance.dtype
    parts = (est.numeric, est.fd_error, asm.tolerance, asm.code, asm.resolved)
    packed = jax.lax.optimization_barrier(jnp.stack([x.astype(dtype) for x in parts]))
    est = est._replace(numeric=packed[0], fd_error=packed[1])
    asm = asm._replace(
        tolerance=packed[2], code=packed[3].astype(asm.code.dtype), resolved=packed[4] > 0
    )
    return est, asm


def _row_reductions(parts: list, xp: Any) -> list:
    """Each (kind, x (kc, w)) reduced over its rows' w entries: "sum", "count" (Trues) or
    "max". Traced, the reductions are chained one after another: left side by side, XLA:CPU
    fuses them into one multi-output reduction that runs several times slower."""
    out: list = []
    for kind, x in parts:
        if xp is np:
            if kind == "count":
                out.append(np.count_nonzero(x, axis=1))
            else:
                out.append(np.sum(x, axis=1) if kind == "sum" else np.max(x, axis=1))
            continue
        if out:
            x, _ = jax.lax.optimization_barrier((x, out[-1]))
        if kind == "max":
            out.append(jnp.max(x, axis=1))
        else:
            out.append(jnp.sum(x, axis=1, dtype=None if kind == "sum" else jnp.int32))
    return out


def _block_sums(s, carry, sums, code, entry, unresolved, noisy, d, leaf, real, xp) -> tuple:
    """`carry`'s block sums (in SUM_NAMES order) and largest |a - n| with this chunk added:
    per (colour, output leaf) first, then each colour onto its input leaf."""
    dtype = d.dtype
    n_in, n_out = len(s.layout.diff), len(s.outs)
    onehot = ((leaf[:, None] == xp.arange(n_in)[None, :]) & real[:, None]).astype(dtype)
    codes = (st.FAIL, st.NONSMOOTH, st.FAIL_NONSMOOTH, st.REF_NONFINITE, st.ANALYTIC_NONFINITE)
    out_sums, out_maxd = [], []
    for lo, hi in s.out_slices:
        c, e = code[:, lo:hi], entry[:, lo:hi]
        parts = [("sum", x[:, lo:hi]) for x in sums]  # ssd, ssa, ssn, mass, mass_unres
        parts += [("count", e), ("count", unresolved[:, lo:hi]), ("count", noisy[:, lo:hi])]
        parts += [("count", (c == k) & e) for k in codes]
        parts += [("max", xp.abs(d[:, lo:hi]))]
        reduced = _row_reductions(parts, xp)
        ssd, ssa, ssn, mass, mass_unres, n, n_unres, n_noisy, *n_code, big = reduced
        fail, nonsmooth, kink_out, ref_nf, analytic_nf = n_code
        part = (ssd, ssa, ssn, n, fail + analytic_nf, analytic_nf, ref_nf, kink_out)
        # n_prec: 0 (the float64 second look is the dense plan's: `_sparse.run_sparse`)
        part += (nonsmooth + kink_out, n_unres, mass, mass_unres, xp.zeros_like(n), n_noisy)
        part = xp.stack([x.astype(dtype) for x in part], axis=1)  # (kc, SUM_NAMES)
        out_sums.append(onehot.T @ part)  # (n_in, SUM_NAMES)
        out_maxd.append(xp.max(xp.where(onehot > 0, big[:, None], 0), axis=0))  # (n_in,)
    sums = carry["sums"] + xp.stack(out_sums, axis=1).reshape(n_in * n_out, -1)
    return sums, xp.maximum(carry["maxd"], xp.stack(out_maxd, axis=1).reshape(-1))


def _top(keys: Any, k: int, xp: Any) -> Any:
    """Indices of the k largest keys (ties: the first)."""
    if xp is jnp:
        return jax.lax.top_k(keys, k)[1]
    return np.argsort(-keys, kind="stable")[:k]


def _merge_candidates(s, cand, fields, jstar, leaf, real, xp) -> dict:
    """The worst `n_candidates` entries of each block so far, from the carried ones and this
    chunk's. The chunk's rows (colour, output leaf) are cut into SEGMENTS segments whose
    maxima (one cheap reduction) compete with the carried keys; only the winning segments
    are searched for their entry, so the whole chunk is read once."""
    kc, n_out, k = jstar.shape[0], len(s.outs), s.n_candidates
    out: dict[str, list] = {name: [None] * cand["key"].shape[0] for name in cand}
    for o, (lo, hi) in enumerate(s.out_slices):
        width = -(-(hi - lo) // SEGMENTS)
        pad = SEGMENTS * width - (hi - lo)
        key = fields["key"][:, lo:hi]
        if pad:  # padding (-2) never wins: a segment of padding only has no candidate
            key = xp.pad(key, ((0, 0), (0, pad)), constant_values=-2.0)
        key = key.reshape(kc, SEGMENTS, width)
        best = xp.where(real[:, None], xp.max(key, axis=2), -2.0).ravel()  # (kc * SEGMENTS,)
        for i in range(len(s.layout.diff)):
            b = i * n_out + o
            mine = xp.repeat(leaf == i, SEGMENTS)
            keys = xp.concatenate([cand["key"][b], xp.where(mine, best, -2.0)])
            top = _top(keys, k, xp)  # (k,) positions: < k carried, else k + segment
            segment = xp.maximum(top - k, 0)
            c, seg = segment // SEGMENTS, segment % SEGMENTS
            at = xp.argmax(key[c, seg], axis=1)  # (k,) position inside the segment
            r = xp.minimum(lo + seg * width + at, hi - 1)
            found = {name: x[c, r].astype(cand[name].dtype) for name, x in fields.items()}
            found["col"] = jstar[c, r].astype(cand["col"].dtype)
            found["row"] = r.astype(cand["row"].dtype)
            carried = top < k
            for name in cand:
                value = xp.where(carried, cand[name][b][xp.minimum(top, k - 1)], found[name])
                out[name][b] = value
            out["key"][b] = xp.where(keys[top] > -1.5, out["key"][b], -1.0)
    return {name: xp.stack(v) for name, v in out.items()}


def _empty_slots(zero, empty, num, a, tolerance, chunk, xp) -> dict:
    """Counts and the largest of the slots without an entry where f moved (`violated`: the
    pattern is wrong) or where only the analytic side did (`outside`: the rule is)."""
    if xp is np and not empty.any():
        return zero
    violated = empty & ~(xp.abs(num) <= tolerance)
    outside = empty & ~violated & ~(xp.abs(a) <= tolerance)
    out = {}
    for name, mask, size in (("violated", violated, xp.abs(num)), ("outside", outside, xp.abs(a))):
        sized = xp.where(mask, xp.where(xp.isfinite(size), size, xp.inf), -1.0).ravel()
        flat = xp.argmax(sized)
        c, r = flat // empty.shape[1], flat % empty.shape[1]
        prev = zero[name]
        better = sized[flat] > prev["size"]
        out[name] = {
            "count": prev["count"] + xp.sum(mask).astype(prev["count"].dtype),
            "size": xp.maximum(prev["size"], sized[flat]).astype(prev["size"].dtype),
            "color": xp.where(better, chunk[c], prev["color"]).astype(xp.int32),
            "row": xp.where(better, r, prev["row"]).astype(xp.int32),
        }
    return out
