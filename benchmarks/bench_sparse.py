"""Sparse against dense full Jacobian checks: time and evaluations (a script; pytest does not collect it).

Each configuration is a `jax.custom_vjp` whose bwd rule is correct (the VJP of its primal),
checked with `jaxcheck.check_vjp(f, (x,), mode="full")`: `sparse=True` is the sparse plan
(pattern from the jaxpr, colour groups, grouped stencils, validation), `sparse=False` the
dense one (every input coordinate). Every measurement runs in a fresh subprocess: `cold`
is the first check there (tracing and compilation included), `warm` the same check again
(nothing compiles), each in wall seconds and CPU seconds (all threads; on a shared
machine less noisy than wall time); `rss` is the subprocess's peak resident memory.

Dense checks above DENSE_MAX_INPUTS inputs would take from minutes to days; they are
estimated, marked `~`: the dense plan's own kernels (`_jacobian_full.check_columns` over a
prefix of the input coordinates, `_jacobian_kernels.vjp_rows` over a prefix of the output
rows, as `run_full` runs them for a transposable VJP) are timed cold and warm, and scaled
linearly to all n columns and m rows, plus the measured set-up (`build_problem`).
Evaluations of the dense plan are 4 n plus the set-up's. The 1e4-input cases run both the
real dense check and the estimate, so the estimate's accuracy is printed too.

Cases: elementwise (sin) at 1e4, 1e5, 1e6 elements; a banded finite-difference stencil
(x[2:] - 2 x[1:-1]^2 + x[:-2]) at 1e4; layer-norm and softmax over the last axis at
(64, 256) and, with --large, (512, 1024) (1024 colours of 524288 outputs: 5.4e8 entries).

Usage:
  python benchmarks/bench_sparse.py [--large] [--no-dense] [--only NAME ...]

`benchmarks/bench_scale.py` runs the same table (`sparse_table`) after its device scaling.
"""

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DENSE_MAX_INPUTS = 10_000  # beyond this the dense check is estimated from a prefix
PREFIX_ENTRIES = 2**25  # Jacobian entries the dense prefix compares (columns x outputs)
TIMEOUT_S = 1800


def sin(x):
    import jax.numpy as jnp

    return jnp.sin(x)


def stencil(x):
    return x[2:] - 2 * x[1:-1] ** 2 + x[:-2]


def layer_norm(x):
    import jax.numpy as jnp

    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5)


def softmax(x):
    import jax

    return jax.nn.softmax(x, axis=-1)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    primal: Callable
    shape: tuple[int, ...]

    @property
    def size(self) -> str:
        return "x".join(str(s) for s in self.shape)

    @property
    def n(self) -> int:
        out = 1
        for s in self.shape:
            out *= s
        return out


CASES = (
    Case("elementwise", sin, (10**4,)),
    Case("elementwise", sin, (10**5,)),
    Case("elementwise", sin, (10**6,)),
    Case("banded", stencil, (10**4,)),
    Case("layer-norm", layer_norm, (64, 256)),
    Case("softmax", softmax, (64, 256)),
)
LARGE_CASES = (
    Case("layer-norm", layer_norm, (512, 1024)),
    Case("softmax", softmax, (512, 1024)),
)


# -- in the subprocess ------------------------------------------------------------------


def custom_rule(primal: Callable):
    import jax

    f = jax.custom_vjp(primal)
    f.defvjp(lambda x: (primal(x), x), lambda x, g: (jax.vjp(primal, x)[1](g)[0],))
    f.__name__ = primal.__name__
    return f


def point(case: Case):
    import jax
    import jax.numpy as jnp

    return jax.random.normal(jax.random.key(0), case.shape, jnp.float32)


def _timed(fn: Callable) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _timed_cpu(fn: Callable) -> tuple[object, float, float]:
    """fn's result, wall seconds and CPU seconds (all threads: what the work costs, less
    sensitive than wall time to the other processes on a shared machine)."""
    start = time.process_time()
    out, wall = _timed(fn)
    return out, wall, time.process_time() - start


def _check(case: Case, sparse: bool) -> dict:
    """The public check, cold then warm, in this (fresh) process."""
    import jaxcheck

    f, x = custom_rule(case.primal), point(case)
    run = lambda: jaxcheck.check_vjp(f, (x,), mode="full", sparse=sparse)  # noqa: E731
    result, cold, cold_cpu = _timed_cpu(run)
    _, warm, warm_cpu = _timed_cpu(run)
    out = {"status": result.status, "evaluations": result.n_evaluations, "cold": cold}
    out.update(warm=warm, cold_cpu=cold_cpu, warm_cpu=warm_cpu)
    if sparse:
        out["sparsity"] = result.sparsity
    return out


