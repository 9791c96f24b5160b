"""Traced: the sparse plan's compiled passes over colour groups (run under jit, split over
devices by `_devices.map_over_devices`).

A colour group s_c (all input coordinates of colour c, inside one input leaf) is
perturbed as a whole: f at theta with every coordinate j of colour c set to its stencil
point P[j, k] gives, for each output r, the stencil of the one Jacobian entry
J[r, j*(c, r)] (j* = the column of colour c in row r's set). The analytic side of the
same slot (c, r) is the compressed column (J s_c)[r], from one JVP (or transposed VJP)
per colour, traced under the caller's x64 setting (as the dense plan computes it) even
inside a program that evaluates f in float64.

  `AnalyticPass`: the compressed analytic columns, reduced to per-(input leaf, output)
    maxima (the tolerances' scale, needed before any comparison), the columns times a
    random cotangent and, kind "vjp", the VJP at that cotangent and at zero.
  `ComparePass` (large plans): for each chunk, the grouped stencil values, the analytic
    columns again and the comparison of every slot (`_sparse_compare.compare_chunk`),
    folded into one small carry: only block sums, a few worst entries, the empty-slot
    findings and the validation sums leave the device.
  `ValuesPass`: grouped stencil values only: the chunks of small plans, compared on the
    host with the columns `AnalyticPass` kept (compiling the comparison would cost more
    than running it), and the validation's dense columns and random direction.

`AnalyticPass` and `ComparePass` scan over chunks of `kc` colours: each row of
`map_over_devices` is a run of chunks, so a device makes one dispatch for all its colours.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import _jacobian_kernels as jk
from ._finite_diff import STENCIL, EvalSpec, over_batch
from ._flatten import ArgLayout, call_flat
from ._sparse_compare import column_stats, compare_chunk, empty_carry


class Settings(NamedTuple):
    """Static settings shared by both passes (hashable: part of the compiled programs' keys)."""

    kind: str  # "jvp" or "vjp"
    sel: jk.OutputSelect
    layout: ArgLayout
    outs: jk.OutLayout
    analytic_x64: bool  # the x64 setting the analytic side is traced under (the caller's)
    out_slices: tuple[tuple[int, int], ...]  # each output leaf's range of the outputs
    n_candidates: int  # worst entries kept per block
    has_empty: bool  # whether some (colour, output) slot has no entry


def _analytic_columns(s: Settings, diff_values: list, dynamic: list) -> Any:
    """`columns(masks (kc, n)) -> (kc, m)`: J s_c for each row s_c, as the dense plan computes
    it (`_jacobian_kernels`: JVPs, or the transpose of the real-view VJP)."""
    with jax.enable_x64(s.analytic_x64):
        if s.kind == "jvp":
            lin = jk._jvp_linear(s.sel, s.layout, s.outs, diff_values, dynamic)
        else:
            m = sum(o.size for o in s.outs)
            vjp, u_dtype = jk._vjp_linear(s.sel, s.layout, s.outs, diff_values, dynamic)
            transpose = jax.linear_transpose(vjp, jax.ShapeDtypeStruct((m,), u_dtype))
            lin = lambda v: transpose(v)[0]  # noqa: E731
    in_dtype = jk._in_dtype(s.layout)

    def columns(chunk: jax.Array, colors: jax.Array) -> jax.Array:
        with jax.enable_x64(s.analytic_x64):
            masks = (colors[None, :] == chunk[:, None]).astype(in_dtype)
            return over_batch(lin, s.sel.sequential)(masks)

    return columns


class AnalyticPass(NamedTuple):
    """Pass 1, per row (a run of chunks of colours). With `keep_columns` (small plans) the
    compressed columns themselves (`columns`, (chunks, kc, m)); else their reductions
    (`_sparse_compare.column_stats`): per-(input leaf, output) maxima of |J| (`leaf_max`),
    J s_c . u and |J s_c| . |u| per colour (`cu`, `acu`). Kind "vjp" also the VJP at u and
    at zero (`vjp_u0`, (2, n)), to verify the transposed columns."""

    s: Settings
    keep_columns: bool

    def __call__(self, replicated: tuple, rows: jax.Array) -> dict:
        return jax.lax.map(lambda chunks: self._run(replicated, chunks), rows)

    def _run(self, replicated: tuple, chunks: jax.Array) -> dict:
        diff_values, dynamic, tables, u = replicated
        s = self.s
        columns = _analytic_columns(s, diff_values, dynamic)
        n_in = len(s.layout.diff)

        def step(leaf_max: jax.Array, chunk: jax.Array) -> tuple[jax.Array, dict]:
            C = columns(chunk, tables["colors"])
            if self.keep_columns:
                return leaf_max, {"columns": C}
            leaf = tables["leaf_of_color"][jnp.maximum(chunk, 0)]
            best, cu, acu = column_stats(C, leaf, u, n_in)
            return jnp.maximum(leaf_max, best), {"cu": cu, "acu": acu}

        leaf_max, out = jax.lax.scan(step, jnp.zeros((n_in, u.shape[0]), u.dtype), chunks)
        if not self.keep_columns:
            out = {"leaf_max": leaf_max, "cu": out["cu"].ravel(), "acu": out["acu"].ravel()}
        if s.kind == "vjp":
            with jax.enable_x64(s.analytic_x64):
                vjp, _ = jk._vjp_linear(s.sel, s.layout, s.outs, diff_values, dynamic)
                U = jnp.stack([u, jnp.zeros_like(u)])
                out["vjp_u0"] = over_batch(vjp, s.sel.sequential)(U)
        return out


class ComparePass(NamedTuple):
    """Pass 2 compiled whole (large plans): grouped stencils, analytic columns and the
    comparison of every slot (`_sparse_compare.compare_chunk`), folded per row (a run of
    chunks) into one carry."""

    s: Settings
    spec: EvalSpec

    def __call__(self, replicated: tuple, rows: jax.Array) -> dict:
        return jax.lax.map(lambda chunks: self._run(replicated, chunks), rows)

    def _run(self, replicated: tuple, chunks: jax.Array) -> dict:
        theta, ev_dynamic, diff_values, dynamic, tables, consts = replicated
        columns = _analytic_columns(self.s, diff_values, dynamic)
        n_steps = consts["columns"].shape[0] // 4 - 1  # static: stencils at n_steps steps
        points = consts["columns"][: 4 * n_steps].T  # (n, 4 n_steps)

        def step(carry: dict, chunk: jax.Array) -> tuple[dict, None]:
            values = grouped_values(self.spec, theta, ev_dynamic, tables["colors"], points, chunk)
            values = per_step(values, n_steps)
            analytic = columns(chunk, tables["colors"])
            carry = compare_chunk(self.s, values, analytic, tables, consts, chunk, carry)
            return carry, None

        return jax.lax.scan(step, empty_carry(self.s, consts), chunks)[0]


class ValuesPass(NamedTuple):
    """Grouped stencil values only, per row (one chunk of groups): (kc, 4, m). Small plans'
    chunks (compared on the host) and the validation's dense columns and direction, which
    pass their own `colors` and `points`."""

    spec: EvalSpec

    def __call__(self, replicated: tuple, rows: jax.Array) -> jax.Array:
        theta, dynamic, colors, points = replicated
        one = lambda chunk: grouped_values(self.spec, theta, dynamic, colors, points, chunk)  # noqa: E731
        return jax.lax.map(one, rows)


def per_step(values: Any, n_steps: int) -> Any:
    """Grouped values (kc, 4 S, m) at S steps -> (kc, 4, m) for one step, else (S, kc, 4, m)."""
    if n_steps == 1:
        return values
    kc, _, m = values.shape
    return values.reshape(kc, n_steps, len(STENCIL), m).transpose(1, 0, 2, 3)


def grouped_values(spec: EvalSpec, theta, dynamic, colors, points, chunk) -> jax.Array:
    """f with every input of group c (colors == c) at points[:, k], for each c in `chunk`
    and each column k of `points` (n, 4 S: the stencil at S steps): (kc, 4 S, m). Group -1
    (padding) evaluates f at theta."""

    def point(c: jax.Array, k: jax.Array) -> jax.Array:
        x = jnp.where(colors == c, points[:, k], theta)
        return call_flat(spec.f, spec.has_aux, spec.layout, x, spec.dtypes, dynamic)

    offsets = jnp.arange(points.shape[1])
    per_group = lambda c: over_batch(lambda k: point(c, k), spec.sequential)(offsets)  # noqa: E731
    return over_batch(per_group, spec.sequential)(chunk)
