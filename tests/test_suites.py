"""Tests for `jaxcheck.catalogue.grad_cases`: the catalogue is sound, and `check_grad` agrees with it.

The soundness tests need no checker: they prove that every "correct" case really
has the right derivative and that every "broken" one is wrong on `bad_path` (and
only there). The checker tests then demand the verdict the catalogue records.
Float64 cases are built and checked inside `jax.enable_x64(True)`; the global
flag is never flipped.

Runtime is bounded: the default path runs the whole catalogue in both dtypes; the
two-point path (the one large problems take) runs `TWO_POINT_DEFAULT` in float32, a
sample with every family and both verdicts, `TWO_POINT_FLOAT64` of it in float64, and
`TWO_POINT_OPS` of the elementwise ops, unless `JAXCHECK_FULL_SUITES=1` is set (then every
case in both dtypes, as for the default path; `python3 benchmarks/run_full_suites.py`).
"""

import contextlib
import os

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

from jaxcheck.catalogue import grad_cases as _suites

GRAD_CASES = _suites.grad_cases()
OP_CASES = _suites.elementwise_op_cases(None)
OP_CASES_F32_BUG = _suites.elementwise_op_cases(1e-4)
OP_CASES_F64_BUG = _suites.elementwise_op_cases(1e-8)
DTYPES = [jnp.float32, jnp.float64]
# Agreement demanded of two exact derivatives of the same function: rtol, atol as
# a fraction of the leaf's largest entry.
SAME = {jnp.float32: (1e-4, 1e-5), jnp.float64: (1e-10, 1e-12)}
# A broken leaf must be off by at least this fraction of its largest entry.
MIN_BUG = 0.05
FULL = os.environ.get("JAXCHECK_FULL_SUITES") == "1"
# The two-point path's default sample: each family with both verdicts (mlp_mse, mlp's
# twin, broken only), every leaf kind (pytree of hand-written gradients, tuple argnums, a
# wrong element among 5000, leaves ~1e3 beside ~1e-3, a key leaf, an int leaf, a kink, scan).
TWO_POINT_DEFAULT = (
    "mlp/autodiff",
    "mlp/bias_bug",
    "mlp_mse/b2_factor",
    "vjp/sin",
    "vjp/matvec_transposed",
    "bigvec/softplus",
    "bigvec/one_element",
    "scaled/backprop",
    "scaled/rate_sign",
    "dropout/backprop",
    "dropout/missing_scale",
    "int/autodiff",
    "int/softplus_flipped",
    "kink/relu_at",
    "kink/relu_double_slope",
    "scan/rnn_backprop",
    "scan/rnn_bias_not_accumulated",
)
# Float64 samples the cheaper half (the same code path at other numbers): both verdicts on
# a small vector, on 5000 elements, at a kink, with badly scaled leaves and an int leaf.
TWO_POINT_FLOAT64 = tuple(
    name
    for name in TWO_POINT_DEFAULT
    if name.split("/")[0] in {"vjp", "bigvec", "scaled", "int", "kink"}
)
# Elementwise ops whose planted 1e-4 bug the two-point path must catch by default: both
# arguments of the binary ops, growing, periodic and singular derivatives.
TWO_POINT_OPS = ("lax/exp", "lax/tan", "lax/log", "lax/atan2[1]", "lax/pow[1]", "lax/div[1]")


def _ids(cases):
    return [c.name for c in cases]


def _sample(cases, names):
    """`cases` whose names are in `names` (all of them when JAXCHECK_FULL_SUITES=1)."""
    assert set(names) <= {c.name for c in cases}, set(names) - {c.name for c in cases}
    return cases if FULL else tuple(c for c in cases if c.name in names)


TWO_POINT_CASES = _sample(GRAD_CASES, TWO_POINT_DEFAULT)
TWO_POINT_PARAMS = [
    pytest.param(case, dtype, id=f"{case.name}-{dtype.__name__}")
    for dtype, names in ((jnp.float32, TWO_POINT_DEFAULT), (jnp.float64, TWO_POINT_FLOAT64))
    for case in _sample(GRAD_CASES, names)
]
TWO_POINT_OP_BUGS = _sample(OP_CASES_F32_BUG, TWO_POINT_OPS)


def _precision(dtype):
    return jax.enable_x64(True) if dtype == jnp.float64 else contextlib.nullcontext()


def _leaves_by_path(tree, prefix: str) -> dict:
    leaves, _ = jtu.tree_flatten_with_path(tree)
    return {prefix + jtu.keystr(path): leaf for path, leaf in leaves}


def _arg_paths(args) -> dict:
    out = {}
    for i, arg in enumerate(args):
        out.update(_leaves_by_path(arg, f"args[{i}]"))
    return out


def _grads_by_path(grads, argnums) -> dict:
    if isinstance(argnums, int):
        return _leaves_by_path(grads, f"args[{argnums}]")
    out = {}
    for i, g in zip(argnums, grads):
        out.update(_leaves_by_path(g, f"args[{i}]"))
    return out


def _identical(a, b) -> bool:
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    return a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


