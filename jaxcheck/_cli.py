"""The `jaxcheck` command line (also `python -m jaxcheck`): `demo` and `check`.

A thin argparse layer over the `check_*` functions: it loads the user's function and
argument factory, runs the check, prints the report and turns the verdict into an exit
code (0 passed, 1 a derivative is wrong or the check is inconclusive, 2 usage or input
error). `main(argv)` returns the code instead of exiting, so it is testable in-process.
"""

import argparse
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_WRONG = 1
EXIT_USAGE = 2

KINDS = {
    "grad": "check_grad",
    "vjp": "check_vjp",
    "jvp": "check_jvp",
    "custom-vjp": "check_custom_vjp",
    "custom-jvp": "check_custom_jvp",
    "rules": "check_rules",
}
MODES = ("full", "probe", "auto")
WIDTH = 88  # prose lines (the report's tables are never wrapped)

HOW_TO_READ = (
    "How to read this: the first line is the verdict. Each table row is one differentiated "
    "leaf, worst first; `analytic` is the derivative under test and `numeric` the "
    "finite-difference reference at that leaf's worst element, `tolerance` what that element "
    "was allowed. An indented table lists the failing elements; `try:` lines say what to do next."
)

EXIT_CODES_HELP = """\
exit codes:
  0  passed (for `demo`: the demonstration behaved as designed -- the planted bug was
     found, or with --fixed the corrected rule passed)
  1  a derivative is wrong; also an inconclusive check (e.g. finite differences are
     NaN at the point, or too noisy to decide) unless --allow-inconclusive is given
  2  usage or input error (bad option, module or function not found, factory failed,
     arguments not a tuple of arrays, a check that this jaxcheck does not provide)
"""

MAIN_EPILOG = (
    """\
examples:
  jaxcheck demo                      the textbook MLP with a planted backprop bug
  jaxcheck demo --list               all demonstrations
  jaxcheck demo layernorm --fixed    the corrected custom_vjp rule, passing
  jaxcheck check model.py:loss --args model.py:make_args
  jaxcheck check mypkg.losses:loss --args mypkg.data:batch --argnums 0 --x64 --json out.json

"""
    + EXIT_CODES_HELP
)

CHECK_EPILOG = (
    """\
the factory:
  MODULE:FACTORY names a function returning the tuple `args` for `FUNCTION(*args)`:
  a tuple of pytrees of arrays. Python floats in a differentiated argument are
  differentiated like float arrays (as `jax.grad` does); Python ints, bools and
  strings are held fixed. With
  --points K it is called as `factory(seed)` for seed = 0..K-1 and every point is
  checked and reported; the exit code is the worst. The factory decides what a seed
  means -- practitioners advise checking at initialisation and again after some
  training, e.g. seed 0 = fresh parameters, seed 1 = a saved checkpoint.
  MODULE is a dotted module name (found on sys.path or in the current directory) or a
  path to a .py file; FACTORY without `MODULE:` is looked up in FUNCTION's module.

"""
    + EXIT_CODES_HELP
)


class UsageError(Exception):
    """A one-line problem with the command line or the user's input (exit code 2)."""


# --------------------------------------------------------------------------- parsing


