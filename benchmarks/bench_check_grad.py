"""Speed and memory of `jaxcheck.check_grad` against two finite-difference baselines.

Usage:
  python3 benchmarks/bench_check_grad.py            # full: MLP n=1e3,1e4,1e5; op n=1e3,1e4
  python3 benchmarks/bench_check_grad.py --quick    # MLP and op at n=1e3 only (a smoke run)
  python3 benchmarks/bench_check_grad.py --only mlp --sizes 1000 10000 --dtypes float32

Workloads (the loss is built inside a factory, so every measurement gets a new function
object and nothing is reused from an earlier one):
  mlp  loss(params, x, y) = mean((tanh(x W1 + b1) W2 + b2 - y)**2), 16 inputs, 8 data
       rows, hidden width chosen so that n = 18 * width + 1 is about the requested size.
  op   loss(x, w) = sum(w * softplus(x)), softplus a `jax.custom_vjp` (a cheap
       elementwise op whose rule is under test); n = x.size.

Methods, each measured in its own fresh subprocess (so "cold" is a cold start and the
peak RSS belongs to that method alone):
  jaxcheck/auto    `check_grad(..., mode="full", reference="auto")` (every coordinate, even
                   above the n at which mode="auto" switches to probe mode): in float32 with x64 off the
                   reference is re-evaluated in float64 (the default).
  jaxcheck/native  `check_grad(..., reference="native")`: reference in the argument dtype,
                   like the baselines (the like-for-like comparison). In float64 both are
                   the same, so only "jaxcheck" is run.
  loop             the textbook loop: for each i two jitted calls f(theta +- eps e_i),
                   the perturbed vectors built by a jitted `theta.at[i].add(+-eps)`,
                   `float()` of each value. At large n it runs a prefix of the coordinates
                   and extrapolates linearly (marked `~` and reported).
  bare/B           a jitted vmapped central difference, 2 evaluations per coordinate, no
                   error estimate, no verdict, B coordinates per chunk, a Python loop over
                   chunks (the last one padded, as jaxcheck does), one device_get at the end.

Columns:
  cold      first call in a fresh process: tracing + compilation + run (seconds).
  steady    a second call with the same function at new argument values of the same
            shapes and dtypes (best of a few repeats when short).
  compile   cold - steady.  xla_s: sum of "Finished XLA compilation" times logged by JAX
            during the cold call; #xla: the number of XLA compilations in it.
  new_fn    (jaxcheck only) a fresh function object of the same shapes in the now warm
            process: what every further check in a test session pays.
  evals     function evaluations (result.n_evaluations; 2n for the baselines).
  us/eval   steady / evals, in microseconds.
  rss_MB    peak resident set size of the subprocess (`resource.getrusage(...).ru_maxrss`),
            and d_rss the peak minus the RSS just before the first measured call (after
            importing JAX and building the arguments). XLA buffers live outside Python's
            allocator, so tracemalloc would not see them; ru_maxrss does.
  retrace   (jaxcheck) how many times the loss was traced during the steady call; 0 means
            the compiled kernels were reused.
Per configuration a summary line gives the ratios checked against the targets:
  per-eval jaxcheck steady / best bare per-eval steady (target <= 1.3), for both
  references, and cold jaxcheck / cold loop (target <= 1 at n >= 1e4).
"""

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BARE_CHUNKS = (4, 16, 64, 256, 1024)
LOOP_MAX_COORDS = 4096  # the textbook loop runs at most this many coordinates, then extrapolates
BARE_MAX_COORDS = 4096  # likewise the bare kernel (a multiple of every chunk size)
DATA_ROWS, IN_DIM = 8, 16


