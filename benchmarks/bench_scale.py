"""Scaling of `jaxcheck.check_grad(mode="full")` with the number of devices (issue 9).

Usage:
  python3 benchmarks/bench_scale.py                    # MLP n ~ 1e4 on 1, 2, 4 devices
  python3 benchmarks/bench_scale.py --size 2000 --devices 1 2
  python3 benchmarks/bench_scale.py --platform gpu     # real accelerators, no forced devices

Each device count runs in a fresh subprocess. On CPU the subprocess forces
`--xla_force_host_platform_device_count=D`: those D "devices" share the same cores, so
the table shows correctness (max |numeric difference| against 1 device, same verdict)
and the overhead of sharding, not a speed-up. On a machine with several GPUs
(`--platform gpu`) the same script measures the speed-up: `check_grad(devices=D)` takes
the first D real devices.

Workload: loss(params, x, y) = mean((tanh(x W1 + b1) W2 + b2 - y)**2), 16 inputs, 8 data
rows, hidden width chosen so that n = 18 * width + 1 is about the requested size.

Columns:
  cold      first check in the fresh process (tracing + compilation + run), seconds.
  steady    a second check of a new function object of the same shapes (best of 2).
  cpu_s     CPU time (all threads) of that steady check (it compiles again: new function).
  warm      the same function object checked again: nothing compiles, so this is the
            evaluation itself plus the sharding/gather overhead; warm_cpu its CPU time.
  evals     result.n_evaluations (the same for every device count).
  vs_1      warm / warm on 1 device.
  max|dn|   max |numeric gradient - numeric gradient on 1 device| over all coordinates.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


def _child(size: int, devices: int, out_path: str) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxcheck

    width = max(1, round((size - 1) / 18))

    def make_loss():
        def loss(params, x, y):
            h = jnp.tanh(x @ params["w1"] + params["b1"])
            return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)

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
    args = (params, x, y)
    start = time.perf_counter()
    result = jaxcheck.check_grad(make_loss(), args, mode="full", devices=devices)
    cold = time.perf_counter() - start
    steady, cpu = [], []
    for _ in range(2):
        start, start_cpu = time.perf_counter(), time.process_time()
        jaxcheck.check_grad(make_loss(), args, mode="full", devices=devices)
        steady.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    same = make_loss()
    jaxcheck.check_grad(same, args, mode="full", devices=devices)
    start, start_cpu = time.perf_counter(), time.process_time()
    jaxcheck.check_grad(same, args, mode="full", devices=devices)
    warm, warm_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    leaves = jax.tree_util.tree_leaves(result.numeric)
    numeric = np.concatenate([np.ravel(a) for a in leaves]).astype(np.float64)
    np.save(out_path, numeric)
    info = {
        "n": int(numeric.size),
        "devices": result.devices,
        "status": result.status,
        "evals": result.n_evaluations,
        "cold": cold,
        "steady": min(steady),
        "cpu": cpu[int(np.argmin(steady))],
        "warm": warm,
        "warm_cpu": warm_cpu,
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
    }
    print("RESULT " + json.dumps(info), flush=True)


def _run(size: int, devices: int, platform_name: str, out_path: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if platform_name == "cpu":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, __file__, "--child", str(size), str(devices), out_path]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"devices={devices} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--platform", default="cpu", choices=["cpu", "gpu", "tpu"])
    ns = parser.parse_args()
    import numpy as np

    if ns.platform == "cpu":
        print(
            f"# forced CPU devices on {os.cpu_count()} cores: the devices share those cores, "
            "so this shows correctness and sharding overhead only, not a speed-up"
        )
    print(
        f"# {platform.machine()} python {platform.python_version()}; check_grad mode=full, "
        f"float32; load average {os.getloadavg()[0]:.1f}"
    )
    header = (
        "devices  n       status  evals   cold_s  steady_s  cpu_s   warm_s  warm_cpu  vs_1   "
        "max|dn|   device  jax"
    )
    print(header)
    base, base_numeric = None, None
    for devices in ns.devices:
        out_path = f"/tmp/bench_scale_{os.getpid()}_{devices}.npy"
        info = _run(ns.size, devices, ns.platform, out_path)
        numeric = np.load(out_path)
        os.remove(out_path)
        if base is None:
            base, base_numeric = info, numeric
        diff = float(np.max(np.abs(numeric - base_numeric)))
        print(
            f"{info['devices']:<8} {info['n']:<7} {info['status']:<7} {info['evals']:<7} "
            f"{info['cold']:<7.2f} {info['steady']:<9.3f} {info['cpu']:<7.2f} "
            f"{info['warm']:<7.3f} {info['warm_cpu']:<9.2f} {info['warm'] / base['warm']:<6.2f} "
            f"{diff:<9.2e} {info['device']}  {info['jax']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
