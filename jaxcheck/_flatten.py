"""Argument layout: which leaves are differentiated, their paths, and theta <-> pytree.

Host-side classification (`ArgLayout`, `build_layout`) and the traced rebuild of the
user's arguments from a flat real vector theta (`rebuild_args`, `unravel`).

Differentiated leaves are the inexact (floating or complex) array leaves of the
arguments named by `argnums`. Complex leaves contribute two real coordinates per
element (real part block, then imaginary part block). Integer, boolean and PRNG-key
leaves are held fixed and reported as skipped. Python floats (and complex numbers) in
a differentiated argument are differentiated like arrays, as `jax.grad` does; other
Python scalars (flags, counts, strings) are passed as static values, exactly as the
user passed them.
"""

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DiffLeaf:
    """A differentiated leaf and its place in theta."""

    path: str
    argnum: int
    slot: int  # position among the flattened leaves of `args`
    shape: tuple[int, ...]
    dtype: np.dtype  # the user's dtype
    offset: int  # first coordinate in theta
    size: int  # number of real coordinates (2 * elements for complex)

    @property
    def is_complex(self) -> bool:
        return bool(np.issubdtype(self.dtype, np.complexfloating))

    @property
    def real_dtype(self) -> np.dtype:
        return np.dtype(jnp.finfo(self.dtype).dtype)


