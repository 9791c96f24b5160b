"""Traced: everything here runs under jit and vmap (except the small host records at the top).

Analytic Jacobian products in the real view, and the on-device comparison of one tile
of Jacobian entries against finite differences.

Real view. Inputs are the flat real vector theta of `_flatten` (a complex leaf is its
real block, then its imaginary block); outputs are `ravel_output` of the output leaves
(the same convention). JAX's derivatives of complex functions map onto the real
Jacobian J (d real-view outputs / d real-view inputs) as follows, verified against
finite differences in tests/test_jacobian.py:

  JVP: a complex tangent t = a + ib is the real tangent (a, b); the output tangent
    y_t = c + id is (c, d) = J (a, b). JAX's JVP is J, with no conjugation.
  VJP: JAX pairs cotangents bilinearly, Re(sum(ct * y)), without conjugation. A
    real-view cotangent u = (u_re, u_im) is the JAX cotangent ct = u_re - i u_im, and
    JAX's input cotangent w = vjp(ct) is the real-view vector (Re w, -Im w) = J^T u.
    (For f: C -> R this makes `jax.grad` return df/dx - i df/dy, as JAX documents.)

Kernels are jitted with the `OutputSelect`, `ArgLayout` and `OutLayout` as static
arguments, so a repeated check at new arguments of the same shapes reuses compiled code.
"""

import dataclasses
import functools as ft
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from . import _precision
from . import _stencil as st
from ._finite_diff import over_batch
from ._flatten import ArgLayout, ravel_output, rebuild_args, unravel


@dataclasses.dataclass(frozen=True)
class OutputSelect:
    """Hashable wrapper: f's differentiable output leaves (floating or complex) as a tuple.

    Equal for equal (f, has_aux, keep), so jitted kernels keyed on it are reused.
    """

    f: Callable
    has_aux: bool
    keep: tuple[int, ...]  # positions among f's output leaves
    sequential: bool = False  # f's derivative has no batching rule: products one at a time

    def __call__(self, *args: Any) -> tuple:
        out = self.f(*args)
        if self.has_aux:
            out = out[0]
        leaves = jtu.tree_leaves(out)
        return tuple(jnp.asarray(leaves[i]) for i in self.keep)


@dataclasses.dataclass(frozen=True)
class OutLeaf:
    """A differentiable output leaf and its place in the real output vector."""

    path: str  # "out", "out[0]", "out['y']"
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    size: int  # real coordinates (2 * elements for complex)

    @property
    def is_complex(self) -> bool:
        return bool(np.issubdtype(self.dtype, np.complexfloating))

    def locate(self, local: int) -> tuple[tuple[int, ...], str]:
        """(multi-index, part) of the leaf's `local`-th real coordinate."""
        part = ""
        if self.is_complex:
            half = self.size // 2
            part = "real" if local < half else "imag"
            local %= half
        return (
            tuple(int(i) for i in np.unravel_index(local, self.shape)) if self.shape else ()
        ), part


OutLayout = tuple[OutLeaf, ...]


def complex_row_max(outs: OutLayout, leaf_max: np.ndarray) -> np.ndarray:
    """Host: per-leaf row maxima (L_in, m) where a complex output element's real and imaginary
    rows share the larger of their two maxima.

    A complex number rounds as one: the derivative of the imaginary part of a real eigenvalue
    is exactly zero, yet a float32 JVP gives it eps times the real part's derivative. Its
    allowance (rtol * row max) follows the complex entry's size, as `|a - b| <= atol +
    rtol |b|` on complex values does.
    """
    out = np.array(leaf_max, np.float64, copy=True)
    for o in outs:
        if o.is_complex and o.size:
            half = o.size // 2
            real = slice(o.offset, o.offset + half)
            imag = slice(o.offset + half, o.offset + o.size)
            both = np.maximum(out[:, real], out[:, imag])
            out[:, real] = both
            out[:, imag] = both
    return out


