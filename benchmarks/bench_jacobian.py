"""Benchmarks of Jacobian checks and probe mode (a script; pytest does not collect it).

Prints one line per configuration with the device, the jax version, the dtype and the size:

  1. check_vjp(layer_norm, x[64, 256], mode="full"): every one of the 16384 x 16384 Jacobian
     entries compared with finite differences, tile by tile (memory bounded: the tile and
     row-chunk budgets are printed, with the peak RSS), against a Python loop over output
     rows (one jitted jax.vjp per row), the naive way to get the analytic Jacobian, timed in
     the same run; the ratio is printed.
  2. check_grad(loss, n = 1e6 parameters, mode="probe") with one wrong element: time to find
     the leaf and element, against an estimate of the full check (4 n evaluations of f at
     the measured cost of one vmapped evaluation).

Usage: python benchmarks/bench_jacobian.py [--quick]
"""

import argparse
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxcheck
from jaxcheck import _jacobian_kernels, _problem


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _line(config: str, dtype: str, size: str, **fields: object) -> None:
    device = jax.devices()[0].device_kind
    extra = "  ".join(f"{k}={v}" for k, v in fields.items())
    print(
        f"[{device} jax {jax.__version__}] {config:34s} dtype={dtype:8s} size={size:18s} {extra}",
        flush=True,
    )


@jax.custom_vjp
def layer_norm(x):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    sigma = jnp.sqrt(jnp.mean(xc**2, axis=-1, keepdims=True) + 1e-5)
    return xc / sigma


def _ln_fwd(x):
    y = layer_norm(x)
    sigma = jnp.sqrt(jnp.var(x, axis=-1, keepdims=True) + 1e-5)
    return y, (y, sigma)


def _ln_bwd(res, g):
    y, sigma = res
    gx = (
        g - jnp.mean(g, axis=-1, keepdims=True) - y * jnp.mean(g * y, axis=-1, keepdims=True)
    ) / sigma
    return (gx,)


layer_norm.defvjp(_ln_fwd, _ln_bwd)


def bench_layernorm(rows: int, cols: int) -> None:
    x = jax.random.normal(jax.random.key(0), (rows, cols), jnp.float32)
    n = m = rows * cols
    jaxcheck.check_vjp(layer_norm, (x[:2, :8],), mode="full")  # warm the library's small kernels
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    r = jaxcheck.check_vjp(layer_norm, (x,), mode="full")
    t_check = time.perf_counter() - t0
    # The analytic side alone, as jaxcheck computes it (vmapped rows, chunked), for a fair ratio.
    from jaxcheck._flatten import build_layout

    layout, diff, dyn = build_layout((x,), (0,))
    sel = _jacobian_kernels.OutputSelect(layer_norm, False, (0,))
    outs = (_jacobian_kernels.OutLeaf("out", (rows, cols), np.dtype(np.float32), 0, m),)
    r_chunk = min(_problem.ROW_ENTRIES // n, _problem.MAX_TILE)
    _jacobian_kernels.vjp_rows(
        sel, layout, outs, diff, dyn, jnp.arange(r_chunk)
    ).block_until_ready()
    t0 = time.perf_counter()
    for start in range(0, m, r_chunk):
        _jacobian_kernels.vjp_rows(
            sel, layout, outs, diff, dyn, jnp.arange(start, start + r_chunk) % m
        ).block_until_ready()
    t_rows = time.perf_counter() - t0
    # Baseline: a Python loop over output rows, one jitted jax.vjp per row.
    _, vjp = jax.vjp(layer_norm, x)
    row = jax.jit(lambda j: vjp(jax.nn.one_hot(j, m, dtype=x.dtype).reshape(x.shape))[0])
    row(0).block_until_ready()
    t0 = time.perf_counter()
    for j in range(m):
        row(j).block_until_ready()
    t_loop = time.perf_counter() - t0
    k = r.blocks[0]
    _line(
        "check_vjp(layer_norm) full",
        "float32",
        f"x[{rows},{cols}] {n}x{m}",
        status=r.status,
        entries=k.n_checked,
        check_s=f"{t_check:.1f}",
        evals=r.n_evaluations,
        tile=f"{_problem.TILE_ENTRIES} entries",
        row_chunk=f"{_problem.ROW_ENTRIES} entries",
        peak_rss_mib=f"{_rss_mib():.0f} (before {rss0:.0f})",
    )
    _line(
        "analytic Jacobian: vmapped vs loop",
        "float32",
        f"x[{rows},{cols}] {m} rows",
        vmapped_rows_s=f"{t_rows:.2f}",
        python_loop_s=f"{t_loop:.2f}",
        ratio=f"{t_loop / t_rows:.1f}x",
        full_check_vs_loop=f"{t_check / t_loop:.2f}",
    )


def bench_probe(n: int) -> None:
    bad = n * 7 // 9

    @jax.custom_vjp
    def act(z):
        return jnp.tanh(z)

    act.defvjp(
        lambda z: (jnp.tanh(z), jnp.tanh(z)),
        lambda y, g: ((g * (1 - y**2)).at[bad].multiply(-1.0),),
    )

    def loss(params, x):
        return jnp.sum(act(params["w"] * x + params["b"]) ** 2) + 0.5 * jnp.sum(params["b"] ** 2)

    k1, k2 = jax.random.split(jax.random.key(1))
    params = {"w": jax.random.normal(k1, (n,), jnp.float32), "b": jnp.zeros((n,), jnp.float32)}
    x = jax.random.normal(k2, (n,), jnp.float32)
    t0 = time.perf_counter()
    r = jaxcheck.check_grad(loss, (params, x), mode="probe")
    t_probe = time.perf_counter() - t0
    t0 = time.perf_counter()
    r2 = jaxcheck.check_grad(loss, (params, x * 1.01), mode="probe")
    t_probe2 = time.perf_counter() - t0
    found = [(l.path, l.worst_index) for l in r.failed_leaves]
    # Full mode estimate: 4 * (2n) evaluations at the measured cost of a vmapped float64 evaluation.
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x64 = jnp.asarray(x, jnp.float64)
        batch = 4
        many = jax.jit(jax.vmap(lambda s: loss(jax.tree.map(lambda a: a + s, p64), x64)))
        shifts = jnp.linspace(0, 1e-6, batch)
        many(shifts).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(5):
            many(shifts).block_until_ready()
        per_eval = (time.perf_counter() - t0) / (5 * batch)
    full_estimate = 4 * 2 * n * per_eval
    _line(
        "check_grad(mode='probe') 1 bad elem",
        "float32",
        f"2 x {n} params",
        status=r.status,
        found=found,
        expected=f"[{bad}]",
        probe_s=f"{t_probe:.1f} (again {t_probe2:.1f}, {r2.status})",
        evals=r.n_evaluations,
        full_mode_estimate_s=f"{full_estimate:.0f} ({8 * n} evals x {per_eval * 1e3:.2f} ms)",
        speedup=f"{full_estimate / t_probe:.0f}x",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        bench_layernorm(8, 64)
        bench_probe(100_000)
    else:
        bench_layernorm(64, 256)
        bench_probe(1_000_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
