"""Host-side orchestration of full Jacobian checks: every entry, tile by tile.

The Jacobian (n real inputs x m real outputs) is never held whole. Finite differences
produce it by columns (4 evaluations per input coordinate, all outputs at once), so the
comparison streams over tiles of k input coordinates:

  jvp:  analytic columns J e_i from vmapped JVPs (`jvp_columns`).
  vjp:  analytic columns from the transpose of the VJP (`vjp_columns`), used only once
        verified against the VJP itself: VJP rows e_j^T J (computed anyway, in a first
        pass, for the per-row tolerances) must agree with the columns on random vectors
        (Freivalds), and the VJP at a zero cotangent must be zero (no affine term). A
        bwd rule that is not linear in its cotangent fails that and falls back to the
        rows plan: VJP rows in chunks of r outputs, re-running the finite differences
        for every row chunk (slower, exact).

Each tile is compared on device (`tile_stats`) and reduced to per-(row, output leaf)
statistics before it comes back to the host, where `BlockAccumulator` aggregates them
per (input leaf, output leaf) block.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _jacobian_kernels as jk
from . import _precision
from ._flatten import ArgLayout
from ._jacobian_result import BlockReport, JacobianElement
from ._jacobian_tiles import Once, Retake, Tiles, columns_of, host_stats
from ._problem import Problem
from ._summary import _KIND, MAX_ELEMENTS, status_from_counts

FLUSH_EVERY = 16  # tiles kept on device before their statistics are fetched
HOST_ENTRIES = 2**20  # Jacobians up to this many entries are compared with numpy on the host


def _padded_chunks(index: np.ndarray, size: int):
    """(padded chunk of exactly `size` entries, number of real entries) over `index`."""
    for start in range(0, index.size, size):
        chunk = index[start : start + size]
        valid = chunk.size
        if valid < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], size - valid)])
        yield chunk, valid


class BlockAccumulator:
    """Per-(input leaf, output leaf) statistics, merged tile by tile on the host."""

    SUMS = jk.SUM_NAMES
    CAND = ("key", "i", "j", "a", "num", "tol", "code", "block")

    def __init__(self, p: Problem):
        self.p = p
        shape = (p.n_in, p.n_out)
        self.s = {name: np.zeros(shape) for name in self.SUMS}
        self.max = {name: np.zeros(shape) for name in jk.MAX_NAMES}
        self.cand = {name: np.zeros(0) for name in self.CAND}
        self.pending: list = []

    def push(
        self,
        stats: dict,
        coords: np.ndarray,
        valid: int,
        col_map: np.ndarray,
        retake: Callable[[dict], dict | None] | None = None,
    ) -> None:
        """Queues a tile's statistics; `retake(stats)` may replace those of a tile in
        doubt (`Retake`)."""
        self.pending.append((stats, coords[:valid], col_map, retake))
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        fetched = jax.device_get([(stats, col_map) for stats, _, col_map, _ in pending])
        for (stats, col_map), (_, coords, _, retake) in zip(fetched, pending):
            stats = host_stats(stats, coords.size)
            if retake is not None and np.any((stats["n_failed"] + stats["n_noisy"]) > 0):
                stats = retake(stats) or stats
            self._add(stats, coords, np.asarray(col_map))

    def _add(self, t: dict, coords: np.ndarray, col_map: np.ndarray) -> None:
        rows = self.p.in_ids[coords][:, None] * np.ones((1, self.p.n_out), np.int64)
        cols = np.broadcast_to(np.arange(self.p.n_out), rows.shape)
        for name in self.SUMS:
            if name in t:  # (a plan without the float64 second look has no "n_prec")
                np.add.at(self.s[name], (rows, cols), t[name])
        for name in jk.MAX_NAMES:
            if name in t:
                np.maximum.at(self.max[name], (rows, cols), t[name])
        ok = t["key"] >= 0
        new = {
            "key": t["key"][ok],
            "i": np.broadcast_to(coords[:, None], ok.shape)[ok].astype(np.float64),
            "j": col_map[t["j"].astype(np.int64)][ok].astype(np.float64),
            "a": t["a"][ok],
            "num": t["num"][ok],
            "tol": t["tol"][ok],
            "code": t["code"][ok],
            "block": (rows * self.p.n_out + cols)[ok].astype(np.float64),
        }
        merged = {k: np.concatenate([self.cand[k], new[k]]) for k in self.CAND}
        order = np.lexsort((-merged["key"], merged["block"]))
        block = merged["block"][order]
        first = np.searchsorted(block, block, side="left")
        keep = order[(np.arange(order.size) - first) < MAX_ELEMENTS]
        self.cand = {k: v[keep] for k, v in merged.items()}

    def checked(self, i: int, o: int) -> bool:
        return self.s["n"][i, o] > 0

    def elements(self, i: int, o: int) -> list[JacobianElement]:
        """The block's worst entries, worst first."""
        sel = self.cand["block"] == i * self.p.n_out + o
        idx = np.flatnonzero(sel)
        idx = idx[np.argsort(-self.cand["key"][idx], kind="stable")]
        out = []
        for k in idx:
            _, in_index, in_part = self.p.layout.locate(int(self.cand["i"][k]))
            _, out_index, out_part = self.p.out_leaf(int(self.cand["j"][k]))
            code = int(self.cand["code"][k])
            out.append(
                JacobianElement(
                    input_index=in_index,
                    input_part=in_part,
                    output_index=out_index,
                    output_part=out_part,
                    analytic=float(self.cand["a"][k]),
                    numeric=float(self.cand["num"][k]),
                    tolerance=float(self.cand["tol"][k]),
                    kind=_KIND.get(code, "within-tolerance"),
                )
            )
        return out

    def verdict(self, i: int, o: int) -> tuple[str, str]:
        s = {k: v[i, o] for k, v in self.s.items()}
        share = s["mass_unres"] / s["mass"] if s["mass"] > 0 else s["n_unres"] / max(1.0, s["n"])
        if s["ssa"] == 0:
            share = 0.0  # an exactly-zero analytic block (f does not depend on the leaf) within noise of zero
        return status_from_counts(
            n=int(s["n"]),
            n_failed=int(s["n_failed"]),
            n_analytic_nonfinite=int(s["n_anf"]),
            n_nonfinite=int(s["n_ref_nf"]),
            n_kink_outside=int(s["n_kink_out"]),
            n_nonsmooth=int(s["n_nonsmooth"]),
            n_unresolved=int(s["n_unres"]),
            unresolved_share=float(share),
            what="entries",
        )

    def relative_error(self, i: Any = slice(None), o: Any = slice(None)) -> float:
        ssd, ssa, ssn = (float(np.sum(self.s[k][i, o])) for k in ("ssd", "ssa", "ssn"))
        denom = np.sqrt(ssa) + np.sqrt(ssn)
        return float(np.sqrt(ssd) / denom) if denom > 0 else 0.0

    def report(self, i: int, o: int) -> BlockReport:
        """The full-mode report of block (input leaf i, output leaf o)."""
        status, reason = self.verdict(i, o)
        elements = self.elements(i, o)
        if status == "passed":
            shown = [e for e in elements if e.kind != "within-tolerance"]
        else:
            shown = elements
        return make_block(
            self.p, i, o,
            status=status,
            reason=reason,
            relative_error=self.relative_error(i, o),
            max_abs_error=float(self.max["maxd"][i, o]),
            worst=elements[0] if elements else None,
            n_checked=int(self.s["n"][i, o]),
            n_failed=int(self.s["n_failed"][i, o]),
            n_nonsmooth=int(self.s["n_nonsmooth"][i, o]),
            n_nonfinite=int(self.s["n_ref_nf"][i, o]),
            n_unresolved=int(self.s["n_unres"][i, o]),
            elements=tuple(shown),
        )  # fmt: skip


