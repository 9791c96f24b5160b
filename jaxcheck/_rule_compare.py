"""Host-side: exact comparisons of rule outputs with rounding-aware tolerances, and their findings."""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from ._rule_result import CheckReport

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """The worst out-of-tolerance element of one leaf (or a shape/structure problem)."""

    path: str
    index: tuple[int, ...] | None
    actual: Any
    expected: Any
    tolerance: float
    n_bad: int
    size: int
    problem: str = ""  # "" for a value mismatch, else a description

    def line(self, actual_name: str = "actual", expected_name: str = "expected") -> str:
        if self.problem:
            return f"{self.path}: {self.problem}"
        idx = "" if not self.index else "[" + ",".join(str(i) for i in self.index) + "]"
        return (
            f"{self.path}{idx}: {actual_name} {fmt(self.actual)} vs {expected_name} {fmt(self.expected)} "
            f"(|diff| {abs(self.actual - self.expected):.2e} > tolerance {self.tolerance:.2e}; {self.n_bad} of {self.size} elements)"
        )


def fmt(x: Any) -> str:
    if isinstance(x, complex) or np.iscomplexobj(x):
        return f"{complex(x):.6g}"
    x = float(x)
    if not np.isfinite(x):
        return str(x)
    return f"{x:.6g}" if x == 0 or 1e-3 <= abs(x) < 1e5 else f"{x:.4e}"


def _as_host(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.complex128) if np.iscomplexobj(x) else x.astype(np.float64)


def ravel_host(leaves: Sequence[Any]) -> np.ndarray:
    """Leaves as one real float64 vector in `ravel_output`'s layout (complex: real block, then imag block)."""
    parts = []
    for x in leaves:
        x = _as_host(x)
        parts += [x.real.ravel(), x.imag.ravel()] if np.iscomplexobj(x) else [x.ravel()]
    return np.concatenate(parts) if parts else np.zeros(0)


def ravel_tangent(tree: PyTree) -> np.ndarray:
    """Host `ravel_output`: float0 leaves (tangents of integer outputs) count as zeros."""
    leaves = [
        np.zeros(np.shape(x)) if getattr(x, "dtype", None) == jax.dtypes.float0 else x
        for x in jtu.tree_leaves(tree)
    ]
    return ravel_host(leaves)


def compare_leaf(
    actual: Any,
    expected: Any,
    path: str,
    dtype: Any,
    ulps: float,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    noise: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> Mismatch | None:
    """Compares one leaf with a rounding-aware tolerance.

    tolerance_i = ulps * eps(dtype) * (s_i + max s) [+ 4 * (noise_i + rms noise)], with s = |expected|
    unless `scale` is given; the user's `atol + rtol * |expected|` replaces it when larger.
    NaN/Inf must appear in the same places with the same values.
    """
    if any(getattr(x, "dtype", None) == jax.dtypes.float0 for x in (actual, expected)):
        return None  # tangents/cotangents of integer values carry no information
    a, e = _as_host(actual), _as_host(expected)
    if a.shape != e.shape:
        return Mismatch(
            path,
            None,
            None,
            None,
            0.0,
            a.size,
            e.size,
            f"shape {a.shape} where {e.shape} was expected",
        )
    if e.size == 0:
        return None
    dtype = np.dtype(dtype)
    eps = float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.inexact) else 0.0
    s = np.abs(e) if scale is None else np.asarray(scale, np.float64)
    finite_s = s[np.isfinite(s)]
    tol = (
        ulps
        * eps
        * (np.where(np.isfinite(s), s, 0.0) + (float(finite_s.max()) if finite_s.size else 0.0))
    )
    if noise is not None:
        noise = np.where(np.isfinite(noise), noise, 0.0)
        tol = tol + 4.0 * (noise + float(np.sqrt(np.mean(np.square(noise)))))
    if rtol is not None or atol is not None:
        tol = np.maximum(tol, (atol or 0.0) + (rtol or 0.0) * np.abs(e))
    tol = tol + float(np.finfo(np.float64).tiny)
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - e)
        same_special = (np.isnan(a) & np.isnan(e)) | (np.isinf(a) & np.isinf(e) & (a == e))
        bad = ~(diff <= tol) & ~same_special
    if not bad.any():
        return None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ratio = np.where(bad, np.where(np.isfinite(diff), diff / tol, np.inf), -1.0)
    k = int(np.argmax(ratio))
    index = tuple(int(i) for i in np.unravel_index(k, e.shape)) if e.shape else ()
    val = lambda z: complex(z) if np.iscomplexobj(z) else float(z)  # noqa: E731
    return Mismatch(
        path,
        index,
        val(a.reshape(-1)[k]),
        val(e.reshape(-1)[k]),
        float(tol.reshape(-1)[k]),
        int(bad.sum()),
        int(e.size),
    )


def compare_trees(
    actual: Sequence[Any],
    expected: Sequence[Any],
    paths: Sequence[str],
    dtypes: Sequence[Any],
    ulps: float,
    **kw: Any,
) -> list[Mismatch]:
    """`compare_leaf` over aligned leaf lists; returns the mismatches, worst leaf first."""
    out = []
    for a, e, p, d in zip(actual, expected, paths, dtypes):
        m = compare_leaf(a, e, p, d, ulps, **kw)
        if m is not None:
            out.append(m)

    def badness(m: Mismatch) -> float:
        if m.problem:
            return -np.inf
        diff = abs(m.actual - m.expected)
        return -(diff / m.tolerance) if np.isfinite(diff) else -np.inf

    return sorted(out, key=badness)


def mismatch_report(
    name: str,
    message: str,
    mismatches: list[Mismatch],
    *,
    names: tuple[str, str] = ("actual", "expected"),
    argument_of: Callable[[str], str | None] | None = None,
    extra: Sequence[str] = (),
) -> CheckReport:
    """A failed `CheckReport` for the worst mismatch, with every mismatching leaf in the details."""
    worst = mismatches[0]
    message = message.replace(
        "{where}", worst.path + ("[" + ",".join(map(str, worst.index)) + "]" if worst.index else "")
    )
    details = tuple(m.line(*names) for m in mismatches[:8]) + tuple(extra)
    return CheckReport(
        name=name,
        status="failed",
        message=message,
        argument=argument_of(worst.path) if argument_of else None,
        path=worst.path,
        index=worst.index,
        details=details,
    )


def argument_of(path: str) -> str | None:
    """ "args[1]['w']" -> "args[1]"; None for output paths."""
    if not path.startswith("args["):
        return None
    return path[: path.index("]") + 1]
