"""Subprocess worker for tests/test_devices.py (not collected: no `test_` prefix).

    python tests/_devices_worker.py local               # XLA_FLAGS forces 4 CPU devices
    python tests/_devices_worker.py multi PORT PROCESS  # one of 2 processes, 2 CPU devices each

Prints one line `RESULT <json>` on stdout (other libraries may log around it), or
`UNAVAILABLE <reason>` and exits 3 when the multi-process runtime cannot start here.
"""

import json
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

MULTI_TIMEOUT_S = 30


def loss(params: dict, x: jax.Array) -> jax.Array:
    hidden = jnp.tanh(x @ params["w"] + params["b"][None, :])
    return jnp.sum(hidden**2) + jnp.sum(jnp.sin(params["b"]))


def broken_grad(params: dict, x: jax.Array) -> dict:
    """The true gradient with one element wrong: args[0]['w'][2,3]."""
    g = jax.grad(loss)(params, x)
    return {"w": g["w"].at[2, 3].add(0.5), "b": g["b"]}


@jax.custom_vjp
def bad_sin(x: jax.Array) -> jax.Array:
    return jnp.sin(x)


def _bad_sin_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.sin(x), x


def _bad_sin_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (g * jnp.cos(x) * jnp.where(jnp.arange(x.size) == 4, 2.0, 1.0),)  # entry 4 wrong


bad_sin.defvjp(_bad_sin_fwd, _bad_sin_bwd)


def layer(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.tanh(w @ x)


def softplus_rule(wrong_at: int | None) -> jax.custom_vjp:
    """A custom_vjp softplus; with `wrong_at`, its bwd is 1.5x too large at that element."""

    @jax.custom_vjp
    def softplus(x: jax.Array) -> jax.Array:
        return jnp.logaddexp(x, 0.0)

    def bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
        scale = jnp.ones(x.shape, x.dtype)
        if wrong_at is not None:
            scale = scale.at[wrong_at].set(1.5)
        return (g * jax.nn.sigmoid(x) * scale,)

    softplus.defvjp(lambda x: (softplus(x), x), bwd)
    return softplus


def cube_rule(wrong_at: int | None) -> jax.custom_jvp:
    """A custom_jvp w * x**3 (elementwise); with `wrong_at`, the tangent along x is 2x too
    large at that element."""

    @jax.custom_jvp
    def cube(x: jax.Array, w: jax.Array) -> jax.Array:
        return w * x**3

    @cube.defjvp
    def cube_jvp(primals: tuple, tangents: tuple) -> tuple:
        (x, w), (dx, dw) = primals, tangents
        factor = jnp.full(x.shape, 3.0, x.dtype)
        if wrong_at is not None:
            factor = factor.at[wrong_at].set(6.0)
        return cube(x, w), factor * w * x**2 * dx + x**3 * dw

    return cube


def rule_summary(result) -> dict:
    """A rule battery's verdict, each check's verdict and finding, and its fd evidence as
    plain data (timings dropped; float values compared to rounding by the tests)."""

    def without_timing(data):
        if isinstance(data, dict):
            return {k: without_timing(v) for k, v in data.items() if k not in ("seconds",)}
        if isinstance(data, list):
            return [without_timing(v) for v in data]
        return data

    return {
        "status": result.status,
        "devices": result.devices,
        "checks": [(c.name, c.status, c.message) for c in result.checks],
        "fd": [without_timing(r.to_dict()) for r in result.fd_results],
        "footer": str(result).splitlines()[-1],
    }


def jacobian_summary(result) -> dict:
    return {
        "status": result.status,
        "devices": result.devices,
        "blocks": [(b.path, b.status) for b in result.blocks],
        "report": [line for line in str(result).splitlines() if not line.startswith("  mode ")],
    }


def problem() -> tuple[dict, jax.Array]:
    w = jnp.asarray(np.random.default_rng(0).standard_normal((5, 7)), jnp.float32)
    b = jnp.linspace(-1.0, 1.0, 7, dtype=jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5)), jnp.float32)
    return {"w": w, "b": b}, x