# ----------------------------------------------------------------------------------
# Traced: real view <-> JAX's (co)tangents.


def real_to_cotangents(outs: OutLayout, u: jax.Array) -> tuple:
    """Traced: real-view output cotangent u (m,) -> JAX cotangents, one per output leaf."""
    cts = []
    for o in outs:
        block = u[o.offset : o.offset + o.size]
        if o.is_complex:
            real = jnp.finfo(o.dtype).dtype
            half = o.size // 2
            ct = jax.lax.complex(block[:half].astype(real), -block[half:].astype(real))
        else:
            ct = block.astype(o.dtype)
        cts.append(ct.reshape(o.shape))
    return tuple(cts)


def cotangents_to_real(layout: ArgLayout, grads: list) -> jax.Array:
    """Traced: JAX input cotangents (one per differentiated leaf) -> real view (n,)."""
    parts = []
    for leaf, g in zip(layout.diff, grads):
        if leaf.is_complex:
            parts += [jnp.real(g).ravel(), -jnp.imag(g).ravel()]
        else:
            parts.append(g.ravel())
    dtype = jnp.result_type(*parts)
    return jnp.concatenate([p.astype(dtype) for p in parts])


def _primal(sel: OutputSelect, layout: ArgLayout, dynamic: Any) -> Callable:
    return lambda diff: sel(*rebuild_args(layout, diff, dynamic))


def _basis(idx: jax.Array, size: int, dtype: Any) -> jax.Array:
    return jax.nn.one_hot(idx, size, dtype=dtype)


def _vjp_linear(sel, layout, outs, diff_values, dynamic) -> tuple[Callable, Any]:
    """The real-view VJP u (m,) -> J^T u (n,), and the real dtype of u."""
    y, vjp = jax.vjp(_primal(sel, layout, dynamic), list(diff_values))
    u_dtype = jnp.result_type(*[jnp.finfo(o.dtype).dtype for o in outs])
    return (lambda u: cotangents_to_real(layout, vjp(real_to_cotangents(outs, u))[0])), u_dtype


def _in_dtype(layout: ArgLayout) -> Any:
    return jnp.result_type(*[leaf.real_dtype for leaf in layout.diff])


# ----------------------------------------------------------------------------------
# Traced, jitted: analytic Jacobian products (static: sel, layout, outs).


@ft.partial(jax.jit, static_argnums=(0, 1, 2))
def vjp_products(
    sel: OutputSelect,
    layout: ArgLayout,
    outs: OutLayout,
    diff_values: list,
    dynamic: Any,
    U: jax.Array,
) -> jax.Array:
    """J^T u for each row u of U (b, m): (b, n), through `jax.vjp` (so custom_vjp bwd rules run)."""
    lin, u_dtype = _vjp_linear(sel, layout, outs, diff_values, dynamic)
    return over_batch(lin, sel.sequential)(U.astype(u_dtype))


@ft.partial(jax.jit, static_argnums=(0, 1, 2))
def vjp_rows(
    sel: OutputSelect,
    layout: ArgLayout,
    outs: OutLayout,
    diff_values: list,
    dynamic: Any,
    rows: jax.Array,
) -> jax.Array:
    """Rows `rows` (r,) of J from VJPs at output basis vectors: (r, n)."""
    m = sum(o.size for o in outs)
    lin, u_dtype = _vjp_linear(sel, layout, outs, diff_values, dynamic)
    return over_batch(lin, sel.sequential)(_basis(rows, m, u_dtype))


@ft.partial(jax.jit, static_argnums=(0, 1, 2))
def vjp_rows_summary(
    sel: OutputSelect,
    layout: ArgLayout,
    outs: OutLayout,
    diff_values: list,
    dynamic: Any,
    rows: jax.Array,
    V: jax.Array,
):
    """For rows `rows` (r,) of J (from VJPs): per-input-leaf max |J| (r, L_in), J V and |J| |V| (r, p)."""
    J = vjp_rows(sel, layout, outs, diff_values, dynamic, rows)
    absJ = jnp.where(jnp.isfinite(J), jnp.abs(J), 0)
    leaf_max = jnp.stack(
        [jnp.max(absJ[:, l.offset : l.offset + l.size], axis=1) for l in layout.diff], axis=1
    )
    V = V.astype(J.dtype)
    return leaf_max, J @ V, absJ @ jnp.abs(V)


