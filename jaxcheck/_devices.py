"""Host-side: spreads a batched kernel over devices (and hosts) with JAX's own sharding.

The finite-difference engine evaluates f at many independent points: a stencil per
coordinate, or a few steps along each direction. `map_over_devices` splits the leading
(batch) axis of those evaluations over a 1-D `jax.sharding.Mesh`, runs one `shard_map`
program (each device evaluates its own rows, no communication), and gathers the result
once. In a multi-process run (`jax.distributed.initialize`) every process calls it with
the same host arrays and gets the same full result back.

`resolve_devices` turns the user's `devices=` option into the devices to use.
"""

import functools as ft
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
AXIS = "batch"  # the mesh axis the rows are split over
MAX_PROGRAMS = 64  # compiled wrappers kept (like the jit caches they hold)


def _platform_of(like: PyTree) -> str:
    """The platform of the first committed jax.Array in `like`, else the default backend's."""
    for leaf in jtu.tree_leaves(like):
        if isinstance(leaf, jax.Array):
            try:
                return next(iter(leaf.devices())).platform
            except (AttributeError, StopIteration, RuntimeError):
                continue
    return jax.default_backend()


def _by_process(devices: Sequence[jax.Device]) -> dict[int, list[jax.Device]]:
    groups: dict[int, list[jax.Device]] = {}
    for d in devices:
        groups.setdefault(d.process_index, []).append(d)
    return groups


def resolve_devices(devices: Any, like: PyTree = None) -> tuple[jax.Device, ...]:
    """The devices a check runs its finite differences on.

    Args:
      devices: `None` (all devices of the arguments' platform; in a multi-process run all
        *global* devices of it), an int k (the first k of them; in a multi-process run k/P
        from each of the P processes), or a sequence of `jax.Device`.
      like: The arguments (any pytree); the platform is that of its first jax.Array.

    Returns:
      A non-empty tuple of distinct devices of one platform, ordered by process then id.

    Raises:
      TypeError, ValueError: naming `devices` and what to pass instead.
    """
    platform = _platform_of(like)
    available = sorted(jax.devices(platform), key=lambda d: (d.process_index, d.id))
    n_proc = jax.process_count()
    if devices is None:
        return tuple(available)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        k = int(devices)
        if not 1 <= k <= len(available):
            raise ValueError(
                f"`devices` must be between 1 and {len(available)} (the {platform} devices "
                f"available), or None for all of them; got {k}."
            )
        if n_proc == 1:
            return tuple(available[:k])
        if k % n_proc:
            raise ValueError(
                f"`devices={k}` cannot be split evenly over the {n_proc} processes of this "
                f"multi-process run: pass a multiple of {n_proc}, or None for all "
                f"{len(available)} global devices."
            )
        groups = _by_process(available)
        return tuple(d for p in sorted(groups) for d in groups[p][: k // n_proc])
    if isinstance(devices, jax.Device):
        devices = [devices]
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence):
        raise TypeError(
            "`devices` must be None (all devices), an int (how many) or a sequence of "
            f"`jax.Device` (e.g. `jax.devices()[:2]`); got {type(devices).__name__}."
        )
    chosen = list(devices)
    if not chosen:
        raise ValueError("`devices` is empty: pass at least one device, or None for all of them.")
    bad = [d for d in chosen if not isinstance(d, jax.Device)]
    if bad:
        raise TypeError(
            "`devices` must hold `jax.Device` objects (e.g. `jax.devices()[:2]`); "
            f"got a {type(bad[0]).__name__}."
        )
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"`devices` lists a device twice: {chosen}. Pass each device once.")
    platforms = sorted({d.platform for d in chosen})
    if len(platforms) > 1:
        raise ValueError(
            f"`devices` mixes platforms {platforms}: pass devices of one platform, "
            "the one the arguments live on."
        )
    if n_proc > 1:
        counts = {p: len(g) for p, g in _by_process(chosen).items()}
        if len(counts) != n_proc or len(set(counts.values())) != 1:
            raise ValueError(
                f"`devices` must take the same number of devices from each of the {n_proc} "
                f"processes of this multi-process run; got {dict(sorted(counts.items()))} "
                "(devices per process). Pass None, an int multiple of the process count, "
                "or such a selection."
            )
    return tuple(sorted(chosen, key=lambda d: (d.process_index, d.id)))


# -- the sharded map ---------------------------------------------------------------


