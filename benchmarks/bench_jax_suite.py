"""JAX's own `check_grads` calls, rerouted to jaxcheck at its defaults (issue 10).

Runs JAX's test files (those that call `check_grads`) under pytest with
`jax.test_util.check_grads` and `jax._src.test_util.check_grads` (`jtu.check_grads`)
replaced by a shim. For each call the shim runs jaxcheck at its defaults with the same
modes and orders -- "fwd" -> `jaxcheck.check_jvp(f, args, order=k)`, "rev" ->
`jaxcheck.check_vjp(f, args, order=k)` with JAX's order k (`--max-order K` caps it; a call
whose order was cut records "not run, order k") -- and records the verdict (a failure at
order j > 1 is named so); it never raises, so the rest of each test runs as usual. JAX's own tolerances
(atol/rtol/eps passed explicitly) are ignored but counted: they show where JAX's tests
had to hand-tune `check_grads`.

Direct calls of `jtu.check_jvp(f, partial(jax.jvp, f), args)` and
`jtu.check_vjp(f, partial(jax.vjp, f), args)` (lax_numpy_indexing_test's own `check_grads`
is made of them) are rerouted the same way, as one mode each; calls with any other
`f_jvp`/`f_vjp` run JAX's original.

Prints per file: calls, passed, failed, inconclusive (reasons grouped), crashed
(exception types grouped), how many calls JAX hand-tuned, and the calls where f itself
raises when called eagerly (JAX's test expects an error there: not a jaxcheck crash). A call's
verdict is the worst over its modes (crashed > failed > inconclusive > passed), and a last
line sums every file. Goal (issue 10): 0 failed and 0 crashed on JAX's own correct ops.
`--details` also lists every call that did not pass; `--json` keeps all records, with the
full jaxcheck report and a summary of the arguments (values when small) of those calls.

Only the tests that can reach `check_grads` run (a test whose code, or the code of a function
of its module that it names, mentions `check_grads`/`check_jvp`/`check_vjp`; found by
reading code objects, transitively); `--all-tests` runs every test of each file, which
gives the same calls at many times the cost.

Not collected by pytest and not run in CI: it needs JAX's tests at the installed version.
Getting them:

  git clone --filter=blob:none --no-checkout https://github.com/jax-ml/jax /tmp/jax
  git -C /tmp/jax checkout jax-v$(python -c 'import jax; print(jax.__version__)') -- tests
  # or, from any clone or bare mirror: mkdir -p DIR/tests && for f in linalg_test nn_test ...;
  #   do git --git-dir=REPO show jax-vX.Y.Z:tests/$f.py > DIR/tests/$f.py; done

then:

  PYTHONPATH=. python benchmarks/bench_jax_suite.py --jax-tests /tmp/jax/tests \\
      --files nn_test linalg_test -k "Gelu or Softplus" --timeout 600

(`--max-order 1` checks order 1 only: JAX's tests ask for orders 2 to 4 in most calls, and
each order is one more full check, of the derivative map.)

DIR is the directory holding `lax_autodiff_test.py` and friends. They need absl-py and
scipy (JAX's test dependencies). Each file runs in its own subprocess under `--timeout`;
records are written as they happen, so a file cut short still reports what it ran.
"""

import argparse
import collections
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import numpy as np

DEFAULT_FILES = (
    "lax_autodiff_test",
    "nn_test",
    "linalg_test",
    "lax_control_flow_test",
    "lax_scipy_special_functions_test",
    "custom_api_test",
    "fft_test",
)
# The other files of JAX 0.10.2's tests/ that call check_grads (`--files all` runs both lists).
MORE_FILES = (
    "ann_test",
    "api_test",
    "batching_test",
    "custom_linear_solve_test",
    "custom_root_test",
    "eigh_test",
    "experimental_rnn_test",
    "image_test",
    "lax_numpy_indexing_test",
    "lax_numpy_test",
    "lax_scipy_sparse_test",
    "lax_scipy_test",
    "lax_test",
    "memories_test",
    "mutable_array_test",
    "ode_test",
    "pjit_test",
    "pmap_test",
    "ragged_collective_test",
    "shard_map_test",
    "sparse_test",
)
RECORDS_ENV = "JAXCHECK_BENCH_RECORDS"
ALL_TESTS_ENV = "JAXCHECK_BENCH_ALL_TESTS"
MAX_ORDER_ENV = "JAXCHECK_BENCH_MAX_ORDER"
SEVERITY = {"passed": 0, "f-raises": 1, "inconclusive": 2, "failed": 3, "crashed": 4}
GRAD_CHECKS = frozenset({"check_grads", "check_jvp", "check_vjp"})
REPORT_CHARS = 6000  # of a non-passing call's jaxcheck report kept in the records
SMALL_LEAF = 64  # leaves up to this size have their values recorded