@ft.partial(jax.jit, static_argnums=(0, 1, 2))
def vjp_columns(
    sel: OutputSelect,
    layout: ArgLayout,
    outs: OutLayout,
    diff_values: list,
    dynamic: Any,
    coords: jax.Array,
) -> jax.Array:
    """Columns `coords` (k,) of J, as the transpose of the (linear) real-view VJP: (k, m).

    `jax.linear_transpose` does not check linearity (an affine or cotangent-ignoring bwd
    rule transposes silently to something else), so callers verify these columns
    against VJP rows (`vjp_rows_summary`) before trusting them.
    """
    m = sum(o.size for o in outs)
    lin, u_dtype = _vjp_linear(sel, layout, outs, diff_values, dynamic)
    transpose = jax.linear_transpose(lin, jax.ShapeDtypeStruct((m,), u_dtype))
    return over_batch(lambda v: transpose(v)[0], sel.sequential)(
        _basis(coords, layout.n, _in_dtype(layout))
    )


def _jvp_linear(sel, layout, outs, diff_values, dynamic) -> Callable:
    dtypes = tuple(leaf.dtype for leaf in layout.diff)
    primal = _primal(sel, layout, dynamic)
    try:
        _, f_jvp = jax.linearize(primal, list(diff_values))
    except (ValueError, NotImplementedError) as error:
        # A JVP rule without partial-eval support (`reduce_window` with a Python reduction, a
        # `custom_vmap` function, hijax types): `jax.jvp` works where `jax.linearize` cannot
        # (or raises JAX's own forward-mode error, which `_diagnose.explained` words).
        text = str(error)
        if "Linearization failed" not in text and "for linearize support" not in text:
            raise

        def f_jvp(tangents):
            return jax.jvp(primal, (list(diff_values),), (tangents,))[1]

    return lambda v: ravel_output(f_jvp(unravel(layout, v, dtypes)))


@ft.partial(jax.jit, static_argnums=(0, 1, 2))
def jvp_products(
    sel: OutputSelect,
    layout: ArgLayout,
    outs: OutLayout,
    diff_values: list,
    dynamic: Any,
    V: jax.Array,
) -> jax.Array:
    """J v for each row v of V (b, n): (b, m), through `jax.linearize` (custom_jvp rules run)."""
    lin = _jvp_linear(sel, layout, outs, diff_values, dynamic)
    return over_batch(lin, sel.sequential)(V.astype(_in_dtype(layout)))


@ft.partial(jax.jit, static_argnums=(0, 1, 2))
def jvp_columns(
    sel: OutputSelect,
    layout: ArgLayout,
    outs: OutLayout,
    diff_values: list,
    dynamic: Any,
    coords: jax.Array,
) -> jax.Array:
    """Columns `coords` (k,) of J from JVPs at input basis vectors: (k, m)."""
    lin = _jvp_linear(sel, layout, outs, diff_values, dynamic)
    return over_batch(lin, sel.sequential)(_basis(coords, layout.n, _in_dtype(layout)))


@ft.partial(jax.jit, static_argnums=(3,))
def columns_leaf_max(
    acc: jax.Array, cols: jax.Array, leaf_ids: jax.Array, n_leaves: int
) -> jax.Array:
    """acc (L_in, m) updated with the max |cols| (k, m) of each input leaf (leaf_ids (k,), -1 = padding)."""
    a = jnp.where(jnp.isfinite(cols), jnp.abs(cols), 0).astype(acc.dtype)
    seg = jax.ops.segment_max(
        a, jnp.where(leaf_ids < 0, n_leaves, leaf_ids), num_segments=n_leaves + 1
    )[:n_leaves]
    return jnp.maximum(acc, seg)


