"""Shared machinery of `check_custom_vjp` and `check_custom_jvp` (host-side orchestration).

`Target` holds one custom rule at one point: which arguments are differentiable
(`nondiff_argnums` excluded), which of their leaves are free floating-point leaves, and
closures that call the rule (`f`) or the undecorated function (`f.fun`) on those leaves.
The checks shared by both kinds live here too: exact comparisons with rounding-aware
tolerances, the engine's directional finite-difference stencil (`Evaluator.along`) for
derivatives along seeded directions, and the batching, jit and second-order checks.

Every call into the user's code goes through `guarded`, which turns an exception into a
`RuleError` naming the call and the shapes it was given.
"""

import dataclasses
import functools as ft
import inspect
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._devices import resolve_devices
from ._flatten import check_args
from ._problem import function_name, validate_options
from ._result import shape_str
from ._rule_compare import Mismatch as Mismatch
from ._rule_compare import _as_host as _as_host
from ._rule_compare import argument_of as argument_of
from ._rule_compare import compare_leaf as compare_leaf
from ._rule_compare import compare_trees as compare_trees
from ._rule_compare import fmt as fmt
from ._rule_compare import mismatch_report as mismatch_report
from ._rule_compare import ravel_host as ravel_host
from ._rule_compare import ravel_tangent as ravel_tangent
from ._rule_result import CheckReport, RuleCheckResult, overall_status

PyTree = Any
MODES = ("auto", "full", "probe")
BATCH = 3  # examples in the vmap check
# Exact comparisons pass when |actual - expected| <= ULPS * eps * (|expected| + max|expected| over the leaf).
PRIMAL_ULPS = 32.0
LINEARITY_ULPS = 64.0
TRANSFORM_ULPS = 256.0  # vmap / jit: a different reduction order is allowed, a real bug is O(1)
AUTODIFF_ULPS = 64.0


class RuleError(Exception):
    """The user's rule (or JAX transforming it) raised; the message names the call and shapes."""


def first_line(error: BaseException) -> str:
    """The informative line of an exception message (the last one after a nested traceback)."""
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    if any(l.startswith("Traceback (most recent call last)") for l in lines):
        lines = [l for l in lines if not l.startswith(("File ", "Traceback", "^", "~"))][
            -1:
        ] or lines
    text = lines[0] if lines else "(no message)"
    return text if len(text) <= 400 else text[:397] + "..."


def describe(tree: PyTree) -> str:
    """Shapes of a pytree: `(f32[3], {'w': f32[2,3]})`."""

    def one(x: Any) -> str:
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return shape_str(_dtype_name(x.dtype), tuple(x.shape))
        return type(x).__name__ if not isinstance(x, (int, float, bool, str)) else repr(x)

    try:
        return str(jtu.tree_map(one, tree)).replace("'", "") if not isinstance(tree, str) else tree
    except Exception:  # noqa: BLE001 - a description must never fail
        return type(tree).__name__


def _dtype_name(dtype: Any) -> str:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.extended):
        return str(dtype)
    return "float0" if dtype == jax.dtypes.float0 else str(np.dtype(dtype))


def guarded(label: str, fn: Callable, *args: Any, inputs: Any = None) -> Any:
    """Calls `fn(*args)`; any exception becomes a `RuleError` naming `label` and the shapes."""
    try:
        return fn(*args)
    except RuleError:
        raise
    except Exception as error:  # noqa: BLE001 - user code may raise anything
        shown = args if inputs is None else inputs
        raise RuleError(
            f"{label} raised {type(error).__name__}: {first_line(error)} [called with {describe(shown)}]"
        ) from error


def jit_or_eager(fn: Callable, jitted: Callable | None = None) -> Callable:
    """`jax.jit(fn)` (or the given jitted version), falling back to the eager call when fn cannot be
    traced: one compilation instead of one per op."""
    jitted = jax.jit(fn) if jitted is None else jitted

    def call(*args: Any) -> Any:
        try:
            return jitted(*args)
        except Exception:  # noqa: BLE001 - not jittable (numpy inside, concrete branching): run it as written
            return fn(*args)

    return call


