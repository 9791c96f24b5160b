"""Host-side: the comparison of one tile of Jacobian entries with finite differences
(`Tiles`: numpy on the host for small plans, `_jacobian_kernels.tile_stats` on device
otherwise) and the second look at a tile in doubt (`Retake`: larger steps, the float64
analytic side), for the plans of `_jacobian_full`.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _jacobian_kernels as jk
from . import _precision, _tolerance
from . import _stencil as st
from ._problem import Problem


def host_stats(stats: dict, rows: int) -> dict:
    """A tile's fetched statistics as float64 numpy arrays over its `rows` real rows."""
    return {k: np.asarray(v, np.float64)[:rows] for k, v in stats.items()}


class Tiles:
    """Compares tiles for one plan: on the host (numpy) when `host`, else jitted on device.

    Device constants (f0, output scales, the per-row maxima) are transferred once per plan,
    and each tile's per-row inputs in one packed array.

    Args:
      p: The problem; host: where to compare; leaf_max: (L_in, mt) per-leaf row maxima.
      rows: (rows plan) the output indices of the tile's columns; valid_rows: how many are real.
    """

    def __init__(
        self,
        p: Problem,
        host: bool,
        leaf_max: Any,
        rows: np.ndarray | None = None,
        valid_rows: int | None = None,
    ):
        self.p, self.host, self.rows = p, host, rows
        self.out_ids = (
            p.out_ids
            if rows is None
            else np.where(np.arange(rows.size) < valid_rows, p.out_ids[rows], p.n_out)
        )
        self.f0, self.out_scale, self.noise_floor = p.ev.f0, p.out_scale, p.noise_floor
        if rows is not None:
            self.f0, self.out_scale = self.f0[rows], self.out_scale[rows]
            self.noise_floor = self.noise_floor[rows]
        self.leaf_max = leaf_max
        self.floor_in = p.decided_floor_in
        self.out_slices = (
            None if rows is not None else tuple((o.offset, o.offset + o.size) for o in p.outs)
        )
        self.dev: dict | None = None

    def _device(self, dtype: Any) -> dict:
        if self.dev is None:
            p = self.p
            self.dev = {
                "f0": jnp.asarray(self.f0, dtype),
                "out_scale": jnp.asarray(self.out_scale, dtype),
                "noise_floor": jnp.asarray(self.noise_floor, dtype),
                "leaf_max": jnp.asarray(self.leaf_max, dtype),
                "out_ids": jnp.asarray(self.out_ids, jnp.int32),
                "scalars": jnp.asarray([p.tol.rtol, p.tol.safety, p.user_atol], dtype),
                "rows": None if self.rows is None else jnp.asarray(self.rows, jnp.int32),
            }
        return self.dev

    def precision(self, c: np.ndarray, analytic64: Any, dtype: Any) -> jk.PrecisionInputs | None:
        """The tile's float64 second look (`jk.PrecisionInputs`), or None without one."""
        if analytic64 is None:
            return None
        p, xp = self.p, (np if self.host else jnp)
        noise = p.native_noise if self.rows is None else p.native_noise[self.rows]
        return jk.PrecisionInputs(
            analytic64=xp.asarray(analytic64, dtype),
            scale=xp.asarray(p.scales[c], dtype),
            noise=xp.asarray(noise, dtype),
            rtol64=dtype(_tolerance.default_tolerance(np.dtype(np.float64)).rtol),
            eps=dtype(jnp.finfo(p.tol_dtype).eps),
            note=xp.asarray(p.precision == "note"),
        )

    def stats(
        self,
        values: jax.Array,
        points: np.ndarray,
        c: np.ndarray,
        analytic: jax.Array,
        analytic64: Any = None,
    ) -> dict:
        """The tile's statistics (`jk.tile_stats`): values (k, 4, m) and points (k, 4), or
        values (S, k, 4, m) and points (S, k, 4) at S steps; `analytic64`: see `precision`."""
        p = self.p
        if self.host:
            values = np.asarray(values)
            dtype = values.dtype.type
            if self.rows is not None:
                values = values[..., self.rows]
            with np.errstate(all="ignore"):
                return jk.tile_stats_host(
                    values, self.f0.astype(dtype), points.astype(dtype), p.ev.theta[c].astype(dtype), np.asarray(analytic),
                    self.floor_in[c], self.out_scale, np.asarray(self.leaf_max), p.in_ids[c], self.out_ids, dtype(p.tol.rtol),
                    dtype(p.tol.safety), dtype(p.user_atol), p.n_out, self.out_slices,
                    self.noise_floor.astype(dtype), self.precision(c, analytic64, dtype), p.scales[c],
                )  # fmt: skip
        with p.ev.context():
            dtype = values.dtype
            d = self._device(dtype)
            if d["rows"] is not None:
                values = jnp.take(values, d["rows"], axis=-1)
            per_step = points if points.ndim == 3 else points[None]
            rowdata = np.concatenate(
                [per_step.transpose(1, 0, 2).reshape(c.size, -1), p.ev.theta[c][:, None]]
                + [self.floor_in[c][:, None], p.in_ids[c][:, None], p.scales[c][:, None]],
                axis=1,
            )
            return jk.tile_stats(
                values, d["f0"], jnp.asarray(rowdata, dtype), analytic, d["out_scale"], d["leaf_max"], d["out_ids"], d["scalars"],
                p.n_out, self.out_slices, d["noise_floor"],
                self.precision(c, analytic64, np.dtype(dtype).type),
            )  # fmt: skip