@jax.jit
def columns_times(acc: jax.Array, cols: jax.Array, V: jax.Array) -> jax.Array:
    """acc (m, p) + cols^T V for cols (k, m), V (k, p): accumulates J V column chunk by chunk."""
    cols = jnp.where(jnp.isfinite(cols), cols, 0)
    return acc + cols.T.astype(acc.dtype) @ V.astype(acc.dtype)


# ----------------------------------------------------------------------------------
# Traced, jitted: one tile of Jacobian entries vs finite differences.

SUM_NAMES = (
    "ssd",
    "ssa",
    "ssn",
    "n",
    "n_failed",
    "n_anf",
    "n_ref_nf",
    "n_kink_out",
    "n_nonsmooth",
    "n_unres",
    "mass",
    "mass_unres",
    "n_prec",
    "n_noisy",
)
STAT_NAMES = SUM_NAMES + ("maxd", "prec_digits", "key", "j", "a", "num", "tol", "code")
MAX_NAMES = ("maxd", "prec_digits")


class PrecisionInputs(NamedTuple):
    """What a tile needs for the float64 second look (`_stencil.precision_rescue`).

    Attributes:
      analytic64: (k, mt) the tile's analytic entries computed in float64.
      scale: (k,) the input coordinates' scales.
      noise: (mt,) f's rounding per output in the native dtype (`Problem.native_noise`).
      rtol64, eps: float64's default rtol; the native dtype's machine epsilon.
      note: True under `precision="note"` (rescued entries pass), False under "strict".
    """

    analytic64: Any
    scale: Any
    noise: Any
    rtol64: Any
    eps: Any
    note: Any


def element_key(code: jax.Array, diff: jax.Array, tolerance: jax.Array, xp: Any = jnp) -> jax.Array:
    """Worst-first ordering key in [0, 3]: failing (2) > non-finite reference or kink outside (1) > rest,
    then |a - n| / tolerance (mapped r -> r / (1 + r), NaN and Inf -> 1)."""
    failing = (code == st.FAIL) | (code == st.ANALYTIC_NONFINITE)
    rank = xp.where(
        failing, 2.0, xp.where((code == st.REF_NONFINITE) | (code == st.FAIL_NONSMOOTH), 1.0, 0.0)
    )
    ratio = xp.where(
        tolerance > 0, diff / xp.where(tolerance > 0, tolerance, 1), xp.where(diff > 0, xp.inf, 0.0)
    )
    squashed = xp.where(xp.isfinite(ratio), ratio / (1 + ratio), 1.0)
    return rank + squashed