def make_block(p: Problem, i: int, o: int, **fields: Any) -> BlockReport:
    leaf, out = p.layout.diff[i], p.outs[o]
    return BlockReport(
        path=f"{leaf.path} -> {out.path}",
        input_path=leaf.path,
        output_path=out.path,
        input_shape=leaf.shape,
        input_dtype=str(leaf.dtype),
        output_shape=out.shape,
        output_dtype=str(out.dtype),
        n_elements=int(leaf.size * out.size),
        **fields,
    )


# ----------------------------------------------------------------------------------
# Streaming over tiles.


def _on_host(entries: int) -> bool:
    """Small comparisons run with numpy on the host: instant where XLA would compile for seconds."""
    return entries <= HOST_ENTRIES


def check_columns(
    p: Problem,
    coords: np.ndarray,
    acc: BlockAccumulator,
    kernel: Callable,
    leaf_max: Any,
    freivalds: np.ndarray | None = None,
) -> np.ndarray | None:
    """Compares the columns `coords` of J (analytic from `kernel`) with finite differences, tile by tile.

    Returns:
      With `freivalds` (n, q): J @ freivalds accumulated over the tiles, (m, q) float64; else None.
    """
    k = p.tile_size(p.m, len(coords))
    host = _on_host(len(coords) * p.m)
    jv = None if freivalds is None else _Accumulate(host, (p.m, freivalds.shape[1]))
    col_map = np.arange(p.m)
    tiles = Tiles(p, host, leaf_max)
    for c, valid in _padded_chunks(np.asarray(coords, np.int64), k):
        values, points = p.ev.stencil(c, p.h[c], batch_size=k)
        analytic = p.call_analytic(kernel, c)
        if jv is not None:
            jv.add_columns_times(
                analytic, np.where(np.arange(k)[:, None] < valid, freivalds[c], 0.0)
            )
        look = Retake(tiles, c, analytic, lambda c=c: p.call_analytic64(kernel, c))
        acc.push(tiles.stats(values, points, c, analytic), c, valid, col_map, look)
    acc.flush()
    return None if jv is None else jv.result()