def _dense_estimate(case: Case) -> dict:
    """The dense plan's cost from prefixes of its own kernels, scaled to all columns and rows."""
    import jax
    import numpy as np

    from jaxcheck import _jacobian_full as jf
    from jaxcheck import _jacobian_kernels as jk
    from jaxcheck._problem import build_problem

    f, x = custom_rule(case.primal), point(case)

    def build():
        return build_problem(
            "vjp", f, (x,), argnums=None, mode="full", eps=None, rtol=None, atol=None,
            batch_size=None, seed=0, reference="auto", has_aux=False, locate_rules=False,
        )  # fmt: skip

    p, setup_cold = _timed(build)
    p, setup_warm = _timed(build)
    k = int(max(16, min(p.n // 2, PREFIX_ENTRIES // p.m)))  # two prefixes of k columns
    V = p.ev.random_directions(2, "freivalds").T
    leaf_max = np.ones((p.n_in, p.m))  # a placeholder tolerance scale: timing only

    def columns(coords: np.ndarray) -> None:
        acc = jf.BlockAccumulator(p)
        jf.check_columns(p, coords, acc, jk.vjp_columns, leaf_max, freivalds=V)

    _, cols_cold = _timed(lambda: columns(np.arange(k)))
    _, cols_warm = _timed(lambda: columns(np.arange(k, 2 * k)))
    r = p.row_size()

    def rows(start: int) -> None:
        jax.block_until_ready(p.call_analytic(jk.vjp_rows, np.arange(start, start + r) % p.m))

    _, rows_cold = _timed(lambda: rows(0))
    _, rows_warm = _timed(lambda: rows(r))
    warm = setup_warm + cols_warm * p.n / k + rows_warm * p.m / r
    cold = warm + (setup_cold - setup_warm) + (cols_cold - cols_warm) + (rows_cold - rows_warm)
    setup_evals = p.ev.n_evaluations - 8 * k  # the two prefixes' 4 k evaluations each
    return {
        "status": "estimate",
        "evaluations": int(4 * p.n + setup_evals),
        "cold": cold,
        "warm": warm,
        "note": f"{k}-column and {r}-row prefixes scaled to {p.n} columns, {p.m} rows",
    }


def _child(name: str, size: str, plan: str) -> None:
    case = next(c for c in CASES + LARGE_CASES if c.name == name and c.size == size)
    out = _dense_estimate(case) if plan == "dense~" else _check(case, sparse=plan == "sparse")
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    import jax

    out["device"] = str(jax.devices()[0].device_kind)
    out["jax"] = jax.__version__
    print("RESULT " + json.dumps(out), flush=True)


# -- the table ---------------------------------------------------------------------------


def _run(case: Case, plan: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, __file__, "--child", case.name, case.size, plan]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{case.name} {case.size} {plan} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


HEADER = (
    "case         size      plan    status    colours  evaluations  cold_s   warm_s   "
    "cold_cpu warm_cpu rss_MiB  dense/sparse (evals, cold, warm)"
)


def _row(case: Case, plan: str, info: dict, sparse: dict | None) -> str:
    mark = "~" if plan == "dense~" else ""
    colours = "-"
    if plan == "sparse" and info.get("sparsity", "").startswith("sparse: "):
        colours = info["sparsity"].split()[1]
    ratios = ""
    if sparse is not None and plan != "sparse":
        ratios = (
            f"{mark}{info['evaluations'] / sparse['evaluations']:.0f}x, "
            f"{mark}{info['cold'] / sparse['cold']:.1f}x, {mark}{info['warm'] / sparse['warm']:.1f}x"
        )
    return (
        f"{case.name:12s} {case.size:9s} {plan:7s} {info['status']:9s} {colours:8s} "
        f"{mark}{info['evaluations']:<11} {mark}{info['cold']:<7.2f} {mark}{info['warm']:<7.2f} "
        f"{_cpu(info, 'cold'):8s} {_cpu(info, 'warm'):8s} {info['rss_mib']:<8.0f} {ratios}"
    )


def _cpu(info: dict, which: str) -> str:
    value = info.get(f"{which}_cpu")
    return "-" if value is None else f"{value:.2f}"


def sparse_table(cases: tuple[Case, ...], dense: bool = True, out: Callable = print) -> None:
    """Sparse vs dense rows for `cases`, one subprocess per measurement (run one at a time)."""
    out(f"# sparse vs dense check_vjp(mode='full'); load average {os.getloadavg()[0]:.1f}")
    out(HEADER)
    for case in cases:
        sparse = _run(case, "sparse")
        out(_row(case, "sparse", sparse, None))
        if not dense:
            continue
        if case.n <= DENSE_MAX_INPUTS:
            out(_row(case, "dense", _run(case, "dense"), sparse))
        out(_row(case, "dense~", _run(case, "dense~"), sparse))
    out(f"# load average {os.getloadavg()[0]:.1f}; ~ = estimated from a measured prefix")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also the (512, 1024) row-wise ops")
    parser.add_argument("--no-dense", action="store_true", help="skip every dense check")
    parser.add_argument("--only", nargs="+", help="case names to run (e.g. layer-norm)")
    args = parser.parse_args()
    cases = CASES + (LARGE_CASES if args.large else ())
    if args.only:
        cases = tuple(c for c in cases if c.name in args.only)
    sparse_table(cases, dense=not args.no_dense)


if __name__ == "__main__":
    main()