def _gradients(setup) -> tuple[dict, dict]:
    """Returns (gradient under test, true gradient), each keyed by leaf path."""
    argnums = setup.kwargs.get("argnums", 0)
    true = jax.grad(setup.true_f or setup.f, argnums, allow_int=True)(*setup.args)
    grad_fn = setup.kwargs.get("grad_fn")
    if grad_fn is None:
        tested = jax.grad(setup.f, argnums, allow_int=True)(*setup.args)
    else:
        tested = grad_fn(*setup.args)
    tested, true = _grads_by_path(tested, argnums), _grads_by_path(true, argnums)
    keep = [p for p, t in true.items() if jnp.issubdtype(t.dtype, jnp.inexact)]
    return ({p: np.asarray(tested[p]) for p in keep}, {p: np.asarray(true[p]) for p in keep})


def _assert_sound(case, dtype):
    setup = case.build(dtype)
    if setup.true_f is not None:
        np.testing.assert_allclose(
            setup.f(*setup.args), setup.true_f(*setup.args), rtol=SAME[dtype][0]
        )
    tested, true = _gradients(setup)
    assert tested.keys() == true.keys()
    rtol, atol = SAME[dtype]
    for path in true:
        t, r = tested[path], true[path]
        assert t.shape == r.shape and t.dtype == r.dtype == np.dtype(dtype), path
        scale = float(np.max(np.abs(r)))
        assert np.all(np.isfinite(r)) and scale > 0, path
        if path != case.bad_path:
            np.testing.assert_allclose(t, r, rtol=rtol, atol=atol * scale, err_msg=path)
            continue
        diff = np.abs(t - r)
        assert diff.max() > MIN_BUG * scale, f"{case.name}: bug too small on {path}"
        if case.bad_index is not None:
            assert np.unravel_index(diff.argmax(), diff.shape) == case.bad_index
            assert np.sum(diff > atol * scale) == 1, "bug must touch one element only"


# ----------------------------------------------------------------------------
# The catalogue itself.


def test_grad_cases_shape():
    names = _ids(GRAD_CASES)
    assert len(names) == len(set(names))
    assert 25 <= len(names) <= 40
    for case in GRAD_CASES:
        assert case.broken == (case.bad_path is not None), case.name
        assert case.bad_index is None or case.broken, case.name
        assert not (case.expect_nonsmooth and case.broken), case.name
    assert sum(c.broken for c in GRAD_CASES) >= 10
    assert sum(not c.broken for c in GRAD_CASES) >= 10


@pytest.mark.parametrize("rel_bug", [None, 1e-4])
def test_elementwise_op_cases_shape(rel_bug):
    cases = _suites.elementwise_op_cases(rel_bug)
    names = _ids(cases)
    assert len(names) == len(set(names)) >= 30
    assert {"lax/exp", "lax/atan2", "lax/atan2[1]", "lax/pow[1]", "lax/div[1]"} <= set(names)
    for case in cases:
        assert case.broken == (rel_bug is not None)
        argnum = int(case.name[-2]) if case.name.endswith("]") else 0
        assert case.bad_path == (None if rel_bug is None else f"args[{argnum}]")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", GRAD_CASES + OP_CASES, ids=_ids(GRAD_CASES + OP_CASES))
def test_case_builds(case, dtype):
    x64_before = jax.config.jax_enable_x64
    with _precision(dtype):
        setup, again = case.build(dtype), case.build(dtype)
        paths = _arg_paths(setup.args)
        assert case.bad_path is None or case.bad_path in paths
        for path, leaf in paths.items():
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == dtype, path
        same = jtu.tree_map(_identical, setup.args, again.args)
        assert all(jtu.tree_leaves(same)), "build must be deterministic"
        value = setup.f(*setup.args)
        assert value.shape == () and value.dtype == dtype and jnp.isfinite(value)
    assert jax.config.jax_enable_x64 == x64_before


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", GRAD_CASES, ids=_ids(GRAD_CASES))
def test_grad_case_is_sound(case, dtype):
    with _precision(dtype):
        _assert_sound(case, dtype)


@pytest.mark.parametrize("case", OP_CASES_F32_BUG, ids=_ids(OP_CASES_F32_BUG))
def test_elementwise_bug_is_exact(case):
    with jax.enable_x64(True):
        setup = case.build(jnp.float64)
        tested, true = _gradients(setup)
    (path,) = true
    assert path == case.bad_path
    np.testing.assert_allclose(tested[path], (1 + 1e-4) * true[path], rtol=1e-12)
    assert np.max(np.abs(true[path])) > 0


# ----------------------------------------------------------------------------
# check_grad against the catalogue.