class _Accumulate:
    """A float64 accumulator (host numpy for small problems, else on device with x64)."""

    def __init__(self, host: bool, shape: tuple[int, ...]):
        self.host = host
        if self.host:
            self.value = np.zeros(shape)
        else:
            with jax.enable_x64(True):
                self.value = jnp.zeros(shape, jnp.float64)

    def add_columns_times(self, cols: jax.Array, V: np.ndarray) -> None:
        if self.host:
            cols = np.asarray(cols, np.float64)
            self.value += np.where(np.isfinite(cols), cols, 0).T @ V
        else:
            with jax.enable_x64(True):
                self.value = jk.columns_times(self.value, cols, jnp.asarray(V))

    def add_leaf_max(self, cols: jax.Array, ids: np.ndarray, n_leaves: int) -> None:
        if self.host:
            a = np.abs(np.asarray(cols, np.float64))
            a = np.where(np.isfinite(a), a, 0)
            ok = ids >= 0
            np.maximum.at(self.value, ids[ok], a[ok])
        else:
            with jax.enable_x64(True):
                self.value = jk.columns_leaf_max(
                    self.value, cols, jnp.asarray(ids, jnp.int32), n_leaves
                )

    def result(self) -> np.ndarray:
        return np.asarray(jax.device_get(self.value), np.float64)


def columns_leaf_max(p: Problem, coords: np.ndarray, kernel: Callable) -> np.ndarray:
    """Max |J[j, i]| over each input leaf's coordinates among `coords` (L_in, m), from analytic columns."""
    k = p.tile_size(p.m, len(coords))
    acc = _Accumulate(_on_host(len(coords) * p.m), (p.n_in, p.m))
    for c, valid in _padded_chunks(np.asarray(coords, np.int64), k):
        acc.add_leaf_max(
            p.call_analytic(kernel, c), np.where(np.arange(k) < valid, p.in_ids[c], -1), p.n_in
        )
    return jk.complex_row_max(p.outs, acc.result())


def _rows_summary(J: Any, V: Any, layout: ArgLayout, xp: Any = jnp) -> tuple:
    """For rows J (r, n): per-leaf max |J| (L_in, r), J V and |J| |V| (r, q), non-finite entries as 0."""
    ok = xp.isfinite(J)
    Jc = xp.where(ok, J, 0).astype(V.dtype)
    absJ = xp.abs(Jc)
    leaf_max = xp.stack(
        [xp.max(absJ[:, l.offset : l.offset + l.size], axis=1, initial=0.0) for l in layout.diff],
        axis=0,
    )
    return leaf_max, Jc @ V, absJ @ xp.abs(V)


