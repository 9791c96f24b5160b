"""jaxcheck against today's tools: `jax.test_util.check_grads`, the textbook loop, `torch.autograd.gradcheck`.

Usage:
  python3 benchmarks/bench_vs_tools.py            # default run (about 10 minutes on 2 CPU cores)
  python3 benchmarks/bench_vs_tools.py --quick    # n = 1e3, 1e4 and a subset of the cases
  python3 benchmarks/bench_vs_tools.py --write    # also write benchmarks/results_vs_tools.md
  python3 benchmarks/bench_vs_tools.py --full     # every elementwise lax op, not a subset
  python3 benchmarks/bench_vs_tools.py --part time|quality

Everything printed is measured in this run. torch is optional (`pip install torch
--index-url https://download.pytorch.org/whl/cpu`); without it the torch rows are
marked "not installed".

Part 1, time to a verdict. The loss is a 2-layer tanh MLP, loss(params, x, y) =
mean(sum((tanh(x W1 + b1) W2 + b2 - y)**2, -1)), 16 rows of 32 inputs, 8 outputs, hidden
width H so that n = 41 H + 8 is about 1e3, 1e4, 1e5. Each tool runs in a fresh
subprocess: `cold` is its first call (tracing and compilation included, JAX import not),
`cold CPU` the CPU time of that call over all threads (less sensitive to other jobs on a
shared machine), `warm` a second call with the same function and arguments.
  jaxcheck           `jaxcheck.check_grad(loss, (params, x, y))`, float32 arguments with
                     x64 off (the reference is re-evaluated in float64), every coordinate.
  check_grads        `jax.test_util.check_grads(lambda p: loss(p, x, y), (params,),
                     order=1, modes=("rev",))`, float32: one random direction.
  loop               the textbook loop in float32: theta = ravel(params) in numpy, for
                     each i set theta[i] = old +- h (h = 1e-3) in place and call the jitted
                     loss twice (as cs231n's `eval_numerical_gradient`). Above
                     LOOP_FULL_MAX coordinates it runs the first LOOP_SAMPLE coordinates
                     and extrapolates linearly (marked "~").
  torch fast / slow  `torch.autograd.gradcheck` of a torch port of the same MLP in float64
                     (its default precision), `fast_mode=True` (random projections) and
                     False (every coordinate). Above TORCH_SLOW_FULL_MAX slow mode runs
                     with only b1 and b2 requiring grad at the full model size and is
                     extrapolated linearly in n (marked "~").

Part 2, verdict quality. The catalogue `jaxcheck.catalogue.grad_cases.grad_cases()` (correct and broken
gradients: MLP backprop, custom_vjp rules, badly scaled leaves, dropout with a fixed key,
integer leaves, kinks, lax.scan), plus elementwise lax ops with their true derivative and
with a VJP wrong by a relative 1e-4 (`elementwise_op_cases`), each in float32 and
float64. Per tool and dtype: false alarms on correct cases, missed bugs on broken ones,
and how often the wrong leaf is named. Verdicts:
  jaxcheck     `check_grad(f, args, **kwargs).status` (passed / failed / inconclusive);
               "localised" = the first failed leaf is the broken one (and the worst
               element is the broken one where the case names one).
  check_grads  raises AssertionError = flags a bug. It differentiates all of its args,
               so it gets a closure over the float leaves of the checked arguments
               (integer leaves and other arguments fixed) -- what a careful user writes;
               a hand-written `grad_fn` is wrapped in a `jax.custom_vjp`. Defaults:
               eps=1e-4, atol=rtol=2e-3 (float32), 1e-5 (float64).
  loop         central differences per coordinate, then the textbook normalised distance
               d = ||a - n|| / (||a|| + ||n||): float64 with h = 1e-5 flags d > 1e-5; float32
               with h = 1e-3 flags d > 1e-3 (the classic guide: <1e-7 great, ~1e-5 look
               closer, >1e-3 wrong; float32 differences cannot resolve the lower levels).
  torch        gradcheck on torch ports of the MLP cases (correct, bias bug, missing L2)
               and of the elementwise ops (true derivative, 1e-4 relative bug), slow and
               fast mode. float64: its defaults (eps=1e-6, atol=1e-5, rtol=1e-3). float32:
               eps=1e-3, atol=1e-3, rtol=1e-2 (the defaults are meaningless in float32).
               "localised" = its message names the broken input index.
"""

import argparse
import contextlib
import functools as ft
import json
import os
import platform
import re
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