def upcast(x: Any) -> jax.Array:
    """A float leaf in float64 (complex128): call inside `jax.enable_x64(True)`."""
    return jnp.asarray(np.asarray(x), jnp.complex128 if np.iscomplexobj(x) else jnp.float64)


def bind_defaults(f: Any, args: tuple) -> tuple:
    """`args` with `f.fun`'s defaults bound, as JAX's `__call__` does (`resolve_kwargs`).

    `jax.nn.softmax`'s rule `_softmax(x, axis=-1, where=None, initial=-inf)` declares
    `nondiff_argnums=(1,)` and is called with one argument: JAX binds the rest from the
    signature before splitting off the nondiff arguments, and so does the check.
    """
    fun = getattr(f, "fun", None)
    if fun is None or isinstance(fun, ft.partial):
        return args
    try:
        bound = inspect.signature(fun).bind(*args)
    except (TypeError, ValueError):  # the check reports the mismatch itself
        return args
    bound.apply_defaults()
    return tuple(bound.args) if not bound.kwargs else args


def is_equinox_custom_vjp(f: Any) -> bool:
    """Whether `f` is an `equinox.filter_custom_vjp` (by its type, without importing equinox)."""
    cls = type(f)
    return (
        cls.__name__ == "filter_custom_vjp"
        and cls.__module__.split(".")[0] == "equinox"
        and hasattr(f, "fn")
        and hasattr(f, "fn_fwd")
        and hasattr(f, "fn_bwd")
    )


def equinox_as_custom_vjp(f: Any, n_args: int) -> Any:
    """An `equinox.filter_custom_vjp` as the `jax.custom_vjp` it means, for `n_args` arguments.

    Equinox differentiates the first argument (`vjp_arg`) only; the other arguments are
    nondifferentiable (here `nondiff_argnums=(1, ..., n_args - 1)`). Its rules are called
    as equinox calls them: `fn_fwd(perturbed, vjp_arg, *args)` returns (out, residuals)
    and `fn_bwd(residuals, cotangent, perturbed, vjp_arg, *args)` the cotangent of
    `vjp_arg`, where `perturbed` marks its floating-point array leaves True.

    Raises:
      TypeError: the rule is not defined yet (`def_fwd` / `def_bwd` not called).
    """
    if f.fn_fwd is None or f.fn_bwd is None:
        raise TypeError(
            f"`f` ({function_name(f.fn)}) has no rule defined yet: call `f.def_fwd` and "
            "`f.def_bwd` before checking it."
        )
    nondiff = tuple(range(1, n_args))

    def perturbed_of(vjp_arg: Any) -> Any:
        return jtu.tree_map(_is_inexact_array, vjp_arg)

    @ft.wraps(f.fn)
    def fun(vjp_arg: Any, *args: Any) -> Any:
        return f.fn(vjp_arg, *args)

    def fwd(vjp_arg: Any, *args: Any) -> Any:
        out, residuals = f.fn_fwd(perturbed_of(vjp_arg), vjp_arg, *args)
        return out, (residuals, vjp_arg)

    def bwd(*rest: Any) -> tuple:
        *args, (residuals, vjp_arg), cotangent = rest
        grad = f.fn_bwd(residuals, cotangent, perturbed_of(vjp_arg), vjp_arg, *args)
        return (grad,)

    rule = jax.custom_vjp(fun, nondiff_argnums=nondiff)
    rule.defvjp(fwd, bwd)
    rule.jaxcheck_adapts = f  # type: ignore[attr-defined]  # discovery skips stand-ins
    return rule


def adapt_rule(f: Any, args: Any, kind: str) -> Any:
    """`f` as the JAX rule object it stands for: an equinox `filter_custom_vjp` adapted."""
    if kind == "vjp" and is_equinox_custom_vjp(f) and isinstance(args, (tuple, list)):
        return equinox_as_custom_vjp(f, len(args))
    return f


