"""Host-side: one colouring of the sparse plan as lookup tables, and the chunks of colours
each device runs (never traced).

A slot (colour c, output r) holds the Jacobian entry J[r, j*] of the one column j* of
colour c in row r's set: `setcol[row_key[r], c]` (-1: none). Chunks of `kc` colours are
sized by a memory budget (a chunk evaluates f at 4 kc points and compares kc m slots), and
laid out as one row of chunks per device for `_devices.map_over_devices`.
"""

import dataclasses
import functools as ft

import numpy as np

from ._finite_diff import STENCIL
from ._pattern import Pattern
from ._problem import Problem

SLOT_BUDGET = 2**18  # (colour, output) slots compared per chunk: bounds the chunk's memory


@dataclasses.dataclass
class Plan:
    """One colouring, its lookup tables and the chunks of colours each device runs.

    Attributes:
      colors: (n,) colour of each input coordinate; leaf_of_color: (K,) its input leaf.
      tables: Device lookups: `colors`, `leaf_of_color`, `setcol` ((sets, K) column of
        colour c in set s, -1: none), `row_key` ((m,) set of each output, -1: empty row)
        and `rep` ((K,) a member of each colour, stepped by slots without an entry).
      chunks: (rows, chunks per row, kc) colour ids (-1: padding); one row per device.
    """

    colors: np.ndarray
    leaf_of_color: np.ndarray
    tables: dict
    chunks: np.ndarray

    @property
    def n_colors(self) -> int:
        return int(self.leaf_of_color.size)

    @ft.cached_property
    def has_empty(self) -> bool:
        """Whether some (colour, output) slot holds no entry (an empty row, or a row whose
        set lacks a colour): only then does the comparison look for empty slots."""
        row_key, setcol = self.tables["row_key"], self.tables["setcol"]
        if np.any(row_key < 0):
            return True
        used = np.zeros(setcol.shape[0], bool)
        used[row_key] = True
        return bool(np.any(setcol[used] < 0))

    def members(self, color: int) -> np.ndarray:
        return np.flatnonzero(self.colors == color)


def make_plan(p: Problem, pattern: Pattern, colors: np.ndarray, leaf_of_color: np.ndarray) -> Plan:
    """The lookup tables of a colouring (`_coloring.color_by_leaf`) and its chunks."""
    n_colors = leaf_of_color.size
    setcol = np.full((pattern.n_sets, n_colors), -1, np.int32)
    set_ids = np.repeat(np.arange(pattern.n_sets), np.diff(pattern.set_ptr))
    setcol[set_ids, colors[pattern.set_cols]] = pattern.set_cols
    order = np.argsort(colors, kind="stable")
    starts = np.searchsorted(colors[order], np.arange(n_colors))
    rep = order[np.minimum(starts, p.n - 1)].astype(np.int32)
    tables = {
        "colors": colors.astype(np.int32),
        "leaf_of_color": leaf_of_color.astype(np.int32),
        "setcol": setcol,
        "row_key": pattern.row_set.astype(np.int32),
        "rep": rep,
    }
    return Plan(colors, leaf_of_color, tables, chunk_colors(p, n_colors))


def chunk_colors(p: Problem, n_colors: int) -> np.ndarray:
    """Colour ids (rows, chunks per row, kc): one row per device, chunks of kc colours
    within the memory budget, as evenly filled as the counts allow."""
    if p.batch_size:
        kc_max = int(p.batch_size)
    else:
        kc_max = min(4 * p.ev.auto_batch_size(len(STENCIL)), SLOT_BUDGET // max(1, p.m))
    kc_max = max(1, min(kc_max, n_colors))
    n_devices = len(p.ev.devices)
    n_chunks = max(-(-n_colors // kc_max), min(n_devices, n_colors))
    n_rows = min(n_devices, n_chunks)
    per_row = -(-n_chunks // n_rows)
    kc = -(-n_colors // (n_rows * per_row))
    ids = np.arange(n_rows * per_row * kc)
    return np.where(ids < n_colors, ids, -1).astype(np.int32).reshape(n_rows, per_row, kc)