# ----------------------------------------------------------------------------
# Worker side: runs inside the pytest subprocess.


def _reason_key(reason: str) -> str:
    """A reason with its numbers blanked, so that like reasons group together."""
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", reason)[:120]


def _record(entry: dict) -> None:
    # Numpy scalars (a float32 argument's value) are written as Python numbers.
    line = json.dumps(entry, default=lambda v: v.item() if hasattr(v, "item") else repr(v))
    with open(os.environ[RECORDS_ENV], "a") as out:
        out.write(line + "\n")


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]


def _json_number(v):
    return v if np.isfinite(v) else repr(v)


def _args_summary(args) -> list[dict]:
    """Each leaf of `args`: its type, shape and dtype as JAX sees them, its values when small."""
    import jax

    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tuple(args))[0]:
        entry = {"path": "args" + jax.tree_util.keystr(path), "type": type(leaf).__name__}
        try:
            value = np.asarray(leaf)
        except Exception:  # noqa: BLE001 - keys, opaque objects: the type is enough
            out.append(entry)
            continue
        entry["shape"] = list(value.shape)
        entry["dtype"] = str(value.dtype)
        entry["weak_type"] = bool(getattr(leaf, "weak_type", False))
        if value.size <= SMALL_LEAF and value.dtype.kind in "biufc":
            flat = value.reshape(-1)
            if value.dtype.kind == "c":
                entry["values"] = [[_json_number(v.real), _json_number(v.imag)] for v in flat]
            else:
                entry["values"] = [_json_number(float(v)) for v in flat.astype(np.float64)]
        out.append(entry)
    return out


def _f_itself_raises(f, args) -> bool:
    try:
        f(*args)
    except Exception:  # noqa: BLE001
        return True
    return False


def _run_mode(check, f, args) -> dict:
    """One jaxcheck check of f at args as a record (never raises), with its time in seconds."""
    start = time.perf_counter()
    entry = _run_mode_untimed(check, f, args)
    entry["seconds"] = round(time.perf_counter() - start, 3)
    return entry


def _run_mode_untimed(check, f, args) -> dict:
    try:
        result = check(f, tuple(args))
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - a crash is what we count
        if _f_itself_raises(f, args):
            # JAX's own test expects this (e.g. assertRaises around check_grads).
            return {"status": "f-raises", "detail": f"f(*args) raises too: {type(error).__name__}"}
        frames = traceback.extract_tb(error.__traceback__)
        inside = [fr for fr in frames if "jaxcheck" in fr.filename]
        where = f"{Path(inside[-1].filename).name}:{inside[-1].name}" if inside else "?"
        first = (str(error).strip().splitlines() or [""])[0][:160]
        return {
            "status": "crashed",
            "detail": f"{type(error).__name__} (last jaxcheck frame {where}): {first}",
            "exception": type(error).__name__,
            "report": "".join(traceback.format_exception(error))[-REPORT_CHARS:],
        }
    entry = {"status": result.status, "detail": result.reason}
    if result.status != "passed":
        entry["report"] = str(result)[:REPORT_CHARS]
    return entry


def _record_call(f, args, order, modes, per_mode, tuned, entry_point, order_run=1) -> None:
    worst = max(per_mode.values(), key=lambda m: SEVERITY[m["status"]], default=None)
    status = "passed" if worst is None else worst["status"]
    record = {
        "test": _current_test(),
        "entry": entry_point,
        "order": int(order),
        "order_run": int(order_run),
        "modes": list(modes),
        "tuned": tuned,
        "status": status,
        "per_mode": per_mode,
    }
    if status != "passed":
        record["function"] = getattr(f, "__name__", type(f).__name__)
        try:
            record["args"] = _args_summary(args)
        except Exception as error:  # noqa: BLE001 - a summary is a courtesy
            record["args"] = f"unsummarised: {type(error).__name__}"
    _record(record)


def _tuned(**options) -> list[str]:
    return sorted(name for name, v in options.items() if v)


def shim_check_grads(f, args, order, modes=("fwd", "rev"), atol=None, rtol=None, eps=None):
    """Stands in for `jax.test_util.check_grads`: jaxcheck at defaults, JAX's order (capped
    at `--max-order`)."""
    import jaxcheck

    cap = os.environ.get(MAX_ORDER_ENV)
    order_run = min(int(order), int(cap)) if cap else int(order)
    checks = {"fwd": jaxcheck.check_jvp, "rev": jaxcheck.check_vjp}
    per_mode = {}
    for mode in modes:
        if mode not in checks:
            per_mode[mode] = {"status": "crashed", "detail": f"unknown mode {mode!r}"}
            continue
        check = functools.partial(checks[mode], order=order_run)
        per_mode[mode] = _run_mode(check, f, args)
    tuned = _tuned(atol=atol, rtol=rtol, eps=eps)
    _record_call(f, args, order, modes, per_mode, tuned, "check_grads", order_run)