def validate_rule(f: Any, kind: str) -> None:
    """Checks that `f` is a `jax.custom_vjp` (kind "vjp") or `jax.custom_jvp` (kind "jvp") with its rule defined.

    Raises:
      TypeError: `f` is a plain function, the other kind of rule, or has no rule defined.
    """
    want, other = (
        (jax.custom_vjp, jax.custom_jvp) if kind == "vjp" else (jax.custom_jvp, jax.custom_vjp)
    )
    other_fn = f"check_custom_{'jvp' if kind == 'vjp' else 'vjp'}"
    if isinstance(f, other):
        raise TypeError(
            f"`f` is a `jax.{other.__name__}` function ({function_name(f.fun)}); use `jaxcheck.{other_fn}` to check its rule."
        )
    if not isinstance(f, want):
        hint = ""
        if hasattr(f, "__wrapped__") or type(f).__name__ == "PjitFunction":
            hint = f" It looks like a jitted function: pass the undecorated `jax.{want.__name__}` object itself, not `jax.jit` of it."
        raise TypeError(
            f"`f` must be a `jax.{want.__name__}` function; got {type(f).__name__} {function_name(f) if callable(f) else ''!s}.{hint} "
            "For a plain function use `jaxcheck.check_grad` (scalar output) to check `jax.grad` against finite differences."
        )
    rule = (f.fwd, f.bwd) if kind == "vjp" else (f.jvp,)
    if not all(rule):
        define = "f.defvjp(fwd, bwd)" if kind == "vjp" else "@f.defjvp"
        raise TypeError(
            f"`f` ({function_name(f.fun)}) has no rule defined yet: call `{define}` before checking it."
        )


def validate_common(
    f: Any, order: int, mode: str, eps: Any, rtol: Any, atol: Any, seed: Any
) -> None:
    validate_options(f=f, eps=eps, rtol=rtol, atol=atol, seed=seed)
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"`order` must be 1 or 2 (check second derivatives too); got {order!r}.")
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")


# ----------------------------------------------------------------------------------
# The rule at one point.


@dataclasses.dataclass(frozen=True)
class Held:
    """Placeholder for a leaf the finite-difference engine must not see (restored by `Target.unmirror`)."""

    path: str


def _is_inexact_array(x: Any) -> bool:
    if not (hasattr(x, "dtype") and hasattr(x, "shape")) or jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.extended
    ):
        return False
    return bool(jnp.issubdtype(x.dtype, jnp.inexact))


@dataclasses.dataclass(frozen=True)
class OutLeaf:
    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # first position in ravel_output
    size: int  # real coordinates (2x for complex)

    @property
    def inexact(self) -> bool:
        return bool(np.issubdtype(self.dtype, np.inexact))


def out_leaves(out: PyTree, prefix: str = "out") -> tuple[tuple[OutLeaf, ...], Any]:
    """The leaves of an output pytree with their paths and positions in `ravel_output`."""
    flat, treedef = jtu.tree_flatten_with_path(out)
    leaves, offset = [], 0
    for path, x in flat:
        dtype = np.dtype(jnp.asarray(x).dtype) if not hasattr(x, "dtype") else np.dtype(x.dtype)
        shape = tuple(np.shape(x))
        size = int(np.prod(shape, dtype=np.int64)) * (
            2 if np.issubdtype(dtype, np.complexfloating) else 1
        )
        leaves.append(OutLeaf(prefix + jtu.keystr(path), shape, dtype, offset, size))
        offset += size
    return tuple(leaves), treedef


