"""Host-side: the problem record every check is built on, and the one routine that builds it.

A check is: an entry point -> one `Problem` (the function at a point: options validated,
arguments partitioned, outputs classified, the analytic side when it is a vector, the
reference evaluator, the tolerances), built by `build_problem` -> a strategy (full, probe)
that takes the problem and imports no entry point -> a result record. A gradient check is
the one-output case: its output is the scalar `f(*args)` and its analytic side the
gradient vector; `check_vjp`/`check_jvp` keep the analytic side as JAX products.
"""

import dataclasses
import functools as ft
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from . import _finite_diff as fd
from . import _jacobian_kernels as jk
from . import _noise, _precision, _tolerance
from . import _stencil as st
from ._devices import resolve_devices
from ._engine import Evaluator, batching_problem, first_line, widen
from ._flatten import (
    ArgLayout,
    SkippedLeaf,
    build_layout,
    check_args,
    normalize_argnums,
    ravel_leaves,
    rebuild_args,
    unravel_host,
)
from ._result import shape_str
from ._tolerance import Tolerance

PyTree = Any
KINDS = ("grad", "vjp", "jvp")
MODES = ("full", "probe", "auto")
# Rows of VJPs (each n wide) computed at a time, and the tile bounds of the full Jacobian path.
ROW_ENTRIES = 2**22
TILE_ENTRIES = 2**18
MAX_TILE = 1024


def function_name(f: Callable) -> str:
    """A readable name for a user function (unwrapping partials and jit wrappers)."""
    while isinstance(f, ft.partial):
        f = f.func
    return getattr(f, "__name__", None) or type(f).__name__


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))


PRECISIONS = ("note", "strict")


