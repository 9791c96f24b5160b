"""JAX's own `check_grads` calls, rerouted to jaxcheck at its defaults (issue 10).

Runs JAX's test files (those that call `check_grads`) under pytest with
`jax.test_util.check_grads` and `jax._src.test_util.check_grads` (`jtu.check_grads`)
replaced by a shim. For each call the shim runs jaxcheck at its defaults with the same
modes -- "fwd" -> `jaxcheck.check_jvp(f, args)`, "rev" -> `jaxcheck.check_vjp(f, args)`
-- at order 1 (a call of order k > 1 also records "not run, order k"), and records the
verdict; it never raises, so the rest of each test runs as usual. JAX's own tolerances
(atol/rtol/eps passed explicitly) are ignored but counted: they show where JAX's tests
had to hand-tune `check_grads`.

Prints per file: calls, passed, failed, inconclusive (reasons grouped), crashed
(exception types grouped), how many calls JAX hand-tuned, and the calls where f itself
raises when called eagerly (JAX's test expects an error there: not a jaxcheck crash). A call's verdict is the
worst over its modes (crashed > failed > inconclusive > passed). Goal (issue 10): 0 failed
and 0 crashed on JAX's own correct ops.

Not collected by pytest and not run in CI: it needs JAX's tests at the installed version.
Getting them:

  git clone --filter=blob:none --no-checkout https://github.com/jax-ml/jax /tmp/jax
  git -C /tmp/jax checkout jax-v$(python -c 'import jax; print(jax.__version__)') -- tests
  # or, from any clone or bare mirror: mkdir -p DIR/tests && for f in linalg_test nn_test ...;
  #   do git --git-dir=REPO show jax-vX.Y.Z:tests/$f.py > DIR/tests/$f.py; done

then:

  PYTHONPATH=. python benchmarks/bench_jax_suite.py --jax-tests /tmp/jax/tests \\
      --files nn_test linalg_test -k "Gelu or Softplus" --timeout 600

DIR is the directory holding `lax_autodiff_test.py` and friends. They need absl-py and
scipy (JAX's test dependencies). Each file runs in its own subprocess under `--timeout`;
records are written as they happen, so a file cut short still reports what it ran.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

DEFAULT_FILES = (
    "lax_autodiff_test",
    "nn_test",
    "linalg_test",
    "lax_control_flow_test",
    "lax_scipy_special_functions_test",
    "custom_api_test",
    "fft_test",
)
RECORDS_ENV = "JAXCHECK_BENCH_RECORDS"
SEVERITY = {"passed": 0, "f-raises": 1, "inconclusive": 2, "failed": 3, "crashed": 4}


# ----------------------------------------------------------------------------
# Worker side: runs inside the pytest subprocess.


def _reason_key(reason: str) -> str:
    """A reason with its numbers blanked, so that like reasons group together."""
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", reason)[:120]


def _record(entry: dict) -> None:
    with open(os.environ[RECORDS_ENV], "a") as out:
        out.write(json.dumps(entry) + "\n")


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]


def _f_itself_raises(f, args) -> bool:
    try:
        f(*args)
    except Exception:  # noqa: BLE001
        return True
    return False


def shim_check_grads(f, args, order, modes=("fwd", "rev"), atol=None, rtol=None, eps=None):
    """Stands in for `jax.test_util.check_grads`: jaxcheck at defaults, order 1."""
    import jaxcheck

    tuned = sorted(name for name, v in (("atol", atol), ("rtol", rtol), ("eps", eps)) if v)
    per_mode = {}
    for mode in modes:
        check = {"fwd": jaxcheck.check_jvp, "rev": jaxcheck.check_vjp}.get(mode)
        if check is None:
            per_mode[mode] = {"status": "crashed", "detail": f"unknown mode {mode!r}"}
            continue
        try:
            result = check(f, tuple(args))
            per_mode[mode] = {"status": result.status, "detail": result.reason}
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # noqa: BLE001 - a crash is what we count
            if _f_itself_raises(f, args):
                # JAX's own test expects this (e.g. assertRaises around check_grads).
                per_mode[mode] = {
                    "status": "f-raises",
                    "detail": f"f(*args) raises too: {type(error).__name__}",
                }
                continue
            frames = traceback.extract_tb(error.__traceback__)
            inside = [fr for fr in frames if "jaxcheck" in fr.filename]
            where = f"{Path(inside[-1].filename).name}:{inside[-1].name}" if inside else "?"
            first = (str(error).strip().splitlines() or [""])[0][:160]
            per_mode[mode] = {
                "status": "crashed",
                "detail": f"{type(error).__name__} (last jaxcheck frame {where}): {first}",
                "exception": type(error).__name__,
            }
    worst = max(per_mode.values(), key=lambda m: SEVERITY[m["status"]], default=None)
    _record(
        {
            "test": _current_test(),
            "order": int(order),
            "modes": list(modes),
            "tuned": tuned,
            "status": "passed" if worst is None else worst["status"],
            "per_mode": per_mode,
        }
    )


class ShimPlugin:
    """Replaces check_grads before JAX's test modules are imported (they bind it then)."""

    def pytest_configure(self, config):
        import jax.test_util
        from jax._src import public_test_util, test_util

        jax.test_util.check_grads = shim_check_grads
        test_util.check_grads = shim_check_grads
        public_test_util.check_grads = shim_check_grads