_rows_summary_jit = jax.jit(_rows_summary, static_argnums=(2,))


def _leaf_max_of_rows(p: Problem, host: bool, J: jax.Array) -> Any:
    """Per-leaf max |J| (L_in, r) of rows J (r, n)."""
    if host:
        return _rows_summary(np.asarray(J, np.float64), np.zeros((p.n, 1)), p.layout, np)[0]
    with jax.enable_x64(True):
        return _rows_summary_jit(J, jnp.zeros((p.n, 1)), p.layout)[0]


def rows_prepass(p: Problem, V: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of J from VJPs, r at a time: per-leaf row maxima (L_in, m), J V and |J| |V| (m, q)."""
    r = p.row_size()
    leaf_max = np.zeros((p.n_in, p.m))
    jv = np.zeros((p.m, V.shape[1]))
    ajv = np.zeros((p.m, V.shape[1]))
    pending = []
    host = _on_host(p.n * p.m)
    for rows, valid in _padded_chunks(np.arange(p.m), r):
        J = p.call_analytic(jk.vjp_rows, rows)
        if host:
            s = _rows_summary(np.asarray(J, np.float64), V, p.layout, np)
        else:
            with jax.enable_x64(True):
                s = _rows_summary_jit(J, jnp.asarray(V, jnp.float64), p.layout)
        pending.append((rows[:valid], s))
    for rows, (lm, a, b) in jax.device_get(pending):
        n = rows.size
        leaf_max[:, rows] = np.asarray(lm, np.float64)[:, :n]
        jv[rows], ajv[rows] = np.asarray(a)[:n], np.asarray(b)[:n]
    return jk.complex_row_max(p.outs, leaf_max), jv, ajv


def check_rows(p: Problem, coords: np.ndarray, rows_all: np.ndarray, acc: BlockAccumulator) -> None:
    """Rows plan: VJP rows in chunks of r outputs; finite differences re-run for each chunk."""
    r = min(p.row_size(), rows_all.size)
    k = p.tile_size(r, len(coords))
    host = _on_host(len(coords) * rows_all.size)
    # A complex output's real and imaginary rows may fall in different chunks: their shared
    # maxima (`_jacobian_kernels.complex_row_max`) come from a pass over every row first.
    paired = None
    if any(o.is_complex for o in p.outs):
        paired = rows_prepass(p, np.zeros((p.n, 1)))[0]
    for rows, valid_rows in _padded_chunks(np.asarray(rows_all, np.int64), r):
        J = p.call_analytic(jk.vjp_rows, rows)  # (r, n)
        rows64 = Once(lambda rows=rows: p.call_analytic64(jk.vjp_rows, rows))
        leaf_max = _leaf_max_of_rows(p, host, J) if paired is None else paired[:, rows]
        tiles = Tiles(p, host, leaf_max, rows, valid_rows)  # per-leaf maxima (L_in, r)
        for c, valid in _padded_chunks(np.asarray(coords, np.int64), k):
            values, points = p.ev.stencil(c, p.h[c], batch_size=k)
            analytic = _take_columns(J, jnp.asarray(c, jnp.int32))
            look = Retake(tiles, c, analytic, lambda c=c, rows64=rows64: columns_of(rows64(), c))
            acc.push(tiles.stats(values, points, c, analytic), c, valid, rows, look)
    acc.flush()


@jax.jit
def _take_columns(J: jax.Array, c: jax.Array) -> jax.Array:
    return jnp.take(J, c, axis=1).T


def _vjp_linear_enough(
    p: Problem, jv_rows: np.ndarray, ajv: np.ndarray, jv_cols: np.ndarray, V: np.ndarray
) -> str | None:
    """Why the transposed-VJP columns cannot be trusted, or None.

    Rows and columns are two computations of the same entries and may differ by their
    rounding: sqrt(eps) of |J| |V|, or what rounding of a right formula can reach under
    cancellation (`_precision.allowance`, summed over the vector V).
    """
    J0 = p.call_analytic(
        jk.vjp_rows, np.full(p.row_size(), p.m)
    )  # index m: the zero cotangent (same kernel shape)
    if not np.all(np.asarray(J0) == 0):
        return "the VJP at a zero cotangent is not zero (the bwd rule has a term that does not scale with the cotangent)"
    eps = float(np.finfo(p.tol_dtype).eps)
    scale = ajv + np.sqrt(np.mean(np.square(ajv), axis=0, keepdims=True))
    rounding = _precision.NOISE_FACTOR * np.outer(p.native_noise, np.abs(V).T @ (1 / p.scales))
    if not np.all(np.abs(jv_rows - jv_cols) <= np.sqrt(eps) * scale + rounding):
        return "VJP rows e_j^T J and the transpose of the VJP disagree (the VJP is not linear in its cotangent)"
    return None


def transposable(p: Problem) -> str | None:
    """Why `jax.linear_transpose` cannot transpose the VJP, or None."""
    try:
        jax.eval_shape(
            lambda idx: jk.vjp_columns(p.sel, p.layout, p.outs, p.diff_values, p.dynamic, idx),
            jax.ShapeDtypeStruct((1,), jnp.int32),
        )
    except Exception as error:  # noqa: BLE001 - any failure means: use VJP rows
        text = str(error).strip().splitlines()
        return f"{type(error).__name__}: {text[0] if text else ''}"
    return None


def run_full(p: Problem) -> tuple[BlockAccumulator, str, str | None]:
    """Checks every Jacobian entry. Returns (accumulator, analytic source, note)."""
    acc, source, note = _run_plan(p)
    p.precision_notes.extend(precision_notes(p, acc))
    return acc, source, note


def _run_plan(p: Problem) -> tuple[BlockAccumulator, str, str | None]:
    coords = np.arange(p.n)
    acc = BlockAccumulator(p)
    if p.kind == "jvp":
        leaf_max = columns_leaf_max(p, coords, jk.jvp_columns)
        check_columns(p, coords, acc, jk.jvp_columns, leaf_max)
        return acc, "JVP columns J e_i (jax.linearize, vmapped over input basis vectors)", None
    note = transposable(p)
    if note is None:
        V = p.ev.random_directions(2, "freivalds").T  # (n, 2)
        leaf_max, jv_rows, ajv = rows_prepass(p, V)
        jv_cols = check_columns(p, coords, acc, jk.vjp_columns, leaf_max, freivalds=V)
        note = _vjp_linear_enough(p, jv_rows, ajv, jv_cols, V)
        if note is None:
            return (
                acc,
                (
                    "VJP: rows e_j^T J (jax.vjp, vmapped over output basis vectors) for the "
                    "tolerances, and columns from jax.linear_transpose of the same VJP, "
                    "verified against the rows on 2 random vectors"
                ),
                None,
            )
        acc = BlockAccumulator(p)
    else:
        note = f"the VJP cannot be transposed ({note})"
    check_rows(p, coords, np.arange(p.m), acc)
    return (
        acc,
        "VJP rows e_j^T J (jax.vjp, vmapped over output basis vectors; finite differences "
        "re-run per row chunk)",
        note,
    )


def precision_notes(p: Problem, acc: BlockAccumulator) -> list[str]:
    """One note per block with entries that lose digits to rounding of a right formula."""
    out = []
    for i in range(p.n_in):
        for o in range(p.n_out):
            count = int(acc.s["n_prec"][i, o])
            if count == 0:
                continue
            leaf, out_leaf = p.layout.diff[i], p.outs[o]
            out.append(
                f"precision: {count} entries of {leaf.path} -> {out_leaf.path} lose up to "
                f"{float(acc.max['prec_digits'][i, o]):.1f} digits to {p.tol_dtype} rounding "
                "of a right formula (their float64 analytic values agree with the float64 "
                f"reference); {_precision.verdict_words(p.precision)}"
            )
    return out