def map_over_devices(
    kernel: Callable[[PyTree, PyTree], PyTree],
    replicated: PyTree,
    batched: PyTree,
    devices: Sequence[jax.Device],
    *,
    row_multiple: int = 1,
) -> PyTree:
    """`kernel(replicated, batched)` with the rows of `batched` split over `devices`.

    Args:
      kernel: Traceable `kernel(replicated, rows)`: maps a chunk of rows (leading axis r of
        every array in `rows`) to arrays with the same leading axis r; rows must be
        independent. Hashable, and equal across calls that should share one compilation
        (a module-level function, or a NamedTuple/frozen dataclass holding the static
        settings with a `__call__`): no retrace on a second call with the same shapes.
      replicated: Pytree of arrays every device sees whole (theta, fixed data): host numpy
        or jax.Array (identical on every process).
      batched: Pytree of host numpy arrays with a common leading axis B (identical on
        every process).
      devices: From `resolve_devices`.
      row_multiple: Each device's share of rows is a multiple of this (so a kernel that
        loops over chunks of this many rows inside gets whole chunks).

    Returns:
      The kernel's output pytree as host numpy arrays with leading axis B (padding
      stripped), the same on every process.
    """
    rows = _common_rows(batched)
    count = len(devices)
    per_device = max(1, -(-rows // count))
    per_device = -(-per_device // row_multiple) * row_multiple
    padded = jtu.tree_map(lambda x: _pad_rows(np.asarray(x), per_device * count), batched)
    if count == 1:
        device = devices[0]
        out = _plain_program(type(kernel), kernel)(
            _put(replicated, device), jtu.tree_map(lambda x: jax.device_put(x, device), padded)
        )
        return jtu.tree_map(lambda y: np.asarray(jax.device_get(y))[:rows], out)
    mesh = Mesh(np.asarray(devices, dtype=object), (AXIS,))
    out = _sharded_program(type(kernel), kernel, mesh)(
        _put(replicated, NamedSharding(mesh, P())),
        jtu.tree_map(lambda x: _global(x, NamedSharding(mesh, P(AXIS))), padded),
    )
    return jtu.tree_map(lambda y: _gather(y)[:rows], out)


# The caches are keyed on the kernel's type too: NamedTuple kernels of different classes
# with equal fields compare equal (AlongKernel(spec) == ValuesPass(spec)).
@ft.lru_cache(maxsize=MAX_PROGRAMS)
def _plain_program(kind: type, kernel: Callable) -> Callable:
    # A closure, since jit needs a weak-referenceable callable (a NamedTuple kernel is not).
    return jax.jit(lambda replicated, rows: kernel(replicated, rows))


@ft.lru_cache(maxsize=MAX_PROGRAMS)
def _sharded_program(kind: type, kernel: Callable, mesh: Mesh) -> Callable:
    # check_vma=False: the user's f may hold code (callbacks, custom rules) whose
    # replication the checker cannot follow; every output is split over AXIS anyway.
    body = jax.shard_map(
        kernel, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS), check_vma=False
    )
    return jax.jit(body)


def _common_rows(batched: PyTree) -> int:
    sizes = {np.shape(x)[0] for x in jtu.tree_leaves(batched) if np.ndim(x) > 0}
    if len(sizes) != 1 or any(np.ndim(x) == 0 for x in jtu.tree_leaves(batched)):
        raise ValueError(
            "`batched` must hold arrays with one common leading axis; got leading sizes "
            f"{sorted(sizes)}."
        )
    return sizes.pop()


def _pad_rows(x: np.ndarray, total: int) -> np.ndarray:
    """x padded to `total` rows with copies of its first row (zeros when it has none)."""
    pad = total - x.shape[0]
    if pad == 0:
        return x
    fill = np.repeat(x[:1], pad, axis=0) if x.shape[0] else np.zeros((pad,) + x.shape[1:], x.dtype)
    return np.concatenate([x, fill])


def _put(tree: PyTree, target: Any) -> PyTree:
    """Replicated values onto one device or a replicated `NamedSharding` (any process count)."""
    if jax.process_count() == 1 or isinstance(target, jax.Device):
        return jax.device_put(tree, target)
    return jtu.tree_map(lambda x: _global(x, target), tree)


def _global(x: Any, sharding: NamedSharding) -> jax.Array:
    """A global array from a host value that is identical on every process."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _global(np.asarray(jax.random.key_data(x)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _gather(y: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-process) sharded array on this host."""
    if y.is_fully_addressable:
        return np.asarray(jax.device_get(y))
    return np.asarray(multihost_utils.process_allgather(y, tiled=True))
