"""The `jaxcheck` command line, through `main([...])` as a user would call it."""

import dataclasses
import json
import sys
import textwrap
import types
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import jaxcheck
from jaxcheck import _cli
from jaxcheck._cli import main

USER_MODULE = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp


    def loss(params, x):
        return jnp.sum(jnp.tanh(x @ params["w"] + params["b"][None, :]) ** 2)


    def make_args():
        params = {"w": jnp.full((3, 2), 0.3, jnp.float32), "b": jnp.array([0.1, -0.2], jnp.float32)}
        return params, jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3)


    def make_x(seed=None):
        return (jnp.ones(3),)  # float32, or float64 under --x64


    @jax.custom_vjp
    def scaled_sin(x):
        return jnp.sin(x)


    def _fwd(x):
        return jnp.sin(x), x


    def _bwd(x, g):
        # Right for |x| < 1; twice too large elsewhere: a bug that only shows at some points.
        return (g * jnp.where(jnp.abs(x) < 1.0, jnp.cos(x), 2.0 * jnp.cos(x)),)


    scaled_sin.defvjp(_fwd, _bwd)


    def sin_loss(x):
        return jnp.sum(scaled_sin(x))


    def small_x(seed):  # seed 0: where the rule is right; seed 1: where it is wrong
        return (jnp.array([0.1, 0.2, 0.3], jnp.float32) + 1.2 * seed,)


    def wrong_x():
        return small_x(1)


    def two_args_loss(a, b):
        return jnp.sum(a * jnp.sin(b))


    def two_args():
        return jnp.array([1.0, 2.0], jnp.float32), jnp.array([0.5, -0.5], jnp.float32)


    def nan_loss(x):
        return jnp.sum(jnp.sqrt(x + 1e-12))  # finite at 0, NaN a step to the left: inconclusive


    def at_zero():
        return (jnp.array([0.0, 1.0], jnp.float32),)


    def vector(x):
        return jnp.sin(x)


    def crashes(x):
        raise RuntimeError("kaboom inside the user function")


    def not_tuple():
        return {"x": jnp.ones(3)}


    def with_string():
        return jnp.ones(3), "train"


    def raises():
        raise ValueError("boom from the factory")


    def needs_seed(seed):
        return (jnp.ones(3) * seed,)


    CONSTANT = 3
    """
)


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.py"
    path.write_text(USER_MODULE)
    return path


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """The same module, importable by a dotted name unique to the test."""
    name = f"jaxcheck_cli_user_{zlib.crc32(request.node.nodeid.encode()):x}"
    package = tmp_path / "pkg_root"
    package.mkdir()
    (package / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(package))
    yield name
    sys.modules.pop(name, None)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- check: verdicts


def test_check_correct_gradient_from_a_py_path_exits_0(capsys, user_file):
    code, out, err = run(capsys, "check", f"{user_file}:loss", "--args", f"{user_file}:make_args")
    assert code == 0, err
    assert out.startswith("PASSED: check_grad(loss)")
    assert "args[0]['w']" in out and "args[0]['b']" in out
    assert "\x1b[" not in out  # not a terminal: no colour
    assert err == ""  # not a terminal: no progress bar


def test_check_from_a_dotted_module_and_factory_in_the_same_module(capsys, user_module):
    code, out, err = run(capsys, "check", f"{user_module}:loss", "--args", "make_args")
    assert code == 0, err
    assert out.startswith("PASSED")


def test_check_wrong_custom_vjp_exits_1_and_names_the_element(capsys, user_file):
    code, out, _ = run(
        capsys, "check", f"{user_file}:sin_loss", "--args", f"{user_file}:small_x", "--points", "2"
    )
    assert code == 1
    assert "=== point 1/2" in out and "=== point 2/2" in out
    first, second = out.split("=== point 2/2")
    assert "PASSED: check_grad(sin_loss)" in first
    assert "FAILED: check_grad(sin_loss)" in second and "args[0]" in second
    assert "2 points: 1 passed, 1 failed." in out


def test_points_json_wrapper(capsys, user_file, tmp_path):
    target = tmp_path / "out.json"
    code, _, err = run(
        capsys,
        "check",
        f"{user_file}:sin_loss",
        "--args",
        f"{user_file}:small_x",
        "--points",
        "2",
        "--json",
        str(target),
    )
    assert code == 1
    data = json.loads(target.read_text())
    assert set(data) == {"schema_version", "kind", "function", "factory", "status", "points"}
    assert data["kind"] == "points" and data["status"] == "failed"
    assert [p["seed"] for p in data["points"]] == [0, 1]
    assert [p["result"]["status"] for p in data["points"]] == ["passed", "failed"]
    assert f"JSON written to {target}" in err


def test_inconclusive_exits_1_unless_allowed(capsys, user_file):
    argv = ["check", f"{user_file}:nan_loss", "--args", f"{user_file}:at_zero"]
    code, out, _ = run(capsys, *argv)
    assert code == 1 and out.startswith("INCONCLUSIVE")
    code, out, _ = run(capsys, *argv, "--allow-inconclusive")
    assert code == 0 and out.startswith("INCONCLUSIVE")


def test_json_file_is_the_results_document(capsys, user_file, tmp_path):
    target = tmp_path / "result.json"
    code, out, _ = run(
        capsys,
        "check",
        f"{user_file}:loss",
        "--args",
        f"{user_file}:make_args",
        "--json",
        str(target),
        "--seed",
        "3",
    )
    assert code == 0
    data = json.loads(target.read_text())
    assert data["kind"] == "grad" and data["status"] == "passed" and data["seed"] == 3
    assert data["schema_version"] == 1


def test_plot_file_is_a_png(capsys, user_file, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "fig.png"
    code, _, err = run(
        capsys,
        "check",
        f"{user_file}:loss",
        "--args",
        f"{user_file}:make_args",
        "--plot",
        str(target),
    )
    assert code == 0, err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_x64_builds_arguments_in_float64_and_is_scoped(capsys, user_file):
    code, out, err = run(
        capsys, "check", f"{user_file}:vector_sum", "--args", f"{user_file}:make_x", "--x64"
    )
    assert code == 2 and "has no attribute `vector_sum`" in err  # sanity: a typo is a usage error
    code, out, err = run(
        capsys, "check", f"{user_file}:sin_loss", "--args", f"{user_file}:make_x", "--x64"
    )
    assert code == 1  # x = 1 is where the rule is wrong
    assert "f64[3]" in out
    assert jnp.ones(1).dtype == jnp.float32  # the flag did not leak out of the run
    code, out, _ = run(capsys, "check", f"{user_file}:sin_loss", "--args", f"{user_file}:make_x")
    assert "f32[3]" in out


@pytest.mark.parametrize("argnums, leaves", [("1", ["args[1]"]), ("0,1", ["args[0]", "args[1]"])])
def test_argnums(capsys, user_file, argnums, leaves):
    code, out, _ = run(
        capsys,
        "check",
        f"{user_file}:two_args_loss",
        "--args",
        f"{user_file}:two_args",
        "--argnums",
        argnums,
    )
    assert code == 0
    table = out.split("\n\n")[1]
    assert sorted(line.split()[0] for line in table.splitlines()[2:]) == leaves


def test_color_always_colours_the_verdict(capsys, user_file):
    code, out, _ = run(
        capsys,
        "check",
        f"{user_file}:loss",
        "--args",
        f"{user_file}:make_args",
        "--color",
        "always",
    )
    assert code == 0
    assert out.startswith("\x1b[1m\x1b[32mPASSED\x1b[0m: check_grad(loss)")


# --------------------------------------------------------------------------- check: --kind


@dataclasses.dataclass
class FakeResult:
    status: str
    name: str = "fake"

    def __str__(self) -> str:
        return f"{self.status.upper()}: fake check"

    def to_dict(self) -> dict:
        return {"kind": "fake", "status": self.status, "schema_version": 1}


def test_kind_dispatches_to_the_named_check_with_its_supported_options(
    capsys, user_file, monkeypatch
):
    calls = []

    def check_vjp(f, args, *, seed=0, eps=None):
        calls.append((f.__name__, args, seed, eps))
        return FakeResult("failed")

    monkeypatch.setattr(jaxcheck, "check_vjp", check_vjp, raising=False)
    code, out, _ = run(
        capsys,
        "check",
        f"{user_file}:vector",
        "--args",
        f"{user_file}:make_x",
        "--kind",
        "vjp",
        "--seed",
        "7",
        "--eps",
        "0.01",
    )
    assert code == 1 and out.startswith("FAILED: fake check")
    assert calls[0][0] == "vector" and calls[0][2:] == (7, 0.01)
    code, _, err = run(
        capsys,
        "check",
        f"{user_file}:vector",
        "--args",
        f"{user_file}:make_x",
        "--kind",
        "vjp",
        "--argnums",
        "0",
    )
    assert code == 2
    assert (
        "--argnums is not supported by --kind vjp (`jaxcheck.check_vjp` has no `argnums` option)"
        in err
    )


def test_kind_without_the_check_is_a_usage_error(capsys, user_file, monkeypatch):
    monkeypatch.delattr(jaxcheck, "check_jvp", raising=False)
    code, _, err = run(
        capsys, "check", f"{user_file}:vector", "--args", f"{user_file}:make_x", "--kind", "jvp"
    )
    assert code == 2
    assert (
        err.strip()
        == "jaxcheck: error: --kind jvp needs `jaxcheck.check_jvp`, which this version of jaxcheck does not provide."
    )


def test_unknown_kind(capsys, user_file):
    code, _, err = run(
        capsys,
        "check",
        f"{user_file}:loss",
        "--args",
        f"{user_file}:make_args",
        "--kind",
        "hessian",
    )
    assert code == 2
    assert (
        "unknown --kind `hessian`; choose from grad, vjp, jvp, custom-vjp, custom-jvp, rules."
        in err
    )


def test_custom_vjp_kind_with_the_real_check(capsys, user_file, monkeypatch):
    if not hasattr(jaxcheck, "check_custom_vjp"):  # not re-exported yet: use the module directly
        module = pytest.importorskip("jaxcheck._custom_vjp")
        monkeypatch.setattr(jaxcheck, "check_custom_vjp", module.check_custom_vjp, raising=False)
    code, out, _ = run(
        capsys,
        "check",
        f"{user_file}:scaled_sin",
        "--args",
        f"{user_file}:wrong_x",
        "--kind",
        "custom-vjp",
    )
    assert code == 1
    assert (
        out.startswith("FAILED: check_custom_vjp(scaled_sin)")
        and "args[0][0]" in out.splitlines()[0]
    )


def test_vjp_kind_with_the_real_check(capsys, user_file, monkeypatch):
    if not hasattr(jaxcheck, "check_vjp"):  # not re-exported yet: use the module directly
        module = pytest.importorskip("jaxcheck._jacobian")
        monkeypatch.setattr(jaxcheck, "check_vjp", module.check_vjp, raising=False)
    code, out, _ = run(
        capsys,
        "check",
        f"{user_file}:scaled_sin",
        "--args",
        f"{user_file}:wrong_x",
        "--kind",
        "vjp",
        "--argnums",
        "0",
    )
    assert code == 1
    assert (
        out.startswith("FAILED: check_vjp(scaled_sin)") and "args[0] -> out" in out.splitlines()[0]
    )


# --------------------------------------------------------------------------- check: input errors


@pytest.mark.parametrize(
    "target, factory, message",
    [
        (
            "no_such_module_xyz:loss",
            "no_such_module_xyz:make",
            "cannot find module `no_such_module_xyz`",
        ),
        ("{dir}/missing.py:loss", "make", "no such file: `{dir}/missing.py`."),
        (
            "{file}:lsos",
            "make_args",
            "module `{file}` has no attribute `lsos` (MODULE:FUNCTION {file}:lsos). Did you mean `loss`?",
        ),
        (
            "{file}:CONSTANT",
            "make_args",
            "MODULE:FUNCTION {file}:CONSTANT is a int, not a function.",
        ),
        ("{file}:loss", "nope", "module `{file}` has no attribute `nope` (--args nope)."),
        (
            "loss",
            "make_args",
            "MODULE:FUNCTION must look like MODULE:NAME (e.g. `model.py:loss` or `mypkg.model:loss`); got `loss`.",
        ),
        (
            "{file}:loss",
            "raises",
            "the factory `{file}:raises()` raised ValueError: boom from the factory",
        ),
        (
            "{file}:loss",
            "not_tuple",
            "the factory `{file}:not_tuple()` must return a tuple of arguments for `f(*args)`; got dict.",
        ),
        (
            "{file}:loss",
            "with_string",
            "the factory `{file}:with_string()` returned a str at args[1]; arguments must be pytrees of arrays",
        ),
        (
            "{file}:loss",
            "needs_seed",
            "the factory `{file}:needs_seed` cannot be called with no arguments",
        ),
        (
            "{file}:vector",
            "make_x",
            "check_grad: `f` must return a scalar (shape ()); it returned an array of shape (3,).",
        ),
    ],
    ids=[
        "missing-module",
        "missing-file",
        "missing-function",
        "not-callable",
        "missing-factory",
        "no-colon",
        "factory-raises",
        "not-a-tuple",
        "non-array-leaf",
        "factory-needs-seed",
        "check-misuse",
    ],
)
def test_input_errors_are_one_line_and_exit_2(capsys, user_file, target, factory, message):
    fmt = {"file": str(user_file), "dir": str(user_file.parent)}
    code, out, err = run(capsys, "check", target.format(**fmt), "--args", factory.format(**fmt))
    assert code == 2
    assert out == ""
    assert err.startswith("jaxcheck: error: ") and err.count("\n") == 1
    assert message.format(**fmt) in err


def test_module_that_fails_to_import(capsys, tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("import jax\nraise RuntimeError('cannot build the model')\n")
    code, _, err = run(capsys, "check", f"{bad}:loss", "--args", "make")
    assert code == 2
    assert f"importing `{bad}` failed: RuntimeError: cannot build the model" in err


def test_points_with_a_factory_that_takes_no_seed(capsys, user_file):
    code, _, err = run(
        capsys, "check", f"{user_file}:loss", "--args", f"{user_file}:make_args", "--points", "2"
    )
    assert code == 2
    assert "--points calls the factory as" in err and "add a `seed` parameter" in err


def test_unexpected_errors_exit_2_and_offer_the_traceback(capsys, user_file):
    argv = ["check", f"{user_file}:crashes", "--args", f"{user_file}:make_x"]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert (
        "RuntimeError: kaboom inside the user function (rerun with --traceback for details)" in err
    )
    code, _, err = run(capsys, *argv, "--traceback")
    assert code == 2
    assert "Traceback (most recent call last)" in err and "kaboom" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["check", "m:f"], "the following arguments are required: --args"),
        (["check", "m:f", "--args", "m:g", "--mode", "fastest"], "invalid choice: 'fastest'"),
        (["check", "m:f", "--args", "m:g", "--points", "0"], "expected a positive integer; got 0"),
        (
            ["check", "m:f", "--args", "m:g", "--argnums", "a"],
            "expected integers like `0` or `0,1`; got 'a'",
        ),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
    ids=["missing-args", "bad-mode", "bad-points", "bad-argnums", "bad-command"],
)
def test_argparse_errors_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, err = run(capsys)
    assert code == 2 and "usage: jaxcheck" in err


def test_help_documents_the_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert (
        "exit codes:" in out
        and "unless --allow-inconclusive" in out
        and "behaved as designed" in out
    )
    code, out, _ = run(capsys, "check", "--help")
    assert code == 0 and "factory(seed)" in out and "--x64" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"jaxcheck {jaxcheck.__version__}"


# --------------------------------------------------------------------------- demo


@pytest.fixture
def fake_demos(monkeypatch):
    """A stand-in registry: `bug` finds its bug, `broken` does not (a jaxcheck regression)."""
    module = types.ModuleType("jaxcheck.catalogue.demos")
    Demo = dataclasses.make_dataclass("Demo", ["name", "description", "run"])
    outcomes = {"mlp": ("failed", "passed"), "broken": ("passed", "passed")}
    module.DEMOS = {name: Demo(name, f"the {name} demo", None) for name in outcomes}
    module.run_demo = lambda name="mlp", *, fixed=False: FakeResult(outcomes[name][int(fixed)])
    monkeypatch.setitem(sys.modules, "jaxcheck.catalogue.demos", module)
    return module


def test_demo_defaults_to_mlp_and_exits_0_when_the_bug_is_found(capsys, fake_demos):
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert out.startswith("jaxcheck demo mlp (with a planted bug): the mlp demo")
    assert "FAILED: fake check" in out
    assert "How to read this:" in out
    assert "As designed: jaxcheck caught the planted bug (exit code 0)" in out


def test_demo_fixed_exits_0_when_it_passes(capsys, fake_demos):
    code, out, _ = run(capsys, "demo", "mlp", "--fixed")
    assert code == 0
    assert "(corrected version)" in out and "As designed: the corrected derivative passes" in out


def test_demo_that_misses_its_bug_exits_1(capsys, fake_demos):
    code, out, _ = run(capsys, "demo", "broken")
    assert code == 1
    assert "UNEXPECTED: this demo should have failed, but the check passed" in out


def test_demo_list_and_unknown_name(capsys, fake_demos):
    code, out, _ = run(capsys, "demo", "--list")
    assert code == 0 and "mlp" in out and "the broken demo" in out
    code, _, err = run(capsys, "demo", "mpl")
    assert code == 2 and "unknown demo `mpl`; choose from mlp, broken. Did you mean `mlp`?" in err


def test_demo_json(capsys, fake_demos, tmp_path):
    target = tmp_path / "demo.json"
    code, _, _ = run(capsys, "demo", "--json", str(target))
    assert code == 0 and json.loads(target.read_text())["status"] == "failed"


def test_real_demo_registry_lists_the_demos(capsys):
    pytest.importorskip("jaxcheck.catalogue.demos")
    code, out, _ = run(capsys, "demo", "--list")
    assert code == 0
    assert [
        line.split()[0]
        for line in out.splitlines()[1:]
        if line.startswith("  ") and not line.startswith("   ")
    ] == ["mlp", "layernorm", "dropout", "pallas"]


# `python -m jaxcheck demo` as a user runs it (a subprocess, stdout piped): README.md's
# console example runs exactly that and tests/test_readme.py compares its whole output (the
# verdict naming args[0]['layer2']['b'], "How to read this:", "As designed", no colour
# codes) and its exit code, 0.


def test_exit_code_helper():
    assert _cli.exit_code(FakeResult("passed")) == 0
    assert _cli.exit_code(FakeResult("failed")) == 1
    assert _cli.exit_code(FakeResult("inconclusive")) == 1
    assert _cli.exit_code(FakeResult("inconclusive"), allow_inconclusive=True) == 0
    assert jax.numpy.ones(1).dtype == jnp.float32


def test_rules_kind_finds_and_names_the_wrong_rule(capsys, user_file):
    code, out, _ = run(
        capsys,
        "check",
        f"{user_file}:sin_loss",
        "--args",
        f"{user_file}:wrong_x",
        "--kind",
        "rules",
    )
    assert code == 1
    assert out.startswith("FAILED: check_rules(sin_loss): 1 of 1 rules failed (scaled_sin)")
    assert "scaled_sin (model.py:19) at sin_loss -> scaled_sin:" in out


def test_rules_kind_without_rules_passes(capsys, user_file):
    code, out, _ = run(
        capsys, "check", f"{user_file}:loss", "--args", f"{user_file}:make_args", "--kind", "rules"
    )
    assert code == 0
    assert out.startswith("PASSED: check_rules(loss): no custom_vjp or custom_jvp rules were found")


ORDER_MODULE = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp
    from jax import lax


    @jax.custom_vjp
    def sin_sg(x):
        return jnp.sin(x)


    # Right gradient; its derivative is 0 (the stopped cos), not -sin.
    sin_sg.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * lax.stop_gradient(jnp.cos(x)),))


    def loss(x):
        return jnp.sum(sin_sg(x))


    def make_x():
        return (jnp.array([0.5, -1.0, 1.5], jnp.float32),)
    """
)


def test_order_flag_checks_second_derivatives(capsys, tmp_path):
    path = tmp_path / "order_model.py"
    path.write_text(ORDER_MODULE)
    argv = ("check", f"{path}:loss", "--args", f"{path}:make_x")
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.startswith("PASSED: check_grad(loss)")
    code, out, _ = run(capsys, *argv, "--order", "2")
    assert code == 1
    assert out.startswith("FAILED: check_jvp(grad(loss)): order 2: 1 of 1 blocks wrong")
    assert "the custom_vjp rule `sin_sg`" in out
    code, _, err = run(capsys, *argv, "--order", "0")
    assert code == 2 and "--order" in err