def summary(result, sharded_calls: list | None = None) -> dict:
    """What the tests compare: verdict, devices, the failing elements and the numeric gradient."""
    failed = [(leaf.path, list(leaf.worst_index)) for leaf in result.failed_leaves]
    numeric = None
    if result.numeric is not None:
        leaves = jax.tree_util.tree_leaves(result.numeric)
        numeric = np.concatenate([np.ravel(a) for a in leaves]).astype(float).tolist()
    return {
        "status": result.status,
        "devices": result.devices,
        "mode": result.mode,
        "failed": failed,
        "numeric": numeric,
        "footer": [line for line in str(result).splitlines() if line.startswith("  mode ")][0],
        "n_evaluations": result.n_evaluations,
        "sharded_calls": None if sharded_calls is None else sorted(set(sharded_calls)),
    }


def own_placement() -> dict:
    """check_jvp/check_vjp of an f that moves its data to devices of its own (JAX's
    pjit_test test_device_put_grad): arguments on devices 0-1, f computing on 2-3."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxcheck

    here = jax.sharding.Mesh(jax.devices()[:2], "x")
    there = jax.sharding.Mesh(jax.devices()[2:4], "x")

    def moves(v):  # a scalar: the VJP rows' batch of 1 cannot be split over 2 devices
        y = jax.jit(lambda t: t**2)(v)
        return jnp.sum(jax.jit(lambda t: t * 3)(jax.device_put(y, NamedSharding(there, P("x")))))

    x = jax.device_put(np.arange(1.0, 5.0, dtype=np.float32), NamedSharding(here, P("x")))
    out = {}
    for check in (jaxcheck.check_jvp, jaxcheck.check_vjp):
        r = check(moves, (x,), mode="full", sparse=False)
        out[check.__name__] = {"status": r.status, "notes": list(r.notes)}
    return out


def local() -> dict:
    import jaxcheck
    import jaxcheck._engine as engine
    from jaxcheck._devices import map_over_devices, resolve_devices

    sharded_calls = []

    def counted(*a, **k):
        sharded_calls.append(len(a[3]))
        return map_over_devices(*a, **k)

    engine.map_over_devices = counted  # to see which checks took the sharded path
    # One device runs the same compiled kernels as several (not the op-by-op path of small
    # problems), so their values can be compared bit for bit.
    engine.EAGER_MAX_COORDINATES = 0
    args = problem()
    out: dict = {"n_devices": len(jax.devices())}
    for devices in (1, 3, None):
        for name, grad_fn in (("correct", None), ("broken", broken_grad)):
            if devices == 3 and name == "broken":
                continue  # an odd count: the correct gradient suffices (saves a compile)
            sharded_calls.clear()
            r = jaxcheck.check_grad(loss, args, grad_fn=grad_fn, devices=devices, mode="full")
            out[f"full/{name}/{devices}"] = summary(r, sharded_calls)
    for devices in (1, None):
        for name, grad_fn in (("correct", None), ("broken", broken_grad)):
            sharded_calls.clear()
            r = jaxcheck.check_grad(loss, args, grad_fn=grad_fn, devices=devices, mode="probe")
            out[f"probe/{name}/{devices}"] = summary(r, sharded_calls)
    x = jnp.linspace(-1.0, 1.0, 9, dtype=jnp.float32)
    w = jnp.asarray(np.random.default_rng(2).standard_normal((6, 9)), jnp.float32)
    for devices in (1, None):
        for mode in ("full", "probe"):
            r = jaxcheck.check_vjp(bad_sin, (x,), mode=mode, devices=devices)
            out[f"vjp/{mode}/broken/{devices}"] = jacobian_summary(r)
        r = jaxcheck.check_jvp(layer, (x, w), mode="full", devices=devices)
        out[f"jvp/full/correct/{devices}"] = jacobian_summary(r)
    out.update(rule_batteries())
    explicit = jaxcheck.check_grad(loss, args, devices=jax.devices()[2:], mode="full")
    out["explicit"] = summary(explicit)
    sharded_calls.clear()
    last = jaxcheck.check_grad(loss, args, devices=jax.devices()[3:], mode="full")
    out["last"] = summary(last, sharded_calls)
    out["own_placement"] = own_placement()

    traces = []

    class Counting:
        """A hashable kernel that counts its traces."""

        def __hash__(self) -> int:
            return 7

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Counting)

        def __call__(self, replicated, rows):
            traces.append(rows.shape)
            return rows * replicated

    devices = resolve_devices(None)
    rows = np.arange(10.0).reshape(5, 2)
    first = map_over_devices(Counting(), np.float32(2.0), rows, devices)
    second = map_over_devices(Counting(), np.float32(3.0), rows + 1, devices)
    out["map"] = {
        "traces": len(traces),
        "local_rows": list(traces[0]),
        "first": first.tolist(),
        "second": second.tolist(),
    }
    try:
        jaxcheck.check_grad(loss, args, devices=5)
    except ValueError as error:
        out["too_many"] = str(error)
    return out


def rule_batteries() -> dict:
    """check_custom_vjp of a broken rule on 1 device and on all of them (the same rule
    object, so the checks that do not depend on devices compile once); check_custom_jvp of
    a broken rule and check_rules on all of them."""
    import jaxcheck

    x = jnp.linspace(-2.0, 2.0, 7, dtype=jnp.float32)
    w = jnp.linspace(0.5, 1.5, 7, dtype=jnp.float32)
    vjp_rule = softplus_rule(3)
    out = {}
    for devices in (1, None):
        r = jaxcheck.check_custom_vjp(vjp_rule, (x,), devices=devices)
        out[f"custom_vjp/broken/{devices}"] = rule_summary(r)
    r = jaxcheck.check_custom_jvp(cube_rule(2), (x, w))  # x[3] = 0: a wrong factor hides there
    out["custom_jvp/broken/None"] = rule_summary(r)
    r = jaxcheck.check_rules(lambda v: jnp.sum(vjp_rule(v) ** 2), (x,))
    out["rules/broken/None"] = {
        "status": r.status,
        "devices": r.devices,
        "failed": [(s.name, s.failed_checks) for s in r.failed_rules],
        "to_dict_devices": r.to_dict()["devices"],
        "footer": str(r).splitlines()[-1],
    }
    return out


def multi(port: int, process_id: int) -> dict:
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception as error:  # noqa: BLE001 - any failure: this jax has no gloo
        print(f"UNAVAILABLE gloo collectives: {error}", flush=True)
        raise SystemExit(3) from error
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=MULTI_TIMEOUT_S,
    )
    try:
        jax.devices()  # the CPU client (and its gloo collectives) is created here
    except Exception as error:
        if "gloo" not in str(error).lower():
            raise
        print(f"UNAVAILABLE gloo collectives: {str(error).splitlines()[0]}", flush=True)
        raise SystemExit(3) from error
    import jaxcheck
    import jaxcheck._engine as engine

    engine.EAGER_MAX_COORDINATES = 0  # the compiled kernels, as in `local`

    args = problem()
    out: dict = {
        "process_index": jax.process_index(),
        "local_devices": len(jax.local_devices()),
        "global_devices": len(jax.devices()),
    }
    for name, grad_fn in (("correct", None), ("broken", broken_grad)):
        r = jaxcheck.check_grad(loss, args, grad_fn=grad_fn, mode="full")
        report = r.to_dict()
        report.pop("seconds")
        out[name] = {"summary": summary(r), "report": report}
    probe = jaxcheck.check_grad(loss, args, grad_fn=broken_grad, mode="probe").to_dict()
    probe.pop("seconds")
    out["probe"] = probe
    x = jnp.linspace(-1.0, 1.0, 9, dtype=jnp.float32)
    sparse = jaxcheck.check_vjp(bad_sin, (x,), mode="full").to_dict()  # the sparse plan
    sparse.pop("seconds")
    out["sparse"] = sparse
    try:
        jaxcheck.check_grad(loss, args, devices=3)
    except ValueError as error:
        out["uneven"] = str(error)
    jax.distributed.shutdown()
    return out


def main(argv: list[str]) -> None:
    # The suite's strict configuration (tests/conftest.py), here in the subprocess too.
    jax.config.update("jax_numpy_rank_promotion", "raise")
    warnings.simplefilter("error")
    if argv[0] == "local":
        result = local()
    else:
        result = multi(int(argv[1]), int(argv[2]))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
