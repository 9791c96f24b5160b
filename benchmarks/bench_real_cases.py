"""Issue 10's suites (`jaxcheck.catalogue.real_cases`) in full: counts per suite and dtype.

Not collected by pytest (tests/test_real_cases.py runs the same cases, bounded). Prints,
per suite and dtype: cases, ok, false alarms (correct case failed), misses (broken case
passed), inconclusive, crashes; then one line per case that is not "ok".

Usage:
  PYTHONPATH=. python benchmarks/bench_real_cases.py [--suite families|lax|lax-mutants|all]
      [--dtype float32|float64|both] [--json FILE]
"""

import argparse
import collections
import contextlib
import json
import sys
import time

import jax
import jax.numpy as jnp

from jaxcheck.catalogue import real_cases as rc

OUTCOMES = ("ok", "false-alarm", "miss", "inconclusive", "crash")


def suites(which: str, dtype_name: str) -> dict:
    out = {}
    if which in ("families", "all"):
        out["families"] = rc.family_cases()
    if which in ("lax", "lax-mutants", "all"):
        bug = rc.LAX_BUG[dtype_name]
        if which != "lax-mutants":
            out["lax correct"] = rc.lax_op_cases(None)
        out[f"lax 1+{bug:g} all"] = rc.lax_op_cases(bug, "all")
        out[f"lax 1+{bug:g} one"] = rc.lax_op_cases(bug, "one")
    return out


def run(which: str, dtype_name: str) -> list[dict]:
    dtype = jnp.float32 if dtype_name == "float32" else jnp.float64
    rows = []
    ctx = jax.enable_x64(True) if dtype_name == "float64" else contextlib.nullcontext()
    with ctx:
        for suite, cases in suites(which, dtype_name).items():
            for case in cases:
                start = time.perf_counter()
                try:
                    result = rc.run_case(case, dtype)
                    outcome = rc.classify(case, result)
                    detail = f"{result.status}: {result.reason}"
                except Exception as error:  # noqa: BLE001 - a crash is a finding here
                    outcome = rc.classify(case, error=error)
                    detail = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
                rows.append(
                    dict(
                        suite=suite,
                        dtype=dtype_name,
                        case=case.name,
                        outcome=outcome,
                        detail=detail,
                        seconds=round(time.perf_counter() - start, 2),
                    )
                )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="all", choices=("families", "lax", "lax-mutants", "all"))
    parser.add_argument("--dtype", default="both", choices=("float32", "float64", "both"))
    parser.add_argument("--json", help="write every case's outcome to this file")
    options = parser.parse_args(argv)
    dtypes = ("float32", "float64") if options.dtype == "both" else (options.dtype,)
    rows = [row for d in dtypes for row in run(options.suite, d)]
    print(f"jax {jax.__version__}, device {jax.devices()[0].platform}")
    counts = collections.defaultdict(collections.Counter)
    for row in rows:
        counts[(row["suite"], row["dtype"])][row["outcome"]] += 1
    header = f"{'suite':<22} {'dtype':<8} {'cases':>5} " + " ".join(f"{o:>12}" for o in OUTCOMES)
    print(header)
    for (suite, dtype), c in counts.items():
        line = f"{suite:<22} {dtype:<8} {sum(c.values()):>5} "
        print(line + " ".join(f"{c[o]:>12}" for o in OUTCOMES))
    print()
    for row in rows:
        if row["outcome"] != "ok":
            print(f"{row['outcome']:<12} {row['dtype']:<8} {row['case']:<34} {row['detail'][:150]}")
    if options.json:
        with open(options.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
