"""The exhaustive sweeps that the default test suite samples, run in full.

`make test` keeps its wall time bounded by sampling a few sweeps (the two-point path of
tests/test_suites.py on a sample of the catalogue, the lax suites of
tests/test_real_cases.py on a few ops; each module's docstring says what it samples).
`JAXCHECK_FULL_SUITES=1` makes those modules run every case; this script sets it, runs
them with pytest, and prints one line with the device, the jax version, the counts and
the wall time.

Usage:
  python3 benchmarks/run_full_suites.py [pytest options, e.g. -n 2 -x -k two_point]
"""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The test modules whose sweeps JAXCHECK_FULL_SUITES widens.
MODULES = ("tests/test_suites.py", "tests/test_real_cases.py")


def main(argv: list[str]) -> int:
    import jax

    env = dict(os.environ, JAXCHECK_FULL_SUITES="1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODULES, *argv]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    sys.stdout.write(proc.stdout[-4000:])
    sys.stderr.write(proc.stderr[-2000:])
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "no output"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"full suites: {jax.devices()[0].platform}, jax {jax.__version__}, "
        f"{summary} (wall {seconds:.0f} s, load {load})"
    )
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
