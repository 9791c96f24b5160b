"""Checking at scale (issue 9): device scaling, and sparse against dense Jacobian checks.

Usage:
  python3 benchmarks/bench_scale.py                    # both parts (about 25 minutes here)
  python3 benchmarks/bench_scale.py --part devices     # 1, 2, 4 devices only
  python3 benchmarks/bench_scale.py --part sparse [--no-large] [--no-dense]
  python3 benchmarks/bench_scale.py --size 2000 --devices 1 2
  python3 benchmarks/bench_scale.py --platform gpu     # real accelerators, no forced devices

Part "devices": `check_grad(mode="full")` of an MLP (n ~ --size) and the sparse
`check_vjp(mode="full")` of a layer-norm custom_vjp over (64, 256), each on 1, 2, 4
devices. Part "sparse": `bench_sparse.sparse_table` (elementwise 1e4/1e5/1e6, banded 1e4,
layer-norm and softmax (64, 256) and (512, 1024); the dense checks that would take too long
are estimated from a measured prefix, marked ~); see bench_sparse.py's docstring.

Each device count runs in a fresh subprocess. On CPU the subprocess forces
`--xla_force_host_platform_device_count=D`: those D "devices" share the same cores, so
the table shows correctness (max |numeric difference| against 1 device, same verdict)
and the overhead of sharding, not a speed-up. On a machine with several GPUs
(`--platform gpu`) the same script measures the speed-up: `check_grad(devices=D)` takes
the first D real devices.

Workloads: "mlp": loss(params, x, y) = mean((tanh(x W1 + b1) W2 + b2 - y)**2), 16 inputs,
8 data rows, hidden width chosen so that n = 18 * width + 1 is about the requested size;
"layer-norm": bench_sparse's layer-norm custom_vjp at x of shape (64, 256), check_vjp in
full mode (the sparse plan: its colour chunks are split over the devices).

Columns:
  cold      first check in the fresh process (tracing + compilation + run), seconds.
  steady    a second check of a new function object of the same shapes (best of 2).
  cpu_s     CPU time (all threads) of that steady check (it compiles again: new function).
  warm      the same function object checked again: nothing compiles, so this is the
            evaluation itself plus the sharding/gather overhead; warm_cpu its CPU time.
  evals     result.n_evaluations (the same for every device count).
  vs_1      warm / warm on 1 device.
  max|dn|   mlp: max |numeric gradient - numeric gradient on 1 device| over all
            coordinates; layer-norm: max |difference| of the blocks' relative errors and
            worst entries' finite-difference values against 1 device.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bench_sparse

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600
WORKLOADS = ("mlp", "layer-norm")


def _mlp(size: int) -> tuple[Callable[[], Callable], tuple]:
    """A factory of fresh loss functions (new function objects compile again) and its args."""
    import jax.numpy as jnp
    import numpy as np

    width = max(1, round((size - 1) / 18))

    def make_loss():
        def loss(params, x, y):
            h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
            return jnp.mean((h @ params["w2"] + params["b2"][None, :] - y) ** 2)

        return loss

    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.standard_normal((16, width)) / 4, jnp.float32),
        "b1": jnp.asarray(rng.standard_normal(width) / 4, jnp.float32),
        "w2": jnp.asarray(rng.standard_normal((width, 1)) / np.sqrt(width), jnp.float32),
        "b2": jnp.zeros(1, jnp.float32),
    }
    x = jnp.asarray(rng.standard_normal((8, 16)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((8, 1)), jnp.float32)
    return make_loss, (params, x, y)


def _values(workload: str, result) -> list[float]:
    """What the table compares across device counts: the numeric gradient (mlp), or the
    blocks' relative errors and worst entries' finite-difference values (layer-norm)."""
    import jax
    import numpy as np

    if workload == "mlp":
        leaves = jax.tree_util.tree_leaves(result.numeric)
        return np.concatenate([np.ravel(a) for a in leaves]).astype(np.float64).tolist()
    return [v for b in result.blocks for v in (b.relative_error, b.worst.numeric)]


def _child(workload: str, size: int, devices: int) -> None:
    import jax
    import numpy as np

    import jaxcheck

    if workload == "mlp":
        make, args = _mlp(size)
        check = lambda f: jaxcheck.check_grad(f, args, mode="full", devices=devices)  # noqa: E731
    else:
        case = bench_sparse.Case("layer-norm", bench_sparse.layer_norm, (64, 256))
        make = lambda: bench_sparse.custom_rule(case.primal)  # noqa: E731
        x = bench_sparse.point(case)
        check = lambda f: jaxcheck.check_vjp(f, (x,), mode="full", devices=devices)  # noqa: E731
    start = time.perf_counter()
    result = check(make())
    cold = time.perf_counter() - start
    steady, cpu = [], []
    for _ in range(2):
        start, start_cpu = time.perf_counter(), time.process_time()
        check(make())
        steady.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    same = make()
    check(same)
    start, start_cpu = time.perf_counter(), time.process_time()
    check(same)
    warm, warm_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    values = _values(workload, result)
    info = {
        "n": len(values) if workload == "mlp" else result.n_inputs,
        "devices": result.devices,
        "status": result.status,
        "evals": result.n_evaluations,
        "cold": cold,
        "steady": min(steady),
        "cpu": cpu[int(np.argmin(steady))],
        "warm": warm,
        "warm_cpu": warm_cpu,
        "values": values,
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
    }
    print("RESULT " + json.dumps(info), flush=True)


def _run(workload: str, size: int, devices: int, platform_name: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if platform_name == "cpu":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, __file__, "--child", workload, str(size), str(devices)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"devices={devices} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def devices_table(
    workloads: tuple[str, ...], size: int, counts: list[int], platform_name: str
) -> None:
    """One line per workload and device count, each count in a fresh subprocess."""
    import numpy as np

    if platform_name == "cpu":
        print(
            f"# forced CPU devices on {os.cpu_count()} cores: the devices share those cores, "
            "so this shows correctness and sharding overhead only, not a speed-up"
        )
    print(
        f"# {platform.machine()} python {platform.python_version()}; float32 arguments; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    header = (
        "workload    devices  n       status  evals   cold_s  steady_s  cpu_s   warm_s  "
        "warm_cpu  vs_1   max|dn|   device  jax"
    )
    print(header)
    for workload in workloads:
        base = None
        for devices in counts:
            info = _run(workload, size, devices, platform_name)
            if base is None:
                base = info
            diff = float(np.max(np.abs(np.subtract(info["values"], base["values"]))))
            print(
                f"{workload:11s} {info['devices']:<8} {info['n']:<7} {info['status']:<7} "
                f"{info['evals']:<7} {info['cold']:<7.2f} {info['steady']:<9.3f} "
                f"{info['cpu']:<7.2f} {info['warm']:<7.3f} {info['warm_cpu']:<9.2f} "
                f"{info['warm'] / base['warm']:<6.2f} {diff:<9.2e} {info['device']}  {info['jax']}",
                flush=True,
            )
    print(f"# load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["devices", "sparse", "all"], default="all")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--platform", default="cpu", choices=["cpu", "gpu", "tpu"])
    parser.add_argument("--no-large", action="store_true", help="sparse part: skip (512, 1024)")
    parser.add_argument("--no-dense", action="store_true", help="sparse part: skip dense checks")
    ns = parser.parse_args()
    if ns.part in ("devices", "all"):
        devices_table(tuple(ns.workloads), ns.size, ns.devices, ns.platform)
    if ns.part in ("sparse", "all"):
        cases = bench_sparse.CASES + (() if ns.no_large else bench_sparse.LARGE_CASES)
        bench_sparse.sparse_table(cases, dense=not ns.no_dense)


if __name__ == "__main__":
    main()
