"""Host-side orchestration of the finite-difference engine.

`Evaluator` holds one function at one point: it picks the precision the reference is
computed in, chooses steps, and runs the chunked, vmapped stencil kernels of
`_finite_diff.py` over coordinates or directions with bounded memory.
"""

import contextlib
import dataclasses
import functools as ft
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _finite_diff as fd
from . import _noise, _tolerance
from ._devices import map_over_devices, resolve_devices
from ._flatten import ArgLayout, ravel_leaves

# Memory budget for one chunk of stencil evaluations (all points of all directions).
CHUNK_BUDGET_BYTES = 64 * 2**20
# On CPU a chunk should stay in the last-level cache: past it every evaluation streams its
# own copy of theta from DRAM, measured 2-10x slower per evaluation (benchmarks/README.md).
# Small chunks cost nothing there, since all chunks run inside one compiled loop.
CPU_CHUNK_BUDGET_BYTES = 16 * 2**20
MAX_BATCH = 1024
# With a progress callback the chunks run in about this many calls (one report each).
PROGRESS_CALLS = 64
REFERENCES = ("auto", "float64", "native")
# Small problems run op by op ("eager"): JAX caches each primitive per shape across calls, so a
# check of a fresh small function compiles nothing, where jitting its kernels would compile
# f four or five times (hundreds of milliseconds). Larger problems are jitted: there the
# fused, compiled kernel pays for its compilation. Eager while n <= EAGER_MAX_COORDINATES
# and one stencil pass over every coordinate stays within EAGER_BUDGET_BYTES.
EAGER_MAX_COORDINATES = 512
EAGER_BUDGET_BYTES = 64 * 2**20
# Steps (relative to each coordinate's scale) of the evidence kernel: the float64 probe,
# the Taylor test and the step sweep all use this grid, so they share one compilation.
EVIDENCE_STEPS = 10.0 ** -np.arange(1.0, 10.5, 0.5)  # 1e-1 ... 1e-10, half decades
assert EVIDENCE_STEPS.size == _noise.NOISE_POINTS + 2  # the noise measurement shares the kernel
# The float64 value may differ from the native one by this many of the native dtype's
# rounding standard deviations (measured in float64 and scaled by the ratio of the eps).
VALUE_NOISE_SIGMAS = 16.0


@dataclasses.dataclass(frozen=True)
class Reference:
    """Where finite differences are evaluated."""

    x64: bool  # evaluate f in float64 inside `jax.enable_x64(True)`
    dtype: np.dtype  # widest real dtype f is evaluated in
    description: str
    fallback: str | None = None  # why float64 was not used, when it was wanted


def _real_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(jnp.finfo(dtype).dtype)


def _leaf_eval_dtype(dtype: np.dtype, x64: bool) -> np.dtype:
    if not x64:
        return np.dtype(dtype)
    return (
        np.dtype(np.complex128)
        if np.issubdtype(dtype, np.complexfloating)
        else np.dtype(np.float64)
    )


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _jaxpr_bytes(jaxpr: Any) -> int:
    """Sum of the sizes of all intermediate values of a jaxpr (a memory upper bound)."""
    total = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            aval = getattr(var, "aval", None)
            shape = getattr(aval, "shape", None)
            dtype = getattr(aval, "dtype", None)
            if shape is not None and dtype is not None:
                try:
                    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                except TypeError:
                    pass
        for param in eqn.params.values():
            sub = getattr(param, "jaxpr", param)
            if hasattr(sub, "eqns"):
                total += _jaxpr_bytes(sub)
    return total