IN_DIM, OUT_DIM, ROWS = 32, 8, 16
SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
LOOP_FULL_MAX, LOOP_SAMPLE = 10_000, 2_000
TORCH_SLOW_FULL_MAX = 10_000
QUICK_TORCH_SLOW_FULL_MAX = 1_000
WARM_IF_COLD_BELOW = 30.0  # seconds: skip the warm repeat of very slow runs
LOOP_H = {"float32": 1e-3, "float64": 1e-5}
LOOP_FLAG = {"float32": 1e-3, "float64": 1e-5}
TORCH_F32 = {"eps": 1e-3, "atol": 1e-3, "rtol": 1e-2}
# Elementwise ops in the default run (--full: all of them). Chosen to span easy and
# awkward derivatives: growth (exp), singular nearby (log, tan), special functions.
DEFAULT_OPS = ("exp", "log", "tan", "tanh", "erf", "lgamma", "atan2", "atan2[1]")
QUICK_OPS = ("exp", "tanh", "atan2[1]")
QUICK_CASE_PREFIXES = ("mlp/", "vjp/", "scaled/", "dropout/", "kink/relu")
TORCH_MLP_CASES = ("mlp/backprop", "mlp/bias_bug", "mlp/missing_l2")
TOOLS = ("jaxcheck", "check_grads", "loop", "torch slow", "torch fast")


def _hidden(n: int) -> int:
    return max(1, round((n - OUT_DIM) / (IN_DIM + 1 + OUT_DIM)))


# ======================================================================================
# Part 1 worker: one (tool, n) per subprocess.


