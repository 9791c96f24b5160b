"""Host-side: how each jaxpr primitive moves dependencies, for `_sparsity.Propagator`.

Each handler takes the propagator, the equation and its inputs' dependencies (`Deps`)
and returns its outputs' dependencies, or None for a form it does not know (then the
propagator treats the equation conservatively: every output on every input). Data
movement (broadcast, reshape, slice, pad, ...) remaps element keys; reductions,
contractions, windows and scans collect groups into new tables. `ELEMENTWISE` and
`ZERO_DERIVATIVE` list the primitives handled by one rule each.
"""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax.extend.core as jex_core
import numpy as np

from ._pattern import Deps

if TYPE_CHECKING:
    from ._sparsity import Propagator

FIXPOINT_ITERATIONS = 16  # scan / while carries


def shape_of(atom: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in getattr(atom.aval, "shape", ()))


def numel(atom: Any) -> int:
    return int(np.prod(shape_of(atom), dtype=np.int64))


def index_of(atom: Any) -> np.ndarray:
    return np.arange(numel(atom), dtype=np.int64).reshape(shape_of(atom))


def _literal_int(atom: Any) -> int | None:
    if isinstance(atom, jex_core.Literal):
        return int(np.asarray(atom.val))
    return None


# -- handlers: each returns the output deps, or None for "not this form" (conservative) --


def elementwise(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps] | None:
    out_shape = shape_of(eqn.outvars[0])
    parts = []
    for v, d in zip(eqn.invars, ins):
        if not d:
            continue
        if shape_of(v) == out_shape:
            parts.append(d)
            continue
        try:  # scalars and size-1 dimensions broadcast (numpy rules)
            src = np.broadcast_to(index_of(v), out_shape)
        except ValueError:
            return None
        parts.append(pr.remap(d, src.ravel()))
    deps = pr.union(*parts)
    return [deps if shape_of(o) == out_shape else pr.fallback(eqn, ins)[0] for o in eqn.outvars]


