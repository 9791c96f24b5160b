"""Probe mode: random projections <u, J v> per block, then narrowing to the worst entries.

For large inputs a full check (4 evaluations of f per input coordinate) is too slow, but
a wrong derivative still shows in random projections. For every differentiated input
leaf I, `n_probes` random directions v (nonzero only on I, drawn with
`Evaluator.random_directions`, so each leaf's directions are seeded from its path), and
for every output leaf O, `n_probes` random cotangents u (nonzero only on O, divided by
the leaf's rms value), the check compares

  analytic  <J^T u, v> (check_vjp), <u, J v> (check_jvp) or <g, v> (check_grad)
  numeric   d/dt <u, f(theta + t v)> by the 4-point stencil of `_stencil.combine`
            (the direction is one "coordinate" t), with its error estimate,

so every (input leaf, output leaf) block gets its own n_probes**2 comparisons and a
lost derivative on a small output leaf cannot hide behind a large one. A failing block
is then narrowed: its input coordinates are bisected, the NARROW_PROBES directions that
saw the error best are restricted to the left half (the right half follows by linearity,
parent minus left), and the worse half is kept, down to NARROW_COORDS coordinates (for
check_vjp, the outputs are then split into PROBE_SPLIT parts per round the same way,
down to NARROW_OUTPUTS); those entries are checked one by one, as in full mode, so
even a check of millions of parameters ends with an element index and both values.

Tolerance of a probe: `safety * fd_error + rtol * |numeric| + atol`, where atol adds the
full-mode per-entry allowances in quadrature over the probe's terms (rounding errors of
independent entries add like a random walk): the floor sqrt(sum (v_i floor_i)^2) *
sqrt(sum (u_j |f_j|)^2), plus rtol times the root-mean-square of the analytic
products' terms (for check_grad, sqrt(sum (v_i atol_i)^2) with check_grad's per-element
atol). The rounding floor (16 eps |f| / scale_i: a coordinate too weak to move f above
rounding) is taken in the reference's precision: it stands for what the finite
differences cannot resolve, and in the native float32 a sum of 10**6 terms would set it
above every single element's derivative (16 eps32 |f| ~ 2e-6 |f|, while each element
moves f by ~|f| / 10**6), hiding any one wrong element from every probe.
"""

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _finite_diff as fd
from . import _grad_full, _precision, _summary
from . import _jacobian_full as jf
from . import _jacobian_kernels as jk
from . import _stencil as st
from ._jacobian_result import BlockReport
from ._problem import TILE_ENTRIES, Problem
from ._result import LeafReport
from ._summary import GradFindings

PROBE_SPLIT = 4  # output narrowing (check_vjp) splits into this many parts per round
NARROW_PROBES = 2  # directions followed down the input bisection
NARROW_COORDS = 16
NARROW_OUTPUTS = 2048
MAX_NARROWED = 4  # failing blocks (leaves) narrowed per check, worst first
# An inconclusive block (typically probes crossing kinks, whose one-sided directional
# slopes need not bracket the analytic value) is checked entry by entry when its input
# leaf has at most WHOLE_LEAF_MAX coordinates (and the block at most WHOLE_BLOCK_MAX entries).
WHOLE_LEAF_MAX = 1024
WHOLE_BLOCK_MAX = 2**22
MAX_ROWS = 16  # directions per vmapped evaluation (fixed, so the kernel compiles once)
TS = np.asarray(
    [-2.0, -1.0, 1.0, 2.0]
)  # stencil in units of the direction (which carries the step)


@dataclasses.dataclass
class Round:
    """Results of one probe round, host arrays (b directions, q cotangents)."""

    analytic: np.ndarray
    numeric: np.ndarray
    code: np.ndarray
    tolerance: np.ndarray
    resolved: np.ndarray

    def key(self) -> np.ndarray:
        with np.errstate(all="ignore"):
            return jk.element_key(
                self.code, np.abs(self.analytic - self.numeric), self.tolerance, np
            )


def _cotangent_block(seed: int, path: str, count: int, size: int) -> np.ndarray:
    """Standard-normal cotangents for one output leaf, seeded from (seed, its path)."""
    rng = np.random.Generator(
        np.random.PCG64([int(seed) & 0xFFFFFFFF, zlib.crc32(f"cotangent:{path}".encode())])
    )
    return rng.standard_normal((count, size))