def _tile_stats(
    values: jax.Array,
    f0: jax.Array,
    points: jax.Array,
    x0: jax.Array,
    analytic: jax.Array,
    floor_in: jax.Array,
    out_scale: jax.Array,
    leaf_max: jax.Array,
    in_ids: jax.Array,
    out_ids: jax.Array,
    rtol: Any,
    safety: Any,
    user_atol: Any,
    n_out: int,
    out_slices: tuple[tuple[int, int], ...] | None = None,
    noise_floor: Any = 0.0,
    precision: PrecisionInputs | None = None,
    scale: Any = None,
    xp: Any = jnp,
) -> dict[str, jax.Array]:
    """Compares a tile of Jacobian entries (k input coordinates x mt outputs) with finite differences.

    The absolute tolerance of entry (i, j) is `user_atol` when >= 0, else the check_grad
    rule per output element: floor_in[i] * out_scale[j] (a derivative too small to move
    output j by more than rounding over coordinate i's scale) + rtol * (max |J[j, :]|
    over i's input leaf).

    Args:
      values: (k, 4, mt) stencil values; f0 (mt,); points (k, 4); x0 (k,). Or values
        (S, k, 4, mt) and points (S, k, 4) at S steps, the last at twice the step of the one
        before: it refines that one's error (`_stencil.refined_truncation`), and each entry
        takes the estimate with the smallest estimated error (`_stencil.best_of`).
      analytic: (k, mt) analytic entries J[j, i] (transposed: row = input coordinate).
      floor_in: (k,) 16 eps / scale_i; out_scale (mt,) max(|f_j|, rms of j's output leaf).
      leaf_max: (L_in, mt) max |J[j, :]| per input leaf; in_ids (k,) input leaf of each row.
      out_ids: (mt,) output leaf of each column (n_out for padding).
      rtol, safety, user_atol: Scalars.
      n_out: Number of output leaves (static).
      noise_floor: (mt,) least rounding noise of each output's values (`Problem.noise_floor`).
      precision: The float64 second look (`PrecisionInputs`), or None.
      scale: (k,) the input coordinates' scales, to count noise-bound entries ("n_noisy",
        `_stencil.noise_bound`) of a single stencil; None counts none.
      out_slices: (static) the column range of each output leaf when they are contiguous
        (columns plan: reductions over slices); None masks columns by `out_ids` (rows plan).
      xp: `jnp` (jitted, on device) or `np` (small tiles on the host: no compilation).

    Returns:
      Dict of (k, n_out) arrays, named by STAT_NAMES: sums of squares, maximum |a - n|,
      counts by verdict, gradient mass, and the worst entry of each (row, output leaf).
    """
    host = xp is np
    combine, assess = (st.combine_host, st.assess_host) if host else (st.combine, st.assess)
    dtype = values.dtype
    if values.ndim == 4:  # several steps, the last at twice the step before it
        best_of = st.best_of_host if host else st.best_of
        refined = st.refined_truncation_host if host else st.refined_truncation
        ests = [
            combine(values[s], f0, points[s], x0, noise_floor=noise_floor)
            for s in range(values.shape[0] - 1)
        ]
        ests[-1] = refined(ests[-1], values[-1], f0, points[-1], x0, noise_floor=noise_floor)
        est, _ = best_of(ests)
    else:
        est = combine(values, f0, points, x0, noise_floor=noise_floor)
    a = analytic.astype(dtype)
    atol = floor_in[:, None].astype(dtype) * out_scale[None, :].astype(dtype) + rtol * leaf_max[
        in_ids
    ].astype(dtype)
    # No tolerance below the smallest normal number of the analytic side's dtype: values
    # beneath it are subnormal or flushed to zero (issue 10 item 6).
    atol = xp.where(
        user_atol >= 0, user_atol, xp.maximum(atol, float(jnp.finfo(analytic.dtype).tiny))
    )
    asm = assess(est, a, rtol, atol, safety)
    noisy = xp.zeros(a.shape, bool)
    if scale is not None and values.ndim == 3:
        noise_bound = st.noise_bound_host if host else st.noise_bound
        d1 = points[:, 2] - points[:, 1]
        eps = float(jnp.finfo(dtype).eps)
        noisy = noise_bound(est, d1, scale.astype(dtype), eps, rtol, atol, safety, a)
    num, code = est.numeric, asm.code
    rescued = xp.zeros(code.shape, bool)
    digits = xp.zeros(a.shape, dtype)
    if precision is not None:
        a64 = precision.analytic64.astype(dtype)
        allowance = _precision.allowance(
            a64, precision.noise[None, :].astype(dtype), precision.scale[:, None].astype(dtype), xp
        )
        rescue = st.precision_rescue if xp is jnp else st.precision_rescue_host
        leaf_rows = leaf_max[in_ids].astype(dtype)
        rescued = rescue(
            est, code, a, a64, allowance, asm.tolerance, precision.rtol64, leaf_rows, safety
        )
        digits = xp.where(rescued, _precision.digits_lost(a, a64, precision.eps, xp), 0.0)
        code = xp.where(rescued & precision.note, st.PASS, code).astype(code.dtype)
    finite = xp.isfinite(a) & xp.isfinite(num)
    d = xp.where(finite, a - num, 0)
    failing = (code == st.FAIL) | (code == st.ANALYTIC_NONFINITE)
    mass = xp.where(xp.isfinite(num), xp.abs(num), 0)
    unres = ~asm.resolved & ~failing
    key = element_key(code, xp.abs(a - num), asm.tolerance, xp)
    per_elem = {
        "ssd": d * d,
        "ssa": xp.where(finite, a * a, 0),
        "ssn": xp.where(finite, num * num, 0),
        "n": xp.ones_like(a),
        "n_failed": failing.astype(dtype),
        "n_anf": (code == st.ANALYTIC_NONFINITE).astype(dtype),
        "n_ref_nf": (code == st.REF_NONFINITE).astype(dtype),
        "n_kink_out": (code == st.FAIL_NONSMOOTH).astype(dtype),
        "n_nonsmooth": ((code == st.NONSMOOTH) | (code == st.FAIL_NONSMOOTH)).astype(dtype),
        "n_unres": unres.astype(dtype),
        "mass": mass,
        "mass_unres": xp.where(unres, mass, 0),
        "n_prec": rescued.astype(dtype),
        "n_noisy": noisy.astype(dtype),
        "maxd": xp.abs(d),
        "prec_digits": digits.astype(dtype),
    }
    if xp is jnp:
        # Materialise the per-entry values once: otherwise XLA fuses the whole comparison into
        # each of the reductions below and recomputes it for every one of them.
        per_elem, key, a, num, tolerance, code = jax.lax.optimization_barrier(
            (per_elem, key, a, num, asm.tolerance, code)
        )
    else:
        tolerance = asm.tolerance
    out: dict[str, list] = {name: [] for name in STAT_NAMES}
    rows = xp.arange(a.shape[0])
    for o in range(n_out):
        # The columns plan: output leaf o is a static slice of the tile's columns; the
        # rows plan masks the tile's columns by output leaf.
        if out_slices is not None:
            lo, hi = out_slices[o]
            part = ft.partial(_columns_slice, lo=lo, hi=hi)
        else:
            mask = (out_ids == o)[None, :]
            part = ft.partial(_masked, mask=mask, xp=xp)
            lo = 0
        for name, x in per_elem.items():
            reduce = xp.max if name in MAX_NAMES else xp.sum
            out[name].append(reduce(part(x), axis=1))
        ko = part(key) if out_slices is not None else xp.where(mask, key, -1.0)
        j = xp.argmax(ko, axis=1)
        out["key"].append(ko[rows, j])
        out["j"].append(j + lo)
    j = xp.stack(out.pop("j"), axis=1).astype(xp.int32)  # (k, n_out)
    out = {name: xp.stack(v, axis=1) for name, v in out.items() if v}
    r = rows[:, None]
    out["j"] = j.astype(dtype)
    out["a"], out["num"], out["tol"], out["code"] = (
        a[r, j],
        num[r, j],
        tolerance[r, j],
        code[r, j].astype(dtype),
    )
    return out