def worker(test_file: str, keyword: str | None) -> int:
    import pytest

    ini = Path(tempfile.mkdtemp()) / "pytest.ini"
    ini.write_text("[pytest]\n")
    argv = [test_file, "-q", "-p", "no:cacheprovider", "-c", str(ini), "-W", "ignore"]
    argv += ["--rootdir", str(Path(test_file).parent)]
    if keyword:
        argv += ["-k", keyword]
    return int(pytest.main(argv, plugins=[ShimPlugin()]))


# ----------------------------------------------------------------------------
# Driver side.


def summarize(name: str, records: list[dict], seconds: float, note: str) -> list[str]:
    counts = collections.Counter(r["status"] for r in records)
    tuned = sum(1 for r in records if r["tuned"])
    higher = collections.Counter(r["order"] for r in records if r["order"] > 1)
    lines = [
        f"{name}: {len(records)} calls, {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['inconclusive']} inconclusive, {counts['crashed']} crashed, "
        f"{counts['f-raises']} where f itself raises (JAX expects an error); "
        f"{tuned} hand-tuned by JAX (atol/rtol/eps); {seconds:.0f} s{note}"
    ]
    if higher:
        orders = ", ".join(f"{n} x order {k}" for k, n in sorted(higher.items()))
        lines.append(f"  not run (order 1 only): {orders}")
    for status in ("failed", "inconclusive", "crashed"):
        groups = collections.Counter()
        tuned_in = collections.Counter()
        example = {}
        for r in records:
            if r["status"] != status:
                continue
            for m in r["per_mode"].values():
                if m["status"] != status:
                    continue
                key = m.get("exception") if status == "crashed" else None
                key = key or _reason_key(m["detail"])
                groups[key] += 1
                tuned_in[key] += bool(r["tuned"])
                example.setdefault(key, (r["test"], m["detail"]))
        for key, n in groups.most_common(8):
            test, detail = example[key]
            lines.append(f"  {status} x{n} ({tuned_in[key]} tuned): {key}")
            lines.append(f"      e.g. {test.split('::', 1)[-1][:90]}: {detail[:140]}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jax-tests", required=False, help="directory with JAX's test files")
    parser.add_argument("--files", nargs="*", default=list(DEFAULT_FILES))
    parser.add_argument("-k", dest="keyword", help="pytest -k filter, applied to every file")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per file")
    parser.add_argument("--json", help="write all records to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        return worker(options.worker, options.keyword)
    if not options.jax_tests:
        parser.error("--jax-tests DIR is required (see the docstring for how to get it)")
    import jax

    print(f"jax {jax.__version__}; jaxcheck at defaults; order 1 only")
    everything = {}
    for name in options.files:
        path = Path(options.jax_tests) / (name if name.endswith(".py") else name + ".py")
        if not path.exists():
            print(f"{name}: not found at {path}")
            continue
        records_file = Path(tempfile.mkdtemp()) / "records.jsonl"
        records_file.touch()
        env = dict(os.environ, **{RECORDS_ENV: str(records_file)})
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
        )
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path)]
        if options.keyword:
            cmd += ["-k", options.keyword]
        start = time.perf_counter()
        note = ""
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=options.timeout
            )
            tail = proc.stdout.strip().splitlines()[-1:] or [""]
            note = f"; pytest: {tail[0][:100]}"
        except subprocess.TimeoutExpired:
            note = f"; cut at the {options.timeout:.0f} s timeout"
        records = [json.loads(line) for line in records_file.read_text().splitlines()]
        everything[name] = records
        for line in summarize(name, records, time.perf_counter() - start, note):
            print(line, flush=True)
    if options.json:
        Path(options.json).write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