def _is_partial_of(fn, targets, f) -> bool:
    return (
        isinstance(fn, functools.partial)
        and fn.func in targets
        and len(fn.args) == 1
        and fn.args[0] is f
        and not fn.keywords
    )


def _shim_direct(mode: str, original):
    """`jtu.check_jvp`/`jtu.check_vjp` rerouted when `f_jvp` is `partial(jax.jvp, f)`
    (`f_vjp`: `partial(jax.vjp, f)`); any other rule runs JAX's original."""

    def shim(f, f_derivative, args, atol=None, rtol=None, eps=None, err_msg=""):
        import jax
        from jax._src import api

        import jaxcheck

        targets = {
            "fwd": (jax.jvp, api.jvp),
            "rev": (jax.vjp, api.vjp),
        }[mode]
        if not _is_partial_of(f_derivative, targets, f):
            given = {"atol": atol, "rtol": rtol, "eps": eps, "err_msg": err_msg}
            kwargs = {k: v for k, v in given.items() if v is not None}
            return original(f, f_derivative, args, **kwargs)
        check = jaxcheck.check_jvp if mode == "fwd" else jaxcheck.check_vjp
        per_mode = {mode: _run_mode(check, f, args)}
        tuned = _tuned(atol=atol, rtol=rtol, eps=eps)
        entry_point = "check_jvp" if mode == "fwd" else "check_vjp"
        _record_call(f, args, 1, (mode,), per_mode, tuned, entry_point)

    return shim