def locate(leaves: Sequence[OutLeaf], k: int) -> tuple[OutLeaf, tuple[int, ...], str]:
    """Flat position in `ravel_output` -> (leaf, multi-index, part)."""
    for leaf in leaves:
        if leaf.offset <= k < leaf.offset + leaf.size:
            local, part = k - leaf.offset, ""
            if np.issubdtype(leaf.dtype, np.complexfloating):
                half = leaf.size // 2
                part, local = ("real" if local < half else "imag"), local % half
            return (
                leaf,
                tuple(int(i) for i in np.unravel_index(local, leaf.shape)) if leaf.shape else (),
                part,
            )
    raise IndexError(k)


class Target:
    """A custom rule at one point: argument classification and closures over the free leaves.

    Free leaves are the finite floating-point leaves of the differentiable arguments (those
    not in `nondiff_argnums`). Integer, boolean and non-array leaves, the nondiff arguments,
    and floating-point leaves holding NaN/Inf are held fixed at their values.
    """

    def __init__(self, f: Any, args: tuple, kind: str):
        self.f, self.kind = f, kind
        n = len(args)
        nondiff = set()
        for i in f.nondiff_argnums:
            if not -n <= i < n:
                raise ValueError(
                    f"`f` declares nondiff_argnums={tuple(f.nondiff_argnums)} but `args` has only {n} argument(s)."
                )
            nondiff.add(int(i) % n)
        self.nondiff = tuple(sorted(nondiff))
        self.diff_pos = tuple(i for i in range(n) if i not in nondiff)

        def to_array(x: Any) -> Any:
            return (
                jnp.asarray(x) if isinstance(x, (float, complex)) and not isinstance(x, bool) else x
            )

        self.args = tuple(
            a if i in nondiff else jtu.tree_map(to_array, a) for i, a in enumerate(args)
        )
        flat, self.treedef = jtu.tree_flatten_with_path(self.args)
        self.paths = ["args" + jtu.keystr(p) for p, _ in flat]
        self.leaves = [x for _, x in flat]
        self.argnum_of = [p[0].idx for p, _ in flat]
        self.free_slots: list[int] = []
        self.held: list[tuple[str, str]] = []  # (path, reason)
        for slot, x in enumerate(self.leaves):
            if self.argnum_of[slot] in nondiff or not _is_inexact_array(x):
                continue
            if not bool(np.all(np.isfinite(np.asarray(x)))):
                self.held.append(
                    (self.paths[slot], "holds NaN/Inf: no derivative there, held fixed")
                )
                continue
            self.free_slots.append(slot)
        self.free_paths = [self.paths[s] for s in self.free_slots]
        self.free_values = [jnp.asarray(self.leaves[s]) for s in self.free_slots]
        self.free_dtypes = [np.dtype(x.dtype) for x in self.free_values]
        self.fd_argnums = tuple(sorted({self.argnum_of[s] for s in self.free_slots}))
        self.name = function_name(f.fun)

    # -- rebuilding arguments -------------------------------------------------------

    def rebuild(self, free: Sequence[Any]) -> tuple:
        slots = list(self.leaves)
        for s, x in zip(self.free_slots, free):
            slots[s] = x
        return jtu.tree_unflatten(self.treedef, slots)

    def free_of(self, args: tuple) -> list:
        leaves = self.treedef.flatten_up_to(args)
        return [leaves[s] for s in self.free_slots]

    def closed(self, free: Sequence[Any]) -> PyTree:
        """f(*args) with the free leaves replaced: runs the custom rule under transformations."""
        return self.f(*self.rebuild(free))

    def fun_closed(self, free: Sequence[Any]) -> PyTree:
        """f.fun(*args): the undecorated function."""
        return self.f.fun(*self.rebuild(free))

    def mirror(self) -> tuple:
        """`args` with nondiff arguments and held leaves replaced by static `Held` placeholders."""
        held = {p for p, _ in self.held}
        slots = [
            Held(self.paths[s])
            if (self.argnum_of[s] in self.nondiff or self.paths[s] in held)
            else x
            for s, x in enumerate(self.leaves)
        ]
        return jtu.tree_unflatten(self.treedef, slots)

    def unmirror(self, args: tuple) -> tuple:
        leaves = self.treedef.flatten_up_to(args)
        return jtu.tree_unflatten(
            self.treedef,
            [self.leaves[s] if isinstance(x, Held) else x for s, x in enumerate(leaves)],
        )

    def notes(self) -> tuple[str, ...]:
        out = []
        if self.nondiff:
            out.append(
                f"nondiff_argnums={self.nondiff}: "
                + ", ".join(f"args[{i}]" for i in self.nondiff)
                + " held fixed"
            )
        for path, reason in self.held:
            out.append(f"{path} {reason}")
        fixed = [
            self.paths[s]
            for s, x in enumerate(self.leaves)
            if self.argnum_of[s] not in self.nondiff
            and hasattr(x, "dtype")
            and not _is_inexact_array(x)
        ]
        if fixed:
            out.append(
                f"non-float leaves held fixed: {', '.join(fixed[:6])}{' ...' if len(fixed) > 6 else ''}"
            )
        return tuple(out)


