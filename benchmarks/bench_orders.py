"""`order=2` over the whole rule catalogue (`jaxcheck.catalogue.rule_cases`), float32 and float64.

Each case is checked with `check_vjp(f, args, order=2)` (kind "vjp") or `check_jvp(...)` (kind
"jvp"). One line per case, then per precision: correct cases passed / false alarms, broken
cases caught (and at which order) / missed, errors raised, seconds.

Usage: python benchmarks/bench_orders.py [float32|float64 ...]
"""

import collections
import sys
import time

import jax
import jax.numpy as jnp

import jaxcheck
from jaxcheck.catalogue.rule_cases import rule_cases


def argnums_of(f, args) -> tuple[int, ...]:
    """The arguments a rule differentiates: not in its `nondiff_argnums`, and no NaN/Inf float
    leaf (as `check_custom_vjp` holds them fixed)."""
    nondiff = set(getattr(f, "nondiff_argnums", ()))

    def finite(arg):
        leaves = jax.tree_util.tree_leaves(arg)
        return all(
            not jnp.issubdtype(jnp.result_type(x), jnp.inexact) or bool(jnp.all(jnp.isfinite(x)))
            for x in leaves
        )

    return tuple(i for i, a in enumerate(args) if i not in nondiff and finite(a))


def run(dtype) -> None:
    counts: collections.Counter = collections.Counter()
    start = time.perf_counter()
    with jax.enable_x64(dtype == jnp.float64):
        for case in rule_cases():
            check = jaxcheck.check_vjp if case.kind == "vjp" else jaxcheck.check_jvp
            t0 = time.perf_counter()
            try:
                f, args = case.build(dtype)
                result = check(f, args, argnums=argnums_of(f, args), order=2, locate_rules=False)
                outcome, order = result.status, result.order
            except Exception as error:  # noqa: BLE001 - a raised misuse error is a finding too
                not_differentiable = str(error).startswith("`order=2`: JAX cannot differentiate")
                what = "not differentiable at order 2" if not_differentiable else "error"
                outcome, order = f"{what} ({type(error).__name__})", 0
            seconds = time.perf_counter() - t0
            if case.broken:
                key = "broken caught" if outcome != "passed" else "broken MISSED"
                if outcome.startswith("error"):
                    key = "broken caught (error raised)"
                elif outcome != "passed":
                    key = f"broken caught at order {order}"
            else:
                key = (
                    "correct passed" if outcome == "passed" else f"correct FALSE ALARM ({outcome})"
                )
                if outcome.startswith("not differentiable"):
                    key = "correct, order 2 not differentiable (clear error)"
            counts[key] += 1
            expected = case.expected_check or "-"
            print(
                f"{jnp.dtype(dtype).name:8} {case.name:36} {outcome:24} order {order}  "
                f"{key:32} expected {expected:12} {seconds:6.2f} s",
                flush=True,
            )
    total = time.perf_counter() - start
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(
        f"{jnp.dtype(dtype).name}: {summary}; {total:.1f} s, jax {jax.__version__}, {jax.devices()[0]}"
    )


if __name__ == "__main__":
    names = sys.argv[1:] or ["float32", "float64"]
    for name in names:
        run(jnp.dtype(name))
