"""Host-side: distance-2 colourings of a Jacobian pattern's columns, never traced.

Columns that share a row never share a colour, so perturbing all columns of one colour
at once still isolates every entry: output r moves only through the one column of that
colour in row r. `color_by_leaf` colours each input leaf on its own, so every colour
group lies inside one leaf and the sparse plan (`_sparse.py`) can attribute a whole
group's entries to one (input leaf, output leaf) block without a per-entry lookup.
"""

from collections.abc import Sequence

import numpy as np

from ._pattern import Pattern, distinct

GREEDY_MAX_WORK = 4 * 10**6  # neighbour visits the Python greedy colouring may spend


def is_valid_coloring(pattern: Pattern, colors: np.ndarray) -> bool:
    """No two columns of one colour share a row."""
    sets, cols = pattern.used_entries()
    k = int(colors.max(initial=0)) + 1
    return distinct(sets * k + colors[cols]).size == sets.size


def color_columns(pattern: Pattern) -> tuple[np.ndarray, int]:
    """A distance-2 colouring of the columns: (colors (n,) int64, number of colours).

    Tried in order: sets that are disjoint (elementwise, row-wise ops: colour = rank
    within the set, optimal), cyclic colours j mod k for k from the largest row upward
    (banded), then greedy largest-first (when its work is affordable). Columns in no row
    get colour 0.
    """
    n = pattern.n
    sets, cols = pattern.used_entries()
    if sets.size == 0:
        return np.zeros(n, np.int64), 1
    sizes = np.bincount(sets)
    widest = int(sizes.max())
    if np.bincount(cols, minlength=n).max() <= 1:  # disjoint sets
        starts = np.cumsum(sizes) - sizes
        rank = np.arange(sets.size) - starts[sets]
        colors = np.zeros(n, np.int64)
        colors[cols] = rank
        return colors, widest
    best = None
    for k in range(widest, min(n, 2 * widest + 8) + 1):
        if distinct(sets * k + cols % k).size == sets.size:
            best = (np.arange(n, dtype=np.int64) % k, k)
            break
    if best is not None and best[1] == widest:
        return best
    greedy = _greedy(n, sets, cols)
    if greedy is not None and (best is None or greedy[1] < best[1]):
        return greedy
    if best is not None:
        return best
    return np.arange(n, dtype=np.int64), n


def color_by_leaf(
    pattern: Pattern, bounds: Sequence[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Colours each input leaf's columns on its own (colour ids numbered on across leaves).

    Args:
      pattern: The Jacobian's pattern.
      bounds: (lo, hi) column range of each input leaf, in order, covering [0, n).

    Returns:
      (colors (n,) int64, leaf_of_color (n_colors,) int32): every colour group lies in one
      leaf; a leaf without columns has no colour.
    """
    colors = np.zeros(pattern.n, np.int64)
    leaf_of_color = []
    for leaf, (lo, hi) in enumerate(bounds):
        if hi <= lo:
            continue
        local, k = color_columns(pattern.columns(lo, hi))
        colors[lo:hi] = local + len(leaf_of_color)
        leaf_of_color += [leaf] * k
    return colors, np.asarray(leaf_of_color, np.int32)


def _greedy(n: int, sets: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, int] | None:
    order = np.argsort(cols, kind="stable")
    col_sets = np.split(sets[order], np.cumsum(np.bincount(cols, minlength=n))[:-1])
    set_order = np.argsort(sets, kind="stable")
    set_cols = np.split(cols[set_order], np.cumsum(np.bincount(sets))[:-1])
    degree = np.array([sum(set_cols[s].size for s in c) for c in col_sets])
    if int(degree.sum()) > GREEDY_MAX_WORK:
        return None
    colors = np.full(n, -1, np.int64)
    mark = np.full(n + 1, -1, np.int64)
    for j in np.argsort(-degree, kind="stable"):  # largest-first
        for s in col_sets[j]:
            mark[colors[set_cols[s]]] = j
        c = 0
        while mark[c] == j:
            c += 1
        colors[j] = c
    colors[colors < 0] = 0
    return colors, int(colors.max()) + 1
