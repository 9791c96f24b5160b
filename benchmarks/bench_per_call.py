"""Per-call cost of a small full check against `jax.test_util.check_grads`, in one warm process.

A parametrised test suite checks many fresh small functions, one per test case. This script
mimics that: every call gets a *new* Python function (a fresh closure, so nothing keyed on the
function object can be reused), 24 elements through a dozen elementwise ops, and times,
interleaved in the same rounds:

  check_grads   jax.test_util.check_grads(f, (x,), order=1, modes=("fwd", "rev"))
  check_grad    jaxcheck.check_grad(sum(f), (x,), mode="full")
  check_vjp     jaxcheck.check_vjp(f, (x,), mode="full")

float32 runs with x64 off (JAX's default); float64 runs in a second process with x64 on.
It prints the median seconds per call and the ratio to check_grads measured in the same
rounds. Usage: `python benchmarks/bench_per_call.py [--rounds 30] [--dtype float32|float64]`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

N = 24
WARMUP = 3


def _make(k: int):
    """A fresh function of 24 elements through 12 elementwise ops (k makes the closure distinct)."""
    import jax.numpy as jnp

    scale = 1.0 + 1e-3 * (k % 7)

    def f(x):
        y = jnp.sin(x * scale) + jnp.cos(x)
        y = jnp.tanh(y) * jnp.exp(-0.1 * x * x)
        y = y + jnp.log1p(x * x) - jnp.sqrt(1.0 + x * x)
        y = y * jnp.arctan(x) + jnp.expm1(0.2 * x)
        return y / (1.0 + jnp.abs(y) + x * x)

    return f


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(dtype: str, rounds: int) -> dict:
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.test_util import check_grads

    import jaxcheck

    x = jnp.linspace(-1.5, 1.7, N, dtype=getattr(jnp, dtype))
    times: dict[str, list[float]] = {"check_grads": [], "check_grad": [], "check_vjp": []}
    statuses = set()
    for k in range(rounds + WARMUP):
        f = _make(2 * k)
        t_ref = _time(lambda f=f: check_grads(f, (x,), order=1, modes=("fwd", "rev")))
        g = _make(2 * k + 1)

        def loss(x, g=g):
            return jnp.sum(g(x))

        res: dict = {}
        t_grad = _time(
            lambda loss=loss, res=res: res.update(g=jaxcheck.check_grad(loss, (x,), mode="full"))
        )
        h = _make(2 * k + 1001)
        t_vjp = _time(lambda h=h, res=res: res.update(v=jaxcheck.check_vjp(h, (x,), mode="full")))
        statuses.add((res["g"].status, res["v"].status))
        if k >= WARMUP:
            times["check_grads"].append(t_ref)
            times["check_grad"].append(t_grad)
            times["check_vjp"].append(t_vjp)
    med = {name: statistics.median(v) for name, v in times.items()}
    return {
        "dtype": dtype,
        "rounds": rounds,
        "median_s": med,
        "ratio": {name: med[name] / med["check_grads"] for name in med},
        "statuses": sorted(statuses),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dtype", choices=("float32", "float64"))
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.json:
        print(json.dumps(run(a.dtype, a.rounds)))
        return
    dtypes = (a.dtype,) if a.dtype else ("float32", "float64")
    for dtype in dtypes:
        # A process per dtype: x64 must be set before JAX is used.
        out = subprocess.run(
            [sys.executable, __file__, "--json", "--dtype", dtype, "--rounds", str(a.rounds)],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        med, ratio = r["median_s"], r["ratio"]
        print(
            f"{r['device']} jax {r['jax']} {dtype} n={N} rounds={r['rounds']}: "
            f"check_grads {med['check_grads'] * 1e3:.1f} ms | "
            f"check_grad {med['check_grad'] * 1e3:.1f} ms ({ratio['check_grad']:.1f}x) | "
            f"check_vjp {med['check_vjp'] * 1e3:.1f} ms ({ratio['check_vjp']:.1f}x) | "
            f"statuses {r['statuses']}"
        )


if __name__ == "__main__":
    main()