class Once:
    """A computation run on first use only (a rows chunk's float64 VJP rows)."""

    def __init__(self, compute: Callable[[], Any]):
        self.compute, self.done, self.value = compute, False, None

    def __call__(self) -> Any:
        if not self.done:
            self.value, self.done = self.compute(), True
        return self.value


def columns_of(rows: Any, c: np.ndarray) -> np.ndarray | None:
    """Rows (r, n) of J -> the tile's entries (k, r) at input coordinates c."""
    return None if rows is None else np.asarray(rows)[:, c].T


class Retake:
    """A second comparison of a tile whose first one is in doubt, at flush time.

    Called with the tile's first statistics (tiles without doubt cost nothing):
      - noise-bound entries (`_stencil.noise_bound`, counted in "n_noisy") or narrowly
        failing ones (the worst of a row, `_stencil.near_miss`): the tile is evaluated again at larger steps too (`_tolerance.grown_steps`),
        and at twice the largest (the higher-order look at it, `_stencil.refined_truncation`),
        and each entry keeps the estimate with the smallest estimated error, raised to what
        the other steps' estimates prove (`_stencil.best_of`: a stencil whose error
        estimate missed f's rounding is exposed; a wrong derivative stays wrong);
      - failing entries, with a narrower analytic dtype than the float64 reference: the
        tile's analytic entries are computed in float64 and tried on the worst failing entry
        of each (input coordinate, output leaf); where one of them may be rounding of a
        right formula (`_precision`), every entry's float64 value goes into the comparison.
        Where none can (a wrong formula is wrong in float64 too), nothing is redone for it.
    The new statistics replace the first.

    Args:
      tiles: The plan's `Tiles`; c: the tile's input coordinates (padded).
      analytic: The tile's analytic entries (k, mt), as first compared.
      analytic64: Computes the tile's float64 entries (k, mt), or None where f's
        derivative cannot be computed in float64.
    """

    def __init__(self, tiles: Tiles, c: np.ndarray, analytic: Any, analytic64: Callable[[], Any]):
        self.tiles, self.c, self.analytic, self.analytic64 = tiles, c, analytic, analytic64

    def __call__(self, first: dict) -> dict | None:
        p = self.tiles.p
        c, k = self.c, self.c.size
        narrow = (first["code"] == st.FAIL) & st.near_miss(first["a"], first["num"])
        doubt = np.any((first["n_noisy"] > 0) | narrow, axis=1)  # (k,) rows
        grown = _tolerance.grown_steps(p.h[c], p.scales[c]) if p.eps is None else []
        grown = grown if np.any(doubt) else []
        a64 = self._rescuable(first)
        if not grown and a64 is None:
            return None
        values, points = p.ev.stencil(c, p.h[c], batch_size=k)
        if grown:  # and the higher-order look at twice the largest step
            more = [p.ev.stencil(c, h, batch_size=k) for h in grown + [2 * grown[-1]]]
            values = jnp.stack([values] + [v for v, _ in more])
            points = np.stack([points] + [q for _, q in more])
            p.grown_steps += int(np.count_nonzero(doubt))
            p.higher_order_looks += int(np.count_nonzero(doubt))
        stats = self.tiles.stats(values, points, c, self.analytic, a64)
        return host_stats(jax.device_get(stats), first["n"].shape[0])

    def _rescuable(self, first: dict) -> np.ndarray | None:
        """The tile's float64 entries, when a failing entry may be rounding; else None."""
        p = self.tiles.p
        if not p.precision_applies or not np.any(first["n_failed"] > 0):
            return None
        a64 = self.analytic64()
        if a64 is None:
            return None
        a64 = np.asarray(a64, np.float64)
        rows, leaves = np.nonzero(first["code"] == st.FAIL)
        j = first["j"][rows, leaves].astype(np.int64)  # tile columns
        outputs = j if self.tiles.rows is None else self.tiles.rows[j]
        a, num, tol = (first[k][rows, leaves] for k in ("a", "num", "tol"))
        noise, scale = p.native_noise[outputs], p.scales[self.c[rows]]
        could = _precision.may_be_rounding(a, num, tol, a64[rows, j], noise, scale)
        return a64 if np.any(could) else None