def validate_options(
    *,
    f: Callable,
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    has_aux: bool = False,
    mode: str | None = None,
    progress: Any = None,
    locate_rules: bool = True,
    precision: str = "note",
) -> None:
    """Checks the common keyword options of every `check_*` function.

    Raises:
      TypeError, ValueError: naming the bad argument and what to pass instead.
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable; got {type(f).__name__}.")
    for name, value in (("eps", eps), ("rtol", rtol), ("atol", atol)):
        if value is None:
            continue
        if not _is_number(value):
            raise TypeError(f"`{name}` must be a float or None; got {type(value).__name__}.")
        if not np.isfinite(value) or value < 0 or (name == "eps" and value == 0):
            kind = "positive" if name == "eps" else "non-negative"
            raise ValueError(f"`{name}` must be a finite {kind} number; got {value!r}.")
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive int or None (automatic); got {batch_size!r}."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int; got {type(seed).__name__}.")
    if not isinstance(has_aux, bool):
        raise TypeError(f"`has_aux` must be a bool; got {type(has_aux).__name__}.")
    if mode is not None and mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}; got {precision!r}.")
    if not isinstance(locate_rules, bool):
        raise TypeError(f"`locate_rules` must be a bool; got {type(locate_rules).__name__}.")
    if progress is not None and not callable(progress):
        raise TypeError(
            f"`progress` must be None or a callable `progress(done, total)`; got "
            f"{type(progress).__name__}. Pass e.g. `jaxcheck.ProgressBar()`."
        )


@dataclasses.dataclass
class Problem:
    """One check: the function at a point, ready for both sides and any strategy.

    Attributes:
      kind: "grad", "vjp" or "jvp".
      name: The function's name, for reports.
      sel: f as a function of the arguments returning its differentiable output leaves.
      layout: The argument partition (differentiated, fixed and static leaves).
      diff_values, dynamic: The differentiated leaves and the fixed array leaves (device).
      outs: The differentiable output leaves (kind "grad": the scalar, path "out").
      ev: The reference evaluator (precision, steps, vmapped stencil kernels).
      tol: The `Tolerance`; tol_dtype: the dtype whose rounding the analytic side is allowed.
      eps, seed, batch_size, progress: The user's options.
      skipped: Leaves held fixed (inputs) or not checked (outputs).
      argnums: The user's `argnums` as given (an int or a tuple), for result pytrees.
      analytic: Kind "grad": the analytic gradient in theta coordinates (float64), else None.
      analytic_source: Where the analytic side comes from, in words.
      locate_rules: On failure, check the custom rules inside f at their call sites.
    """

    kind: str
    name: str
    sel: jk.OutputSelect
    layout: ArgLayout
    diff_values: list
    dynamic: list
    outs: jk.OutLayout
    ev: Evaluator
    tol: Tolerance
    tol_dtype: np.dtype
    eps: float | None
    seed: int
    batch_size: int | None
    skipped: tuple[SkippedLeaf, ...]
    argnums: Any = 0
    progress: Callable[[int, int], None] | None = None
    analytic: np.ndarray | None = None
    analytic_source: str = ""
    locate_rules: bool = True
    grad_fn: Callable | None = None
    precision: str = "note"
    precision_notes: list = dataclasses.field(default_factory=list)
    start: float = dataclasses.field(default_factory=time.perf_counter)
    analytic_unbatchable: str | None = None
    grown_steps: int = 0  # coordinates that tried other steps (`_steps.search`)
    # Coordinates that took the look at +-2H, +-4H (`_steps`, `_jacobian_tiles.Retake`).
    higher_order_looks: int = 0
    # (leaf path, growth) of leaves whose steps start above h (`_steps.calibrated_rungs`).
    calibrated_growth: list = dataclasses.field(default_factory=list)
    # Why the jitted analytic kernels could not run (then op by op), or None.
    analytic_unjitted: str | None = None

    def __post_init__(self) -> None:
        # Device copies once, so the analytic kernels do not transfer the arguments on every call.
        self.diff_values = [jnp.asarray(v) for v in self.diff_values]
        self.dynamic = [v if isinstance(v, jax.Array) else jnp.asarray(v) for v in self.dynamic]
        self.n, self.m = self.layout.n, sum(o.size for o in self.outs)
        self.in_ids = np.zeros(self.n, np.int32)
        for k, leaf in enumerate(self.layout.diff):
            self.in_ids[leaf.offset : leaf.offset + leaf.size] = k
        self.out_ids = np.zeros(self.m, np.int32)
        self.out_scale = np.ones(self.m)
        f0 = self.ev.f0
        for k, o in enumerate(self.outs):
            sl = slice(o.offset, o.offset + o.size)
            self.out_ids[sl] = k
            self.out_scale[sl] = _tolerance.magnitudes(f0[sl])
        self.scales = _tolerance.coordinate_scales(self.layout, self.ev.theta)
        # The Jacobian paths' rounding floor, in the analytic side's precision: a float32
        # JVP/VJP entry carries rounding of its intermediates beyond rtol * the row's largest
        # entry (cancellation), which a float64-precision floor does not cover. (Item 8's
        # floor that grows as x_i nears zero is therefore still open for these paths.)
        self.floor_in = _tolerance.floor_atol(self.tol_dtype, 1.0, self.scales)
        self.h = self.ev.steps(self.eps)
        self.h_default = self.h.copy()  # the steps before any search (`_steps`)
        self.user_atol = -1.0 if self.tol.atol is None else float(self.tol.atol)

    def nothing_to_compare(self) -> str | None:
        """Why there is nothing to compare (every differentiated input or every output is
        empty), or None. Such a check passes with this reason."""
        if self.n == 0:
            leaves = ", ".join(
                f"{leaf.path}: {shape_str(str(leaf.dtype), leaf.shape)}"
                for leaf in self.layout.diff
            )
            return f"nothing to compare: the differentiated inputs are empty ({leaves})"
        if self.m == 0:
            outs = [leaf for leaf in self.skipped if leaf.path.startswith("out")]
            empty = ", ".join(
                f"{leaf.path}: {shape_str(str(leaf.dtype), leaf.shape)}" for leaf in outs
            )
            return f"nothing to compare: every output of f is empty ({empty})"
        return None

    @ft.cached_property
    def noise_floor(self) -> np.ndarray:
        """(m,) the least rounding noise of one value of each output, from f's measured noise
        (`Evaluator.noise`, `_noise.floor`): the stencil's noise term is at least this. A
        native reference also rounds at the outputs' subnormal spacing, which no relative
        measure sees (float16 outputs of 1e-6 move in steps of 6e-8)."""
        floor = _noise.floor(self.ev.noise)
        if self.ev.reference.x64:
            return floor
        spacing = np.concatenate(
            [np.full(o.size, float(jnp.finfo(o.dtype).smallest_subnormal)) for o in self.outs]
        )
        return np.maximum(floor, st.NOISE_ULPS * spacing) if spacing.size else floor

    @ft.cached_property
    def native_noise(self) -> np.ndarray:
        """(m,) f's rounding in the analytic side's dtype (`_precision.native_noise`); a
        complex output element's real and imaginary parts share the larger (a complex value
        rounds as one: saturated complex tanh, 1 - tanh(z)**2 with |tanh(z)| ~ 1 and a small
        imaginary part, rounds that part like the real one, `jk.complex_row_max`)."""
        noise = _precision.native_noise(self.ev.noise, self.ev.reference.dtype, self.tol_dtype)
        return jk.complex_row_max(self.outs, np.asarray(noise, np.float64)[None, :])[0]

    @property
    def precision_applies(self) -> bool:
        """Whether failing elements get the float64 analytic side's second look."""
        return _precision.applies(self.ev.reference.x64, self.tol_dtype)

    @ft.cached_property
    def decided_floor_in(self) -> np.ndarray:
        """(n,) `floor_in` in the precision that decides a Jacobian entry: float64's where the
        float64 second look tells rounding from a bug (`precision_applies`), else the
        analytic side's (issue 10 item 8: a float32 floor of 16 eps |f| / |x_i| swallows a
        1e-3 error as x_i nears zero)."""
        if not self.precision_applies:
            return self.floor_in
        return self.floor_in * float(np.finfo(np.float64).eps / np.finfo(self.tol_dtype).eps)

    def widened_args(self) -> tuple:
        """(sel, layout, outs, diff_values, dynamic) in float64 (complex128), the leading
        arguments of the analytic kernels (`_jacobian_kernels`); call under x64."""
        return (
            self.sel,
            _precision.widened_layout(self.layout),
            _precision.widened_outs(self.outs),
            [widen(v) for v in self.diff_values],
            [widen(v) for v in self.dynamic],
        )

    def call_analytic64(self, kernel: Callable, index: np.ndarray) -> jax.Array | None:
        """`call_analytic` with the arguments, the layout and the outputs in float64 (under
        x64), or None when f's derivative cannot be computed in float64."""
        try:
            with jax.enable_x64(True):
                return jax.device_get(
                    self.ev.kernel(kernel)(*self.widened_args(), jnp.asarray(index, jnp.int32))
                )
        except Exception:  # noqa: BLE001 - no float64 derivative: no second look
            return None

    @property
    def n_in(self) -> int:
        return len(self.layout.diff)

    @property
    def n_out(self) -> int:
        return len(self.outs)

    def locate(self, coordinate: int) -> tuple[Any, tuple[int, ...], str]:
        """Theta coordinate -> (input leaf, multi-index, part "", "real" or "imag")."""
        return self.layout.locate(int(coordinate))

    def out_leaf(self, j: int) -> tuple[jk.OutLeaf, tuple[int, ...], str]:
        """Real output coordinate -> (output leaf, multi-index, part)."""
        o = self.outs[int(self.out_ids[j])]
        index, part = o.locate(int(j) - o.offset)
        return o, index, part

    @property
    def args(self) -> tuple:
        """The arguments the check ran at (differentiated leaves as given, others unchanged)."""
        return rebuild_args(self.layout, self.diff_values, self.dynamic)

    @ft.cached_property
    def analytic_float64(self) -> np.ndarray | None:
        """Kind "grad": the analytic gradient computed again in float64 (f or `grad_fn` at
        the widened arguments under x64), when the reference is float64 and that works;
        else None. Its distance from `analytic` measures the analytic side's own rounding."""
        if self.kind != "grad" or not self.ev.reference.x64 or self.analytic is None:
            return None
        try:
            with jax.enable_x64(True):
                diff64 = [widen(v) for v in self.diff_values]
                dynamic64 = [widen(v) for v in self.dynamic]
                if self.grad_fn is None:
                    kernel = self.ev.kernel(fd.analytic_grad)
                    _, grads = kernel(self.sel.f, self.sel.has_aux, self.layout, diff64, dynamic64)
                else:
                    args64 = rebuild_args(self.layout, diff64, dynamic64)
                    grads = _user_gradient_leaves(self.grad_fn, args64, self.argnums, self.layout)
                if any(np.dtype(g.dtype) not in (np.float64, np.complex128) for g in grads):
                    return None
                return _theta_vector(self.layout, grads)
        except Exception:  # noqa: BLE001 - not computable in float64: no measured rounding
            return None

    def rule_findings(self, status: str) -> tuple[str, ...]:
        """When the check failed and `locate_rules`: one line per custom rule inside f that
        fails its own check at its call-site inputs (`_rules.diagnose_rules`)."""
        if status != "failed" or not self.locate_rules:
            return ()
        from ._rules import diagnose_rules  # a real cycle: the rule battery runs checks

        options = {"seed": self.seed, "reference": self.ev.reference_arg, "atol": self.tol.atol}
        options["devices"] = self.ev.devices  # the rules' checks run where this one ran
        return diagnose_rules(self.sel.f, self.args, argnums=self.layout.argnums, **options)

    def notes(self) -> tuple[str, ...]:
        """The report's notes: how f was evaluated (sequentially, when vmap cannot batch it),
        and precision notes (a right formula losing digits to rounding)."""
        out = []
        for note in (self.ev.sequential_note(), self.ev.devices_note()):
            if note:
                out.append(note)
        if self.analytic_unjitted:
            out.append(
                f"the derivative of f cannot run inside jaxcheck's jitted kernels "
                f"({self.analytic_unjitted}): computed op by op; f may place its own computation"
            )
        if self.analytic_unbatchable:
            what = "VJP" if self.kind == "vjp" else "JVP"
            out.append(
                f"the {what} of f cannot be batched with vmap ({self.analytic_unbatchable}): "
                "Jacobian products computed one at a time (jax.lax.map)"
            )
        return tuple(out) + tuple(self.precision_notes)

    def as_pytree(self, flat: np.ndarray) -> PyTree:
        """Theta-coordinate vector -> pytree like the differentiated arguments (others None)."""
        pieces = unravel_host(self.layout, flat)
        slots: list[Any] = [None] * self.layout.n_slots
        for leaf, piece in zip(self.layout.diff, pieces):
            slots[leaf.slot] = np.conj(piece).astype(leaf.dtype) if leaf.is_complex else piece
        full = jtu.tree_unflatten(self.layout.treedef, slots)
        if isinstance(self.argnums, (int, np.integer)):
            return full[self.layout.argnums[0]]
        return tuple(full[a] for a in self.layout.argnums)

    @property
    def step_policy(self) -> str:
        """How steps were chosen, in words."""
        if self.eps is not None:
            return f"user eps = {self.eps:.3g} (absolute, every coordinate)"
        dtype = self.ev.reference.dtype
        rel = _tolerance.relative_step(dtype)
        text = (
            f"h_i = {rel:.2e} * max(|x_i|, min(1, rms of its leaf)) ({dtype} eps**(1/3)); "
            "stencil at +-h, +-2h"
        )
        if self.calibrated_growth:
            leaves = ", ".join(f"{path} at {g:g} h" for path, g in self.calibrated_growth)
            text += (
                f"; {leaves} (median), where a calibration sample found f's rounding noise "
                "bounding the estimate at h"
            )
        if self.grown_steps:
            growth = ", ".join(f"{g:g} h" for g in _tolerance.GROWTH)
            text += (
                f"; {self.grown_steps} coordinate(s) also tried on the ladder h, {growth} (at "
                f"most {_tolerance.MAX_GROWN_STEP:g} of their scale) where f's rounding noise "
                "or truncation bound the estimate or a first comparison failed narrowly "
                "(smallest estimated error kept)"
            )
        if self.higher_order_looks:
            text += (
                f"; {self.higher_order_looks} coordinate(s) also took the stencil at twice "
                "their largest step, where truncation bound the estimate (the extrapolated "
                "value's own error, from the two stencils)"
            )
        return text

    def tile_size(self, m_tile: int, count: int) -> int:
        """Input coordinates per tile (a power of two, so few shapes compile): bounded by the
        batch size, the tile budget, the basis vectors and the `count` coordinates to check."""
        if self.batch_size:
            return int(min(self.batch_size, count))
        # Up to 4x the evaluator's own (conservative) stencil batch: fewer, larger tiles amortise
        # the per-tile dispatch; memory stays bounded by TILE_ENTRIES and 4x the chunk budget.
        k = min(
            4 * self.ev.auto_batch_size(4),
            TILE_ENTRIES // max(1, m_tile),
            TILE_ENTRIES * 4 // max(1, self.n),
            MAX_TILE,
        )
        k = int(2 ** int(np.floor(np.log2(max(1, k)))))
        return min(k, int(2 ** int(np.ceil(np.log2(max(1, count))))))

    def row_size(self) -> int:
        return int(max(1, min(ROW_ENTRIES // max(1, self.n), MAX_TILE, self.m)))

    def call_analytic(self, kernel: Callable, index: np.ndarray) -> jax.Array:
        """An analytic Jacobian kernel of `_jacobian_kernels` at this point.

        An f that places its own computation (`jax.device_put` to other devices, a jit on a
        mesh of its own) can fail inside jaxcheck's jitted kernel where it runs op by op;
        then the kernels run op by op from here on (`analytic_unjitted`, in the notes). If
        the batched products fail when they run (f shards data along an axis the batch
        makes too small), they are computed one at a time from here on
        (`analytic_unbatchable`). An f that fails one at a time too raises its own error.
        """
        index = jnp.asarray(index, jnp.int32)

        def run(fn: Callable) -> jax.Array:
            return fn(self.sel, self.layout, self.outs, self.diff_values, self.dynamic, index)

        if not (self.ev.eager or self.analytic_unjitted):
            try:
                return run(kernel)
            except Exception as error:  # noqa: BLE001 - retried op by op; a real error recurs
                self.analytic_unjitted = first_line(error)
        try:
            return run(kernel.__wrapped__)
        except Exception as error:
            if self.sel.sequential:
                raise
            self.sel = dataclasses.replace(self.sel, sequential=True)
            try:
                value = run(kernel.__wrapped__)
            except Exception:  # noqa: BLE001 - f's own error, as first raised
                self.sel = dataclasses.replace(self.sel, sequential=False)
                raise error from None
            self.analytic_unbatchable = first_line(error)
            return value


# ----------------------------------------------------------------------------------
# Building it.


def _real_view(leaves: Sequence[np.ndarray]) -> np.ndarray:
    parts = []
    for x in leaves:
        x = np.asarray(x)
        parts += [x.real.ravel(), x.imag.ravel()] if np.iscomplexobj(x) else [x.ravel()]
    return np.concatenate([p.astype(np.float64) for p in parts]) if parts else np.zeros(0)


def _not_deterministic(where: str) -> ValueError:
    return ValueError(
        f"`f` is not deterministic: two calls at the same arguments returned different "
        f"values{where}. Pass the PRNG key as an argument and hold it fixed (e.g. "
        "`f(params, x, key)` with a fixed `jax.random.key(0)`), and avoid numpy/Python "
        "randomness or mutable state inside f."
    )


def _output_leaves(f: Callable, args: tuple, has_aux: bool) -> list:
    out = f(*args)
    if has_aux:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError("`has_aux=True` but `f` does not return a pair `(value, aux)`.")
        out = out[0]
    return jtu.tree_flatten_with_path(out)[0]


def _scalar_output(f: Callable, args: tuple, has_aux: bool) -> tuple[jk.OutLeaf, np.ndarray]:
    """f(*args) evaluated twice, validated to be a deterministic real scalar.

    Raises:
      TypeError, ValueError: f is not scalar, not real floating-point, or not deterministic.
    """
    values = []
    for _ in range(2):
        leaves = [leaf for _, leaf in _output_leaves(f, args, has_aux)]
        if len(leaves) != 1 or np.shape(leaves[0]) != ():
            desc = (
                f"an array of shape {np.shape(leaves[0])}"
                if len(leaves) == 1
                else f"{len(leaves)} leaves"
            )
            raise ValueError(
                f"`f` must return a scalar (shape ()); it returned {desc}. Reduce it (e.g. with "
                "`jnp.sum`) or use `jaxcheck.check_vjp` for vector-valued functions."
            )
        value = np.asarray(jax.device_get(leaves[0]))
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError(
                f"`f` must return a real floating-point scalar; it returned dtype {value.dtype}."
            )
        values.append(value)
    if not np.array_equal(values[0], values[1], equal_nan=True):
        raise _not_deterministic(f": {values[0]!r} and {values[1]!r}")
    out = jk.OutLeaf("out", (), np.dtype(values[0].dtype), 0, 1)
    return out, values[0].astype(np.float64).reshape(1)


def _classify_outputs(
    f: Callable, args: tuple, has_aux: bool
) -> tuple[jk.OutLayout, tuple[int, ...], tuple[SkippedLeaf, ...], np.ndarray]:
    """Evaluates f twice (eagerly), classifies its output leaves and checks determinism.

    Returns:
      (outs, keep, skipped, value): the differentiable output leaves, their positions among
      all output leaves, the skipped ones, and their real-view value (float64).

    Raises:
      TypeError, ValueError: bad `has_aux` output, no floating-point output, or f not
        deterministic.
    """
    first, second = _output_leaves(f, args, has_aux), _output_leaves(f, args, has_aux)
    outs, keep, skipped, values = [], [], [], []
    offset = 0
    for pos, (path, leaf) in enumerate(first):
        path_str = "out" + jtu.keystr(path)
        dtype = getattr(leaf, "dtype", None)
        is_key = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
        arr = None if is_key else np.asarray(jax.device_get(leaf))
        if arr is None or not jnp.issubdtype(arr.dtype, jnp.inexact):
            desc = str(dtype) if dtype is not None else type(leaf).__name__
            reason = f"{desc} output has no derivative (not checked)"
            skipped.append(SkippedLeaf(path_str, tuple(np.shape(leaf)), desc, reason))
            continue
        if arr.size == 0:
            reason = "empty output (nothing to check)"
            skipped.append(SkippedLeaf(path_str, tuple(arr.shape), str(arr.dtype), reason))
            continue
        again = np.asarray(jax.device_get(second[pos][1]))
        if not np.array_equal(arr, again, equal_nan=True):
            raise _not_deterministic(f" at {path_str}")
        shape = tuple(int(s) for s in arr.shape)
        size = int(np.prod(shape, dtype=np.int64)) * (2 if np.iscomplexobj(arr) else 1)
        outs.append(jk.OutLeaf(path_str, shape, np.dtype(jnp.asarray(leaf).dtype), offset, size))
        keep.append(pos)
        values.append(arr)
        offset += size
    if not outs and any(leaf.reason.startswith("empty output") for leaf in skipped):
        return (), (), tuple(skipped), np.zeros(0)  # nothing to compare (see `nothing_to_compare`)
    if not outs:
        raise ValueError(
            f"`f` has no floating-point outputs to differentiate ({len(skipped)} integer, "
            "boolean or key output(s)). Return float arrays, or use `has_aux=True` to pass "
            "non-differentiable values on the side."
        )
    return tuple(outs), tuple(keep), tuple(skipped), _real_view(values)


def _tolerance_for(
    layout: ArgLayout, outs: jk.OutLayout, rtol: float | None, atol: float | None
) -> tuple[Tolerance, np.dtype]:
    """The dtype whose rounding the analytic side is allowed (the coarser of inputs and
    outputs) and its `Tolerance`, with the user's rtol/atol in place of the defaults."""
    dtype_in = np.dtype(np.result_type(*[leaf.real_dtype for leaf in layout.diff]))
    dtype_out = np.dtype(np.result_type(*[np.finfo(o.dtype).dtype for o in outs] or [dtype_in]))
    dtype = dtype_in if np.finfo(dtype_in).eps >= np.finfo(dtype_out).eps else dtype_out
    tol = _tolerance.default_tolerance(dtype)
    if rtol is not None or atol is not None:
        tol = Tolerance(
            rtol=tol.rtol if rtol is None else float(rtol),
            atol=None if atol is None else float(atol),
        )
    return tol, dtype


def _gradient_dtype_ok(got: np.dtype, want: np.dtype) -> bool:
    """The parameter's own dtype, or float32 for a 16-bit float parameter: mixed-precision
    code keeps float16/bfloat16 parameters and computes (and differentiates) in float32, and
    such a gradient is exact, not wrong. Any other dtype is a mistake worth naming."""
    if got == want:
        return True
    return want.itemsize == 2 and jnp.issubdtype(want, jnp.floating) and got == np.float32


def _user_gradient(
    grad_fn: Callable,
    args: tuple,
    argnums: Any,
    layout: ArgLayout,
    partition: tuple[list, list],
    eager: bool,
) -> list:
    """Calls the user's `grad_fn(*args)` and checks its structure, shapes and dtypes.

    Returns:
      One gradient array per differentiated leaf.

    Raises:
      ValueError, TypeError: the output does not match the differentiated arguments.
    """
    if not callable(grad_fn):
        raise TypeError(f"`grad_fn` must be callable or None; got {type(grad_fn).__name__}.")
    diff_values, dynamic = partition
    out = None
    if not eager:
        try:
            out = call_jitted(grad_fn, layout, diff_values, dynamic)
        except (
            jax.errors.ConcretizationTypeError,
            jax.errors.TracerArrayConversionError,
            jax.errors.TracerBoolConversionError,
        ):
            out = None  # not jittable: call it as the user would
    if out is None:
        out = grad_fn(*args)
    single = isinstance(argnums, (int, np.integer))
    nums = layout.argnums
    outs = (out,) if single else out
    if not single and (not isinstance(outs, (tuple, list)) or len(outs) != len(nums)):
        got = type(out).__name__
        if isinstance(out, (tuple, list)):
            got += f" of length {len(out)}"
        raise ValueError(
            f"`grad_fn` must return a tuple of {len(nums)} gradients (one per entry of "
            f"`argnums`={tuple(argnums)}); got {got}."
        )
    first_slot = np.cumsum([0] + [jtu.tree_structure(a).num_leaves for a in args])
    per_arg = {}
    for argnum, g in zip(nums, outs):
        treedef = jtu.tree_structure(args[argnum])
        try:
            per_arg[argnum] = treedef.flatten_up_to(g)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"`grad_fn` output for args[{argnum}] does not match its structure: expected "
                f"{treedef}, got {jtu.tree_structure(g)}. Return a pytree shaped like "
                f"args[{argnum}]."
            ) from error
    grads = []
    for leaf in layout.diff:
        g = per_arg[leaf.argnum][leaf.slot - first_slot[leaf.argnum]]
        where = f"`grad_fn` output at {leaf.path}"
        if g is None or not hasattr(g, "shape"):
            raise TypeError(
                f"{where} must be an array of shape {leaf.shape}; got {type(g).__name__}."
            )
        if tuple(g.shape) != leaf.shape:
            raise ValueError(
                f"{where} has shape {tuple(g.shape)}, but the parameter has shape {leaf.shape}."
            )
        if not _gradient_dtype_ok(np.dtype(g.dtype), leaf.dtype):
            raise TypeError(
                f"{where} has dtype {g.dtype}, but the parameter has dtype {leaf.dtype}. Return "
                f"gradients in the parameters' dtype (e.g. `.astype(jnp.{leaf.dtype})`)."
            )
        grads.append(g)
    return grads


def _user_gradient_leaves(grad_fn: Callable, args: tuple, argnums: Any, layout: ArgLayout) -> list:
    """`grad_fn(*args)` as one array per differentiated leaf (no dtype checks)."""
    out = grad_fn(*args)
    single = isinstance(argnums, (int, np.integer))
    outs = (out,) if single else tuple(out)
    first_slot = np.cumsum([0] + [jtu.tree_structure(a).num_leaves for a in args])
    per_arg = {
        a: jtu.tree_structure(args[a]).flatten_up_to(g) for a, g in zip(layout.argnums, outs)
    }
    return [per_arg[leaf.argnum][leaf.slot - first_slot[leaf.argnum]] for leaf in layout.diff]


def _theta_vector(layout: ArgLayout, grads: list) -> np.ndarray:
    """Gradient leaves as a real theta vector (complex: JAX convention -> d/dRe, d/dIm)."""
    host = jax.device_get(grads)
    return ravel_leaves(layout, [np.conj(np.asarray(g)) if np.iscomplexobj(g) else g for g in host])


def native_if_float64_fails(run: Callable[[str], Any], reference: str) -> Any:
    """`run(reference)`, or `run("native")` where that raises a JAX runtime error while the
    reference was chosen automatically: its result says why float64 was not used.

    JAX can fail evaluating f in float64 partway through a check although f evaluated in
    float64 when the reference was chosen and evaluates in its own dtypes: caches keyed
    without the x64 flag (a compiled `pure_callback` whose operands were recorded for
    float32, as JAX's sparse `spsolve` after float32 checks of f) hand a float64 program
    float32 values. A check in the native dtypes is then the one that can finish.

    Args:
      run: Runs the whole check with the given `reference` and returns its result.
      reference: The user's `reference` argument.

    Raises:
      Whatever `run` raises, where the reference was not "auto", the error is a Ctrl-C that
      JAX wrapped, or the native run fails too.
    """
    try:
        return run(reference)
    except jax.errors.JaxRuntimeError as error:
        if reference != "auto" or "KeyboardInterrupt" in str(error):
            raise  # asked for float64, or a Ctrl-C inside a callback (JAX wraps it)
        result = run("native")
        reason = f"evaluating f in float64 failed during the check ({first_line(error)})"
        return dataclasses.replace(result, reference_fallback=reason)


def build_problem(
    kind: str,
    f: Callable,
    args: tuple,
    *,
    argnums: int | Sequence[int] | None = 0,
    has_aux: bool = False,
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    reference: str = "auto",
    mode: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    grad_fn: Callable | None = None,
    devices: Any = None,
    locate_rules: bool = True,
    analytic: bool = True,
    start: float | None = None,
    precision: str = "note",
) -> Problem:
    """Validates the options and builds the `Problem` every strategy runs on.

    Args:
      kind: "grad" (scalar f; the analytic side is `jax.grad` or `grad_fn`), "vjp" or "jvp".
      f, args: The function and the point, as in `check_*`.
      analytic: Kind "grad": compute the analytic gradient (False for `numerical_grad`).
      start: When the check started (`time.perf_counter()`), for the report's seconds.
      Other arguments: the `check_*` options of the same names.

    Returns:
      The `Problem`.

    Raises:
      TypeError, ValueError: misuse, naming the argument and what to pass instead.
    """
    start = time.perf_counter() if start is None else start
    validate_options(
        f=f,
        eps=eps,
        rtol=rtol,
        atol=atol,
        batch_size=batch_size,
        seed=seed,
        has_aux=has_aux,
        mode=mode,
        progress=progress,
        locate_rules=locate_rules,
        precision=precision,
    )
    args = check_args(args)
    devices = resolve_devices(devices, args)
    layout, diff_values, dynamic = build_layout(args, normalize_argnums(argnums, len(args)))
    if kind == "grad":
        out, value = _scalar_output(f, args, has_aux)
        outs, keep, out_skipped = (out,), (0,), ()
        tol_dtype = np.dtype(np.result_type(*[leaf.real_dtype for leaf in layout.diff]))
        tol = _tolerance.default_tolerance(tol_dtype)
        if rtol is not None or atol is not None:
            tol = Tolerance(
                rtol=tol.rtol if rtol is None else float(rtol),
                atol=None if atol is None else float(atol),
            )
    else:
        outs, keep, out_skipped, value = _classify_outputs(f, args, has_aux)
        tol, tol_dtype = _tolerance_for(layout, outs, rtol, atol)
    sel = jk.OutputSelect(f, has_aux, keep)
    analytic_unbatchable = None
    if layout.n == 0 or not outs:  # nothing to difference: no float64 probe either
        reference = "native"
    else:
        analytic_unbatchable = _derivative_vmap_problem(
            kind, sel, layout, outs, diff_values, dynamic
        )
        if analytic_unbatchable:
            sel = dataclasses.replace(sel, sequential=True)
    ev = Evaluator(sel, False, layout, diff_values, dynamic, reference, value, seed, devices)
    gradient, source = None, ""
    if kind == "grad" and analytic:
        if grad_fn is not None:
            partition = (list(diff_values), list(dynamic))
            grads = _user_gradient(grad_fn, args, argnums, layout, partition, ev.eager)
            source = "grad_fn"
        else:
            kernel = ev.kernel(fd.analytic_grad)
            _, grads = kernel(f, has_aux, layout, list(diff_values), dynamic)
            source = "jax.grad"
        gradient = _theta_vector(layout, grads)
    return Problem(
        kind=kind,
        name=function_name(f),
        sel=sel,
        layout=layout,
        diff_values=list(diff_values),
        dynamic=dynamic,
        outs=outs,
        ev=ev,
        tol=tol,
        tol_dtype=tol_dtype,
        eps=eps,
        seed=int(seed),
        batch_size=batch_size,
        skipped=tuple(layout.skipped) + tuple(out_skipped),
        argnums=argnums,
        progress=progress,
        analytic=gradient,
        analytic_source=source,
        locate_rules=locate_rules,
        grad_fn=grad_fn,
        precision=precision,
        start=start,
        analytic_unbatchable=analytic_unbatchable,
    )


def _derivative_vmap_problem(
    kind: str, sel: jk.OutputSelect, layout: ArgLayout, outs: jk.OutLayout, diff: Any, dynamic: Any
) -> str | None:
    """Why the VJP (kind "vjp") or JVP (kind "jvp") of f cannot be batched over cotangents or
    tangents with vmap, or None (kind "grad": one gradient, nothing is batched). One cached
    trace of the product kernel at a batch of two (and, when it fails, one with the products
    taken one at a time: a batching problem only if that one traces)."""
    if kind == "vjp":
        u_dtype = jnp.result_type(*[jnp.finfo(o.dtype).dtype for o in outs])
        batch = jax.ShapeDtypeStruct((2, sum(o.size for o in outs)), u_dtype)
        kernel = jk.vjp_products
    elif kind == "jvp":
        batch = jax.ShapeDtypeStruct((2, layout.n), jk._in_dtype(layout))
        kernel = jk.jvp_products
    else:
        return None
    one_by_one = dataclasses.replace(sel, sequential=True)
    return batching_problem(
        lambda: kernel.trace(sel, layout, outs, diff, dynamic, batch),
        lambda: kernel.trace(one_by_one, layout, outs, diff, dynamic, batch),
    )


def call_jitted(fn: Callable, layout: ArgLayout, diff_values: list, dynamic: list) -> Any:
    """`fn(*args)` under jit, rebuilt from the partition (one compilation per layout)."""
    return _call_jitted(fn, layout, diff_values, dynamic)


@ft.partial(jax.jit, static_argnums=(0, 1))
def _call_jitted(fn: Callable, layout: ArgLayout, diff_values: list, dynamic: list) -> Any:
    return fn(*rebuild_args(layout, diff_values, dynamic))