class Prober:
    """Probes of one `Problem` (kind "vjp", "jvp" or "grad").

    Args:
      p: The problem.
      n_probes: Directions per input leaf (and cotangents per output leaf when m > 1).
      grad: For kind "grad": the analytic gradient (n,) and check_grad's per-element atol (n,).
    """

    def __init__(
        self, p: Problem, n_probes: int, grad: tuple[np.ndarray, np.ndarray] | None = None
    ):
        self.p, self.P = p, int(n_probes)
        # Relative allowance of a probe value for the analytic side's rounding (run_grad
        # lowers it when that rounding is measured element by element).
        self.rtol = p.tol.rtol
        # Directions carry the step: Z * h (P, n), restricted per probe to a leaf or a part of one.
        self.Zh = p.ev.random_directions(self.P, "probe") * p.h
        self._zh: dict = {}
        self.Pu = self.P if p.m > 1 else 1
        U = np.zeros((p.n_out * self.Pu, p.m), np.float32)
        for o, leaf in enumerate(p.outs):
            sl = slice(leaf.offset, leaf.offset + leaf.size)
            f0 = p.ev.f0[sl]
            rms = float(np.sqrt(np.mean(np.square(f0)))) if p.m > 1 else 1.0
            # Cotangents of size 1 / rms, unless that overflows (outputs below the smallest
            # normal float32, e.g. erfc(10)).
            scale = rms if np.isfinite(rms) and rms >= np.finfo(U.dtype).tiny else 1.0
            z = (
                _cotangent_block(p.seed, leaf.path, self.Pu, leaf.size)
                if p.m > 1
                else np.ones((1, 1))
            )
            U[o * self.Pu : (o + 1) * self.Pu, sl] = z / scale
        self.U = U
        self.grad = grad
        self.Y = self.vjp(U) if p.kind == "vjp" else None  # (q, n): J^T u for every cotangent
        self.rows = min(MAX_ROWS, max(1, p.ev.auto_batch_size(4)))
        self._values: dict = {}  # FD values by direction specs, while `keep_values` (output narrowing)
        self.keep_values = False
        self.n_probes_run = 0
        self.precision_probes = 0  # failing probes that are rounding (`_precision_look`)
        self.precision_digits = 0.0

    def q_rows(self, o: int) -> np.ndarray:
        return np.arange(o * self.Pu, (o + 1) * self.Pu)

    # -- analytic side ----------------------------------------------------------

    def vjp(self, U: np.ndarray) -> np.ndarray:
        """J^T u for each row of U (q, m), in chunks of MAX_ROWS: host (q, n) in the analytic dtype."""
        out = []
        for chunk, valid in jf._padded_chunks(np.arange(U.shape[0]), MAX_ROWS):
            Y = jk.vjp_products(
                self.p.sel,
                self.p.layout,
                self.p.outs,
                self.p.diff_values,
                self.p.dynamic,
                jnp.asarray(U[chunk]),
            )
            out.append(np.asarray(Y)[:valid])
        return np.concatenate(out)

    def _device_directions(self, specs: Sequence[tuple[int, int, int]], dtype: Any) -> jax.Array:
        """Dense directions (b, n) built on device: row r is Z[probe] * h on [lo, hi), zero elsewhere."""
        spec = np.asarray(specs, np.int64).reshape(-1, 3)
        if self._zh.get(dtype) is None:
            self._zh[dtype] = jnp.asarray(self.Zh, dtype)
        return _masked_rows(
            self._zh[dtype],
            jnp.asarray(spec[:, 2], jnp.int32),
            jnp.asarray(spec[:, 0]),
            jnp.asarray(spec[:, 1]),
        )

    # -- one round ----------------------------------------------------------------

    def round(
        self,
        specs: Sequence[tuple[int, int, int]],
        U: np.ndarray,
        Y: np.ndarray | None,
        u_groups: np.ndarray,
    ) -> Round:
        """Compares every direction in `specs` with every cotangent row of U (q, m).

        Host-side sums run over each direction's own coordinates [lo, hi) only, so a round
        costs O(its coordinates), and narrowing gets cheaper as it goes down.

        Args:
          specs: (lo, hi, probe) per direction: Z[probe] * h restricted to coordinates [lo, hi).
          U: (q, m) cotangents; Y: (q, n) their VJPs (kind "vjp").
          u_groups: (q,) group of each cotangent (same output block), for the rounding allowance.
        """
        p = self.p
        b, q = len(specs), U.shape[0]
        U64 = U.astype(np.float64)
        floor_in = p.floor_in * (np.finfo(p.ev.reference.dtype).eps / np.finfo(p.tol_dtype).eps)
        u_floor = np.sqrt(np.square(U64 * p.out_scale).sum(axis=1))  # (q,)
        A, atol = np.zeros((b, q)), np.zeros((b, q))
        terms = np.zeros((b, q))
        norms = np.zeros(b)
        for r, (lo, hi, k) in enumerate(specs):
            v = self.Zh[k, lo:hi]
            norms[r] = np.linalg.norm(v)
            atol[r] = np.sqrt(np.sum(np.square(v * floor_in[lo:hi]))) * u_floor
            if p.kind == "grad":
                g, g_atol = self.grad
                A[r, 0] = v @ g[lo:hi]
                atol[r, 0] = np.sqrt(np.sum(np.square(v * g_atol[lo:hi])))
            elif p.kind == "vjp":
                y = Y[:, lo:hi].astype(np.float64)
                A[r] = y @ v
                terms[r] = np.square(y) @ np.square(v)
        if p.kind == "vjp":
            atol += p.tol.rtol * np.sqrt(_group_mean(terms, u_groups, axis=1))
        elif p.kind == "jvp":
            W = self._jvp(specs)  # (b, m)
            A = W @ U64.T
            d_groups = np.unique(np.asarray(specs)[:, :2], axis=0, return_inverse=True)[1].ravel()
            atol += p.tol.rtol * np.sqrt(
                _group_mean(np.square(W) @ np.square(U64.T), d_groups, axis=0)
            )
        atol = np.maximum(atol, float(jnp.finfo(p.tol_dtype).tiny))  # issue 10 item 6
        if p.tol.atol is not None:
            atol = p.tol.atol * norms[:, None] * np.linalg.norm(U64, axis=1)[None, :]
        parts = [
            self._assess([specs[i] for i in c], U, A[c], atol[c], valid)
            for c, valid in _row_chunks(b, self.rows)
        ]
        self.n_probes_run += b * q
        numeric, code, tolerance, resolved = (np.concatenate(x) for x in zip(*parts))
        code = self._precision_look(specs, U, A, numeric, code, tolerance)
        # Report per unit step: the directions carry h_i = rel * scale_i (or the user's eps).
        unit = np.asarray(
            [p.h[lo] / (p.scales[lo] if p.eps is None else 1.0) for lo, _, _ in specs]
        )[:, None]
        return Round(A / unit, numeric / unit, code, tolerance / unit, resolved)

    def _precision_look(self, specs, U, A, numeric, code, tolerance) -> np.ndarray:
        """Failing probes that are rounding of a right formula (`_precision`, issue 10 item 5).

        The same probe values with the analytic side in float64 agree with the float64
        reference within the probe's tolerance, and the native values differ from them by at
        most PRECISION_LOSS_MAX (two digits kept): a float32 product summed over many terms
        (the JVP of pinv of a 2 x 400000 matrix) loses more than the probe allowance assumes.
        A wrong formula is wrong in float64 too. Counted in `precision_probes` (and the
        digits lost); under `precision="note"` they pass.
        """
        p = self.p
        failing = code == st.FAIL
        if p.kind == "grad" or not p.precision_applies or not np.any(failing):
            return code
        wide = self._analytic64(specs, U)
        if wide is None:
            return code
        with np.errstate(invalid="ignore", over="ignore"):
            agrees = np.abs(wide - numeric) <= tolerance
            rounding = np.abs(A - wide) <= _precision.PRECISION_LOSS_MAX * np.abs(wide)
        rescued = failing & agrees & rounding & np.isfinite(wide) & np.isfinite(A)
        if not np.any(rescued):
            return code
        eps = float(jnp.finfo(p.tol_dtype).eps)
        digits = _precision.digits_lost(A[rescued], wide[rescued], eps)
        self.precision_probes += int(rescued.sum())
        self.precision_digits = max(self.precision_digits, float(np.max(digits)))
        if p.precision == "note":
            code = np.where(rescued, st.PASS, code).astype(code.dtype)
        return code

    def _analytic64(self, specs: Sequence[tuple[int, int, int]], U: np.ndarray) -> Any:
        """Probe values (b, q) with the analytic side in float64, or None when f's derivative
        cannot be computed in float64."""
        p = self.p
        try:
            with jax.enable_x64(True):
                args = p.widened_args()
                if p.kind == "vjp":
                    Y = np.asarray(jk.vjp_products(*args, jnp.asarray(U, jnp.float64)), np.float64)
                    return np.stack([Y[:, lo:hi] @ self.Zh[k, lo:hi] for lo, hi, k in specs])
                D = np.zeros((len(specs), p.n))
                for r, (lo, hi, k) in enumerate(specs):
                    D[r, lo:hi] = self.Zh[k, lo:hi]
                W = np.asarray(jk.jvp_products(*args, jnp.asarray(D)), np.float64)
                return W @ np.asarray(U, np.float64).T
        except Exception:  # noqa: BLE001 - no float64 derivative: no second look
            return None

    def _jvp(self, specs: Sequence[tuple[int, int, int]]) -> np.ndarray:
        out = []
        dtype = jnp.result_type(*[leaf.real_dtype for leaf in self.p.layout.diff])
        for c, valid in _row_chunks(len(specs), self.rows):
            D = self._device_directions([specs[i] for i in c], dtype)
            W = jk.jvp_products(
                self.p.sel, self.p.layout, self.p.outs, self.p.diff_values, self.p.dynamic, D
            )
            out.append(np.asarray(W, np.float64)[:valid])
        return np.concatenate(out)

    def _assess(
        self,
        specs: Sequence[tuple[int, int, int]],
        U: np.ndarray,
        A: np.ndarray,
        atol: np.ndarray,
        valid: int,
    ) -> tuple:
        ev, p = self.p.ev, self.p
        cache_key = tuple(tuple(int(x) for x in s) for s in specs)
        values = self._values.get(cache_key)
        if values is None:
            with ev.context():
                D = self._device_directions(specs, ev.theta_dtype)
                if ev.on_devices:  # directions split over the mesh
                    values = ev.along_on_devices(np.asarray(D), TS)
                else:
                    values = ev.kernel(fd.values_along_directions)(
                        ev.spec, ev.theta_device, ev.dynamic, D, jnp.asarray(TS, ev.theta_dtype)
                    )
            ev.n_evaluations += valid * TS.size
            if self.keep_values:
                self._values[cache_key] = values
        if len(specs) * TS.size * p.m <= jf.HOST_ENTRIES:
            values = np.asarray(values)
            dtype = values.dtype.type
            with np.errstate(all="ignore"):
                out = jk.probe_assess_host(
                    values,
                    p.ev.f0.astype(dtype),
                    TS.astype(dtype),
                    U,
                    A,
                    atol,
                    dtype(self.rtol),
                    dtype(p.tol.safety),
                    p.noise_floor.astype(dtype),
                )
        else:
            with ev.context():
                dtype = values.dtype
                out = jk.probe_assess(
                    values, jnp.asarray(p.ev.f0, dtype), jnp.asarray(TS, dtype), jnp.asarray(U), jnp.asarray(A, dtype),
                    jnp.asarray(atol, dtype), jnp.asarray(self.rtol, dtype), jnp.asarray(p.tol.safety, dtype),
                    jnp.asarray(p.noise_floor, dtype),
                )  # fmt: skip
        return tuple(np.asarray(x)[:valid] for x in jax.device_get(out))

    # -- the plan ---------------------------------------------------------------------

    def top_level(self) -> tuple[Round, list[tuple[int, int, int]]]:
        """P directions per input leaf against all cotangents."""
        specs = [
            (leaf.offset, leaf.offset + leaf.size, k)
            for leaf in self.p.layout.diff
            if leaf.size
            for k in range(self.P)
        ]
        groups = np.repeat(np.arange(self.p.n_out), self.Pu)
        return self.round(specs, self.U, self.Y, groups), specs

    def narrow_inputs(self, i: int, o: int, top: Round, top_rows: np.ndarray) -> tuple[int, int]:
        """Coordinate range [lo, hi) of at most `final_coords` coordinates holding the worst error of block (i, o).

        Bisection with the NARROW_PROBES directions that saw the error best at the top level,
        restricted to each half. Only the left half is evaluated: by linearity of the
        directional derivative, the right half's values are the parent's minus the left's
        (its tolerance is bounded by the sum of both), which halves the evaluations.

        Args:
          i, o: The block. top: The top-level round; top_rows: its rows for leaf i (probe order).
        """
        leaf = self.p.layout.diff[i]
        lo, hi = leaf.offset, leaf.offset + leaf.size
        qs = self.q_rows(o)
        U, Y = self.U[qs], None if self.Y is None else self.Y[qs]
        best = np.argsort(-top.key()[np.ix_(top_rows, qs)].max(axis=1), kind="stable")[
            :NARROW_PROBES
        ]
        parent = tuple(
            x[np.ix_(top_rows[best], qs)] for x in (top.analytic, top.numeric, top.tolerance)
        )
        limit = self.final_coords()
        while hi - lo > limit:
            mid = (lo + hi) // 2
            res = self.round([(lo, mid, int(k)) for k in best], U, Y, np.zeros(len(qs), np.int64))
            left = (res.analytic, res.numeric, res.tolerance)
            right = (parent[0] - left[0], parent[1] - left[1], parent[2] + left[2])
            if _score(*right) > _score(*left):
                lo, parent = mid, right
            else:
                hi, parent = mid, left
        return lo, hi

    def narrow_outputs(self, lo: int, hi: int, o: int) -> tuple[int, int]:
        """(check_vjp) Output range of at most NARROW_OUTPUTS outputs of leaf o holding the worst error."""
        out = self.p.outs[o]
        olo, ohi = out.offset, out.offset + out.size
        specs = [(lo, hi, k) for k in range(self.P)]
        base = self.U[self.q_rows(o)]
        self.keep_values = True  # same directions every round: evaluate f along them once
        while ohi - olo > NARROW_OUTPUTS:
            edges = np.unique(np.linspace(olo, ohi, PROBE_SPLIT + 1).round().astype(np.int64))
            parts = list(zip(edges[:-1], edges[1:]))
            U = np.zeros((len(parts) * base.shape[0], self.p.m), np.float32)
            for t, (a, b) in enumerate(parts):
                U[t * base.shape[0] : (t + 1) * base.shape[0], a:b] = base[:, a:b]
            groups = np.repeat(np.arange(len(parts)), base.shape[0])
            res = self.round(specs, U, self.vjp(U), groups)
            worst = np.nanmax(res.key().reshape(-1, len(parts), base.shape[0]), axis=(0, 2))
            olo, ohi = (int(x) for x in parts[int(np.argmax(worst))])
        self.keep_values, self._values = False, {}
        return olo, ohi

    def final_coords(self) -> int:
        m_final = (
            1
            if self.p.kind == "grad"
            else min(self.p.m, NARROW_OUTPUTS)
            if self.p.kind == "vjp"
            else self.p.m
        )
        return int(max(1, min(NARROW_COORDS, TILE_ENTRIES // max(1, m_final))))


@jax.jit
def _masked_rows(Zh: jax.Array, probe: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Traced: rows Zh[probe[r]] zeroed outside [lo[r], hi[r])."""
    idx = jnp.arange(Zh.shape[1])
    mask = (idx[None, :] >= lo[:, None]) & (idx[None, :] < hi[:, None])
    return jnp.where(mask, Zh[probe], 0)


def _score(analytic: np.ndarray, numeric: np.ndarray, tolerance: np.ndarray) -> float:
    """The largest |analytic - numeric| / tolerance (NaN counts as infinite)."""
    with np.errstate(all="ignore"):
        ratio = np.abs(analytic - numeric) / tolerance
    return float(np.max(np.nan_to_num(ratio, nan=np.inf)))


def _group_mean(x: np.ndarray, groups: np.ndarray, axis: int) -> np.ndarray:
    """Mean of x over the entries of the same group along `axis`, broadcast back."""
    x = np.moveaxis(x, axis, 0)
    out = np.empty_like(x)
    for g in np.unique(groups):
        sel = groups == g
        out[sel] = x[sel].mean(axis=0, keepdims=True)
    return np.moveaxis(out, 0, axis)


def _row_chunks(b: int, size: int):
    """(index array padded to `size` (repeating the first row), valid count) over b rows."""
    return jf._padded_chunks(np.arange(b), size)


def _probe_counts(res: Round, rows: np.ndarray, cols: np.ndarray) -> dict[str, Any]:
    """Verdict counts of a sub-array of probes (rows x cols)."""
    code = res.code[np.ix_(rows, cols)].ravel()
    a, n = res.analytic[np.ix_(rows, cols)].ravel(), res.numeric[np.ix_(rows, cols)].ravel()
    resolved = res.resolved[np.ix_(rows, cols)].ravel()
    failing = np.isin(code, _summary.FAILING)
    mass = np.abs(np.where(np.isfinite(n), n, 0.0))
    unresolved = ~resolved & ~failing
    total = float(mass.sum())
    share = (
        float(mass[unresolved].sum()) / total
        if total > 0
        else float(unresolved.sum()) / max(1, code.size)
    )
    if not np.any(a):
        share = 0.0  # an exactly-zero analytic block (f does not depend on the leaf) within noise of zero
    status, reason = _summary.status_from_counts(
        n=int(code.size),
        n_failed=int(failing.sum()),
        n_analytic_nonfinite=int(np.sum(code == st.ANALYTIC_NONFINITE)),
        n_nonfinite=int(np.sum(code == st.REF_NONFINITE)),
        n_kink_outside=int(np.sum(code == st.FAIL_NONSMOOTH)),
        n_nonsmooth=int(np.sum((code == st.NONSMOOTH) | (code == st.FAIL_NONSMOOTH))),
        n_unresolved=int(unresolved.sum()),
        unresolved_share=share,
        what="probes",
    )
    finite = np.isfinite(a) & np.isfinite(n)
    return {
        "status": status,
        "reason": reason,
        "n": int(code.size),
        "n_failed": int(failing.sum()),
        "n_nonsmooth": int(np.sum((code == st.NONSMOOTH) | (code == st.FAIL_NONSMOOTH))),
        "n_nonfinite": int(np.sum(code == st.REF_NONFINITE)),
        "n_unresolved": int(unresolved.sum()),
        "relative_error": _summary.normalized_distance(a, n),
        "max_abs_error": float(np.max(np.abs(a - n)[finite])) if np.any(finite) else float("nan"),
        "key": float(np.max(res.key()[np.ix_(rows, cols)])) if code.size else 0.0,
    }


def _leaf_rows(specs: list[tuple[int, int, int]], leaf: Any) -> np.ndarray:
    return np.asarray(
        [r for r, s in enumerate(specs) if s[0] == leaf.offset and leaf.size], np.int64
    )


# ----------------------------------------------------------------------------------
# Jacobian (check_vjp / check_jvp) in probe mode.


def run_probe(p: Problem, n_probes: int) -> tuple[list[BlockReport], float, str]:
    """Probe mode for `check_vjp`/`check_jvp`: (block reports, relative error over probes, analytic source)."""
    pr = Prober(p, n_probes)
    res, specs = pr.top_level()
    counts = {}
    for i, leaf in enumerate(p.layout.diff):
        for o in range(p.n_out):
            counts[i, o] = _probe_counts(res, _leaf_rows(specs, leaf), pr.q_rows(o))
    failing = sorted((c["key"], io) for io, c in counts.items() if c["status"] == "failed")[::-1]
    top = (res, {i: _leaf_rows(specs, leaf) for i, leaf in enumerate(p.layout.diff)})
    narrowed = {io: _narrow_block(pr, *io, top) for _, io in failing[:MAX_NARROWED]}
    for (i, o), c in counts.items():
        size = p.layout.diff[i].size
        if (
            c["status"] == "inconclusive"
            and size <= WHOLE_LEAF_MAX
            and size * p.outs[o].size <= WHOLE_BLOCK_MAX
        ):
            narrowed[i, o] = _narrow_block(pr, i, o, top, whole=True)
    blocks = []
    for (i, o), c in counts.items():
        blocks.append(_probe_block(p, i, o, c, narrowed.get((i, o))))
    source = (
        f"VJP <J^T u, v> (jax.vjp at {pr.Pu} random cotangents per output leaf)" if p.kind == "vjp"
        else f"JVP <u, J v> (jax.linearize along {pr.P} random directions per input leaf)"
    )  # fmt: skip
    source += f"; {pr.n_probes_run} probe comparisons; failing blocks narrowed to entries checked one by one"
    if pr.precision_probes:
        p.precision_notes.append(
            f"precision: {pr.precision_probes} probe value(s) lose up to "
            f"{pr.precision_digits:.1f} digits to {p.tol_dtype} rounding of a right formula "
            "(the same products computed in float64 agree with the float64 reference); "
            f"{_precision.verdict_words(p.precision)}"
        )
    return blocks, _summary.normalized_distance(res.analytic.ravel(), res.numeric.ravel()), source


def _narrow_block(pr: Prober, i: int, o: int, top: tuple, whole: bool = False) -> tuple:
    """Checks entry by entry the narrowed part (or, `whole`, all) of block (i, o).

    Returns:
      (sub-report, input range, output range, whole).
    """
    p = pr.p
    leaf, out = p.layout.diff[i], p.outs[o]
    lo, hi = (
        (leaf.offset, leaf.offset + leaf.size)
        if whole
        else pr.narrow_inputs(i, o, top[0], top[1][i])
    )
    coords = np.arange(lo, hi)
    acc = jf.BlockAccumulator(p)
    if p.kind == "jvp":
        leaf_max = jf.columns_leaf_max(p, coords, jk.jvp_columns)
        jf.check_columns(p, coords, acc, jk.jvp_columns, leaf_max)
        orange = (out.offset, out.offset + out.size)
    else:
        orange = (out.offset, out.offset + out.size) if whole else pr.narrow_outputs(lo, hi, o)
        jf.check_rows(p, coords, np.arange(*orange), acc)
    return acc.report(i, o), (lo, hi), orange, whole


def _range_str(p: Problem, lo: int, hi: int, locate: Callable) -> str:
    first, last = locate(lo), locate(hi - 1)
    return f"[{','.join(map(str, first))}] .. [{','.join(map(str, last))}]"


def _probe_block(p: Problem, i: int, o: int, c: dict, narrowed: Any) -> BlockReport:
    fields = dict(
        status=c["status"],
        relative_error=c["relative_error"],
        max_abs_error=c["max_abs_error"],
        n_nonsmooth=c["n_nonsmooth"],
        n_nonfinite=c["n_nonfinite"],
        n_unresolved=c["n_unresolved"],
        n_probes=c["n"],
        n_probes_failed=c["n_failed"],
    )
    if narrowed is None:
        reason = (
            c["reason"]
            if c["status"] != "failed"
            else f"{c['reason']} (not narrowed: only the {MAX_NARROWED} worst blocks are)"
        )
        return jf.make_block(p, i, o, reason=reason, worst=None, n_checked=0, n_failed=0, **fields)
    sub, (lo, hi), (olo, ohi), whole = narrowed
    leaf = p.layout.diff[i]
    if whole:
        fields.update(
            status=sub.status,
            n_nonsmooth=sub.n_nonsmooth,
            n_nonfinite=sub.n_nonfinite,
            n_unresolved=sub.n_unresolved,
        )
        reason = f"probes: {c['reason']}; so checked entry by entry: {sub.reason}"
        return jf.make_block(
            p,
            i,
            o,
            reason=reason,
            worst=sub.worst,
            n_checked=sub.n_checked,
            n_failed=sub.n_failed,
            elements=sub.elements,
            **fields,
        )
    where_in = _range_str(p, lo, hi, lambda k: p.layout.locate(k)[1])
    where_out = _range_str(p, olo, ohi, lambda j: p.out_leaf(j)[1])
    reason = (
        f"{c['reason']}; narrowed to {leaf.path}{where_in} -> {p.outs[o].path}{where_out}: "
        f"{sub.n_failed} of {sub.n_checked} entries there out of tolerance"
    )
    return jf.make_block(
        p,
        i,
        o,
        reason=reason,
        worst=sub.worst,
        n_checked=sub.n_checked,
        n_failed=sub.n_failed,
        elements=sub.elements,
        **fields,
    )


# ----------------------------------------------------------------------------------
# check_grad(mode="probe").


def run_grad(p: Problem, n_probes: int = 4) -> GradFindings:
    """Probe mode for a kind-"grad" problem: directional derivatives per leaf vs <g, v>.

    Each failing leaf (up to MAX_NARROWED) is narrowed down to NARROW_COORDS coordinates,
    checked one by one; an inconclusive small leaf is checked entry by entry.

    Returns:
      `GradFindings` with `numeric=None` (no full finite-difference gradient is computed).
    """
    analytic = p.analytic
    # check_grad's per-element atol, with the analytic leaf maximum standing in for the numeric
    # one and the rounding floor taken in the reference's precision (see the module docstring).
    # Where the gradient is also available in float64, the analytic side's rounding is
    # measured instead of bounded by rtol * leaf max (far tighter over many elements).
    measured = _grad_full.measured_rounding(p)
    atol_vec = _grad_full.element_atol(p, analytic, np.dtype(p.ev.reference.dtype), measured)
    pr = Prober(p, n_probes, grad=(analytic, atol_vec))
    if measured is not None and p.tol.atol is None:
        pr.rtol = _grad_full.MEASURED_ULPS * float(np.finfo(p.tol_dtype).eps)
    res, specs = pr.top_level()
    layout = p.layout
    counts = [_probe_counts(res, _leaf_rows(specs, leaf), np.arange(1)) for leaf in layout.diff]
    failing = sorted(
        ((c["key"], i) for i, c in enumerate(counts) if c["status"] == "failed"), reverse=True
    )
    leaves, worst, worst_numeric = [], None, float("nan")
    top = (res, {i: _leaf_rows(specs, leaf) for i, leaf in enumerate(layout.diff)})
    narrowed = {
        i: _narrow_grad_leaf(pr, i, analytic, atol_vec, top) for _, i in failing[:MAX_NARROWED]
    }
    for i, c in enumerate(counts):
        if c["status"] == "inconclusive" and layout.diff[i].size <= WHOLE_LEAF_MAX:
            narrowed[i] = _narrow_grad_leaf(pr, i, analytic, atol_vec, top, whole=True)
    for i, (leaf, c) in enumerate(zip(layout.diff, counts)):
        sub = narrowed.get(i)
        leaves.append(_grad_leaf_report(p, leaf, c, sub, res, _leaf_rows(specs, leaf)))
        if sub is not None and worst is None and sub[0].status != "passed":
            worst, worst_numeric = sub[1], sub[2]
    if worst is None:
        worst = int(np.argmax(np.abs(np.where(np.isfinite(analytic), analytic, 0))))
        worst_numeric = float(analytic[worst])
    leaves = [
        dataclasses.replace(
            report,
            probe_floor=_probe_floor(p, res, leaf, _leaf_rows(specs, leaf)),
            gradient_norm=float(np.linalg.norm(analytic[leaf.offset : leaf.offset + leaf.size])),
        )
        for report, leaf in zip(leaves, layout.diff)
    ]
    reference = (
        "4-point central differences with Richardson extrapolation along "
        f"{pr.P} random directions per leaf ({pr.n_probes_run} probes), failing leaves "
        "narrowed to elements checked one by one"
    )
    return GradFindings(
        leaves=_summary.sort_worst_first(leaves),
        relative_error=_summary.normalized_distance(res.analytic.ravel(), res.numeric.ravel()),
        worst=worst,
        worst_numeric=worst_numeric,
        numeric=None,
        reference=reference,
    )


def _probe_floor(p: Problem, res: Round, leaf: Any, rows: np.ndarray) -> float | None:
    """The smallest error of one typical element of a leaf its probes would see.

    One element k wrong by d moves the probe <g, v> by d * v_k; per unit step v_k is
    z_k * scale_k with z_k standard normal. So d is seen when it exceeds the probe's
    tolerance over the leaf's typical scale; the median over the leaf's probes is quoted.
    """
    if not rows.size:
        return None
    scales = p.scales[leaf.offset : leaf.offset + leaf.size]
    typical = 1.0 if p.eps is not None else float(np.sqrt(np.mean(np.square(scales))))
    return float(np.median(res.tolerance[rows, 0])) / typical if typical > 0 else None


def _narrow_grad_leaf(
    pr: Prober, i: int, analytic: np.ndarray, atol_vec: np.ndarray, top: tuple, whole: bool = False
) -> tuple:
    """Narrows leaf i to a few coordinates (or takes all of it, `whole`) and checks them one by one.

    Returns:
      (sub-report, worst coordinate, its numeric value, whole).
    """
    p = pr.p
    leaf = p.layout.diff[i]
    lo, hi = (
        (leaf.offset, leaf.offset + leaf.size)
        if whole
        else pr.narrow_inputs(i, 0, top[0], top[1][i])
    )
    coords = np.arange(lo, hi)
    est = _grad_full.estimates(p, coords, measure_noise=False)
    leaves, numeric, tolerance = _grad_full.summarize(
        p, coords, analytic[coords], est, atol_vec[coords]
    )
    sub = leaves[0]
    k = _grad_full.worst_of(analytic[coords], numeric, tolerance)
    return sub, int(coords[k]), float(numeric[k]), whole


def _grad_leaf_report(
    p: Problem, leaf: Any, c: dict, narrowed: Any, res: Round, rows: np.ndarray
) -> LeafReport:
    if narrowed is None:
        r = rows[int(np.argmax(res.key()[rows, 0]))] if rows.size else 0
        reason = c["reason"]
        if c["status"] == "failed":
            reason += f" (not narrowed: only the {MAX_NARROWED} worst leaves are)"
        return LeafReport(
            path=leaf.path,
            status=c["status"],
            shape=leaf.shape,
            dtype=str(leaf.dtype),
            relative_error=c["relative_error"],
            max_abs_error=c["max_abs_error"],
            worst_index=(),
            worst_analytic=float(res.analytic[r, 0]) if rows.size else 0.0,
            worst_numeric=float(res.numeric[r, 0]) if rows.size else 0.0,
            worst_tolerance=float(res.tolerance[r, 0]) if rows.size else 0.0,
            n_elements=int(leaf.size),
            n_failed=0,
            n_nonsmooth=c["n_nonsmooth"],
            n_nonfinite=c["n_nonfinite"],
            n_unresolved=c["n_unresolved"],
            reason=f"{reason} (directional derivatives <g, v>)",
        )
    sub, _, _, whole = narrowed
    if whole:
        return dataclasses.replace(
            sub,
            reason=f"probes: {c['reason']} (directional derivatives <g, v>); so checked element by element: {sub.reason}",
        )
    return dataclasses.replace(
        sub,
        status="failed",
        relative_error=c["relative_error"],
        n_elements=int(leaf.size),
        reason=f"{c['reason']} (directional derivatives <g, v>); narrowed to {sub.n_elements} elements: {sub.reason}",
    )