tile_stats_host = ft.partial(_tile_stats, xp=np)


def _columns_slice(x: Any, *, lo: int, hi: int) -> Any:
    return x[:, lo:hi]


def _masked(x: Any, *, mask: Any, xp: Any) -> Any:
    return xp.where(mask, x, 0.0)


@ft.partial(jax.jit, static_argnums=(8, 9))
def tile_stats(
    values,
    f0,
    rowdata,
    analytic,
    out_scale,
    leaf_max,
    out_ids,
    scalars,
    n_out: int,
    out_slices: Any = None,
    noise_floor: Any = 0.0,
    precision: PrecisionInputs | None = None,
) -> dict[str, jax.Array]:
    """`_tile_stats` on device, with the per-row inputs packed into one transfer.

    Args:
      values: (k, 4, mt) or, at S steps, (S, k, 4, mt).
      rowdata: (k, 4 S + 4) columns: the 4 stencil points of each step, x0, floor_in, input
        leaf id, scale.
      scalars: (3,) rtol, safety, user_atol.
      noise_floor: (mt,) least rounding noise of each output's values.
    """
    steps = values.shape[0] if values.ndim == 4 else 1
    k = rowdata.shape[0]
    points = rowdata[:, : 4 * steps].reshape(k, steps, 4).transpose(1, 0, 2)
    points = points if values.ndim == 4 else points[0]
    x0, floor_in, in_ids, scale = (
        rowdata[:, 4 * steps],
        rowdata[:, 4 * steps + 1],
        rowdata[:, 4 * steps + 2].astype(jnp.int32),
        rowdata[:, 4 * steps + 3],
    )
    rtol, safety, user_atol = scalars[0], scalars[1], scalars[2]
    return _tile_stats(
        values,
        f0,
        points,
        x0,
        analytic,
        floor_in,
        out_scale,
        leaf_max,
        in_ids,
        out_ids,
        rtol,
        safety,
        user_atol,
        n_out,
        out_slices,
        noise_floor,
        precision,
        scale,
        jnp,
    )


