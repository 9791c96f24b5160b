"""Host-side: the structure of a Jacobian as compressed sets of columns (CSR), never traced.

A `Pattern` says which of the n inputs each of the m outputs may depend on. Rows are held
compressed: row-wise ops give every row of a group the same set of columns, so a
layer-norm over (R, C) holds R sets of C columns, not R C rows of C columns. The CSR
helpers here are shared by the jaxpr propagation (`_sparsity.py`) and the colouring
(`_coloring.py`); `Term` is how the propagation holds an array's dependencies.
"""

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(eq=False)
class Table:
    """Groups of input indices, CSR: group g is cols[ptr[g]:ptr[g + 1]] (sorted, unique)."""

    ptr: np.ndarray
    cols: np.ndarray

    @property
    def size(self) -> int:
        return self.ptr.size - 1


@dataclasses.dataclass(eq=False)
class Term:
    """Dependency sets of an array's elements: element e depends on group key[e] of `table`."""

    key: np.ndarray  # (N,) int64 group per element, -1 = no dependency
    table: Table


Deps = tuple[Term, ...]  # an array's dependencies: the union of a few terms


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort: numpy's hash-based `unique` is several times slower)."""
    values = np.sort(np.asarray(values).ravel())
    if values.size == 0:
        return values
    return values[np.concatenate([[True], values[1:] != values[:-1]])]


def table_from_pairs(groups: np.ndarray, cols: np.ndarray, n_groups: int, n: int) -> Table:
    """The CSR table of the distinct (group, column) pairs; groups without pairs are empty."""
    code = distinct(groups.astype(np.int64) * n + cols)
    g, c = np.divmod(code, n)
    ptr = np.zeros(n_groups + 1, np.int64)
    np.cumsum(np.bincount(g, minlength=n_groups), out=ptr[1:])
    return Table(ptr, c.astype(np.int64))


@dataclasses.dataclass(frozen=True, eq=False)
class Pattern:
    """The structure of an (m, n) Jacobian: which outputs may depend on which inputs.

    Row r's columns are the set `row_set[r]` (-1: an empty row) of the CSR table
    (`set_ptr`, `set_cols`).

    Attributes:
      m, n: Outputs and inputs (real coordinates).
      row_set: (m,) int64 set index of each row, -1 for a row with no entries.
      set_ptr, set_cols: The sets, CSR (sorted column indices).
      conservative: Primitives that were treated conservatively (dense within their equation).
    """

    m: int
    n: int
    row_set: np.ndarray
    set_ptr: np.ndarray
    set_cols: np.ndarray
    conservative: tuple[str, ...] = ()

    @property
    def n_sets(self) -> int:
        return self.set_ptr.size - 1

    @property
    def nnz(self) -> int:
        sizes = np.diff(self.set_ptr)
        used = self.row_set[self.row_set >= 0]
        return int(sizes[used].sum())

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.m * self.n)

    @classmethod
    def from_coo(cls, rows: Any, cols: Any, m: int, n: int) -> "Pattern":
        """A pattern from explicit entries (rows, cols), one set per row."""
        table = table_from_pairs(np.asarray(rows), np.asarray(cols), m, n)
        sizes = np.diff(table.ptr)
        return cls(m, n, np.where(sizes > 0, np.arange(m), -1), table.ptr, table.cols)

    def coo(self) -> tuple[np.ndarray, np.ndarray]:
        """The entries as COO int64 arrays (rows, cols), row-major. Materialises nnz entries."""
        rows = np.flatnonzero(self.row_set >= 0)
        sets = self.row_set[rows]
        lengths = self.set_ptr[sets + 1] - self.set_ptr[sets]
        return np.repeat(rows, lengths), self.set_cols[ranges(self.set_ptr[sets], lengths)]

    def used_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(set, column) of every entry of the sets that some row uses."""
        counts = np.bincount(self.row_set[self.row_set >= 0], minlength=self.n_sets)
        used = np.flatnonzero(counts)
        lengths = self.set_ptr[used + 1] - self.set_ptr[used]
        return np.repeat(used, lengths), self.set_cols[ranges(self.set_ptr[used], lengths)]

    def columns(self, lo: int, hi: int) -> "Pattern":
        """The same rows with only the columns in [lo, hi), renumbered from 0 (one input
        leaf's block)."""
        keep = (self.set_cols >= lo) & (self.set_cols < hi)
        set_ids = np.repeat(np.arange(self.n_sets), np.diff(self.set_ptr))
        ptr = np.zeros_like(self.set_ptr)
        np.cumsum(np.bincount(set_ids[keep], minlength=self.n_sets), out=ptr[1:])
        return dataclasses.replace(self, n=hi - lo, set_ptr=ptr, set_cols=self.set_cols[keep] - lo)

    def column_rows(self, j: int) -> np.ndarray:
        """(m,) bool: the rows whose set holds column j."""
        positions = np.flatnonzero(self.set_cols == j)
        sets = np.searchsorted(self.set_ptr, positions, side="right") - 1
        return np.isin(self.row_set, sets)