class MirrorFn:
    """`g(*mirror_args) = G(free leaves)`: a hashable function for the finite-difference engine."""

    def __init__(self, target: Target, G: Callable, n_extra: int = 0, name: str = "G"):
        self.target, self.G, self.n_extra, self.__name__ = target, G, n_extra, name

    def __call__(self, *args: Any) -> Any:
        n = len(args) - self.n_extra
        free = self.target.free_of(self.target.unmirror(tuple(args[:n])))
        return self.G(free, *args[n:])


# ----------------------------------------------------------------------------------
# Randomness: every draw is seeded from (seed, salt, leaf path).


def _rng(seed: int, salt: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(salt.encode()) & 0xFFFFFFFF])


def as_jax_values(tree: PyTree) -> PyTree:
    """Host (numpy) inexact leaves as jax Arrays, as JAX hands them to a rule: a rule may index
    its cotangent or tangent with a traced index (odeint's bwd: `g[i]` inside a scan), which a
    numpy array refuses. float0 zeros and everything else are left as they are."""

    def one(x: Any) -> Any:
        if isinstance(x, np.ndarray) and x.dtype != jax.dtypes.float0 and x.dtype.kind in "fc":
            return jnp.asarray(x)
        return x

    return jtu.tree_map(one, tree)


def leaf_normal(seed: int, salt: str, path: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A standard-normal array for one leaf, seeded from (seed, salt, path).

    Drawn on the host with numpy's PCG64 (no JAX dispatch for these small draws), in
    float32 and then cast, so both precisions see the same values; adding a leaf does not
    change the draws of the others.
    """
    dtype = np.dtype(dtype)
    rng = _rng(seed, f"{salt}:{path}")
    if np.issubdtype(dtype, np.complexfloating):
        z = rng.standard_normal(shape, np.float32).astype(np.float64) + 1j * rng.standard_normal(
            shape, np.float32
        ).astype(np.float64)
        return (z / np.sqrt(2)).astype(dtype)
    if not np.issubdtype(dtype, np.floating):
        return np.zeros(shape, jax.dtypes.float0)
    return rng.standard_normal(shape, np.float32).astype(dtype)


def uniform_scalar(seed: int, salt: str) -> float:
    """A seeded coefficient in +-[0.5, 2] for linearity combinations."""
    rng = _rng(seed, salt)
    mag = float(np.float32(rng.uniform(0.5, 2.0)))
    return mag if rng.random() < 0.5 else -mag


def random_free(target: Target, seed: int, salt: str) -> list[np.ndarray]:
    """A tangent for the free leaves."""
    return [
        leaf_normal(seed, salt, p, tuple(np.shape(x)), d)
        for p, x, d in zip(target.free_paths, target.free_values, target.free_dtypes)
    ]


def random_out(outs: Sequence[OutLeaf], seed: int, salt: str) -> list[np.ndarray]:
    """A cotangent for every output leaf (float0 zeros for integer outputs)."""
    return [leaf_normal(seed, salt, o.path, o.shape, o.dtype) for o in outs]


def batch_point(target: Target, seed: int) -> list[np.ndarray]:
    """BATCH points around the free leaves, stacked: the point itself, then two multiplicative perturbations."""
    out = []
    for p, x, d in zip(target.free_paths, target.free_values, target.free_dtypes):
        x = np.asarray(x)
        pts = [x] + [
            (x * (1 + 0.05 * leaf_normal(seed, f"batch{b}", p, x.shape, np.float64))).astype(d)
            for b in range(1, BATCH)
        ]
        out.append(np.stack(pts))
    return out


# ----------------------------------------------------------------------------------
# Checks shared by both kinds.


def skipped(name: str, why: str) -> CheckReport:
    return CheckReport(name=name, status="skipped", message=why)


def error_report(name: str, error: RuleError, hint: str = "") -> CheckReport:
    return CheckReport(
        name=name, status="error", message=str(error), details=(hint,) if hint else ()
    )


def _stack(trees: Sequence[Any]) -> Any:
    return jtu.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def vmap_check(
    pair_fn: Callable,
    jitted: Callable,
    xs: list[np.ndarray],
    ws: list[Any],
    paths: Sequence[str],
    dtypes: Sequence[Any],
    what: str,
    kw: dict,
) -> CheckReport:
    """`vmap(pair_fn)` over BATCH (point, w) examples vs a loop over them (`jitted`, the same jitted
    function the jit check uses, so only batching differs; eager when it cannot be traced)."""
    vmapped = jax.vmap(
        pair_fn
    )  # jitted when possible (one compilation); eager vmap when the rule cannot be traced
    batched = guarded(
        f"jax.vmap of the {what}",
        jit_or_eager(vmapped),
        [jnp.asarray(x) for x in xs],
        as_jax_values(_stack(ws)),
    )
    flat_b = jtu.tree_leaves(batched)
    single_fn = jit_or_eager(pair_fn, jitted)
    for b in range(BATCH):
        point = [jnp.asarray(x[b]) for x in xs]
        single = jtu.tree_leaves(guarded(f"the {what}", single_fn, point, as_jax_values(ws[b])))
        bad = compare_trees(
            [np.asarray(l)[b] for l in flat_b], single, paths, dtypes, TRANSFORM_ULPS, **kw
        )
        if bad:
            return mismatch_report(
                "vmap",
                f"jax.vmap of the {what} differs from a loop over examples at batch element {b} of {BATCH}, {{where}}",
                bad,
                names=("vmapped", "looped"),
                argument_of=argument_of,
                extra=(
                    f"batch of {BATCH}: element 0 is the given point, 1-2 are seeded perturbations x*(1 + 0.05 z); {what} inputs seeded likewise",
                ),
            )
    return CheckReport(
        name="vmap",
        status="passed",
        message=f"jax.vmap of the {what} over {BATCH} examples equals a loop",
    )


def jit_check(
    pair_fn: Callable,
    jitted_fn: Callable,
    free: list,
    w: Any,
    paths: Sequence[str],
    dtypes: Sequence[Any],
    what: str,
    kw: dict,
) -> CheckReport:
    """`jitted_fn` (= `jax.jit(pair_fn)`) vs the eager call."""
    w = as_jax_values(w)
    eager = jtu.tree_leaves(guarded(f"the eager {what}", pair_fn, free, w))
    jitted = jtu.tree_leaves(guarded(f"jax.jit of the {what}", jitted_fn, free, w))
    bad = compare_trees(jitted, eager, paths, dtypes, TRANSFORM_ULPS, **kw)
    if bad:
        return mismatch_report(
            "jit",
            f"jax.jit of the {what} differs from the eager {what} at {{where}}",
            bad,
            names=("jitted", "eager"),
            argument_of=argument_of,
        )
    return CheckReport(
        name="jit", status="passed", message=f"jax.jit of the {what} equals the eager {what}"
    )


def run_checks(
    state: Any,
    names: tuple[str, ...],
    methods: dict[str, Callable[[], CheckReport]],
    report_order: tuple[str, ...],
) -> list[CheckReport]:
    """Runs the named checks in `names` order, reports them in `report_order`.

    A `RuleError` becomes an "error" report; after a fatal problem (`state.fatal`) the rest
    are skipped. `state.statuses` records each check's status as it completes, so a later
    check can depend on an earlier one.
    """
    reports = {}
    for name in names:
        if state.fatal is not None and name != "primal":
            reports[name] = skipped(name, f"not run: {state.fatal}")
        else:
            start = time.perf_counter()
            try:
                report = methods[name]()
            except RuleError as error:
                report = error_report(name, error)
            reports[name] = dataclasses.replace(report, seconds=time.perf_counter() - start)
        state.statuses[name] = reports[name].status
    return [reports[n] for n in report_order if n in reports]


# Checks that run before the rule's values are used as evidence; the rest need free leaves.
STRUCTURAL_CHECKS = ("primal", "structure", "linearity")
NO_FREE_LEAVES = "no finite floating-point leaves in the differentiable arguments"


def run_battery(
    kind: str,
    state_class: Callable[..., Any],
    f: Any,
    args: Any,
    *,
    order: int,
    mode: str,
    eps: float | None,
    rtol: float | None,
    atol: float | None,
    seed: int,
    reference: str,
    devices: Any,
    run_order: tuple[str, ...],
    report_order: tuple[str, ...],
) -> RuleCheckResult:
    """The custom-rule battery shared by `check_custom_vjp` and `check_custom_jvp`.

    Validates the rule and the options, binds default nondiff arguments, builds the rule's
    state at its point, runs its check methods (named like the checks, "-" as "_";
    "second-order" only at order 2) in `run_order`, skips the value checks when no leaf is
    free, and assembles the `RuleCheckResult`.

    Args:
      kind: "vjp" or "jvp".
      state_class: The rule at its point (`_VjpCheck` or `_JvpCheck`), built as
        `state_class(f, args, order=..., mode=..., eps=..., rtol=..., atol=..., seed=...,
        reference=..., devices=...)`, `devices` resolved (a tuple of `jax.Device`): every
        finite-difference evaluation of its checks is split over them.
      f, args: The rule and the arguments, as given to `check_custom_*`.
      order, mode, eps, rtol, atol, seed, reference, devices: The check's options.
      run_order, report_order: The order the checks run in and are reported in.

    Raises:
      TypeError, ValueError: `f` is not a rule of this kind; misuse of the options.
    """
    start = time.perf_counter()
    f = adapt_rule(f, args, kind)
    validate_rule(f, kind)
    validate_common(f, order, mode, eps, rtol, atol, seed)
    args = bind_defaults(f, check_args(args))
    devices = resolve_devices(devices, args)
    options = {"mode": mode, "eps": eps, "rtol": rtol, "atol": atol, "reference": reference}
    options["devices"] = devices
    state = state_class(f, args, order=order, seed=int(seed), **options)
    names = tuple(n for n in run_order if order == 2 or n != "second-order")
    methods = {name: getattr(state, name.replace("-", "_")) for name in names}
    if not state.t.free_slots:
        for name in names:
            if name not in STRUCTURAL_CHECKS:
                methods[name] = ft.partial(skipped, name, NO_FREE_LEAVES)
    checks = tuple(run_checks(state, names, methods, report_order))
    status, reason = overall_status(checks)
    return RuleCheckResult(
        name=state.t.name,
        kind=f"custom_{kind}",
        status=status,
        reason=reason,
        checks=checks,
        order=int(order),
        mode=state.mode,
        seed=int(seed),
        seconds=time.perf_counter() - start,
        notes=state.t.notes(),
        devices=len(devices),
    )