def _mlp_jax(n: int):
    import jax
    import jax.numpy as jnp

    hidden = _hidden(n)
    k = jax.random.split(jax.random.key(0), 6)
    params = {
        "W1": jax.random.normal(k[0], (IN_DIM, hidden)) / IN_DIM**0.5,
        "b1": 0.1 * jax.random.normal(k[1], (hidden,)),
        "W2": jax.random.normal(k[2], (hidden, OUT_DIM)) / hidden**0.5,
        "b2": 0.1 * jax.random.normal(k[3], (OUT_DIM,)),
    }
    x = jax.random.normal(k[4], (ROWS, IN_DIM))
    y = jax.random.normal(k[5], (ROWS, OUT_DIM))

    def loss(p, x, y):
        return jnp.mean(jnp.sum((jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"] - y) ** 2, -1))

    return loss, params, x, y


_LAST_CPU = [0.0]


def _time(fn) -> tuple[float, object]:
    """Wall time of fn(); its CPU time (all threads of this process) goes to _LAST_CPU."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    _LAST_CPU[0] = time.process_time() - cpu
    return time.perf_counter() - start, out


def _timing_jaxcheck(n: int) -> dict:
    import jaxcheck

    loss, params, x, y = _mlp_jax(n)
    loss(params, x, y).block_until_ready()
    cold, result = _time(lambda: jaxcheck.check_grad(loss, (params, x, y)))
    cold_cpu = _LAST_CPU[0]
    warm = (
        _time(lambda: jaxcheck.check_grad(loss, (params, x, y)))[0]
        if cold < WARM_IF_COLD_BELOW
        else None
    )
    return {
        "cold": cold,
        "warm": warm,
        "verdict": result.status,
        "evals": result.n_evaluations,
        "mode": result.mode,
        "cpu": cold_cpu,
    }


def _timing_check_grads(n: int) -> dict:
    from jax.test_util import check_grads

    loss, params, x, y = _mlp_jax(n)
    loss(params, x, y).block_until_ready()
    f = lambda p: loss(p, x, y)  # noqa: E731

    def run():
        try:
            check_grads(f, (params,), order=1, modes=("rev",))
            return "passed"
        except AssertionError:
            return "failed"

    cold, verdict = _time(run)
    cold_cpu = _LAST_CPU[0]
    warm = _time(run)[0]
    return {"cold": cold, "warm": warm, "verdict": verdict, "evals": 3, "cpu": cold_cpu}


def _timing_loop(n: int) -> dict:
    import jax
    import numpy as np
    from jax.flatten_util import ravel_pytree

    loss, params, x, y = _mlp_jax(n)
    loss(params, x, y).block_until_ready()

    def run():
        theta, unravel = ravel_pytree(params)
        f = jax.jit(lambda t: loss(unravel(t), x, y))
        analytic = np.asarray(jax.grad(f)(theta))
        theta = np.array(theta)
        h = LOOP_H["float32"]
        count = theta.size if theta.size <= LOOP_FULL_MAX else LOOP_SAMPLE
        numeric = np.zeros(count)
        for i in range(count):
            old = theta[i]
            theta[i] = old + h
            fp = float(f(theta))
            theta[i] = old - h
            fm = float(f(theta))
            theta[i] = old
            numeric[i] = (fp - fm) / (2 * h)
        a = analytic[:count]
        d = float(np.linalg.norm(a - numeric) / (np.linalg.norm(a) + np.linalg.norm(numeric)))
        return count, d

    cold, (count, d) = _time(run)
    cold_cpu = _LAST_CPU[0]
    warm = _time(run)[0] if cold < WARM_IF_COLD_BELOW else None
    theta_size = sum(int(v.size) for v in params.values())
    scale = theta_size / count
    return {
        "cold": cold * scale,
        "warm": None if warm is None else warm * scale,
        "cpu": cold_cpu * scale,
        "verdict": "failed" if d > LOOP_FLAG["float32"] else "passed",
        "evals": 2 * theta_size,
        "extrapolated": count < theta_size,
        "note": f"ran {count} of {theta_size} coordinates" if count < theta_size else "",
    }


def _mlp_torch(n: int, subset: bool = False):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    hidden = _hidden(n)
    gen = torch.Generator().manual_seed(0)

    def draw(*shape, scale=1.0, grad=True):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_(
            grad
        )

    w1 = draw(IN_DIM, hidden, scale=IN_DIM**-0.5, grad=not subset)
    b1 = draw(hidden, scale=0.1)
    w2 = draw(hidden, OUT_DIM, scale=hidden**-0.5, grad=not subset)
    b2 = draw(OUT_DIM, scale=0.1)
    x = torch.randn(ROWS, IN_DIM, generator=gen, dtype=torch.float64)
    y = torch.randn(ROWS, OUT_DIM, generator=gen, dtype=torch.float64)

    def loss(w1, b1, w2, b2):
        return ((torch.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2).sum(-1).mean()

    loss.data = (x, y)
    return loss, (w1, b1, w2, b2)


def _timing_torch(n: int, fast: bool, slow_full_max: int) -> dict:
    from torch.autograd import gradcheck
    from torch.autograd.gradcheck import GradcheckError

    subset = not fast and n > slow_full_max
    loss, inputs = _mlp_torch(n, subset=subset)
    total = sum(t.numel() for t in inputs)
    checked = sum(t.numel() for t in inputs if t.requires_grad)

    def run():
        try:
            return "passed" if gradcheck(loss, inputs, fast_mode=fast) else "failed"
        except GradcheckError:
            return "failed"

    cold, verdict = _time(run)
    cold_cpu = _LAST_CPU[0]
    warm = _time(run)[0] if cold < WARM_IF_COLD_BELOW else None
    scale = total / checked
    return {
        "cpu": cold_cpu * scale,
        "cold": cold * scale,
        "warm": None if warm is None else warm * scale,
        "verdict": verdict,
        "evals": None,
        "extrapolated": subset,
        "note": f"slow mode on b1, b2 only ({checked} of {total} coordinates)" if subset else "",
    }


# ======================================================================================
# Part 3 worker: one wrong element among about 1e5 (hand-written backprop of the MLP).

NEEDLE_INDEX = 1234  # the element of b1 whose gradient the planted bug scales by 1.5
LOOP_NEEDLE_SAMPLE = 2000


def _mlp_backprop_jax(params, x, y, bug: bool):
    import jax.numpy as jnp

    h = jnp.tanh(x @ params["W1"] + params["b1"])
    d_out = 2 * (h @ params["W2"] + params["b2"] - y) / x.shape[0]
    d_z = (d_out @ params["W2"].T) * (1 - h**2)
    b1 = d_z.sum(0)
    if bug:
        b1 = b1.at[NEEDLE_INDEX].multiply(1.5)
    return {"W1": x.T @ d_z, "b1": b1, "W2": h.T @ d_out, "b2": d_out.sum(0)}


def _needle_worker(tool: str, n: int, bug: bool) -> dict:
    import numpy as np

    if tool.startswith("torch"):
        import torch
        from torch.autograd import gradcheck
        from torch.autograd.gradcheck import GradcheckError

        loss, inputs = _mlp_torch(n)
        x_t, y_t = loss.data

        class MLP(torch.autograd.Function):
            @staticmethod
            def forward(ctx, w1, b1, w2, b2):
                ctx.save_for_backward(w1, b1, w2, b2)
                return loss(w1, b1, w2, b2)

            @staticmethod
            def backward(ctx, g):
                w1, b1, w2, b2 = ctx.saved_tensors
                h = torch.tanh(x_t @ w1 + b1)
                d_out = 2 * (h @ w2 + b2 - y_t) / x_t.shape[0]
                d_z = (d_out @ w2.T) * (1 - h**2)
                gb1 = d_z.sum(0)
                if bug:
                    gb1 = gb1.clone()
                    gb1[NEEDLE_INDEX] *= 1.5
                return g * (x_t.T @ d_z), g * gb1, g * (h.T @ d_out), g * d_out.sum(0)

        # A failing fast check re-runs slow mode over every input just to print the full
        # Jacobians in its message (torch.autograd.gradcheck._run_slow_mode_and_get_error):
        # at n = 1e5 that is hours. Patched out to measure the verdict itself.
        import importlib

        importlib.import_module("torch.autograd.gradcheck")._run_slow_mode_and_get_error = (
            lambda *a, **k: " (slow-mode message skipped)"
        )
        start = time.perf_counter()
        try:
            gradcheck(MLP.apply, inputs, fast_mode=True)
            verdict, where = "passed", ""
        except GradcheckError as error:
            match = re.search(r"with respect to input (\d+)", str(error))
            verdict = "failed"
            where = ["W1", "b1", "W2", "b2"][int(match.group(1))] if match else "?"
        return {"verdict": verdict, "where": where, "seconds": time.perf_counter() - start}

    import jax
    from jax.flatten_util import ravel_pytree

    loss, params, x, y = _mlp_jax(n)
    grad_fn = ft.partial(_mlp_backprop_jax, bug=bug)
    start = time.perf_counter()
    if tool == "jaxcheck":
        import jaxcheck

        r = jaxcheck.check_grad(loss, (params, x, y), grad_fn=grad_fn)
        where = ""
        if r.status == "failed":
            leaf = r.failed_leaves[0]
            where = f"{leaf.path}{list(leaf.worst_index)}"
        return {
            "verdict": r.status,
            "where": where,
            "seconds": time.perf_counter() - start,
            "mode": r.mode,
        }
    if tool == "check_grads":
        from jax.test_util import check_grads

        from jaxcheck.catalogue.grad_cases import CaseSetup

        g, leaves = _closure(
            CaseSetup(f=loss, args=(params, x, y), kwargs={"argnums": 0, "grad_fn": grad_fn})
        )
        try:
            check_grads(g, leaves, order=1, modes=("rev",))
            verdict = "passed"
        except AssertionError:
            verdict = "failed"
        return {"verdict": verdict, "where": "", "seconds": time.perf_counter() - start}
    # The textbook loop over a random sample of coordinates (all n would take minutes).
    theta, unravel = ravel_pytree(params)
    f = jax.jit(lambda t: loss(unravel(t), x, y))
    analytic = np.asarray(ravel_pytree(grad_fn(params, x, y))[0], np.float64)
    theta = np.array(theta)
    sample = np.random.default_rng(0).choice(theta.size, LOOP_NEEDLE_SAMPLE, replace=False)
    h = LOOP_H["float32"]
    numeric = np.zeros(sample.size)
    for k, i in enumerate(sample):
        old = theta[i]
        theta[i] = old + h
        fp = float(f(theta))
        theta[i] = old - h
        fm = float(f(theta))
        theta[i] = old
        numeric[k] = (fp - fm) / (2 * h)
    a = analytic[sample]
    d = float(np.linalg.norm(a - numeric) / (np.linalg.norm(a) + np.linalg.norm(numeric)))
    return {
        "verdict": "failed" if d > LOOP_FLAG["float32"] else "passed",
        "where": "",
        "seconds": time.perf_counter() - start,
        "d": d,
    }


NEEDLE_TOOLS = ("jaxcheck", "check_grads", "loop (2000 random coordinates)", "torch fast")
NEEDLE_NOTES = (
    "torch fast: when the fast check fails, gradcheck re-runs slow mode over every input to put the full "
    "Jacobians into its error message; at this size that takes hours, so the benchmark patches "
    "`_run_slow_mode_and_get_error` out and times the verdict alone.",
    "loop: the textbook loop over a random sample of 2000 coordinates (all of them would take minutes), "
    "h = 1e-3 in float32, flagging d > 1e-3 over the sample.",
)


def run_needle(n: int, timeout: float, log) -> list[str]:
    rows = []
    actual = _hidden(n) * (IN_DIM + 1 + OUT_DIM) + OUT_DIM
    for tool in NEEDLE_TOOLS:
        for bug in (False, True):
            log(f"  needle {tool} bug={bug} at n={actual} ...")
            r = _spawn({"part": "needle", "tool": tool, "n": n, "bug": bug}, timeout)
            truth = "b1[1234] x 1.5" if bug else "correct"
            if "skipped" in r or "error" in r:
                rows.append([truth, tool, r.get("skipped") or r["error"], "—", "—"])
                continue
            expected = "failed" if bug else "passed"
            verdict = r["verdict"] + (
                "" if r["verdict"] == expected else (" (MISSED)" if bug else " (FALSE ALARM)")
            )
            label = f"{tool} ({r['mode']} mode)" if r.get("mode") else tool
            rows.append([truth, label, verdict, r["where"] or "—", _secs(r["seconds"])])
    return (
        _md_table(["gradient", "tool", "verdict", "names", "s"], rows)
        + [""]
        + [f"- {note}" for note in NEEDLE_NOTES]
    )


def timing_worker(spec: dict) -> dict:
    """Runs one timing measurement (in its own process)."""
    tool, n = spec["tool"], spec["n"]
    if spec.get("part") == "needle":
        if tool.startswith("torch") and not _torch_available():
            return {"skipped": "torch not installed"}
        return _needle_worker(tool, n, spec["bug"])
    if tool.startswith("torch"):
        try:
            import torch  # noqa: F401
        except ImportError:
            return {"skipped": "torch not installed"}
        return _timing_torch(n, fast=tool == "torch fast", slow_full_max=spec["slow_full_max"])
    return {"jaxcheck": _timing_jaxcheck, "check_grads": _timing_check_grads, "loop": _timing_loop}[
        tool
    ](n)


def _spawn(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:120]}"}
    return json.loads(lines[-1][len("RESULT ") :])


def _secs(x: float | None, approx: bool = False) -> str:
    if x is None:
        return "—"
    text = f"{x:.2f}" if x < 10 else f"{x:.0f}" if x >= 100 else f"{x:.1f}"
    return ("~" if approx else "") + text


def run_timing(sizes, slow_full_max: int, timeout: float, log) -> list[str]:
    rows, notes = [], []
    for n in sizes:
        actual = _hidden(n) * (IN_DIM + 1 + OUT_DIM) + OUT_DIM
        for tool in TOOLS:
            log(f"  timing {tool} at n={actual} ...")
            r = _spawn({"tool": tool, "n": n, "slow_full_max": slow_full_max}, timeout)
            if "skipped" in r or "error" in r:
                rows.append(
                    [f"{actual:,}", tool, "—", "—", "—", "—", r.get("skipped") or r["error"]]
                )
                continue
            approx = bool(r.get("extrapolated"))
            if r.get("note"):
                notes.append(f"{tool} at n={actual:,}: {r['note']}, time extrapolated linearly")
            label = f"{tool} ({r['mode']} mode)" if r.get("mode") else tool
            evals = f"{r['evals']:,}" if r.get("evals") else "—"
            rows.append(
                [
                    f"{actual:,}",
                    label,
                    _secs(r["cold"], approx),
                    _secs(r.get("cpu"), approx),
                    _secs(r["warm"], approx),
                    evals,
                    r["verdict"],
                ]
            )
    lines = _md_table(["n", "tool", "cold s", "cold CPU s", "warm s", "f evals", "verdict"], rows)
    lines += [""] + [f"- ~ {note}." for note in notes]
    return lines


# ======================================================================================
# Part 2: verdict quality.


def _split_float(args, argnums):
    """(g, float_leaves, rebuild): a function of the float leaves of args[argnums] only."""
    import jax.numpy as jnp
    import jax.tree_util as jtu

    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    leaves, treedef = jtu.tree_flatten(tuple(args[i] for i in nums))
    is_float = [hasattr(l, "dtype") and jnp.issubdtype(l.dtype, jnp.inexact) for l in leaves]

    def rebuild(float_leaves):
        it = iter(float_leaves)
        full = jtu.tree_unflatten(treedef, [next(it) if f else l for l, f in zip(leaves, is_float)])
        out = list(args)
        for i, value in zip(nums, full):
            out[i] = value
        return out

    def float_part(tree_per_argnum):
        flat = treedef.flatten_up_to(tree_per_argnum)
        return [g for g, f in zip(flat, is_float) if f]

    return [l for l, f in zip(leaves, is_float) if f], rebuild, float_part, nums


def _closure(setup):
    """The case as g(*float_leaves), with a hand-written grad_fn wired in as a custom_vjp."""
    import jax

    argnums = setup.kwargs.get("argnums", 0)
    float_leaves, rebuild, float_part, nums = _split_float(setup.args, argnums)
    grad_fn = setup.kwargs.get("grad_fn")

    def g(*fl):
        return setup.f(*rebuild(fl))

    if grad_fn is not None:
        g = jax.custom_vjp(g)

        def fwd(*fl):
            return setup.f(*rebuild(fl)), fl

        def bwd(fl, ct):
            grads = grad_fn(*rebuild(fl))
            grads = (grads,) if isinstance(argnums, int) else tuple(grads)
            return tuple(ct * x for x in float_part(grads))

        g.defvjp(fwd, bwd)
    return g, tuple(float_leaves)


def _verdict_jaxcheck(case, setup) -> dict:
    import jaxcheck

    r = jaxcheck.check_grad(setup.f, setup.args, **setup.kwargs)
    localised = None
    if r.status == "failed" and case.broken:
        first = r.failed_leaves[0]
        localised = first.path == case.bad_path and (
            case.bad_index is None or tuple(first.worst_index) == tuple(case.bad_index)
        )
    return {"verdict": r.status, "localised": localised}


def _verdict_check_grads(case, setup) -> dict:
    from jax.test_util import check_grads

    g, leaves = _closure(setup)
    try:
        check_grads(g, leaves, order=1, modes=("rev",))
        return {"verdict": "passed"}
    except AssertionError:
        return {"verdict": "failed"}


def _verdict_loop(case, setup, dtype_name: str) -> dict:
    import jax
    import numpy as np
    from jax.flatten_util import ravel_pytree

    g, leaves = _closure(setup)
    theta, unravel = ravel_pytree(list(leaves))
    f = jax.jit(lambda t: g(*unravel(t)))
    analytic = np.asarray(jax.grad(f)(theta), np.float64)
    theta = np.array(theta)
    h = LOOP_H[dtype_name]
    numeric = np.zeros(theta.size)
    for i in range(theta.size):
        old = theta[i]
        theta[i] = old + h
        fp = float(f(theta))
        theta[i] = old - h
        fm = float(f(theta))
        theta[i] = old
        numeric[i] = (fp - fm) / (2 * h)
    denom = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    d = float(np.linalg.norm(analytic - numeric) / denom) if denom > 0 else 0.0
    return {"verdict": "failed" if not d <= LOOP_FLAG[dtype_name] else "passed", "d": d}


# -- torch ports ----------------------------------------------------------------------

_TORCH_OPS = {
    "exp": lambda t: t.exp(),
    "exp2": lambda t: t.exp2(),
    "log": lambda t: t.log(),
    "log1p": lambda t: t.log1p(),
    "expm1": lambda t: t.expm1(),
    "sin": lambda t: t.sin(),
    "cos": lambda t: t.cos(),
    "tan": lambda t: t.tan(),
    "tanh": lambda t: t.tanh(),
    "asin": lambda t: t.asin(),
    "acos": lambda t: t.acos(),
    "atan": lambda t: t.atan(),
    "atan2": lambda a, b: a.atan2(b),
    "sinh": lambda t: t.sinh(),
    "cosh": lambda t: t.cosh(),
    "asinh": lambda t: t.asinh(),
    "acosh": lambda t: t.acosh(),
    "atanh": lambda t: t.atanh(),
    "erf": lambda t: t.erf(),
    "erfc": lambda t: t.erfc(),
    "erf_inv": lambda t: t.erfinv(),
    "pow": lambda a, b: a.pow(b),
    "sqrt": lambda t: t.sqrt(),
    "rsqrt": lambda t: t.rsqrt(),
    "cbrt": lambda t: t.sign() * t.abs().pow(1.0 / 3.0),
    "logistic": lambda t: t.sigmoid(),
    "div": lambda a, b: a / b,
    "mul": lambda a, b: a * b,
    "integer_pow": lambda t: t**3,
    "square": lambda t: t * t,
    "abs": lambda t: t.abs(),
    "max": lambda a, b: a.maximum(b),
    "bessel_i0e": lambda t: __import__("torch").special.i0e(t),
    "bessel_i1e": lambda t: __import__("torch").special.i1e(t),
    "lgamma": lambda t: t.lgamma(),
    "digamma": lambda t: t.digamma(),
}


def _torch_scaled(op, factor):
    """A torch.autograd.Function computing op(*xs) whose backward is the true VJP times factor."""
    import torch

    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            ctx.save_for_backward(*xs)
            return op(*xs)

        @staticmethod
        def backward(ctx, g):
            xs = [x.detach().requires_grad_() for x in ctx.saved_tensors]
            with torch.enable_grad():
                grads = torch.autograd.grad(op(*xs), xs, g)
            return tuple(factor * gr for gr in grads)

    return Scaled.apply


def _torch_mlp3(setup, bug):
    """Torch port of `_suites.mlp3_loss` with a hand-written backward (`mlp3_backprop`)."""
    import numpy as np
    import torch

    from jaxcheck.catalogue.grad_cases import _L2

    params, x, y = setup.args
    names = [(layer, leaf) for layer in ("layer1", "layer2", "layer3") for leaf in ("W", "b")]
    dtype = torch.float64 if np.asarray(x).dtype == np.float64 else torch.float32
    inputs = tuple(
        torch.tensor(np.asarray(params[l][k]), dtype=dtype, requires_grad=True) for l, k in names
    )
    xt = torch.tensor(np.asarray(x), dtype=dtype)
    yt = torch.tensor(np.asarray(y), dtype=torch.int64)

    def forward(w1, b1, w2, b2, w3, b3):
        a1 = torch.tanh(xt @ w1 + b1)
        a2 = torch.tanh(a1 @ w2 + b2)
        return a1, a2, a2 @ w3 + b3

    class MLP(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *ps):
            ctx.save_for_backward(*ps)
            _, _, logits = forward(*ps)
            ce = (torch.logsumexp(logits, -1) - logits.gather(1, yt[:, None])[:, 0]).mean()
            return ce + _L2 * sum((w**2).sum() for w in ps[0::2])

        @staticmethod
        def backward(ctx, g):
            w1, b1, w2, b2, w3, b3 = ps = ctx.saved_tensors
            a1, a2, logits = forward(*ps)
            l2 = [2 * _L2 * w for w in (w1, w2, w3)]
            if bug == "missing_l2":
                l2[1] = torch.zeros_like(w2)
            d3 = (
                torch.softmax(logits, -1) - torch.nn.functional.one_hot(yt, 3).to(dtype)
            ) / xt.shape[0]
            da2 = d3 @ w3.T
            d2 = da2 * (1 - a2**2)
            d1 = (d2 @ w2.T) * (1 - a1**2)
            grads = (
                xt.T @ d1 + l2[0],
                d1.sum(0),
                a1.T @ d2 + l2[1],
                (da2 if bug == "bias" else d2).sum(0),
                a2.T @ d3 + l2[2],
                d3.sum(0),
            )
            return tuple(g * gr for gr in grads)

    def path_of(index):
        layer, leaf = names[index]
        return f"args[0]['{layer}']['{leaf}']"

    return MLP.apply, inputs, path_of


def _torch_elementwise(case, setup, factor):
    import numpy as np
    import torch

    name = case.name.split("/", 1)[1].split("[")[0]
    argnum = setup.kwargs["argnums"]
    dtype = torch.float64 if np.asarray(setup.args[0]).dtype == np.float64 else torch.float32
    from jaxcheck.catalogue import grad_cases as _suites

    # The weights of sum(w * op(*xs)), drawn exactly as `_suites._elementwise_build` does.
    w = torch.tensor(
        np.asarray(_suites._weights(setup_seed(case) + 7, (64,), setup.args[0].dtype)), dtype=dtype
    )
    op = _TORCH_OPS[name]
    op = op if factor is None else _torch_scaled(op, factor)
    xs = [torch.tensor(np.asarray(a), dtype=dtype) for a in setup.args]
    xs[argnum].requires_grad_(True)
    return (lambda *t: (w * op(*t)).sum()), tuple(xs), (lambda i: f"args[{i}]")


def setup_seed(case) -> int:
    """The data seed of an elementwise case (as `_suites.elementwise_op_cases` derives it)."""
    import zlib

    return zlib.crc32(case.name.split("/", 1)[1].split("[")[0].encode()) % 100_000


def _verdict_torch(case, setup, dtype_name: str, fast: bool, rel_bug) -> dict:
    from torch.autograd import gradcheck
    from torch.autograd.gradcheck import GradcheckError

    if case.name.startswith("mlp/"):
        bug = {"mlp/bias_bug": "bias", "mlp/missing_l2": "missing_l2"}.get(case.name)
        fn, inputs, path_of = _torch_mlp3(setup, bug)
    else:
        fn, inputs, path_of = _torch_elementwise(
            case, setup, None if rel_bug is None else 1 + rel_bug
        )
    options = {} if dtype_name == "float64" else dict(TORCH_F32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not a double precision floating point" in float32
        try:
            gradcheck(fn, inputs, fast_mode=fast, **options)
            return {"verdict": "passed"}
        except GradcheckError as error:
            match = re.search(r"with respect to input (\d+)", str(error))
            localised = None
            if match and case.broken:
                wrt = [i for i, t in enumerate(inputs) if t.requires_grad]
                index = int(match.group(1))
                index = wrt[index] if index < len(wrt) else index
                localised = path_of(index) == case.bad_path
            return {"verdict": "failed", "localised": localised}


def _cases(quick: bool, full: bool):
    from jaxcheck.catalogue.grad_cases import elementwise_op_cases, grad_cases

    cases = [(c, None) for c in grad_cases()]
    if quick:
        cases = [(c, r) for c, r in cases if c.name.startswith(QUICK_CASE_PREFIXES)]
    ops = None if full else (QUICK_OPS if quick else DEFAULT_OPS)
    for rel_bug in (None, 1e-4):
        for c in elementwise_op_cases(rel_bug):
            if ops is None or c.name.split("/", 1)[1] in ops:
                cases.append((c, rel_bug))
    return cases


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        return False


def run_quality(quick: bool, full: bool, log) -> tuple[list[str], list[str], dict]:
    import jax
    import jax.numpy as jnp

    has_torch = _torch_available()
    cases = _cases(quick, full)
    records = []  # (case, rel_bug, dtype, tool, result)
    seconds = {}
    for dtype_name, dtype in (("float32", jnp.float32), ("float64", jnp.float64)):
        ctx = jax.enable_x64(True) if dtype_name == "float64" else contextlib.nullcontext()
        with ctx:
            for case, rel_bug in cases:
                log(f"  quality {dtype_name} {case.name}{' (bug 1e-4)' if rel_bug else ''}")
                setup = case.build(dtype)
                tools = [
                    ("jaxcheck", ft.partial(_verdict_jaxcheck, case, setup)),
                    ("check_grads", ft.partial(_verdict_check_grads, case, setup)),
                    ("loop", ft.partial(_verdict_loop, case, setup, dtype_name)),
                ]
                torch_case = case.name in TORCH_MLP_CASES or case.name.startswith("lax/")
                if has_torch and torch_case:
                    for fast in (False, True):
                        tools.append(
                            (
                                f"torch {'fast' if fast else 'slow'}",
                                ft.partial(_verdict_torch, case, setup, dtype_name, fast, rel_bug),
                            )
                        )
                for tool, run in tools:
                    start = time.perf_counter()
                    try:
                        result = run()
                    except Exception as error:  # noqa: BLE001 - a crash is a verdict too
                        result = {
                            "verdict": "error",
                            "error": f"{type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''}",
                        }
                    seconds[(tool, dtype_name)] = (
                        seconds.get((tool, dtype_name), 0.0) + time.perf_counter() - start
                    )
                    records.append((case, rel_bug, dtype_name, tool, result))
    return _quality_tables(records, seconds, has_torch)


def _label(case, rel_bug) -> str:
    return case.name + (" (VJP x (1+1e-4))" if rel_bug else "")


def _quality_tables(records, seconds, has_torch) -> tuple[list[str], list[str], dict]:
    summary_rows = []
    raw = {}
    for tool in TOOLS:
        for dtype_name in ("float32", "float64"):
            mine = [(c, rb, r) for c, rb, d, t, r in records if t == tool and d == dtype_name]
            if not mine:
                summary_rows.append(
                    [
                        tool,
                        dtype_name,
                        "not installed" if tool.startswith("torch") and not has_torch else "—",
                    ]
                    + ["—"] * 5
                )
                continue
            correct = [r for c, rb, r in mine if not c.broken]
            broken = [r for c, rb, r in mine if c.broken]
            false_alarms = sum(r["verdict"] == "failed" for r in correct)
            incon_ok = sum(r["verdict"] == "inconclusive" for r in correct)
            missed = sum(r["verdict"] == "passed" for r in broken)
            incon_bad = sum(r["verdict"] == "inconclusive" for r in broken)
            errors = sum(r["verdict"] == "error" for r in correct + broken)
            caught = [r for r in broken if r["verdict"] == "failed"]
            loc = [r.get("localised") for r in caught]
            localised = (
                "—" if all(l is None for l in loc) else f"{sum(bool(l) for l in loc)}/{len(caught)}"
            )
            summary_rows.append(
                [
                    tool,
                    dtype_name,
                    f"{len(correct)} + {len(broken)}",
                    f"{false_alarms}" + (f" (+{incon_ok} inconcl.)" if incon_ok else ""),
                    f"{missed}" + (f" (+{incon_bad} inconcl.)" if incon_bad else ""),
                    localised,
                    str(errors),
                    _secs(seconds.get((tool, dtype_name))),
                ]
            )
            raw[f"{tool}/{dtype_name}"] = {
                "false_alarms": false_alarms,
                "missed": missed,
                "errors": errors,
                "inconclusive_correct": incon_ok,
                "inconclusive_broken": incon_bad,
            }
    summary = _md_table(
        [
            "tool",
            "dtype",
            "correct + broken cases",
            "false alarms",
            "missed bugs",
            "named the broken leaf",
            "errors",
            "total s",
        ],
        summary_rows,
    )

    # Per-case detail: every case where some tool's verdict is not the right one.
    by_case: dict = {}
    for case, rel_bug, dtype_name, tool, result in records:
        by_case.setdefault((_label(case, rel_bug), case.broken, dtype_name), {})[tool] = result
    detail_rows = []
    for (label, broken, dtype_name), results in by_case.items():
        expected = "failed" if broken else "passed"
        if all(r["verdict"] == expected for r in results.values()):
            continue
        cells = []
        for tool in TOOLS:
            r = results.get(tool)
            if r is None:
                cells.append("")
                continue
            v = r["verdict"]
            mark = (
                "ok"
                if v == expected
                else ("FALSE ALARM" if v == "failed" else "MISSED" if v == "passed" else v.upper())
            )
            if "d" in r:
                mark += f" d={r['d']:.0e}"
            cells.append(mark)
        detail_rows.append([label, "broken" if broken else "correct", dtype_name] + cells)
    detail = (
        _md_table(["case", "truth", "dtype"] + list(TOOLS), detail_rows)
        if detail_rows
        else ["(every tool gave the right verdict on every case)"]
    )
    errors = sorted(
        {
            f"{tool} on {_label(c, rb)} ({d}): {r['error']}"
            for c, rb, d, tool, r in records
            if r["verdict"] == "error"
        }
    )
    if errors:
        detail += ["", "Errors (a tool crashed instead of giving a verdict):"] + [
            f"- {e}" for e in errors
        ]
    return summary, detail, raw


# ======================================================================================
# Output.


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(r) for r in rows
    ]


def _environment() -> str:
    import jax

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch_version}, Python {platform.python_version()}, "
        f"load average at start {load:.1f}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="n = 1e3, 1e4 and a subset of the cases"
    )
    parser.add_argument("--full", action="store_true", help="every elementwise lax op in part 2")
    parser.add_argument(
        "--write", action="store_true", help="also write benchmarks/results_vs_tools.md"
    )
    parser.add_argument("--part", choices=("time", "quality", "needle"), help="run one part only")
    parser.add_argument("--sizes", type=int, nargs="*", help="override the sizes of part 1")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="per-measurement limit in seconds"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        print("RESULT " + json.dumps(timing_worker(json.loads(options.worker))), flush=True)
        return 0

    start = time.perf_counter()
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    out = [
        "# jaxcheck vs today's tools",
        "",
        f"Measured by `python3 benchmarks/bench_vs_tools.py{' --quick' if options.quick else ''}{' --full' if options.full else ''}` on: {_environment()}.",
        "",
    ]
    if options.part in (None, "time"):
        sizes = options.sizes or (QUICK_SIZES if options.quick else SIZES)
        slow_max = QUICK_TORCH_SLOW_FULL_MAX if options.quick else TORCH_SLOW_FULL_MAX
        out += ["## Time to a verdict (2-layer tanh MLP, float32; torch in float64)", ""]
        out += run_timing(sizes, slow_max, options.timeout, log)
        out += [""]
    if options.part in (None, "needle") and not options.quick:
        out += [
            f"## One wrong element among {_hidden(SIZES[-1]) * (IN_DIM + 1 + OUT_DIM) + OUT_DIM:,} (MLP, hand-written backprop, float32; torch float64)",
            "",
        ]
        out += run_needle(SIZES[-1], options.timeout, log)
        out += [""]
    if options.part in (None, "quality"):
        summary, detail, _ = run_quality(options.quick, options.full, log)
        out += ["## Verdict quality (jaxcheck.catalogue.grad_cases catalogue)", ""] + summary + [""]
        out += ["### Cases with a wrong verdict from some tool", ""] + detail + [""]
    out += [f"Total benchmark time: {time.perf_counter() - start:.0f} s."]
    text = "\n".join(out) + "\n"
    print(text)
    if options.write:
        path = os.path.join(ROOT, "benchmarks", "results_vs_tools.md")
        with open(path, "w") as fh:
            fh.write(text)
        log(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