def _moved(fn: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """A data-movement primitive: numpy `fn(index array, eqn)` gives each output's source."""

    def handler(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps] | None:
        src = fn(index_of(eqn.invars[0]), eqn)
        if src is None:
            return None
        return [pr.remap(ins[0], np.asarray(src).ravel())]

    return handler


def _broadcast(idx: np.ndarray, eqn: Any) -> np.ndarray:
    shape = tuple(eqn.params["shape"])
    dims = eqn.params["broadcast_dimensions"]
    expanded = [1] * len(shape)
    for d, s in zip(dims, idx.shape):
        expanded[d] = s
    return np.broadcast_to(idx.reshape(expanded), shape)


def _slice(idx: np.ndarray, eqn: Any) -> np.ndarray:
    strides = eqn.params["strides"] or (1,) * idx.ndim
    sl = tuple(
        slice(a, b, s)
        for a, b, s in zip(eqn.params["start_indices"], eqn.params["limit_indices"], strides)
    )
    return idx[sl]


def _pad_src(idx: np.ndarray, config: Sequence[tuple[int, int, int]]) -> np.ndarray:
    src = idx + 1  # 0 marks padding
    for axis, (lo, hi, interior) in enumerate(config):
        if interior:
            n = src.shape[axis]
            shape = list(src.shape)
            shape[axis] = n + (n - 1) * interior if n else 0
            spread = np.zeros(shape, src.dtype)
            take = [slice(None)] * src.ndim
            take[axis] = slice(None, None, interior + 1)
            spread[tuple(take)] = src
            src = spread
        widths = [(0, 0)] * src.ndim
        widths[axis] = (max(lo, 0), max(hi, 0))
        src = np.pad(src, widths)
        crop = [slice(None)] * src.ndim
        crop[axis] = slice(max(-lo, 0), src.shape[axis] - max(-hi, 0))
        src = src[tuple(crop)]
    return src - 1


def _pad(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps]:
    src = _pad_src(index_of(eqn.invars[0]), eqn.params["padding_config"])
    moved = pr.remap(ins[0], src.ravel())
    fill = pr.remap(ins[1], np.zeros(src.size, np.int64)) if ins[1] else ()
    return [pr.union(moved, fill)]


def _concatenate(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps]:
    axis = eqn.params["dimension"]
    # Output position -> (operand, element): concatenate the operands' index arrays.
    tagged, offset = [], 0
    for v in eqn.invars:
        tagged.append(index_of(v) + offset)
        offset += numel(v)
    joined = np.concatenate(tagged, axis=axis).ravel()
    parts, offset = [], 0
    for v, d in zip(eqn.invars, ins):
        local = joined - offset
        inside = (local >= 0) & (local < numel(v))
        parts.append(pr.remap(d, np.where(inside, local, -1)))
        offset += numel(v)
    return [pr.union(*parts)]


def _dynamic_slice(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps] | None:
    idx = index_of(eqn.invars[0])
    starts = [_literal_int(a) for a in eqn.invars[1:]]
    if any(s is None for s in starts) or any(ins[1:]):
        return None
    sizes = eqn.params["slice_sizes"]
    sl = tuple(
        slice(min(max(s, 0), n - z), min(max(s, 0), n - z) + z)
        for s, z, n in zip(starts, sizes, idx.shape)
    )
    return [pr.remap(ins[0], idx[sl].ravel())]


def _dynamic_update_slice(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps] | None:
    operand, update = eqn.invars[0], eqn.invars[1]
    starts = [_literal_int(a) for a in eqn.invars[2:]]
    if any(s is None for s in starts) or any(ins[2:]):
        return None
    src_op = index_of(operand)
    src_up = np.full(shape_of(operand), -1, np.int64)
    sl = tuple(
        slice(min(max(s, 0), n - z), min(max(s, 0), n - z) + z)
        for s, z, n in zip(starts, shape_of(update), shape_of(operand))
    )
    src_up[sl] = index_of(update)
    kept = src_op.copy()
    kept[sl] = -1
    return [pr.union(pr.remap(ins[0], kept.ravel()), pr.remap(ins[1], src_up.ravel()))]


def _split(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps]:
    axis = eqn.params["axis"]
    bounds = np.cumsum([int(z) for z in eqn.params["sizes"]])[:-1]
    pieces = np.split(index_of(eqn.invars[0]), bounds, axis=axis)
    return [pr.remap(ins[0], piece.ravel()) for piece in pieces]


def _reduction(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps]:
    axes = tuple(eqn.params["axes"])
    shape = shape_of(eqn.invars[0])
    kept = [1 if a in axes else s for a, s in enumerate(shape)]
    out_idx = np.broadcast_to(np.arange(int(np.prod(kept))).reshape(kept), shape)
    deps = pr.collect(ins[0], out_idx, np.arange(out_idx.size), int(np.prod(kept)))
    return [deps for _ in eqn.outvars]


def _argminmax(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps]:
    return [()]  # an index: piecewise constant, zero derivative


def _cumulative(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps]:
    axis, reverse = eqn.params["axis"], eqn.params.get("reverse", False)
    idx = np.moveaxis(index_of(eqn.invars[0]), axis, -1)
    length = idx.shape[-1]
    lines = idx.reshape(-1, length)
    i, j = np.tril_indices(length)  # output i depends on input j <= i
    if reverse:
        i, j = length - 1 - i, length - 1 - j
    out_idx = lines[:, i].ravel()
    in_idx = lines[:, j].ravel()
    return [pr.collect(ins[0], out_idx, in_idx, idx.size)]


def _along_axis(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps]:
    """sort & co: each output depends on its whole line (all operands) along `dimension`."""
    axis = eqn.params["dimension"]
    shape = shape_of(eqn.invars[0])
    kept = [1 if a == axis else s for a, s in enumerate(shape)]
    line = np.broadcast_to(np.arange(int(np.prod(kept))).reshape(kept), shape).ravel()
    parts = [pr.collect(d, line, np.arange(line.size), int(np.prod(kept))) for d in ins]
    lines = pr.union(*parts)
    return [pr.remap(lines, line) for _ in eqn.outvars]


def _dot_general(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps]:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars
    lshape, rshape = shape_of(lhs), shape_of(rhs)
    lfree = [d for d in range(len(lshape)) if d not in lc and d not in lb]
    rfree = [d for d in range(len(rshape)) if d not in rc and d not in rb]
    nb = int(np.prod([lshape[d] for d in lb], dtype=np.int64))
    ni = int(np.prod([lshape[d] for d in lfree], dtype=np.int64))
    nj = int(np.prod([rshape[d] for d in rfree], dtype=np.int64))
    out_shape = (nb, ni, nj)
    parts = []
    for deps, idx, batch, free, contract, side in (
        (ins[0], index_of(lhs), lb, lfree, lc, "l"),
        (ins[1], index_of(rhs), rb, rfree, rc, "r"),
    ):
        if not deps:
            continue
        arranged = np.transpose(idx, list(batch) + list(free) + list(contract))
        nf = ni if side == "l" else nj
        arranged = arranged.reshape(nb * nf, -1)  # (batch x free, contracted)
        out_idx = np.broadcast_to(np.arange(nb * nf)[:, None], arranged.shape)
        reduced = pr.collect(deps, out_idx, arranged, nb * nf)
        grid = np.arange(nb * nf).reshape(nb, nf)
        src = np.broadcast_to(grid[:, :, None] if side == "l" else grid[:, None, :], out_shape)
        parts.append(pr.remap(reduced, src.ravel()))
    return [pr.union(*parts)]


def _conv(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps] | None:
    params = eqn.params
    if any(d != 1 for d in params["lhs_dilation"]) or params["batch_group_count"] != 1:
        return None
    dn = params["dimension_numbers"]
    lhs, rhs = eqn.invars
    lshape, rshape, oshape = shape_of(lhs), shape_of(rhs), shape_of(eqn.outvars[0])
    lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    spatial_in = [lshape[d] for d in lspec[2:]]
    # Stage 1: reduce lhs over its feature dimension -> (batch, spatial...).
    arranged = np.transpose(index_of(lhs), [lspec[0]] + list(lspec[2:]) + [lspec[1]])
    reduced_n = int(np.prod(arranged.shape[:-1]))
    grid = np.arange(reduced_n).reshape(arranged.shape[:-1])
    out_idx = np.broadcast_to(grid[..., None], arranged.shape)
    reduced = pr.collect(ins[0], out_idx, arranged, reduced_n) if ins[0] else ()
    # Stage 2: each output (batch, feature, spatial...) gathers its window, once per offset.
    out_idx_arr = np.indices(oshape)
    batch = out_idx_arr[ospec[0]]
    pos = [out_idx_arr[d] for d in ospec[2:]]
    kernel = [rshape[d] for d in rspec[2:]]
    strides, dil = params["window_strides"], params["rhs_dilation"]
    pads = params["padding"]
    parts = []
    for offset in np.ndindex(*kernel):
        inside = np.ones(oshape, bool)
        flat = batch.copy()
        for d, (p, q) in enumerate(zip(pos, offset)):
            x = p * strides[d] - pads[d][0] + q * dil[d]
            inside &= (x >= 0) & (x < spatial_in[d])
            flat = flat * spatial_in[d] + np.clip(x, 0, spatial_in[d] - 1)
        parts.append(pr.remap(reduced, np.where(inside, flat, -1).ravel()))
    if ins[1]:
        allk = pr.everything([ins[1]], [numel(rhs)])
        parts.append(pr.remap(allk, np.zeros(int(np.prod(oshape)), np.int64)))
    return [pr.union(*parts)]


def _select_n(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps] | None:
    # The predicate is piecewise constant (zero derivative): only the cases count.
    size = numel(eqn.outvars[0])
    parts = []
    for v, d in zip(eqn.invars[1:], ins[1:]):
        if d:
            parts.append(d if numel(v) == size else pr.remap(d, np.zeros(size, np.int64)))
    return [pr.union(*parts)]


def _closed(param: str) -> Callable:
    def handler(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps] | None:
        inner = eqn.params.get(param)
        if inner is None:
            return None
        jaxpr = getattr(inner, "jaxpr", inner)
        return pr.run(jaxpr, ins)

    return handler


def _cond(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps]:
    branches = [pr.run(b.jaxpr, ins[1:]) for b in eqn.params["branches"]]
    return [pr.union(*outs) for outs in zip(*branches)]


def _grow(pr: "Propagator", old: list[Deps], new: list[Deps], vars_: Sequence[Any]) -> tuple:
    merged, changed = [], False
    for o, n_, v in zip(old, new, vars_):
        size = numel(v)
        u = pr.union(o, n_)
        u = pr.compact(u, size) if u else ()
        before = sum(t.table.cols.size for t in pr.compact(o, size)) if o else 0
        after = sum(t.table.cols.size for t in u) if u else 0
        changed |= after != before
        merged.append(u)
    return merged, changed


def _scan(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps] | None:
    p = eqn.params
    nc, ncarry = p["num_consts"], p["num_carry"]
    body = p["jaxpr"].jaxpr
    consts, carry, xs = ins[:nc], list(ins[nc : nc + ncarry]), ins[nc + ncarry :]
    xs_vars = eqn.invars[nc + ncarry :]
    # Every iteration sees some slice: the union over slices (conservative).
    slices = []
    for v, d in zip(xs_vars, xs):
        shape = shape_of(v)
        per = int(np.prod(shape[1:], dtype=np.int64))
        slot = np.tile(np.arange(per), shape[0])
        slices.append(pr.collect(d, slot, np.arange(slot.size), per) if d else ())
    carry_vars = eqn.invars[nc : nc + ncarry]
    for _ in range(FIXPOINT_ITERATIONS):
        outs = pr.run(body, list(consts) + carry + slices)
        carry, changed = _grow(pr, carry, outs[:ncarry], carry_vars)
        if not changed:
            break
    else:
        return None
    outs = pr.run(body, list(consts) + carry + slices)
    ys = []
    for v, d in zip(eqn.outvars[ncarry:], outs[ncarry:]):
        shape = shape_of(v)
        per = int(np.prod(shape[1:], dtype=np.int64))
        ys.append(pr.remap(d, np.tile(np.arange(per), shape[0])))
    return carry + ys


def _while(pr: "Propagator", eqn: Any, ins: list[Deps]) -> list[Deps] | None:
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    body = p["body_jaxpr"].jaxpr
    consts, carry = ins[cn : cn + bn], list(ins[cn + bn :])
    carry_vars = eqn.invars[cn + bn :]
    for _ in range(FIXPOINT_ITERATIONS):
        outs = pr.run(body, list(consts) + carry)
        carry, changed = _grow(pr, carry, outs, carry_vars)
        if not changed:
            return carry
    return None


HANDLERS: dict[str, Callable] = {
    "broadcast_in_dim": _moved(_broadcast),
    "reshape": _moved(lambda idx, e: idx.reshape(e.params["new_sizes"])),
    "transpose": _moved(lambda idx, e: np.transpose(idx, e.params["permutation"])),
    "squeeze": _moved(lambda idx, e: np.squeeze(idx, tuple(e.params["dimensions"]))),
    "expand_dims": _moved(lambda idx, e: np.expand_dims(idx, tuple(e.params["dimensions"]))),
    "rev": _moved(lambda idx, e: np.flip(idx, tuple(e.params["dimensions"]))),
    "slice": _moved(_slice),
    "copy": _moved(lambda idx, e: idx),
    "copy_p": _moved(lambda idx, e: idx),
    "pad": _pad,
    "concatenate": _concatenate,
    "split": _split,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "reduce_sum": _reduction,
    "reduce_max": _reduction,
    "reduce_min": _reduction,
    "reduce_prod": _reduction,
    "argmax": _argminmax,
    "argmin": _argminmax,
    "cumsum": _cumulative,
    "cumprod": _cumulative,
    "cummax": _cumulative,
    "cummin": _cumulative,
    "cumlogsumexp": _cumulative,
    "sort": _along_axis,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "select_n": _select_n,
    "pjit": _closed("jaxpr"),
    "jit": _closed("jaxpr"),
    "closed_call": _closed("call_jaxpr"),
    "core_call": _closed("call_jaxpr"),
    "remat": _closed("jaxpr"),
    "checkpoint": _closed("jaxpr"),
    "custom_jvp_call": _closed("call_jaxpr"),
    "custom_vjp_call": _closed("call_jaxpr"),
    "custom_vjp_call_jaxpr": _closed("fun_jaxpr"),
    "cond": _cond,
    "scan": _scan,
    "while": _while,
}

ELEMENTWISE = frozenset(
    """neg sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh exp exp2 log log1p
    expm1 logistic sqrt rsqrt cbrt abs sign floor ceil round square integer_pow pow add add_any
    sub mul div rem max min atan2 nextafter erf erfc erf_inv lgamma digamma igamma igammac
    polygamma zeta bessel_i0e bessel_i1e regularized_incomplete_beta random_gamma_grad
    convert_element_type reduce_precision real imag conj complex clamp stop_gradient
    optimization_barrier""".split()
)
# Piecewise-constant outputs (booleans, integers): no derivative, no dependency.
ZERO_DERIVATIVE = frozenset(
    """eq ne lt le gt ge and or not xor is_finite iota population_count clz shift_left
    shift_right_logical shift_right_arithmetic""".split()
)