@dataclasses.dataclass(frozen=True)
class SkippedLeaf:
    """A leaf of a differentiated argument that is held fixed."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    reason: str


class _Static:
    """A non-array leaf passed through unchanged; hashed by value when possible."""

    def __init__(self, value: Any):
        self.value = value
        try:
            self._key: Hashable = ("v", type(value), value)
            hash(self._key)
        except TypeError:
            self._key = ("id", id(value))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and self._key == other._key


@dataclasses.dataclass(frozen=True)
class ArgLayout:
    """Static description of the arguments, hashable so jitted kernels can be reused.

    Two calls with arguments of the same structure, shapes and dtypes (and equal
    static leaves) get equal layouts, so the compiled kernels are reused.
    """

    treedef: Any
    n_args: int
    argnums: tuple[int, ...]
    diff: tuple[DiffLeaf, ...]
    skipped: tuple[SkippedLeaf, ...]
    dynamic_slots: tuple[int, ...]  # slots passed as traced arrays, not differentiated
    static_slots: tuple[tuple[int, _Static], ...]

    @property
    def n(self) -> int:
        """Number of real coordinates in theta."""
        return sum(leaf.size for leaf in self.diff)

    @property
    def n_slots(self) -> int:
        return len(self.diff) + len(self.dynamic_slots) + len(self.static_slots)

    def locate(self, coordinate: int) -> tuple[DiffLeaf, tuple[int, ...], str]:
        """Maps a theta coordinate to (leaf, multi-index, part), part in {"", "real", "imag"}."""
        for leaf in self.diff:
            if leaf.offset <= coordinate < leaf.offset + leaf.size:
                local = coordinate - leaf.offset
                part = ""
                if leaf.is_complex:
                    half = leaf.size // 2
                    part = "real" if local < half else "imag"
                    local = local % half
                index = (
                    tuple(int(i) for i in np.unravel_index(local, leaf.shape)) if leaf.shape else ()
                )
                return leaf, index, part
        raise IndexError(f"coordinate {coordinate} is outside theta (n={self.n})")


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _describe_dtype(x: Any) -> str:
    return str(getattr(x, "dtype", type(x).__name__))


def normalize_argnums(
    argnums: int | Sequence[int] | None, n_args: int, name: str = "argnums"
) -> tuple[int, ...]:
    """Validates `argnums` like `jax.grad` does; `None` means every argument.

    Raises:
      TypeError, ValueError: `argnums` is not an int or a sequence of ints, or out of range.
    """
    if argnums is None:
        return tuple(range(n_args))
    single = isinstance(argnums, (int, np.integer)) and not isinstance(argnums, bool)
    items = (argnums,) if single else argnums
    try:
        items = tuple(items)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"`{name}` must be an int or a tuple of ints; got {argnums!r}.") from None
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"`{name}` must be an int or a tuple of ints; got {argnums!r}.")
        if not -n_args <= a < n_args:
            raise ValueError(
                f"`{name}`={argnums!r} is out of range: `args` has {n_args} argument(s), "
                f"so valid values are 0..{n_args - 1}."
            )
        out.append(int(a) % n_args)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}`={argnums!r} names an argument twice.")
    if not out:
        raise ValueError(f"`{name}` is empty: name at least one argument to differentiate.")
    return tuple(out)


def check_args(args: Any, name: str = "args") -> tuple:
    """Validates that `args` is a tuple (or list) of arguments.

    Raises:
      TypeError: `args` is an array or another single value.
    """
    if isinstance(args, list):
        return tuple(args)
    if not isinstance(args, tuple):
        hint = "a jax.Array" if _is_array(args) else type(args).__name__
        raise TypeError(
            f"`{name}` must be a tuple of arguments; got {hint}. Did you mean `{name}=(x,)`?"
        )
    return args


def build_layout(args: tuple, argnums: tuple[int, ...]) -> tuple[ArgLayout, list[Any], list[Any]]:
    """Classifies every leaf of `args`.

    Returns:
      (layout, diff_values, dynamic_values): the hashable layout, the differentiated
      leaves as numpy/jax arrays (user dtypes), and the other array leaves.

    Raises:
      ValueError: no differentiated argument has a floating-point leaf.
    """
    with_path, treedef = jtu.tree_flatten_with_path(args)
    diff, skipped, dynamic_slots, static_slots = [], [], [], []
    diff_values, dynamic_values = [], []
    offset = 0
    for slot, (path, leaf) in enumerate(with_path):
        argnum = path[0].idx if isinstance(path[0], jtu.SequenceKey) else -1
        path_str = "args" + jtu.keystr(path)
        differentiated = argnum in argnums
        if differentiated and isinstance(leaf, (float, complex)) and not isinstance(leaf, bool):
            leaf = jnp.asarray(leaf)
        if not _is_array(leaf):
            static_slots.append((slot, _Static(leaf)))
            if differentiated and leaf is not None:
                skipped.append(
                    SkippedLeaf(
                        path_str, (), type(leaf).__name__, "not an array (passed through unchanged)"
                    )
                )
            continue
        dtype = leaf.dtype
        is_key = _is_key(leaf)
        inexact = not is_key and jnp.issubdtype(dtype, jnp.inexact)
        if differentiated and inexact:
            # The dtype JAX computes in: numpy float64 with x64 off is float32 (weak types
            # and Python scalars were made arrays above and canonicalise the same way).
            dtype = jax.dtypes.canonicalize_dtype(dtype)
            if isinstance(leaf, (np.ndarray, np.generic)) and np.dtype(leaf.dtype) != dtype:
                leaf = np.asarray(leaf, dtype)
            shape = tuple(int(s) for s in np.shape(leaf))
            size = int(np.prod(shape, dtype=np.int64)) * (
                2 if jnp.issubdtype(dtype, jnp.complexfloating) else 1
            )
            diff.append(DiffLeaf(path_str, argnum, slot, shape, np.dtype(dtype), offset, size))
            diff_values.append(leaf)
            offset += size
            continue
        dynamic_slots.append(slot)
        dynamic_values.append(leaf)
        if differentiated:
            reason = (
                "PRNG key (held fixed)"
                if is_key
                else f"{_describe_dtype(leaf)} is not a floating-point dtype (held fixed)"
            )
            skipped.append(
                SkippedLeaf(path_str, tuple(np.shape(leaf)), _describe_dtype(leaf), reason)
            )
    if not diff:
        names = ", ".join(f"args[{a}]" for a in argnums)
        raise ValueError(
            f"Nothing to differentiate: {names} has no floating-point leaves "
            f"({len(skipped)} leaf/leaves held fixed: integer, boolean, key or non-array). "
            "Pass float arrays (e.g. `jnp.asarray(x, jnp.float32)`) or choose other `argnums`."
        )
    layout = ArgLayout(
        treedef=treedef,
        n_args=len(args),
        argnums=argnums,
        diff=tuple(diff),
        skipped=tuple(skipped),
        dynamic_slots=tuple(dynamic_slots),
        static_slots=tuple(static_slots),
    )
    return layout, diff_values, dynamic_values


def ravel_leaves(layout: ArgLayout, values: Sequence[Any]) -> np.ndarray:
    """Host: the differentiated leaves as one float64 real vector theta (complex as re, im blocks)."""
    parts = []
    for leaf, value in zip(layout.diff, values):
        arr = np.asarray(value)
        if leaf.is_complex:
            parts += [arr.real.astype(np.float64).ravel(), arr.imag.astype(np.float64).ravel()]
        else:
            parts.append(arr.astype(np.float64).ravel())
    return np.concatenate(parts) if parts else np.zeros((0,), np.float64)


def unravel_host(layout: ArgLayout, theta: np.ndarray) -> list[np.ndarray]:
    """Host: splits a real vector (n,) or (..., n) into leaf-shaped arrays (complex recombined)."""
    out = []
    for leaf in layout.diff:
        block = theta[..., leaf.offset : leaf.offset + leaf.size]
        if leaf.is_complex:
            half = leaf.size // 2
            block = block[..., :half] + 1j * block[..., half:]
        out.append(np.reshape(block, theta.shape[:-1] + leaf.shape))
    return out


# ----------------------------------------------------------------------------------
# Traced: everything below runs under jit and vmap.


def unravel(layout: ArgLayout, theta: jax.Array, dtypes: Sequence[Any]) -> list[jax.Array]:
    """Traced: splits theta (n,) into differentiated leaves of the given dtypes."""
    out = []
    for leaf, dtype in zip(layout.diff, dtypes):
        block = theta[leaf.offset : leaf.offset + leaf.size]
        if leaf.is_complex:
            half = leaf.size // 2
            real_dtype = jnp.finfo(dtype).dtype
            block = jax.lax.complex(
                block[:half].astype(real_dtype), block[half:].astype(real_dtype)
            )
        out.append(block.astype(dtype).reshape(leaf.shape))
    return out


def rebuild_args(
    layout: ArgLayout, diff_values: Sequence[Any], dynamic_values: Sequence[Any]
) -> tuple:
    """Traced: the user's `args` tuple from differentiated and fixed leaves."""
    slots: list[Any] = [None] * layout.n_slots
    for leaf, value in zip(layout.diff, diff_values):
        slots[leaf.slot] = value
    for slot, value in zip(layout.dynamic_slots, dynamic_values):
        slots[slot] = value
    for slot, static in layout.static_slots:
        slots[slot] = static.value
    return jtu.tree_unflatten(layout.treedef, slots)


def ravel_output(out: PyTree) -> jax.Array:
    """Traced: any output pytree as one real 1-D vector (complex leaves as re, im blocks)."""
    parts = []
    for leaf in jtu.tree_leaves(out):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            parts += [jnp.real(leaf).ravel(), jnp.imag(leaf).ravel()]
        else:
            parts.append(leaf.ravel())
    if not parts:
        return jnp.zeros((0,))
    dtype = jnp.result_type(*parts)
    return jnp.concatenate([p.astype(dtype) for p in parts])


def call_flat(
    f: Callable,
    has_aux: bool,
    layout: ArgLayout,
    theta: jax.Array,
    dtypes: Sequence[Any],
    dynamic_values: Sequence[Any],
) -> jax.Array:
    """Traced: f at theta, as a real output vector."""
    args = rebuild_args(layout, unravel(layout, theta, dtypes), dynamic_values)
    out = f(*args)
    if has_aux:
        out = out[0]
    return ravel_output(out)