class Evaluator:
    """One function at one point, ready for finite differences.

    Args:
      f: The user's function, called as `f(*args)`.
      has_aux: Whether f returns `(value, aux)`.
      layout: The argument layout.
      diff_values: Differentiated leaves (user dtypes).
      dynamic_values: Other array leaves.
      reference: "auto" (float64 when f evaluates faithfully there), "float64" or "native".
      native_value: f's value computed in the user's dtypes (to validate the float64 path).
      seed: Seed for the float64 precision probe.
      devices: The `devices=` option (see `_devices.resolve_devices`); None: all devices.
    """

    def __init__(
        self,
        f: Callable,
        has_aux: bool,
        layout: ArgLayout,
        diff_values: Sequence[Any],
        dynamic_values: Sequence[Any],
        reference: str,
        native_value: np.ndarray,
        seed: int = 0,
        devices: Any = None,
    ):
        if reference not in REFERENCES:
            raise ValueError(f"`reference` must be one of {REFERENCES}; got {reference!r}.")
        self.f, self.has_aux, self.layout = f, has_aux, layout
        self.dynamic = list(dynamic_values)
        self.devices = resolve_devices(devices, list(diff_values))
        on_one = len(self.devices) == 1 and self.devices[0] in _devices_of(diff_values)
        self.eager = on_one and _small(layout, f, has_aux, diff_values, self.dynamic)
        self.theta = ravel_leaves(layout, diff_values)  # float64 host copy
        self.n = self.theta.size
        self.seed = seed
        self.n_evaluations = 0
        self.native_dtypes = tuple(leaf.dtype for leaf in layout.diff)
        self._dynamic64: list[Any] | None = None
        self._measured64: _noise.Measurement | None = None  # from the float64 probe
        # Why f cannot be batched with vmap (then every batch is evaluated sequentially).
        self.unbatchable = _vmap_problem(f, has_aux, layout, self.native_dtypes, self.dynamic)
        self.reference_arg = reference
        self.reference = self._choose_reference(reference, native_value)
        if self.reference.x64:
            self.dynamic = self._dynamic64
        self.dtypes = tuple(_leaf_eval_dtype(d, self.reference.x64) for d in self.native_dtypes)
        self.spec = fd.EvalSpec(f, has_aux, layout, self.dtypes, self.sequential)
        self.real_dtypes = tuple(sorted({_real_dtype(d) for d in self.dtypes}, key=str))
        self.coord_dtype_codes = np.zeros(self.n, np.int8)
        for leaf, dtype in zip(layout.diff, self.dtypes):
            self.coord_dtype_codes[leaf.offset : leaf.offset + leaf.size] = self.real_dtypes.index(
                _real_dtype(dtype)
            )
        self.theta_dtype = np.result_type(*[_real_dtype(d) for d in self.dtypes])
        with self.context():
            # Cast on the host: a device-side cast would be one more dispatch and compilation.
            self.theta_device = jnp.asarray(np.asarray(self.theta, self.theta_dtype))
            self.f0 = np.asarray(
                jax.device_get(
                    self.kernel(fd.value_at)(self.spec, self.theta_device, self.dynamic)
                ),
                np.float64,
            )
        self.n_evaluations += 1
        # Through `map_over_devices` when several devices are in play, or one that is not
        # where theta lives (`devices=[jax.devices()[3]]`).
        self.on_devices = (
            len(self.devices) > 1 or self.devices[0] not in self.theta_device.devices()
        )
        # Why f could not be evaluated spread over `devices` (then on theta's own device).
        self.unsharded: str | None = None

    # -- execution ---------------------------------------------------------------

    @property
    def sequential(self) -> bool:
        """Whether batches of evaluations run one after another (f has no batching rule)."""
        return self.unbatchable is not None

    def sequential_note(self) -> str | None:
        """The report's note on sequential evaluation and its cost, or None."""
        if self.unbatchable is None:
            return None
        return (
            f"f cannot be batched with vmap ({self.unbatchable}): evaluated sequentially "
            f"(jax.lax.map), {self.n_evaluations} evaluations one at a time"
        )

    def devices_note(self) -> str | None:
        """The report's note when f could not run spread over the devices, or None."""
        if self.unsharded is None:
            return None
        return (
            f"f cannot be evaluated spread over the devices ({self.unsharded}): evaluated on "
            f"{self.devices[0]} only; f may place its own computation (a mesh, a shard_map, "
            "jit with devices or shardings)"
        )

    def _leave_devices(self, error: Exception) -> None:
        """After the evaluation spread over `devices` failed: evaluate on theta's own device from
        now on. f that places its own computation (a `shard_map` or `jit` on a mesh or device of
        its own) cannot run inside the `shard_map` of `map_over_devices`, where it runs fine on
        one device; an f that fails there too reports its own error then."""
        self.unsharded = first_line(error)
        self.devices = tuple(sorted(self.theta_device.devices(), key=lambda d: d.id))[:1]
        self.on_devices = False

    def kernel(self, kernel: Callable) -> Callable:
        """`kernel` (a jitted function of this package) as this problem runs it: the jitted
        version, or its Python body called op by op when the problem is small (`eager`)."""
        return kernel.__wrapped__ if self.eager else kernel

    # -- precision -------------------------------------------------------------

    def context(self) -> contextlib.AbstractContextManager:
        """The JAX config context the reference is evaluated in."""
        return jax.enable_x64(True) if self.reference.x64 else contextlib.nullcontext()

    def _choose_reference(self, requested: str, native_value: np.ndarray) -> Reference:
        native_real = np.result_type(*[_real_dtype(d) for d in self.native_dtypes])
        native = Reference(
            False, native_real, f"native {native_real} (f evaluated in the arguments' own dtypes)"
        )
        if requested == "native" or native_real == np.float64:
            return native
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            reason = self._float64_problem(native_value)
        if reason is None:
            return Reference(
                True, np.dtype(np.float64), "float64 (f re-evaluated with x64 enabled)"
            )
        if requested == "float64":
            raise ValueError(
                f"`reference='float64'` was requested but f cannot be evaluated faithfully in float64: {reason}. "
                "Use `reference='auto'` or `'native'`."
            )
        return dataclasses.replace(native, fallback=reason)

    def _float64_problem(self, native_value: np.ndarray) -> str | None:
        """Why f cannot serve as a float64 reference, or None if it can."""
        dtypes = tuple(_leaf_eval_dtype(d, True) for d in self.native_dtypes)
        spec = fd.EvalSpec(self.f, self.has_aux, self.layout, dtypes, self.sequential)
        try:
            with jax.enable_x64(True):
                theta = jnp.asarray(self.theta, jnp.float64)
                # Fixed float inputs (data) are widened too: strict ops reject mixed dtypes.
                self._dynamic64 = [widen(v) for v in self.dynamic]
                if self.eager:
                    value_at = ft.partial(fd.value_at.__wrapped__, spec)
                    out = jax.eval_shape(value_at, theta, self._dynamic64)
                else:  # the jit's own trace cache
                    out = fd.value_at.trace(spec, theta, self._dynamic64).out_info
                if out.dtype != jnp.float64:
                    return f"with float64 inputs f returns {out.dtype} (it casts internally)"
                value, probe = self._probe_float64(spec, theta, self._dynamic64)
        except Exception as error:  # noqa: BLE001 - any failure means: do not use float64
            return f"evaluating f in float64 failed ({first_line(error)})"
        native_value = np.asarray(native_value, np.float64).ravel()
        if value.shape != native_value.shape:
            return (
                f"f's float64 value has {value.size} elements, its native value "
                f"{native_value.size} (dtype-dependent code)"
            )
        native_eps = float(
            jnp.finfo(np.result_type(*[_real_dtype(d) for d in self.native_dtypes])).eps
        )
        rel = max(1e-4, 1000 * native_eps)
        scale = (
            np.abs(native_value) + 1e-3 * float(np.max(np.abs(native_value), initial=0.0)) + 1e-30
        )
        same = (value == native_value) | (np.isnan(value) & np.isnan(native_value))
        # Cancellation is allowed only as far as it was measured: the native value may sit
        # VALUE_NOISE_SIGMAS of its own rounding from the float64 one (that rounding is
        # f's measured float64 noise scaled to the native eps). A relative allowance wide
        # enough for a cancelling value would let a dropout mask drawn differently under
        # x64 (which moves the value by as little as 0.3%) through.
        native_noise = self._measured64.noise * native_eps / float(jnp.finfo(jnp.float64).eps)
        gap = np.abs(value - native_value)
        close = (gap <= rel * scale) | (gap <= VALUE_NOISE_SIGMAS * native_noise)
        if not np.all(same | close):
            worst = float(np.max(gap / scale))
            return (
                f"f's float64 value differs from its native value by a relative {worst:.1e} "
                "(random numbers drawn in the default float dtype, or dtype-dependent code)"
            )
        return probe

    def _probe_float64(
        self, spec: fd.EvalSpec, theta: jax.Array, dynamic: list[Any]
    ) -> tuple[np.ndarray, str | None]:
        """Checks that f resolves float64-sized steps (no internal cast to a narrower dtype).

        Compares central differences at 1e-8 and 1e-5 (relative) along a random direction:
        a float64 f agrees to ~1e-7, while an f that rounds to float32 inside cannot even
        see a 1e-8 step. Uses the same kernel shape as the later Taylor test (one compile).

        Returns:
          (f0, problem): f in float64 at theta, and a reason or None.
        """
        rows = evidence_rows(self.layout)
        direction = self.random_directions(1, "float64-probe")[0] * _tolerance.coordinate_scales(
            self.layout, self.theta
        )
        directions = np.zeros((rows, self.n))
        directions[0], directions[1] = direction, -direction
        values = np.asarray(
            jax.device_get(
                self.kernel(fd.values_along_directions)(
                    spec, theta, dynamic, jnp.asarray(directions), jnp.asarray(EVIDENCE_STEPS)
                )
            ),
            np.float64,
        )
        f0 = np.asarray(jax.device_get(self.kernel(fd.value_at)(spec, theta, dynamic)), np.float64)
        self.n_evaluations += 2 * EVIDENCE_STEPS.size + 1
        kernel = self.kernel(fd.values_along_directions)
        self._measured64 = self._measure(
            lambda d, t: kernel(spec, theta, dynamic, jnp.asarray(d), jnp.asarray(t)),
            np.dtype(np.float64),
        )
        self.n_evaluations += rows * EVIDENCE_STEPS.size
        big, tiny = (
            int(np.argmin(np.abs(EVIDENCE_STEPS - 1e-5))),
            int(np.argmin(np.abs(EVIDENCE_STEPS - 1e-8))),
        )
        slope_big = (values[0, big] - values[1, big]) / (2 * EVIDENCE_STEPS[big])
        slope_tiny = (values[0, tiny] - values[1, tiny]) / (2 * EVIDENCE_STEPS[tiny])
        ok = np.abs(slope_tiny - slope_big) <= 1e-3 * np.abs(slope_big) + 1e-6 * np.abs(f0) + 1e-300
        ok |= ~np.isfinite(slope_big)  # f is not finite along the probe: nothing to learn here
        if np.all(ok) or not _narrow_signature(values, f0, slope_big):
            # Slopes that disagree without the signature of a narrower dtype are float64's own
            # rounding under cancellation (gelu's 1 + tanh far left) or an exact zero (det of
            # a rank-1 matrix): float64 still resolves f far better than the native dtype.
            return f0, None
        return f0, "f does not resolve float64-sized steps (an internal cast to a narrower dtype)"

    # -- rounding noise --------------------------------------------------------

    def _measure(self, along: Callable, dtype: np.dtype) -> _noise.Measurement:
        """`_noise.measure` from `along(directions, ts)` (f's values, (rows, K, m)) along
        evidence_rows random directions scaled per coordinate, at `_noise.offsets(dtype)`."""
        scales = _tolerance.coordinate_scales(self.layout, self.theta)
        directions = self.random_directions(evidence_rows(self.layout), "noise") * scales
        values = np.asarray(jax.device_get(along(directions, _noise.offsets(dtype))))
        return _noise.measure(values, directions, scales)

    @ft.cached_property
    def measured(self) -> _noise.Measurement:
        """f's rounding noise and secant scale per output (`_noise.measure`), in the
        reference's precision: from the float64 probe when the reference is float64, else
        measured here (evidence-kernel shape: rows * 19 evaluations)."""
        if self.reference.x64 and self._measured64 is not None:
            return self._measured64
        return self._measure(self.along, self.reference.dtype)

    @property
    def noise(self) -> np.ndarray:
        """(m,) standard deviation of the rounding error of each output of f (`measured`)."""
        return self.measured.noise

    # -- randomness ------------------------------------------------------------

    def random_directions(self, count: int, salt: str) -> np.ndarray:
        """`count` standard-normal directions (count, n), each leaf seeded from its path."""
        return random_directions(self.layout, self.seed, count, salt)

    # -- kernels -----------------------------------------------------------------

    def auto_batch_size(self, points_per_direction: int) -> int:
        """Directions per vmapped chunk so that one chunk stays within the memory budget.

        The budget is CHUNK_BUDGET_BYTES, or CPU_CHUNK_BUDGET_BYTES (cache-sized) on CPU.
        """
        with self.context():
            if hasattr(fd.value_at, "trace"):  # reuses the jit's cached trace (~20 us, not ~1 ms)
                jaxpr = fd.value_at.trace(self.spec, self.theta_device, self.dynamic).jaxpr
            else:
                jaxpr = jax.make_jaxpr(lambda th: fd.value_at(self.spec, th, self.dynamic))(
                    self.theta_device
                )
        per_eval = self.n * np.dtype(self.theta_dtype).itemsize + _jaxpr_bytes(jaxpr.jaxpr)
        cpu = all(d.platform == "cpu" for d in self.theta_device.devices())
        budget = min(CPU_CHUNK_BUDGET_BYTES, CHUNK_BUDGET_BYTES) if cpu else CHUNK_BUDGET_BYTES
        batch = budget // max(1, points_per_direction * per_eval)
        batch = int(2 ** int(np.floor(np.log2(max(1, batch)))))
        return int(max(1, min(batch, MAX_BATCH)))

    def steps(self, eps: float | None) -> np.ndarray:
        """The step of every coordinate (see `_tolerance.steps`)."""
        return _tolerance.steps(
            self.layout, self.theta, tuple(_real_dtype(d) for d in self.dtypes), eps
        )

    def stencil(
        self,
        coords: np.ndarray,
        h: np.ndarray,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        offsets: tuple[int, ...] = fd.STENCIL,
    ) -> tuple[jax.Array, np.ndarray]:
        """f at theta + k h_i e_i for k in `offsets` and each coordinate i in `coords`.

        Args:
          coords: (b,) theta coordinates.
          h: (b,) their steps.
          batch_size: Coordinates per vmapped chunk; None bounds memory automatically.
          progress: Called as `progress(done, total)` after each group of chunks.
          offsets: Stencil offsets in units of h, increasing, none zero (default STENCIL).

        Returns:
          (values, points): device array (b, K, m) and the host (b, K) coordinate values
          used (exact in the evaluation dtype), K = len(offsets).

        Raises:
          ValueError: a step is too small to change the coordinate in its dtype.
        """
        coords = np.asarray(coords, np.int64)
        points = _tolerance.stencil_points(
            self.theta[coords], h, self.coord_dtype_codes[coords], self.real_dtypes, offsets
        )
        # Every pair of points of opposite offsets must differ, or the difference is 0/0.
        half = len(offsets) // 2
        collapsed = np.any(points[:, half:] <= points[:, half - 1 :: -1], axis=1)
        if np.any(collapsed):
            bad = int(coords[np.argmax(collapsed)])
            leaf, index, _ = self.layout.locate(bad)
            raise ValueError(
                f"The finite-difference step at {leaf.path}{list(index)} is too small to change "
                f"the value {self.theta[bad]:.6g} in "
                f"{self.real_dtypes[self.coord_dtype_codes[bad]]}: pass a larger `eps` or leave "
                "`eps=None`."
            )
        count = coords.size
        if count == 0:  # no coordinates (an empty leaf): nothing to evaluate
            return jnp.zeros((0, len(offsets), self.f0.size), self.theta_dtype), points
        if self.eager:  # op by op, in chunks of `batch_size` (default: one pass)
            self.n_evaluations += count * len(offsets)
            return self._eager_stencil(coords, points, batch_size or count, progress), points
        batch = batch_size or self.auto_batch_size(len(offsets))
        batch = max(1, min(batch, count))
        if self.on_devices:  # rows split over the mesh
            try:
                values = self._stencil_on_devices(coords, points, batch)
            except Exception as error:  # noqa: BLE001 - retried on one device below
                self._leave_devices(error)
            else:
                if progress is not None:
                    progress(count, count)
                self.n_evaluations += count * len(offsets)
                return values, points
        # Chunks of `batch` coordinates, the last padded with copies of the first so that
        # every chunk has one shape; host numpy in the kernel's dtypes (no conversion ops).
        n_chunks = -(-count // batch)
        per_call = n_chunks if progress is None else -(-n_chunks // PROGRESS_CALLS)
        n_chunks = -(-n_chunks // per_call) * per_call
        pad = n_chunks * batch - count
        c = (
            np.concatenate([coords, np.repeat(coords[:1], pad)])
            .astype(np.int32)
            .reshape(n_chunks, batch)
        )
        p = (
            np.concatenate([points, np.repeat(points[:1], pad, axis=0)])
            .astype(self.theta_dtype)
            .reshape(n_chunks, batch, -1)
        )
        with self.context():
            if n_chunks == 1:
                values = fd.values_at_coordinates(
                    self.spec, self.theta_device, self.dynamic, c[0], p[0]
                )
                if progress is not None:
                    jax.block_until_ready(values)
                    progress(count, count)
            elif progress is None:  # one call: the chunks loop inside the compiled kernel
                values = _chunked_values_at_coordinates(
                    self.spec, self.theta_device, self.dynamic, c, p, count
                )
            else:  # about PROGRESS_CALLS calls of the same shape, reporting after each
                outs = []
                for start in range(0, n_chunks, per_call):
                    stop = start + per_call
                    outs.append(
                        _chunked_values_at_coordinates(
                            self.spec,
                            self.theta_device,
                            self.dynamic,
                            c[start:stop],
                            p[start:stop],
                            per_call * batch,
                        )
                    )
                    jax.block_until_ready(outs[-1])
                    progress(min(stop * batch, count), count)
                values = jnp.asarray(np.concatenate(jax.device_get(outs))[:count])
        self.n_evaluations += count * len(offsets)
        return values, points

    def stencil_subset(
        self,
        coords: np.ndarray,
        h: np.ndarray,
        batch_size: int | None = None,
        offsets: tuple[int, ...] = fd.STENCIL,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`stencil` at a few coordinates, chunk by chunk in one shape: the batch of a pass over
        every coordinate (the last chunk padded with copies of its first coordinate). However
        many coordinates a second look takes, it compiles at most one kernel per offset count
        and computes at most one batch more than it needs. Op by op (eager), one chunk of n.

        Returns:
          Host (k, K, m) float64 values and the (k, K) points.
        """
        k = coords.size
        if k == 0:
            return np.zeros((0, len(offsets), self.f0.size)), np.zeros((0, len(offsets)))
        # Op by op (eager), one chunk of all n: JAX caches each primitive per shape, so the
        # shapes of the pass over every coordinate compile nothing new.
        batch = (
            (batch_size or self.n)
            if self.eager
            else batch_size or self.auto_batch_size(len(offsets))
        )
        batch = int(max(1, min(batch, self.n)))
        outs, points = [], []
        for start in range(0, k, batch):
            c, step = coords[start : start + batch], h[start : start + batch]
            pad = batch - c.size
            values, at = self.stencil(
                np.concatenate([c, np.repeat(c[:1], pad)]),
                np.concatenate([step, np.repeat(step[:1], pad)]),
                batch,
                None,
                offsets,
            )
            self.n_evaluations -= pad * len(offsets)  # padding is not counted as work done
            outs.append(values)
            points.append(at[: c.size])
        values = [np.asarray(v, np.float64) for v in jax.device_get(outs)]
        values[-1] = values[-1][: k - (len(outs) - 1) * batch]
        return np.concatenate(values), np.concatenate(points)

    def _eager_stencil(
        self,
        coords: np.ndarray,
        points: np.ndarray,
        batch: int,
        progress: Callable[[int, int], None] | None,
    ) -> jax.Array:
        kernel = fd.values_at_coordinates.__wrapped__
        c, p = coords.astype(np.int32), points.astype(self.theta_dtype)
        outs = []
        with self.context():
            for lo in range(0, coords.size, batch):
                sl = slice(lo, lo + batch)
                outs.append(kernel(self.spec, self.theta_device, self.dynamic, c[sl], p[sl]))
                if progress is not None:
                    progress(min(lo + batch, coords.size), coords.size)
            return outs[0] if len(outs) == 1 else jnp.concatenate(outs)

    def along(self, directions: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """f(theta + t v) for each direction v (rows) and multiplier t; host (b, K, m) float64."""
        if self.on_devices:  # directions split over the mesh
            try:
                out = np.asarray(self.along_on_devices(directions, ts), np.float64)
            except Exception as error:  # noqa: BLE001 - retried on one device below
                self._leave_devices(error)
            else:
                self.n_evaluations += out.shape[0] * out.shape[1]
                return out
        with self.context():
            out = self.kernel(fd.values_along_directions)(
                self.spec,
                self.theta_device,
                self.dynamic,
                np.asarray(directions, self.theta_dtype),  # host casts, as in `stencil`
                np.asarray(ts, self.theta_dtype),
            )
            out = np.asarray(jax.device_get(out), np.float64)
        self.n_evaluations += out.shape[0] * out.shape[1]
        return out

    def along_on_devices(self, directions: Any, ts: Any) -> np.ndarray:
        """`fd.values_along_directions` with the directions split over `self.devices`.

        Returns host (b, K, m) values in the evaluation dtype; does not count evaluations.
        """
        with self.context():
            return map_over_devices(
                AlongKernel(self.spec),
                (self.theta_device, self.dynamic, np.asarray(ts, self.theta_dtype)),
                np.asarray(directions, self.theta_dtype),
                self.devices,
            )

    def _stencil_on_devices(self, coords: np.ndarray, points: np.ndarray, batch: int) -> jax.Array:
        """The stencil with its coordinates split over `self.devices` (one program, one gather)."""
        # Each device loops over chunks of `batch` of its own coordinates; no chunk larger
        # than a device's share (padding beyond it would be wasted evaluations).
        batch = max(1, min(batch, -(-coords.size // len(self.devices))))
        with self.context():
            out = map_over_devices(
                StencilKernel(self.spec, batch),
                (self.theta_device, self.dynamic),
                (coords.astype(np.int32), points.astype(self.theta_dtype)),
                self.devices,
                row_multiple=batch,
            )
            return jnp.asarray(out)


# -- The kernels `map_over_devices` runs on each device's rows.


class StencilKernel(NamedTuple):
    """Rows (coords (r,), points (r, K)) -> (r, K, m), looping over chunks of `batch` rows."""

    spec: fd.EvalSpec
    batch: int

    def __call__(self, replicated: tuple, rows: tuple) -> jax.Array:
        theta, dynamic = replicated
        coords, points = rows
        local = coords.shape[0]
        chunks = (coords.reshape(-1, self.batch), points.reshape(-1, self.batch, points.shape[1]))
        out = jax.lax.map(
            lambda chunk: fd.values_at_coordinates(self.spec, theta, dynamic, *chunk), chunks
        )
        return out.reshape((local,) + out.shape[2:])


class AlongKernel(NamedTuple):
    """Rows of directions (r, n) -> (r, K, m): f(theta + t v) for the replicated steps t."""

    spec: fd.EvalSpec

    def __call__(self, replicated: tuple, directions: jax.Array) -> jax.Array:
        theta, dynamic, ts = replicated
        return fd.values_along_directions(self.spec, theta, dynamic, directions, ts)


@ft.partial(jax.jit, static_argnums=(0, 5))
def _chunked_values_at_coordinates(
    spec: fd.EvalSpec,
    theta: jax.Array,
    dynamic: Any,
    coords: jax.Array,
    points: jax.Array,
    count: int,
) -> jax.Array:
    """`fd.values_at_coordinates` over chunks in a compiled loop: one dispatch, one chunk live.

    Args:
      coords: (chunks, batch) int32 coordinate indices.
      points: (chunks, batch, K) values to put at those coordinates.
      count: Static: how many leading rows of the flattened result to keep (the rest is padding).

    Returns:
      (count, K, m) function values.
    """
    out = jax.lax.map(
        lambda chunk: fd.values_at_coordinates(spec, theta, dynamic, *chunk), (coords, points)
    )
    return out.reshape((-1,) + out.shape[2:])[:count]


def _narrow_signature(values: np.ndarray, f0: np.ndarray, slope_big: np.ndarray) -> bool:
    """Whether f's float64 values along the probe show an internal cast to a narrower dtype.

    Such an f either returns values exactly representable in float32 at every tiny step (the
    cast sits at the output), or does not change at all at steps below float32's resolution
    while it clearly changes at larger ones (the cast sits at the input: a staircase).

    Args:
      values: (rows, steps, m) f at theta +- t v for t in EVIDENCE_STEPS (rows 0 and 1).
      f0: (m,) f at theta. slope_big: (m,) the central slope at t = 1e-5.
    """
    tiny = EVIDENCE_STEPS <= 1e-7 * (1 + 1e-9)
    near = np.concatenate([values[0, tiny], values[1, tiny], f0[None, :]])
    near = near[np.isfinite(near)]
    with np.errstate(over="ignore"):
        representable = bool(near.size) and bool(
            np.all(near.astype(np.float32).astype(np.float64) == near)
        )
    nonzero = np.isfinite(slope_big) & (slope_big != 0)
    flat = np.all(values[0, tiny] == values[1, tiny], axis=0)
    staircase = bool(np.any(nonzero & flat))
    constant = bool(np.all(values[0] == values[1]))  # f constant along the probe: no cast seen
    return (representable and not constant) or staircase


def _devices_of(values: Sequence[Any]) -> set:
    """The devices the given arrays live on (numpy arrays: the default device)."""
    out = set()
    for v in values:
        out |= set(v.devices()) if isinstance(v, jax.Array) else {jax.devices()[0]}
    return out


def _small(layout: ArgLayout, f: Callable, has_aux: bool, diff_values: Any, dynamic: Any) -> bool:
    """Whether a problem is small enough to run op by op (see EAGER_MAX_COORDINATES)."""
    if layout.n > EAGER_MAX_COORDINATES:
        return False
    if not jax.config.jax_disable_jit:  # under disable_jit everything runs op by op anyway
        spec = fd.EvalSpec(f, has_aux, layout, tuple(np.dtype(leaf.dtype) for leaf in layout.diff))
        theta = jax.ShapeDtypeStruct(
            (layout.n,), np.result_type(*[leaf.real_dtype for leaf in layout.diff])
        )
        try:
            jaxpr = jax.make_jaxpr(fd.value_at.__wrapped__, static_argnums=0)(spec, theta, dynamic)
        except Exception:  # noqa: BLE001 - f does not trace here: let the jitted path report it
            return False
        per_eval = layout.n * 8 + _jaxpr_bytes(jaxpr.jaxpr)
        return per_eval * len(fd.STENCIL) * max(1, layout.n) <= EAGER_BUDGET_BYTES
    return True


def batching_problem(
    trace: Callable[[], Any], unbatched: Callable[[], Any] | None = None
) -> str | None:
    """Why `trace()` (tracing a jitted kernel that vmaps f) fails where f itself traces, as the
    first line of JAX's error, or None when it traces (or fails without vmap too, which the
    unbatched evaluation then reports itself).

    A `jax.pure_callback` without `vmap_method` and a primitive without a batching rule
    raise `NotImplementedError` under `vmap` (JAX 0.10.2), while `jax.lax.map` runs them:
    that alone is a batching problem. Any other error of the batched trace (a
    `custom_batching.custom_vmap` rule or a batching rule that raises, a `custom_vjp` that may
    not close over a `BatchTracer`) is one when `unbatched()` (the same kernel traced without
    vmap) succeeds; without `unbatched` it is left to the evaluation to report.
    """
    try:
        trace()
    except NotImplementedError as error:
        return first_line(error)
    except Exception as error:  # noqa: BLE001 - a batching problem only if f works unbatched
        if unbatched is None:
            return None
        try:
            unbatched()
        except Exception:  # noqa: BLE001 - f fails without vmap too: its evaluation reports it
            return None
        return first_line(error)
    return None


def _vmap_problem(
    f: Callable, has_aux: bool, layout: ArgLayout, dtypes: tuple, dynamic: list
) -> str | None:
    """Why f cannot be batched with vmap, or None (one cached trace of a batch of two, and of
    one unbatched evaluation when the batch fails)."""
    spec = fd.EvalSpec(f, has_aux, layout, dtypes)
    real = np.result_type(*[_real_dtype(d) for d in dtypes])
    thetas = jax.ShapeDtypeStruct((2, layout.n), real)
    theta = jax.ShapeDtypeStruct((layout.n,), real)
    return batching_problem(
        lambda: fd.values_at_points.trace(spec, thetas, dynamic),
        lambda: fd.value_at.trace(spec, theta, dynamic),
    )


def widen(value: Any) -> Any:
    """A fixed float array leaf in float64 (complex128); other leaves unchanged. Call under x64."""
    dtype = getattr(value, "dtype", None)
    if (
        dtype is None
        or jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
        or not jnp.issubdtype(dtype, jnp.inexact)
    ):
        return value
    return jnp.asarray(
        value, jnp.complex128 if jnp.issubdtype(dtype, jnp.complexfloating) else jnp.float64
    )


def evidence_rows(layout: ArgLayout) -> int:
    """Rows of the evidence kernel: one Taylor direction per argument, plus +-e_i for the sweep."""
    return len({leaf.argnum for leaf in layout.diff}) + 2


def random_directions(layout: ArgLayout, seed: int, count: int, salt: str) -> np.ndarray:
    """Standard-normal directions (count, n); each leaf's block is seeded from (seed, salt, path).

    Adding an unrelated leaf does not change the directions drawn for the others. Drawn
    with numpy's PCG64 on the host: deterministic, and free of the seconds of XLA
    compilation that `jax.random` costs on the first call of every process.
    """
    out = np.zeros((count, layout.n), np.float64)
    for leaf in layout.diff:
        stream = zlib.crc32(f"{salt}:{leaf.path}".encode())
        rng = np.random.Generator(np.random.PCG64([int(seed) & 0xFFFFFFFF, stream]))
        out[:, leaf.offset : leaf.offset + leaf.size] = rng.standard_normal((count, leaf.size))
    return out