# ----------------------------------------------------------------------------------
# Worker side: one (workload, dtype, n, method) per process.


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class _CompileLog(logging.Handler):
    """Collects JAX's compile log lines (enabled with `jax_log_compiles`)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names: list[str] = []
        self.seconds = 0.0

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Finished XLA compilation of "):
            head, _, tail = msg[len("Finished XLA compilation of ") :].rpartition(" in ")
            self.names.append(head)
            try:
                self.seconds += float(tail.split()[0])
            except ValueError:
                pass

    def take(self):
        out = (list(self.names), self.seconds)
        self.names.clear()
        self.seconds = 0.0
        return out


def _workload(name: str, n: int, dtype, counter: list):
    """A fresh loss function and two argument tuples (same shapes, different values)."""
    import jax
    import jax.numpy as jnp

    def traced(x):
        if isinstance(x, jax.core.Tracer):
            counter[0] += 1

    if name == "mlp":
        width = max(1, round((n - 1) / (IN_DIM + 2)))

        def loss(params, x, y):
            traced(params["W1"])
            hidden = jnp.tanh(x @ params["W1"] + params["b1"])
            out = hidden @ params["W2"] + params["b2"]
            return jnp.mean((out[:, 0] - y) ** 2)

        def point(seed):
            k = jax.random.split(jax.random.key(seed), 5)
            params = {
                "W1": jax.random.normal(k[0], (IN_DIM, width)) / jnp.sqrt(IN_DIM),
                "b1": 0.1 * jax.random.normal(k[1], (width,)),
                "W2": jax.random.normal(k[2], (width, 1)) / jnp.sqrt(width),
                "b2": 0.1 * jax.random.normal(k[3], (1,)),
            }
            x = jax.random.normal(k[4], (DATA_ROWS, IN_DIM))
            y = jnp.sin(x[:, 0])
            return jax.tree.map(lambda a: a.astype(dtype), (params, x, y))

        return loss, point(0), point(1)

    if name == "op":

        @jax.custom_vjp
        def softplus(x):
            return jnp.logaddexp(x, 0.0)

        def fwd(x):
            return softplus(x), x

        def bwd(x, g):
            return (g * jax.nn.sigmoid(x),)

        softplus.defvjp(fwd, bwd)

        def loss(x, w):
            traced(x)
            return jnp.sum(w * softplus(x))

        def point(seed):
            k1, k2 = jax.random.split(jax.random.key(seed))
            return (
                jax.random.normal(k1, (n,)).astype(dtype),
                jax.random.uniform(k2, (n,)).astype(dtype),
            )

        return loss, point(0), point(1)
    raise ValueError(f"unknown workload {name!r}")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_LAST_CPU = [0.0]


def _timed(fn, *args):
    """Wall time of fn(*args) (blocked until ready); its CPU time (all threads) goes to _LAST_CPU."""
    import jax

    cpu = _cpu_s()
    start = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    wall = time.perf_counter() - start
    _LAST_CPU[0] = _cpu_s() - cpu
    return wall, out


def _steady(fn, *args, repeats: int = 3):
    """Best wall time and best CPU time over `repeats` calls (repeated only while short)."""
    wall, out = _timed(fn, *args)
    cpu = _LAST_CPU[0]
    for _ in range(repeats - 1):
        if wall > 2.0:
            break
        wall = min(wall, _timed(fn, *args)[0])
        cpu = min(cpu, _LAST_CPU[0])
    return wall, cpu, out


def _flat(loss, args):
    """loss as a function of the flat vector of args[0], the other args closed over."""
    from jax.flatten_util import ravel_pytree

    theta, unravel = ravel_pytree(args[0])
    return (lambda th, *rest: loss(unravel(th), *rest)), theta, tuple(args[1:])


def _run_jaxcheck(spec, make, log):
    import jaxcheck
    from jaxcheck import _engine

    chosen = []
    auto = _engine.Evaluator.auto_batch_size

    def record(self, *a, **k):
        chosen.append(auto(self, *a, **k))
        return chosen[-1]

    _engine.Evaluator.auto_batch_size = record
    reference = spec["method"].split("/")[1] if "/" in spec["method"] else "auto"
    counter = [0]
    loss, args_a, args_b = make(counter)
    rss0 = _rss_mb()
    log.take()
    cold, result = _timed(
        lambda: jaxcheck.check_grad(loss, args_a, reference=reference, mode="full")
    )
    names, xla_s = log.take()
    traces_cold = counter[0]
    steady, steady_cpu, result_b = _steady(
        lambda: jaxcheck.check_grad(loss, args_b, reference=reference, mode="full")
    )
    steady_names, _ = log.take()
    retrace = counter[0] - traces_cold
    new_fn = None
    if spec["n"] <= spec["new_fn_max_n"]:
        loss2, _, _ = make([0])
        log.take()
        new_fn, _ = _timed(
            lambda: jaxcheck.check_grad(loss2, args_a, reference=reference, mode="full")
        )
        new_fn_names, _ = log.take()
    return {
        "cold": cold,
        "steady": steady,
        "steady_cpu": steady_cpu,
        "new_fn": new_fn,
        "new_fn_xla": None if new_fn is None else len(new_fn_names),
        "evals": int(result.n_evaluations),
        "xla": len(names),
        "xla_s": xla_s,
        "xla_names": names,
        "steady_xla": len(steady_names),
        "retrace": retrace,
        "status": [result.status, result_b.status],
        "reference": result.reference.split(";")[0],
        "chunk": min(chosen[0], spec["n"]) if chosen else None,
        "rss0": rss0,
    }


def _prefix_result(n, count, cold, steady, steady_cpu):
    """Times measured on the first `count` of n coordinates, extrapolated linearly to n.

    cold = the cold prefix (it holds all compilation) + the steady rate for the rest.
    """
    scale = n / count
    return {
        "cold": cold + steady * (scale - 1.0),
        "steady": steady * scale,
        "steady_cpu": steady_cpu * scale,
        "extrapolated": None
        if count == n
        else f"{count} of {n} coordinates run, steady time x{scale:.1f}",
    }


def _run_loop(spec, make, log):
    import jax
    import numpy as np

    counter = [0]
    loss, args_a, args_b = make(counter)
    n = spec["n"]
    count = min(n, LOOP_MAX_COORDS)

    flat, _, _ = _flat(loss, args_a)
    f = jax.jit(flat)  # jitted once; the loop reuses it
    add = jax.jit(lambda th, i, d: th.at[i].add(d))

    def run(args):
        _, theta, rest = _flat(loss, args)
        eps = float(np.finfo(theta.dtype).eps) ** (1 / 3)
        grad = np.empty(count)
        for i in range(count):
            fp = float(f(add(theta, i, eps), *rest))
            fm = float(f(add(theta, i, -eps), *rest))
            grad[i] = (fp - fm) / (2 * eps)
        return grad

    rss0 = _rss_mb()
    log.take()
    cold, _ = _timed(run, args_a)
    names, xla_s = log.take()
    steady, _ = _timed(run, args_b)
    steady_cpu = _LAST_CPU[0]
    steady_names, _ = log.take()
    out = _prefix_result(n, count, cold, steady, steady_cpu)
    out.update(evals=2 * n, xla=len(names), xla_s=xla_s, steady_xla=len(steady_names), rss0=rss0)
    return out


def _run_bare(spec, make, log):
    import jax
    import numpy as np

    chunk = int(spec["method"].split("/")[1])
    counter = [0]
    loss, args_a, args_b = make(counter)
    n = spec["n"]
    b = min(chunk, n)
    count = n if n <= BARE_MAX_COORDS else BARE_MAX_COORDS
    flat, _, _ = _flat(loss, args_a)
    kernel = _bare_kernel(flat)

    def run(args):
        _, theta, rest = _flat(loss, args)
        eps = float(np.finfo(theta.dtype).eps) ** (1 / 3)
        outs = []
        for start in range(0, count, b):
            coords = np.arange(start, start + b, dtype=np.int32) % count  # the last chunk padded
            outs.append(kernel(theta, coords, eps, *rest))
        return np.concatenate(jax.device_get(outs))[:count]  # one transfer at the end

    rss0 = _rss_mb()
    log.take()
    cold, _ = _timed(run, args_a)
    names, xla_s = log.take()
    steady, steady_cpu, _ = _steady(run, args_b)
    steady_names, _ = log.take()
    out = _prefix_result(n, count, cold, steady, steady_cpu)
    out.update(
        evals=2 * n, xla=len(names), xla_s=xla_s, steady_xla=len(steady_names), chunk=b, rss0=rss0
    )
    return out


def _bare_kernel(flat):
    """jit(vmap(central difference of `flat` along coordinate i)): 2 evaluations per coordinate."""
    import jax

    @jax.jit
    def kernel(theta, coords, eps, *rest):
        def one(i):
            return (flat(theta.at[i].add(eps), *rest) - flat(theta.at[i].add(-eps), *rest)) / (
                2 * eps
            )

        return jax.vmap(one)(coords)

    return kernel


def worker(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    log = _CompileLog()
    logger = logging.getLogger("jax")
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    jax.config.update("jax_log_compiles", True)
    x64 = spec["dtype"] == "float64"
    dtype = jnp.float64 if x64 else jnp.float32
    with jax.enable_x64(x64):
        make = lambda counter: _workload(spec["workload"], spec["n"], dtype, counter)  # noqa: E731
        _, args, _ = make([0])
        n = int(ravel_pytree(args[0])[0].size)
        spec = dict(spec, n=n)
        jax.block_until_ready(args)
        method = spec["method"].split("/")[0]
        out = {"jaxcheck": _run_jaxcheck, "loop": _run_loop, "bare": _run_bare}[method](
            spec, make, log
        )
    out.update(
        spec=spec, rss=_rss_mb(), device=str(jax.devices()[0].device_kind), jax=jax.__version__
    )
    return out


# ----------------------------------------------------------------------------------
# Parent side.


def _spawn(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "spec": spec}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "spec": spec}
    return json.loads(lines[-1])


def _fmt(x, spec="{:.3f}"):
    return "-" if x is None else spec.format(x)


HEADER = (
    f"{'device':<6} {'jax':<6} {'dtype':<7} {'work':<4} {'n':>6} {'method':<15} {'chunk':>5} "
    f"{'cold_s':>8} {'steady_s':>8} {'cpu_s':>8} {'compile':>7} {'xla_s':>6} {'#xla':>4} {'new_fn':>7} "
    f"{'evals':>7} {'us/eval':>8} {'cpu_us':>7} {'rss_MB':>7} {'d_rss':>6} {'retrace':>7}"
)


def _line(r: dict) -> str:
    s = r["spec"]
    if "error" in r:
        return f"{'?':<6} {'?':<6} {s['dtype']:<7} {s['workload']:<4} {s['n']:>6} {s['method']:<15} ERROR {r['error']}"
    mark = "~" if r.get("extrapolated") else " "
    return (
        f"{r['device'][:6]:<6} {r['jax']:<6} {s['dtype']:<7} {s['workload']:<4} {s['n']:>6} {s['method']:<15} "
        f"{_fmt(r.get('chunk'), '{:d}'):>5} {mark}{r['cold']:>7.3f} {mark}{r['steady']:>7.3f} {mark}{r['steady_cpu']:>7.3f} "
        f"{max(r['cold'] - r['steady'], 0):>7.3f} {r['xla_s']:>6.2f} {r['xla']:>4d} {_fmt(r.get('new_fn')):>7} "
        f"{r['evals']:>7d} {r['steady'] / r['evals'] * 1e6:>8.2f} {r['steady_cpu'] / r['evals'] * 1e6:>7.2f} "
        f"{r['rss']:>7.0f} {r['rss'] - r['rss0']:>6.0f} {_fmt(r.get('retrace'), '{:d}'):>7}"
    )


def _summary(rows: list[dict]) -> list[str]:
    ok = [r for r in rows if "error" not in r]
    bare = [r for r in ok if r["spec"]["method"].startswith("bare")]
    loop = [r for r in ok if r["spec"]["method"] == "loop"]
    if not bare:
        return ["  (no bare-kernel result)"]
    best = min(bare, key=lambda r: r["steady"] / r["evals"])
    best_cpu = min(bare, key=lambda r: r["steady_cpu"] / r["evals"])
    best_pe, best_cpu_pe = (
        best["steady"] / best["evals"],
        best_cpu["steady_cpu"] / best_cpu["evals"],
    )
    out = [
        f"  best bare: chunk {best['chunk']} {best_pe * 1e6:.2f} us/eval wall; chunk {best_cpu['chunk']} "
        f"{best_cpu_pe * 1e6:.2f} us/eval cpu"
    ]
    for r in ok:
        if not r["spec"]["method"].startswith("jaxcheck"):
            continue
        text = (
            f"  {r['spec']['method']:<15} per-eval / best bare = {r['steady'] / r['evals'] / best_pe:5.2f} wall, "
            f"{r['steady_cpu'] / r['evals'] / best_cpu_pe:5.2f} cpu  (auto chunk {r.get('chunk')}; "
            f"{r['evals']} evals = {r['evals'] / r['spec']['n']:.2f} n)"
        )
        if loop:
            text += f"; cold / loop cold = {r['cold'] / loop[0]['cold']:5.2f}"
        text += (
            f"; steady/cold = {r['steady'] / r['cold']:.2f}; retraces in 2nd call: {r['retrace']}; "
            f"compiles in 2nd call: {r['steady_xla']}; verdicts {'/'.join(r['status'])}"
        )
        out.append(text)
    if loop and loop[0].get("extrapolated"):
        out.append(f"  loop: {loop[0]['extrapolated']} (cold = compile + extrapolated steady)")
    return out


def _targets(results: list[dict]) -> list[str]:
    """The issue's targets (a)-(d), evaluated on all rows of this run."""
    ok = [r for r in results if "error" not in r]

    def rows(method=None, prefix=None, **where):
        return [
            r
            for r in ok
            if all(r["spec"][k] == v for k, v in where.items())
            and (method is None or r["spec"]["method"] == method)
            and (prefix is None or r["spec"]["method"].startswith(prefix))
        ]

    def best(rs, key):
        return min((r[key] / r["evals"] for r in rs), default=None)

    out = ["", "# targets"]
    out.append(
        "(a) per-evaluation steady time / best bare kernel's, like for like (evaluation dtype), target <= 1.3 [wall | cpu]:"
    )
    configs = sorted({(r["spec"]["workload"], r["spec"]["n"]) for r in ok})
    for workload, n in configs:
        pairs = [
            ("float32", "jaxcheck/native", "float32", "f32 native vs f32 bare"),
            ("float32", "jaxcheck/auto", "float64", "f32 auto (f64 reference) vs f64 bare"),
            ("float32", "jaxcheck/auto", "float32", "f32 auto (f64 reference) vs f32 bare"),
            ("float64", "jaxcheck", "float64", "f64 vs f64 bare"),
        ]
        for dtype, method, bare_dtype, label in pairs:
            jc = rows(method, workload=workload, n=n, dtype=dtype)
            bare = rows(prefix="bare", workload=workload, n=n, dtype=bare_dtype)
            if not jc or not bare:
                continue
            r = jc[0]
            wall = r["steady"] / r["evals"] / best(bare, "steady")
            cpu = r["steady_cpu"] / r["evals"] / best(bare, "steady_cpu")
            flag = "met" if min(wall, cpu) <= 1.3 else "NOT met"
            out.append(
                f"    {workload:<4} n={n:<6} {label:<38} {wall:5.2f} | {cpu:5.2f}   {flag}   ({r['evals']} evals = {r['evals'] / n:.2f} n)"
            )
    out.append(
        "(a') total steady time of the full check / best bare 2n kernel's total time "
        "(the kernel's best us/eval x 2n), target <= 1.5 [wall | cpu]:"
    )
    for workload, n in configs:
        for dtype, method, bare_dtype, label in pairs:
            jc = rows(method, workload=workload, n=n, dtype=dtype)
            bare = rows(prefix="bare", workload=workload, n=n, dtype=bare_dtype)
            if not jc or not bare:
                continue
            r = jc[0]
            wall = r["steady"] / (best(bare, "steady") * 2 * n)
            cpu = r["steady_cpu"] / (best(bare, "steady_cpu") * 2 * n)
            flag = "met" if min(wall, cpu) <= 1.5 else "NOT met"
            out.append(
                f"    {workload:<4} n={n:<6} {label:<38} {wall:5.2f} | {cpu:5.2f}   {flag}   "
                f"({r['evals']} evals = 2n + {r['evals'] - 2 * n})"
            )
    out.append(
        "(b) second check at new values, same shapes: steady/cold, retraces of f, XLA compilations:"
    )
    for r in ok:
        if r["spec"]["method"].startswith("jaxcheck"):
            s = r["spec"]
            new_fn = (
                ""
                if r.get("new_fn") is None
                else f"; fresh function in a warm process {r['new_fn']:.2f} s ({r['new_fn_xla']} compilations)"
            )
            out.append(
                f"    {s['workload']:<4} n={s['n']:<6} {s['dtype']} {s['method']:<15} {r['steady']:.3f} s / {r['cold']:.3f} s = "
                f"{r['steady'] / r['cold']:.2f}; retraces {r['retrace']}; compilations {r['steady_xla']}{new_fn}"
            )
    out.append(
        "(c) cold time to a verdict / textbook loop's cold time, target <= 1 at n >= 1e4 (compile = cold - steady):"
    )
    for r in ok:
        s = r["spec"]
        if not s["method"].startswith("jaxcheck") or s["n"] < 10000:
            continue
        loop = rows("loop", workload=s["workload"], n=s["n"], dtype=s["dtype"])
        if loop:
            ratio = r["cold"] / loop[0]["cold"]
            out.append(
                f"    {s['workload']:<4} n={s['n']:<6} {s['dtype']} {s['method']:<15} {r['cold']:.2f} s / {loop[0]['cold']:.2f} s = {ratio:.2f}  "
                f"{'met' if ratio <= 1 else 'NOT met'}   (compile {max(r['cold'] - r['steady'], 0):.2f} s, XLA {r['xla_s']:.2f} s in {r['xla']})"
            )
    out.append(
        "(d) peak RSS growth over the pre-call RSS (MB) against n: bounded by the chunk, not n**2:"
    )
    for workload in sorted({r["spec"]["workload"] for r in ok}):
        for dtype in ("float32", "float64"):
            for method in ("jaxcheck/auto", "jaxcheck/native", "jaxcheck"):
                rs = sorted(
                    rows(method, workload=workload, dtype=dtype), key=lambda r: r["spec"]["n"]
                )
                if rs:
                    text = ", ".join(
                        f"n={r['spec']['n']}: {r['rss'] - r['rss0']:.0f} (chunk {r.get('chunk')})"
                        for r in rs
                    )
                    out.append(f"    {workload:<4} {dtype} {method:<15} {text}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n=1e3 only")
    parser.add_argument("--only", choices=("mlp", "op"), help="one workload")
    parser.add_argument("--sizes", type=int, nargs="*", help="override the sizes")
    parser.add_argument(
        "--dtypes", nargs="*", default=["float32", "float64"], choices=("float32", "float64")
    )
    parser.add_argument("--methods", nargs="*", help="subset, e.g. jaxcheck/native bare/64")
    parser.add_argument("--json", help="also write all raw results to this file")
    parser.add_argument(
        "--compiles", action="store_true", help="list the XLA compilations of each cold check"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="per-subprocess limit (s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    sizes = {"mlp": [1000, 10000, 100000], "op": [1000, 10000]}
    if args.quick:
        sizes = {"mlp": [1000], "op": [1000]}
    if args.sizes:
        sizes = {k: args.sizes for k in sizes}
    if args.only:
        sizes = {args.only: sizes[args.only]}
    print(
        f"# bench_check_grad  python {platform.python_version()}  cpus {os.cpu_count()}  "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}  {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(HEADER)
    results = []
    for workload, ns in sizes.items():
        for dtype in args.dtypes:
            for n in ns:
                methods = (
                    ["jaxcheck/auto", "jaxcheck/native"] if dtype == "float32" else ["jaxcheck"]
                )
                methods += ["loop"] + [f"bare/{b}" for b in BARE_CHUNKS if b <= max(16, n)]
                if args.methods:
                    methods = [
                        m for m in methods if m in args.methods or m.split("/")[0] in args.methods
                    ]
                rows = []
                for method in methods:
                    spec = {
                        "workload": workload,
                        "dtype": dtype,
                        "n": n,
                        "method": method,
                        "new_fn_max_n": 20000,
                    }
                    row = _spawn(spec, args.timeout)
                    print(_line(row), flush=True)
                    rows.append(row)
                for text in _summary(rows):
                    print(text, flush=True)
                if args.compiles:
                    for r in rows:
                        if "xla_names" in r:
                            print(
                                f"  compilations in the cold {r['spec']['method']} call ({r['xla']}): {', '.join(r['xla_names'])}"
                            )
                results += rows
    for text in _targets(results):
        print(text)
    print(f"# done; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