def _argnums(text: str) -> list[int]:
    try:
        nums = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        nums = []
    if not nums:
        raise argparse.ArgumentTypeError(f"expected integers like `0` or `0,1`; got {text!r}")
    return nums


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _common_output(parser: argparse.ArgumentParser, points: bool) -> None:
    json_help = "write the result as JSON (schema: docs/json_schema.md"
    plot_help = "save the figure (per-leaf errors and the step sweep"
    if points:
        json_help += "; with --points, one document listing every point"
        plot_help += "; with --points, FILE-seedK.png per point"
    parser.add_argument("--json", metavar="FILE", help=json_help + ")")
    parser.add_argument(
        "--plot", metavar="FILE", help=plot_help + "); needs `pip install 'jaxcheck[plot]'`"
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the report (default: only on a terminal; NO_COLOR disables)",
    )
    parser.add_argument(
        "--traceback", action="store_true", help="print the full traceback of unexpected errors"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the `jaxcheck` command."""
    from . import __version__

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="jaxcheck",
        description="Check JAX derivatives against finite differences and say exactly where they are wrong.",
        epilog=MAIN_EPILOG,
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"jaxcheck {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run a built-in demonstration (default: mlp)",
        description=textwrap.fill(
            "Run a built-in demonstration and print its report. Each demo plants a bug in a "
            "derivative and shows jaxcheck finding it; --fixed runs the corrected version. "
            "Exit code 0 means the demo behaved as designed (bug found, or fixed version "
            "passed), so `make demo` succeeds; 1 means it did not.",
            WIDTH,
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=raw,
    )
    demo.add_argument(
        "name", nargs="?", default="mlp", help="which demo (default: mlp; see --list)"
    )
    demo.add_argument(
        "--fixed", action="store_true", help="run the corrected derivative (should pass)"
    )
    demo.add_argument("--list", action="store_true", help="list the demos and exit")
    _common_output(demo, points=False)

    check = commands.add_parser(
        "check",
        help="check your own function at arguments from your factory",
        description="Check the derivative of MODULE:FUNCTION at the arguments returned by a factory.",
        epilog=CHECK_EPILOG,
        formatter_class=raw,
    )
    check.add_argument(
        "target",
        metavar="MODULE:FUNCTION",
        help="the function to check, e.g. `model.py:loss` or `mypkg.model:loss`",
    )
    check.add_argument(
        "--args",
        dest="factory",
        metavar="MODULE:FACTORY",
        required=True,
        help="function returning the argument tuple",
    )
    check.add_argument(
        "--kind", default="grad", help=f"what to check: {', '.join(KINDS)} (default: grad)"
    )
    check.add_argument(
        "--argnums",
        type=_argnums,
        metavar="N[,N...]",
        help="arguments to differentiate, as in jax.grad (default: the check's own, 0 for grad)",
    )
    check.add_argument(
        "--points", type=_positive_int, metavar="K", help="check at factory(seed) for seed = 0..K-1"
    )
    check.add_argument(
        "--x64",
        action="store_true",
        help="enable jax_enable_x64 for the run (before building the arguments)",
    )
    check.add_argument("--seed", type=int, help="seed of the check's random directions (default 0)")
    check.add_argument(
        "--mode",
        choices=MODES,
        help="full: every coordinate; probe: random directions; auto: the check decides",
    )
    check.add_argument(
        "--eps",
        type=float,
        metavar="E",
        help="finite-difference step (default: chosen per coordinate)",
    )
    check.add_argument("--rtol", type=float, help="relative tolerance (default: per dtype)")
    check.add_argument("--atol", type=float, help="absolute tolerance (default: derived per leaf)")
    check.add_argument("--has-aux", action="store_true", help="FUNCTION returns (value, aux)")
    check.add_argument(
        "--order",
        type=_positive_int,
        metavar="K",
        help="also check derivatives up to order K (default 1; custom-vjp/custom-jvp/rules: 1 or 2)",
    )
    check.add_argument(
        "--allow-inconclusive",
        action="store_true",
        help="exit 0 instead of 1 when the check is inconclusive",
    )
    _common_output(check, points=True)
    return parser


# --------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added and directory in sys.path:
            sys.path.remove(directory)


def _looks_like_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


class Loader:
    """Imports user modules (dotted names or .py paths) once per run and looks up objects."""

    def __init__(self) -> None:
        self._files: dict[Path, Any] = {}

    def module(self, name: str) -> Any:
        if _looks_like_path(name):
            return self._from_file(Path(name))
        try:
            with _on_sys_path(os.getcwd()):
                return importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
                raise UsageError(
                    f"cannot find module `{name}` (searched the current directory and sys.path); "
                    "check the spelling or pass a path such as `path/to/model.py`."
                ) from None
            raise UsageError(
                f"importing module `{name}` failed: {type(error).__name__}: {error}"
            ) from None
        except Exception as error:  # the user's module raised while importing
            raise UsageError(
                f"importing module `{name}` failed: {type(error).__name__}: {error}"
            ) from None

    def _from_file(self, path: Path) -> Any:
        resolved = path.resolve()
        if resolved in self._files:
            return self._files[resolved]
        if not resolved.is_file():
            raise UsageError(f"no such file: `{path}`.")
        if resolved.suffix != ".py":
            raise UsageError(
                f"`{path}` is not a Python file (expected a `.py` path or a dotted module name)."
            )
        name = resolved.stem if resolved.stem.isidentifier() else "user_module"
        if name in sys.modules:  # never shadow an imported module (e.g. a file called `jax.py`)
            name = f"_jaxcheck_user_{name}_{abs(hash(str(resolved))):x}"
        spec = importlib.util.spec_from_file_location(name, resolved)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot load `{path}` as a Python module.")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            with _on_sys_path(str(resolved.parent)):
                spec.loader.exec_module(module)
        except Exception as error:
            sys.modules.pop(name, None)
            raise UsageError(
                f"importing `{path}` failed: {type(error).__name__}: {error}"
            ) from None
        self._files[resolved] = module
        return module

    def callable(
        self, spec: str, option: str, default_module: str | None = None
    ) -> tuple[Callable, str]:
        """The callable named by `MODULE:NAME` (NAME may be dotted), and a display name."""
        module_name, sep, attr = spec.rpartition(":")
        if not sep and default_module is not None:
            module_name, attr = default_module, spec
        if not module_name or not attr:
            raise UsageError(
                f"{option} must look like MODULE:NAME (e.g. `model.py:loss` or `mypkg.model:loss`); got `{spec}`."
            )
        obj = self.module(module_name)
        for i, part in enumerate(attr.split(".")):
            if not hasattr(obj, part):
                where = (
                    f"module `{module_name}`"
                    if i == 0
                    else f"`{module_name}:{'.'.join(attr.split('.')[:i])}`"
                )
                names = [n for n in dir(obj) if not n.startswith("_")]
                close = difflib.get_close_matches(part, names, n=3)
                hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
                raise UsageError(f"{where} has no attribute `{part}` ({option} {spec}).{hint}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise UsageError(f"{option} {spec} is a {type(obj).__name__}, not a function.")
        return obj, f"{module_name}:{attr}"


def _is_allowed_leaf(leaf: Any) -> bool:
    import jax
    import numpy as np

    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, bool, int, float, complex))


def build_args(factory: Callable, name: str, seed: int | None) -> tuple:
    """Calls `factory()` (or `factory(seed)`) and validates the argument tuple."""
    import jax.tree_util as jtu

    call = "()" if seed is None else f"({seed})"
    try:
        inspect.signature(factory).bind(*(() if seed is None else (seed,)))
    except TypeError:
        if seed is None:
            raise UsageError(
                f"the factory `{name}` cannot be called with no arguments; give its parameters defaults, "
                "or pass --points K to call it as `factory(seed)`."
            ) from None
        raise UsageError(
            f"--points calls the factory as `{name}(seed)`, but it does not take one argument; "
            "add a `seed` parameter (the factory decides what each seed means)."
        ) from None
    except ValueError:  # no signature (some builtins): just call it
        pass
    try:
        args = factory() if seed is None else factory(seed)
    except Exception as error:
        raise UsageError(
            f"the factory `{name}{call}` raised {type(error).__name__}: {error}"
        ) from None
    if isinstance(args, list):
        args = tuple(args)
    if not isinstance(args, tuple):
        raise UsageError(
            f"the factory `{name}{call}` must return a tuple of arguments for `f(*args)`; got "
            f"{type(args).__name__}. Return e.g. `(params, batch)`, or `(x,)` for one argument."
        )
    for path, leaf in jtu.tree_flatten_with_path(args)[0]:
        if not _is_allowed_leaf(leaf):
            raise UsageError(
                f"the factory `{name}{call}` returned a {type(leaf).__name__} at args{jtu.keystr(path)}; "
                "arguments must be pytrees of arrays and Python numbers. Bind other "
                "options into the function instead (e.g. with functools.partial)."
            )
    return args


# --------------------------------------------------------------------------- running


def exit_code(result: Any, allow_inconclusive: bool = False) -> int:
    """0 for passed (or inconclusive when allowed), 1 otherwise."""
    status = getattr(result, "status", "failed")
    if status == "passed" or (status == "inconclusive" and allow_inconclusive):
        return EXIT_OK
    return EXIT_WRONG


def _worst_status(statuses: list[str]) -> str:
    rank = {"passed": 0, "inconclusive": 1, "failed": 2}
    return max(statuses, key=lambda s: rank.get(s, 2))


def _use_color(choice: str) -> bool:
    from ._format import should_color

    return choice == "always" or (choice == "auto" and should_color(sys.stdout))


def _print_report(result: Any, color: bool) -> None:
    from ._format import format_report

    print(format_report(result, color=color))


def _check_plot_available(path: str | None) -> None:
    if path is not None and importlib.util.find_spec("matplotlib") is None:
        raise UsageError(
            "--plot needs matplotlib, an optional dependency: `pip install 'jaxcheck[plot]'`."
        )


def _plot_path(path: str, seed: int | None) -> str:
    if seed is None:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}-seed{seed}{p.suffix or '.png'}"))


def _save_plot(result: Any, path: str) -> None:
    from ._plot import plot_result

    try:
        plot_result(result, path)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot save the plot to `{path}`: {error}") from None
    print(f"plot written to {path}", file=sys.stderr)


def _write_json(path: str, data: dict) -> None:
    try:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
    except OSError as error:
        raise UsageError(f"cannot write JSON to `{path}`: {error}") from None
    print(f"JSON written to {path}", file=sys.stderr)


def _to_dict(result: Any) -> dict:
    if hasattr(result, "to_dict"):
        return result.to_dict()
    return json.loads(result.to_json())


def run_demo(options: argparse.Namespace) -> int:
    try:
        demos = importlib.import_module("jaxcheck.catalogue.demos")
    except ImportError as error:
        raise UsageError(
            f"the demonstrations are not available in this install of jaxcheck ({error})."
        ) from None
    if options.list:
        width = max(len(name) for name in demos.DEMOS)
        print("demonstrations (run `jaxcheck demo NAME`, add --fixed for the corrected version):")
        for name, demo in demos.DEMOS.items():
            print(
                textwrap.fill(
                    demo.description,
                    WIDTH,
                    initial_indent=f"  {name.ljust(width)}  ",
                    subsequent_indent=" " * (width + 4),
                )
            )
        return EXIT_OK
    if options.name not in demos.DEMOS:
        close = difflib.get_close_matches(options.name, list(demos.DEMOS), n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise UsageError(
            f"unknown demo `{options.name}`; choose from {', '.join(demos.DEMOS)}.{hint}"
        )
    _check_plot_available(options.plot)
    demo = demos.DEMOS[options.name]
    version = "corrected version" if options.fixed else "with a planted bug"
    print(textwrap.fill(f"jaxcheck demo {demo.name} ({version}): {demo.description}", WIDTH))
    print()
    result = demos.run_demo(options.name, fixed=options.fixed)
    _print_report(result, _use_color(options.color))
    print()
    print(textwrap.fill(HOW_TO_READ, WIDTH))
    expected = "passed" if options.fixed else "failed"
    status = getattr(result, "status", None)
    if options.json:
        _write_json(options.json, _to_dict(result))
    if options.plot:
        _save_plot(result, options.plot)
    if status == expected and not options.fixed:
        print(
            textwrap.fill(
                f"As designed: jaxcheck caught the planted bug (exit code 0). "
                f"`jaxcheck demo {demo.name} --fixed` runs the corrected version.",
                WIDTH,
            )
        )
        return EXIT_OK
    if status == expected:
        print("As designed: the corrected derivative passes (exit code 0).")
        return EXIT_OK
    print(
        f"UNEXPECTED: this demo should have {expected}, but the check {status}; please report it (exit code 1)."
    )
    return EXIT_WRONG


def _check_function(kind: str) -> tuple[Callable, str]:
    import jaxcheck

    if kind not in KINDS:
        raise UsageError(f"unknown --kind `{kind}`; choose from {', '.join(KINDS)}.")
    name = KINDS[kind]
    check = getattr(jaxcheck, name, None)
    if check is None:
        raise UsageError(
            f"--kind {kind} needs `jaxcheck.{name}`, which this version of jaxcheck does not provide."
        )
    return check, name


def _check_kwargs(
    check: Callable, name: str, kind: str, options: argparse.Namespace
) -> dict[str, Any]:
    wanted: dict[str, tuple[str, Any]] = {}
    if options.argnums is not None:
        nums = options.argnums
        wanted["argnums"] = ("--argnums", nums[0] if len(nums) == 1 else tuple(nums))
    for option in ("seed", "mode", "eps", "rtol", "atol", "order"):
        if getattr(options, option) is not None:
            wanted[option] = (f"--{option}", getattr(options, option))
    if options.has_aux:
        wanted["has_aux"] = ("--has-aux", True)
    parameters = inspect.signature(check).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {}
    for key, (flag, value) in wanted.items():
        if key not in parameters and not takes_any:
            raise UsageError(
                f"{flag} is not supported by --kind {kind} (`jaxcheck.{name}` has no `{key}` option)."
            )
        kwargs[key] = value
    return kwargs


def run_check(options: argparse.Namespace) -> int:
    check, check_name = _check_function(options.kind)
    kwargs = _check_kwargs(check, check_name, options.kind, options)
    _check_plot_available(options.plot)
    loader = Loader()
    f, f_name = loader.callable(options.target, "MODULE:FUNCTION")
    factory, factory_name = loader.callable(
        options.factory, "--args", default_module=f_name.rpartition(":")[0]
    )
    accepts_progress = "progress" in inspect.signature(check).parameters
    seeds: list[int | None] = [None] if options.points is None else list(range(options.points))
    color = _use_color(options.color)

    import jax

    from ._progress import ProgressBar

    results = []
    with jax.enable_x64(True) if options.x64 else contextlib.nullcontext():
        for seed in seeds:
            if seed is not None:
                print(f"=== point {seed + 1}/{len(seeds)}: {factory_name}({seed}) ===")
            args = build_args(factory, factory_name, seed)
            bar = ProgressBar(f"{check_name}({f_name.rpartition(':')[2]})")
            call_kwargs = dict(kwargs, progress=bar) if accepts_progress else kwargs
            try:
                with bar:
                    result = check(f, args, **call_kwargs)
            except (TypeError, ValueError) as error:
                if options.traceback:
                    traceback.print_exc()
                raise UsageError(f"{check_name}: {error}") from None
            _print_report(result, color)
            if options.plot:
                _save_plot(result, _plot_path(options.plot, seed))
            results.append((seed, result))
            if seed is not None:
                print()
    codes = [exit_code(r, options.allow_inconclusive) for _, r in results]
    if options.points is not None:
        statuses = [getattr(r, "status", "?") for _, r in results]
        counts = ", ".join(
            f"{statuses.count(s)} {s}"
            for s in ("passed", "failed", "inconclusive")
            if s in statuses
        )
        print(f"{len(results)} points: {counts}.")
    if options.json:
        if options.points is None:
            _write_json(options.json, _to_dict(results[0][1]))
        else:
            _write_json(
                options.json,
                {
                    "schema_version": 1,
                    "kind": "points",
                    "function": f_name,
                    "factory": factory_name,
                    "status": _worst_status([getattr(r, "status", "failed") for _, r in results]),
                    "points": [{"seed": seed, "result": _to_dict(r)} for seed, r in results],
                },
            )
    return max(codes)


def _is_interrupt(error: BaseException) -> bool:
    """Whether `error` is a Ctrl-C in disguise: JAX re-raises a KeyboardInterrupt that hits a
    host callback (`jax.pure_callback`) as a `JaxRuntimeError` naming it in its message."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, KeyboardInterrupt):
            return True
        if type(error).__name__ == "JaxRuntimeError" and "KeyboardInterrupt" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _quiet_interrupts(record: logging.LogRecord) -> bool:
    """Logging filter: drop JAX's "pure_callback failed" traceback when it is a Ctrl-C (the
    interrupt is reported once, as one line)."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, KeyboardInterrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `jaxcheck` command line; returns the exit code (0 passed, 1 wrong, 2 usage)."""
    parser = build_parser()
    try:
        options = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # argparse's own usage errors (2), --help and --version (0)
        return int(stop.code or 0) if not isinstance(stop.code, str) else EXIT_USAGE
    if options.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    callback_log = logging.getLogger("jax._src.callback")
    callback_log.addFilter(_quiet_interrupts)
    try:
        return run_demo(options) if options.command == "demo" else run_check(options)
    except UsageError as error:
        print(f"jaxcheck: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("jaxcheck: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `jaxcheck demo --list | head`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet
        return EXIT_WRONG
    except Exception as error:  # an unexpected failure inside the user's code or jaxcheck
        if _is_interrupt(error):
            print("jaxcheck: interrupted", file=sys.stderr)
            return 130
        if options.traceback:
            traceback.print_exc()
        else:
            print(
                f"jaxcheck: error: {type(error).__name__}: {error} (rerun with --traceback for details)",
                file=sys.stderr,
            )
        return EXIT_USAGE
    finally:
        callback_log.removeFilter(_quiet_interrupts)