def _code_names(code: types.CodeType) -> set[str]:
    """Every global and attribute name a code object (and the code nested in it) uses."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _functions_behind(obj) -> list:
    """The plain functions behind a test object: bound methods, partials, `__wrapped__`
    chains and the functions in closures (absl's parameterized tests keep the test there)."""
    out, stack, seen = [], [obj], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        item = getattr(item, "__func__", item)
        if isinstance(item, functools.partial):
            stack.append(item.func)
            continue
        if not isinstance(getattr(item, "__code__", None), types.CodeType):
            continue
        out.append(item)
        if hasattr(item, "__wrapped__"):
            stack.append(item.__wrapped__)
        for cell in item.__closure__ or ():
            try:
                stack.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
    return out


@functools.cache
def _reaching_names(module) -> frozenset[str]:
    """Names of the module's functions and methods that can reach a gradient check
    (transitively, by name), plus the gradient checks' own names."""
    uses = collections.defaultdict(set)
    for value in list(vars(module).values()):
        members = vars(value).values() if isinstance(value, type) else [value]
        for member in members:
            member = getattr(member, "__func__", member)  # staticmethod, classmethod
            for fn in _functions_behind(member):
                uses[fn.__name__] |= _code_names(fn.__code__)
    reach = set(GRAD_CHECKS)
    grew = True
    while grew:
        grew = False
        for name, used in uses.items():
            if name not in reach and used & reach:
                reach.add(name)
                grew = True
    return frozenset(reach)


def reaches_a_grad_check(item) -> bool:
    reach = _reaching_names(item.module)
    return any(_code_names(fn.__code__) & reach for fn in _functions_behind(item.obj))


class ShimPlugin:
    """Replaces check_grads before JAX's test modules are imported (they bind it then)."""

    def pytest_configure(self, config):
        import jax.test_util
        from jax._src import public_test_util, test_util

        jax.test_util.check_grads = shim_check_grads
        test_util.check_grads = shim_check_grads
        public_test_util.check_grads = shim_check_grads
        for name, mode in (("check_jvp", "fwd"), ("check_vjp", "rev")):
            shim = _shim_direct(mode, getattr(public_test_util, name))
            for module in (jax.test_util, test_util, public_test_util):
                setattr(module, name, shim)

    def pytest_collection_modifyitems(self, session, config, items):
        if os.environ.get(ALL_TESTS_ENV):
            return
        kept = [item for item in items if _keeps(item)]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def _keeps(item) -> bool:
    try:
        return reaches_a_grad_check(item)
    except Exception:  # noqa: BLE001 - when in doubt, run the test
        return True


def worker(test_file: str, keyword: str | None) -> int:
    import pytest

    ini = Path(tempfile.mkdtemp()) / "pytest.ini"
    ini.write_text("[pytest]\n")
    argv = [test_file, "-q", "-rf", "-p", "no:cacheprovider", "-c", str(ini), "-W", "ignore"]
    argv += ["--rootdir", str(Path(test_file).parent)]
    if keyword:
        argv += ["-k", keyword]
    return int(pytest.main(argv, plugins=[ShimPlugin()]))


# ----------------------------------------------------------------------------
# Driver side.


def _counts_line(label: str, records: list[dict]) -> str:
    counts = collections.Counter(r["status"] for r in records)
    tuned = sum(1 for r in records if r["tuned"])
    direct = sum(1 for r in records if r.get("entry", "check_grads") != "check_grads")
    via = f" ({direct} direct check_jvp/check_vjp)" if direct else ""
    return (
        f"{label}: {len(records)} calls{via}, {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['inconclusive']} inconclusive, "
        f"{counts['crashed']} crashed, {counts['f-raises']} where f itself raises "
        f"(JAX expects an error); {tuned} hand-tuned by JAX (atol/rtol/eps)"
    )


def summarize(name: str, records: list[dict], seconds: float, note: str) -> list[str]:
    cut = collections.Counter(
        r["order"] for r in records if r["order"] > r.get("order_run", r["order"])
    )
    run = collections.Counter(r.get("order_run", 1) for r in records)
    lines = [f"{_counts_line(name, records)}; {seconds:.0f} s{note}"]
    if records:
        orders = ", ".join(f"{n} x order {k}" for k, n in sorted(run.items()))
        lines.append(f"  orders checked: {orders}")
    if cut:
        orders = ", ".join(f"{n} x order {k}" for k, n in sorted(cut.items()))
        lines.append(f"  orders cut by --max-order: {orders}")
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


def details(records: list[dict]) -> list[str]:
    """One line per mode of every call that did not pass."""
    lines = []
    for r in records:
        for mode, m in r["per_mode"].items():
            if m["status"] == "passed":
                continue
            test = r["test"].split("::", 1)[-1]
            lines.append(f"    {m['status']:12} {mode} {test}: {m['detail'][:200]}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jax-tests", required=False, help="directory with JAX's test files")
    parser.add_argument(
        "--files", nargs="*", default=list(DEFAULT_FILES), help="file names, or `all`"
    )
    parser.add_argument("-k", dest="keyword", help="pytest -k filter, applied to every file")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per file")
    parser.add_argument("--json", help="write all records to this file")
    parser.add_argument("--details", action="store_true", help="list every call not passed")
    parser.add_argument(
        "--all-tests", action="store_true", help="run every test, not only those reaching a check"
    )
    parser.add_argument(
        "--max-order", type=int, help="check at most this order (default: each call's own)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        return worker(options.worker, options.keyword)
    if not options.jax_tests:
        parser.error("--jax-tests DIR is required (see the docstring for how to get it)")
    import jax

    orders = "JAX's orders" if options.max_order is None else f"orders <= {options.max_order}"
    print(f"jax {jax.__version__}; jaxcheck at defaults; {orders}", flush=True)
    everything = {}
    files = options.files
    if files == ["all"]:
        files = list(DEFAULT_FILES) + list(MORE_FILES)
    for name in files:
        path = Path(options.jax_tests) / (name if name.endswith(".py") else name + ".py")
        if not path.exists():
            print(f"{name}: not found at {path}")
            continue
        records_file = Path(tempfile.mkdtemp()) / "records.jsonl"
        records_file.touch()
        env = dict(os.environ, **{RECORDS_ENV: str(records_file)})
        if options.all_tests:
            env[ALL_TESTS_ENV] = "1"
        if options.max_order is not None:
            env[MAX_ORDER_ENV] = str(options.max_order)
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
            lines = proc.stdout.strip().splitlines()
            note = f"; pytest: {(lines[-1:] or [''])[0][:100]}"
            # JAX's own tests failing under the shim (it never raises, so these fail for
            # reasons of their own: a test of the machine, a flaky tolerance) are named.
            note += "".join(
                f"\n  pytest {line[:160]}" for line in lines if line.startswith("FAILED")
            )
        except subprocess.TimeoutExpired:
            note = f"; cut at the {options.timeout:.0f} s timeout"
        records = [json.loads(line) for line in records_file.read_text().splitlines()]
        everything[name] = records
        lines = summarize(name, records, time.perf_counter() - start, note)
        if options.details:
            lines += details(records)
        for line in lines:
            print(line, flush=True)
        if options.json:  # after every file, so a run cut short keeps what it has
            Path(options.json).write_text(json.dumps(everything, indent=1))
    every_record = [r for records in everything.values() for r in records]
    print(_counts_line(f"total over {len(everything)} file(s)", every_record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