def _check(case, dtype, *, locate_rules=True):
    """`check_grad` on the case must give the catalogue's verdict, naming `bad_path`.

    `locate_rules=False` skips only the diagnosis that a failed check appends (every custom
    rule inside f re-checked at its call sites, `result.rule_findings`): it runs after the
    verdict, never changes it, and costs about a second per failing case. The sweeps that
    prove verdicts of one path across many cases turn it off; `test_check_grad_float32` and
    `test_rule_findings_name_the_broken_rule` keep it on.
    """
    from jaxcheck import check_grad

    setup = case.build(dtype)
    result = check_grad(setup.f, setup.args, **setup.kwargs, locate_rules=locate_rules)
    report = str(result)
    if not case.broken:
        assert result.status == "passed", f"{case.name} ({case.note}):\n{report}"
        assert result.passed
    else:
        assert result.status == "failed", f"{case.name} ({case.note}):\n{report}"
        assert not result.passed
        failed = {leaf.path: leaf for leaf in result.leaves if leaf.status == "failed"}
        assert case.bad_path in failed, f"{case.bad_path} not named:\n{report}"
        assert case.bad_path in report
        if case.bad_index is not None:
            assert failed[case.bad_path].worst_index == case.bad_index, report
    if case.expect_nonsmooth:
        leaf = {leaf.path: leaf for leaf in result.leaves}["args[0]"]
        assert leaf.n_nonsmooth >= 1, report
    return result


@pytest.mark.parametrize("case", GRAD_CASES, ids=_ids(GRAD_CASES))
def test_check_grad_float32(case):
    _check(case, jnp.float32)


@pytest.mark.parametrize("case", GRAD_CASES, ids=_ids(GRAD_CASES))
def test_check_grad_float64(case):
    with jax.enable_x64(True):
        _check(case, jnp.float64, locate_rules=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", OP_CASES, ids=_ids(OP_CASES))
def test_check_grad_elementwise_correct(case, dtype):
    with _precision(dtype):
        _check(case, dtype)


@pytest.mark.parametrize("case", OP_CASES_F32_BUG, ids=_ids(OP_CASES_F32_BUG))
def test_check_grad_elementwise_bug_float32(case):
    _check(case, jnp.float32, locate_rules=False)


@pytest.mark.parametrize("case", OP_CASES_F64_BUG, ids=_ids(OP_CASES_F64_BUG))
def test_check_grad_elementwise_bug_float64(case):
    with jax.enable_x64(True):
        _check(case, jnp.float64, locate_rules=False)


# A failing check names the custom rule at fault (the diagnosis the sweeps above skip), and
# names none when the bug is in a hand-written gradient outside any rule.
RULE_FINDINGS = [
    ("lax/atan2[1]", jnp.float32, "`_scaled_vjp`"),
    ("lax/exp", jnp.float64, "`_scaled_vjp`"),
    ("mlp/bias_bug", jnp.float32, None),
]


@pytest.mark.parametrize(
    "name, dtype, rule", RULE_FINDINGS, ids=[f"{n}-{d.__name__}" for n, d, _ in RULE_FINDINGS]
)
def test_rule_findings_name_the_broken_rule(name, dtype, rule):
    bugs = OP_CASES_F32_BUG if dtype == jnp.float32 else OP_CASES_F64_BUG
    case = {c.name: c for c in GRAD_CASES + bugs}[name]
    with _precision(dtype):
        result = _check(case, dtype)
    if rule is None:
        assert result.rule_findings == (), str(result)
        return
    (finding,) = result.rule_findings
    assert f"custom_vjp rule {rule}" in finding and "fails its finite-difference" in finding


# ----------------------------------------------------------------------------
# The two-point full mode (large n): same verdicts on a sample of the catalogue (on all of
# it with JAXCHECK_FULL_SUITES=1).


@pytest.fixture
def two_point(monkeypatch):
    """Every check takes the 2n path of large problems: +-h everywhere, a small
    calibration sample and +-2h only where +-h does not decide (`_grad_full`)."""
    from jaxcheck import _grad_full

    monkeypatch.setattr(_grad_full, "TWO_POINT_MIN", 1)
    monkeypatch.setattr(_grad_full, "CALIBRATION", 4)


def test_two_point_sample_covers_every_family_and_both_verdicts():
    def families(cases, broken):
        return {c.name.split("/")[0] for c in cases if c.broken == broken}

    assert families(TWO_POINT_CASES, True) == families(GRAD_CASES, True)
    assert families(TWO_POINT_CASES, False) >= families(GRAD_CASES, False) - {"mlp_mse"}
    assert any(c.bad_index is not None for c in TWO_POINT_CASES)
    assert any(c.expect_nonsmooth for c in TWO_POINT_CASES)
    assert set(TWO_POINT_FLOAT64) <= set(TWO_POINT_DEFAULT)
    assert {c.bad_path for c in TWO_POINT_OP_BUGS} == {"args[0]", "args[1]"}


@pytest.mark.parametrize("case, dtype", TWO_POINT_PARAMS)
def test_check_grad_two_point_path(case, dtype, two_point):
    with _precision(dtype):
        _check(case, dtype, locate_rules=False)


@pytest.mark.parametrize("case", TWO_POINT_OP_BUGS, ids=_ids(TWO_POINT_OP_BUGS))
def test_check_grad_two_point_path_elementwise_bug_float32(case, two_point):
    _check(case, jnp.float32, locate_rules=False)