# ----------------------------------------------------------------------------------
# Traced, jitted: probes <u, J v> from directional finite differences.


def _probe_assess(
    values: Any,
    f0: Any,
    ts: Any,
    U: Any,
    analytic: Any,
    atol: Any,
    rtol: Any,
    safety: Any,
    noise_floor: Any = 0.0,
    xp: Any = jnp,
) -> tuple:
    """Compares analytic <u_q, J v_b> with finite differences of f along v_b, contracted with u_q.

    Treats the direction as one coordinate t: the stencil values f(theta + t v) at
    t in `ts` are contracted with each cotangent, then `_stencil.combine` gives the
    Richardson-extrapolated derivative, its truncation error and one-sided slopes (all
    linear in the values, hence exact after contraction). The rounding term is
    contracted separately as sum_j |u_j| noise_j, since rounding does not cancel.

    Args:
      values: (b, 4, m) f(theta + ts[k] v_b); f0 (m,); ts (4,) exact step multipliers.
      U: (q, m) cotangents; analytic, atol: (b, q).
      noise_floor: (m,) least rounding noise of each output's values (`Problem.noise_floor`).
      xp: `jnp` (jitted) or `np` (host).

    Returns:
      (numeric, code, tolerance, resolved), each (b, q).
    """
    combine, assess = (st.combine, st.assess) if xp is jnp else (st.combine_host, st.assess_host)
    dtype = values.dtype
    b = values.shape[0]
    points = xp.broadcast_to(ts.astype(dtype), (b, 4))
    x0 = xp.zeros((b,), dtype)
    full = combine(values, f0, points, x0, noise_floor=noise_floor)
    Uf = U.astype(dtype)
    used = (Uf != 0).astype(dtype)
    # Non-finite values poison only the cotangents that see them (0 * NaN would poison all).
    bad = (
        (~xp.all(xp.isfinite(values), axis=1) | ~xp.isfinite(f0)[None, :]).astype(dtype) @ used.T
    ) > 0
    clean = xp.where(xp.isfinite(values), values, 0)
    vu = xp.einsum("bkm,qm->bkq", clean, Uf)
    est = combine(vu, Uf @ xp.where(xp.isfinite(f0), f0, 0), points, x0)
    noise = xp.where(xp.isfinite(full.noise), full.noise, 0) @ xp.abs(Uf).T
    est = est._replace(
        numeric=xp.where(bad, xp.nan, est.numeric),
        fd_error=est.fd_error - est.noise + noise,
        noise=noise,
    )
    asm = assess(est, analytic.astype(dtype), rtol, atol.astype(dtype), safety)
    return est.numeric, asm.code, asm.tolerance, asm.resolved


probe_assess = jax.jit(ft.partial(_probe_assess, xp=jnp))
probe_assess_host = ft.partial(_probe_assess, xp=np)
