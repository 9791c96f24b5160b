"""Sparsity patterns from jaxprs, their colourings, and the sparse Jacobian strategy."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck import _sparse
from jaxcheck import _stencil as st
from jaxcheck._coloring import color_by_leaf, color_columns, is_valid_coloring
from jaxcheck._jacobian import finish
from jaxcheck._pattern import Pattern
from jaxcheck._problem import build_problem
from jaxcheck._sparse import problem_pattern, run_sparse
from jaxcheck._sparse_kernels import grouped_values
from jaxcheck._sparsity import detect_pattern
from jaxcheck._tolerance import stencil_points


def pattern_of(f, shape, dtype=jnp.float32) -> Pattern:
    n = int(np.prod(shape))
    pattern = detect_pattern(lambda theta: jnp.ravel(f(theta.reshape(shape))), n, dtype)
    assert isinstance(pattern, Pattern), pattern
    return pattern


def dense_of(pattern: Pattern) -> np.ndarray:
    out = np.zeros((pattern.m, pattern.n), bool)
    rows, cols = pattern.coo()
    out[rows, cols] = True
    return out


def true_structure(f, shape, key) -> np.ndarray:
    """Nonzeros of the Jacobian at a random point (a subset of the structural pattern)."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    J = jax.jit(jax.jacfwd(f))(jnp.asarray(x))  # one compilation, not one per primitive
    return np.asarray(J).reshape(-1, x.size) != 0


def layer_norm(x):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5)


def stencil3(x):
    return x[2:] - 2 * x[1:-1] ** 2 + x[:-2]


# -- detection ----------------------------------------------------------------------


def test_elementwise_is_diagonal():
    p = pattern_of(lambda x: jnp.sin(x) * x + jnp.exp(-x) / 2.0, (50,))
    assert np.array_equal(dense_of(p), np.eye(50, dtype=bool))
    assert p.density == pytest.approx(1 / 50)
    assert color_columns(p)[1] == 1


CASES = {
    "banded-slices": (stencil3, (30,)),
    "convolve": (lambda x: jnp.convolve(x, jnp.array([1.0, 2.0, 3.0]), mode="same"), (30,)),
    "layer-norm": (layer_norm, (4, 8)),
    "softmax-last": (lambda x: jax.nn.softmax(x, axis=-1), (4, 8)),
    "softmax-first": (lambda x: jax.nn.softmax(x, axis=0), (4, 8)),
    "matmul": (lambda x: jnp.tanh(x @ jnp.ones((8, 3))), (4, 8)),
    "cumsum": (lambda x: jnp.cumsum(x**2), (12,)),
    "pad-concat": (lambda x: jnp.concatenate([jnp.pad(x, 2)[1:], x[::-1] * 2]), (6,)),
    "transpose": (lambda x: jnp.sin(x.T.reshape(-1)), (3, 5)),
    "split": (lambda x: jnp.concatenate(jnp.split(x, [2, 5])[::-1]) * x, (8,)),
    "nested-jit": (lambda x: jax.jit(lambda y: jnp.tanh(y[1:]) * y[:-1])(x), (9,)),
}


@pytest.mark.parametrize("name", list(CASES), ids=str)
def test_pattern_contains_the_true_structure(name, key):
    f, shape = CASES[name]
    p = pattern_of(f, shape)
    true = true_structure(f, shape, key)
    assert not np.any(true & ~dense_of(p)), "the pattern misses a true nonzero"
    colors, k = color_columns(p)
    assert is_valid_coloring(p, colors)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("banded-slices", np.abs(np.subtract.outer(np.arange(28), np.arange(30)) + 1) <= 1),
        ("layer-norm", np.kron(np.eye(4, dtype=bool), np.ones((8, 8), bool))),
        ("softmax-last", np.kron(np.eye(4, dtype=bool), np.ones((8, 8), bool))),
        ("matmul", np.kron(np.eye(4, dtype=bool), np.ones((3, 8), bool))),
        ("cumsum", np.tril(np.ones((12, 12), bool))),
    ],
    ids=str,
)
def test_pattern_is_exact(name, expected):
    f, shape = CASES[name]
    assert np.array_equal(dense_of(pattern_of(f, shape)), expected)


def test_colours_are_few():
    assert color_columns(pattern_of(stencil3, (1000,)))[1] == 3
    assert color_columns(pattern_of(layer_norm, (16, 32)))[1] == 32
    assert color_columns(pattern_of(lambda x: jax.nn.softmax(x, axis=0), (16, 8)))[1] == 16


def test_greedy_colouring_is_valid_and_small(key):
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(40), 3)
    cols = rng.integers(0, 60, rows.size)
    p = Pattern.from_coo(rows, cols, 40, 60)
    colors, k = color_columns(p)
    assert is_valid_coloring(p, colors)
    assert k < 30


def test_matmul_is_dense_over_contracted_dimensions():
    p = pattern_of(lambda x: x @ x, (4, 4))
    expected = np.zeros((4, 4, 4, 4), bool)  # out[i, j] <- x[i, :] and x[:, j]
    for i in range(4):
        for j in range(4):
            expected[i, j, i, :] = expected[i, j, :, j] = True
    assert np.array_equal(dense_of(p), expected.reshape(16, 16))
    result = detect_pattern(lambda t: t * jnp.sum(t**2), 16, jnp.float32)
    assert isinstance(result, str) and "structurally dense" in result


def test_control_flow_is_conservative(key):
    def scanned(x):
        return jax.lax.scan(lambda c, xi: (c + xi, c * xi), 0.0, x)[1]

    def branched(x):
        return jax.lax.cond(x[0] > 0, lambda z: z * 2, lambda z: z[::-1], x)

    scan = detect_pattern(scanned, 6, jnp.float32)
    assert isinstance(scan, str)  # the union over iterations: every output on every input
    cond = pattern_of(branched, (6,))
    expected = np.eye(6, dtype=bool) | np.eye(6, dtype=bool)[::-1]
    assert np.array_equal(dense_of(cond), expected)  # union of the branches
    assert not np.any(true_structure(branched, (6,), key) & ~expected)


def test_custom_vjp_uses_the_primal_not_the_rule():
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (f(x), x), lambda x, g: (g * jnp.cos(x).sum(),))  # a dense (wrong) rule
    assert np.array_equal(dense_of(pattern_of(f, (5,))), np.eye(5, dtype=bool))


def test_unknown_primitive_is_conservative():
    p = pattern_of(lambda x: jnp.concatenate([jnp.fft.fft(x[:4]).real, x[4:]]), (8,))
    expected = np.zeros((8, 8), bool)
    expected[:4, :4] = True
    expected[4:, 4:] = np.eye(4, dtype=bool)
    assert np.array_equal(dense_of(p), expected)
    assert "fft" in p.conservative


def test_large_patterns_are_cheap():
    p = pattern_of(lambda x: jnp.sin(x) * x, (10**6,))
    assert color_columns(p)[1] == 1
    row_wise = pattern_of(lambda x: jax.nn.softmax(x, axis=-1), (512, 1024))
    assert row_wise.nnz == 512 * 1024 * 1024
    assert color_columns(row_wise)[1] == 1024


# -- grouped finite differences ------------------------------------------------------


def problem(kind, f, x, **options):
    defaults = dict(
        argnums=None, mode="full", eps=None, rtol=None, atol=None, batch_size=None, seed=0,
        reference="auto", has_aux=False, locate_rules=False,
    )  # fmt: skip
    return build_problem(kind, f, (x,), **{**defaults, **options})


def test_grouped_differences_equal_dense_ones(key):
    W = jax.random.normal(key, (5, 3))
    x = jax.random.normal(jax.random.fold_in(key, 1), (6, 5))
    p = problem("jvp", lambda x: jnp.tanh(x @ W) * x[:, :3] + jnp.roll(x, 1, axis=0)[:, :3], x)
    pattern = problem_pattern(p)
    colors, k = color_columns(pattern)
    assert k < p.n
    ev = p.ev
    P = stencil_points(ev.theta, p.h, ev.coord_dtype_codes, ev.real_dtypes)

    def grouped(groups: np.ndarray, ids: np.ndarray) -> np.ndarray:
        with ev.context():
            out = jax.jit(grouped_values, static_argnums=0)(
                ev.spec, ev.theta_device, ev.dynamic, jnp.asarray(groups, jnp.int32),
                jnp.asarray(P), jnp.asarray(ids, jnp.int32),
            )  # fmt: skip
        return np.asarray(out, np.float64)

    alone = grouped(np.arange(p.n), np.arange(p.n))  # every column its own group
    dense = st.combine_host(alone, ev.f0, P, ev.theta)
    ids = np.where(np.arange(p.n) < k, np.arange(p.n), -1)  # same shape: no new compilation
    together = grouped(colors, ids)[:k]
    structure = dense_of(pattern)
    for j in range(p.n):
        est = st.combine_host(together[colors[j]][None], ev.f0, P[j][None], ev.theta[j : j + 1])
        rows = structure[:, j]
        assert np.allclose(est.numeric[0, rows], dense.numeric[j, rows], rtol=1e-7, atol=1e-9)
        assert np.all(np.abs(dense.numeric[j, ~rows]) <= 1e-9)


def test_colours_stay_inside_input_leaves():
    # out = a * b (elementwise): one colour would do for both leaves together; per leaf,
    # each leaf gets its own colour, so a colour group's entries are all one block's.
    rows = np.concatenate([np.arange(4), np.arange(4)])
    pattern = Pattern.from_coo(rows, np.concatenate([np.arange(4), 4 + np.arange(4)]), 4, 8)
    colors, leaf_of_color = color_by_leaf(pattern, [(0, 4), (4, 8)])
    assert colors.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert leaf_of_color.tolist() == [0, 1]
    assert is_valid_coloring(pattern, colors)


# -- the sparse strategy --------------------------------------------------------------


def sparse_result(kind, f, x, pattern=None, **options):
    p = problem(kind, f, x, **options)
    acc, source, summary = run_sparse(p, pattern=pattern)
    if acc is None:
        return None, source, summary
    blocks = [acc.report(i, o) for i in range(p.n_in) for o in range(p.n_out)]
    return finish(p, blocks, "full", acc.relative_error(), source), source, summary


def rule(primal, derivative_vjp):
    f = jax.custom_vjp(primal)
    f.defvjp(lambda x: (primal(x), x), lambda x, g: (derivative_vjp(x, g),))
    return f


def wrong_at(x, index, factor=1.5):
    """1 everywhere but `index`, where `factor`: one wrong entry per row of the bwd's output."""
    return jnp.ones(x.shape).at[index].set(factor)


def stencil_vjp(x, g):
    out = jnp.zeros_like(x)
    out = out.at[2:].add(g).at[:-2].add(g)
    return out.at[1:-1].add(-4 * x[1:-1] * g)


def layer_norm_vjp(x, g):
    return jax.vjp(layer_norm, x)[1](g)[0]


RULES = {
    "elementwise": (jnp.sin, lambda x, g: g * jnp.cos(x), (200,)),
    "banded": (stencil3, stencil_vjp, (60,)),
    "row-wise": (layer_norm, layer_norm_vjp, (6, 16)),
}


@pytest.mark.parametrize("name", list(RULES), ids=str)
def test_correct_rules_pass(name, key):
    primal, vjp, shape = RULES[name]
    x = jax.random.normal(key, shape)
    result, source, summary = sparse_result("vjp", rule(primal, vjp), x)
    assert result is not None, source
    assert result.status == "passed", str(result)
    assert summary.used and summary.n_colors < x.size / 4
    assert "colour groups" in result.analytic_source


@pytest.mark.parametrize(
    ("name", "flat_index", "where"),
    [
        ("elementwise", 17, "[17] -> [17]"),
        ("banded", 31, "[31] -> "),
        ("row-wise", 37, "[2,5] -> [2,"),
    ],
    ids=str,
)
def test_one_wrong_entry_of_the_bwd_is_named(name, flat_index, where, key):
    primal, vjp, shape = RULES[name]
    x = jax.random.normal(key, shape)
    index = np.unravel_index(flat_index, shape)

    def broken(x, g):
        return vjp(x, g) * wrong_at(x, index)

    bad = rule(primal, broken)
    result, source, summary = sparse_result("vjp", bad, x)
    assert result is not None, source
    assert result.status == "failed"
    block = result.blocks[0]
    assert block.n_failed >= 1
    assert re.search(re.escape(where), str(result)), str(result)


def test_jvp_elementwise_is_cheap(key):
    x = jax.random.normal(key, (10**3,))
    result, source, summary = sparse_result("jvp", jnp.tanh, x)
    assert result.status == "passed"
    assert summary.n_colors == 1
    assert result.n_evaluations <= 200


def test_too_sparse_pattern_is_caught():
    x = jnp.linspace(-1.0, 1.0, 40)
    f = rule(stencil3, stencil_vjp)
    wrong = Pattern.from_coo(np.arange(38), np.arange(38) + 1, 38, 40)  # the diagonal only
    result, reason, summary = sparse_result("vjp", f, x, pattern=wrong)
    assert result is None
    assert not summary.used
    assert "too sparse" in reason or "misses entries" in reason
    assert "dense check instead" in reason


def test_missing_entry_inside_a_colour_is_caught():
    x = jnp.linspace(-1.0, 1.0, 40)
    f = rule(stencil3, stencil_vjp)
    rows, cols = np.repeat(np.arange(38), 2), (np.arange(38)[:, None] + np.array([0, 1])).ravel()
    result, reason, _ = sparse_result("vjp", f, x, pattern=Pattern.from_coo(rows, cols, 38, 40))
    assert result is None
    assert "dense check instead" in reason


def test_dense_functions_fall_back_with_a_reason():
    x = jnp.linspace(-1.0, 1.0, 8)
    result, reason, summary = sparse_result("jvp", lambda x: x * jnp.sum(x**2), x)
    assert result is None
    assert "dense" in reason and not summary.used


def two_leaf(a, b):
    return {"prod": a * b, "mix": jnp.tanh(a) + b[::-1] ** 2}


def two_leaf_vjp_factory(broken_index=None):
    def bwd(res, g):
        a, b = res
        ga = g["prod"] * b + g["mix"] * (1 - jnp.tanh(a) ** 2)
        gb = g["prod"] * a + (2 * b[::-1] * g["mix"])[::-1]
        if broken_index is not None:
            gb = gb * jnp.ones(b.shape).at[broken_index].set(1.5)
        return ga, gb

    f = jax.custom_vjp(two_leaf)
    f.defvjp(lambda a, b: (two_leaf(a, b), (a, b)), bwd)
    return f


def test_several_leaves_each_block_checked(key):
    a, b = jax.random.normal(key, (2, 80))
    good = sparse_result_args("vjp", two_leaf_vjp_factory(), (a, b))
    assert good.status == "passed", str(good)
    assert len(good.blocks) == 4 and all(block.n_checked > 0 for block in good.blocks)
    assert {block.n_checked for block in good.blocks} == {80}
    bad = sparse_result_args("vjp", two_leaf_vjp_factory(broken_index=5), (a, b))
    assert bad.status == "failed"
    failed = [block.path for block in bad.blocks if block.status == "failed"]
    # b's cotangent is wrong at [5]: both of b's blocks, each at its one entry of column 5.
    assert failed == ["args[1] -> out['mix']", "args[1] -> out['prod']"], str(bad)
    assert {block.worst.output_index for block in bad.failed_blocks} == {(74,), (5,)}


def sparse_result_args(kind, f, args):
    defaults = dict(
        argnums=None, mode="full", eps=None, rtol=None, atol=None, batch_size=None, seed=0,
        reference="auto", has_aux=False, locate_rules=False,
    )  # fmt: skip
    p = build_problem(kind, f, args, **defaults)
    acc, source, summary = run_sparse(p)
    assert acc is not None, source
    blocks = [acc.report(i, o) for i in range(p.n_in) for o in range(p.n_out)]
    return finish(p, blocks, "full", acc.relative_error(), source)


def test_compiled_comparison_agrees_with_host_comparison(key, monkeypatch):
    primal, vjp, shape = RULES["row-wise"]
    x = jax.random.normal(key, shape)
    index = np.unravel_index(37, shape)
    bad = rule(primal, lambda x, g: vjp(x, g) * wrong_at(x, index))
    host, _, host_summary = sparse_result("vjp", bad, x)
    monkeypatch.setattr(_sparse, "HOST_SLOTS", 0)  # the compiled `ComparePass`
    compiled, _, compiled_summary = sparse_result("vjp", bad, x)
    assert compiled.status == host.status == "failed"
    assert compiled_summary.n_evaluations == host_summary.n_evaluations
    for one, other in zip(host.blocks, compiled.blocks):
        assert (one.n_checked, one.n_failed, one.n_unresolved) == (
            other.n_checked,
            other.n_failed,
            other.n_unresolved,
        )
        worst, other_worst = one.worst, other.worst  # the same entry, same values to rounding
        assert (worst.input_index, worst.output_index) == (
            other_worst.input_index,
            other_worst.output_index,
        )
        assert worst.analytic == other_worst.analytic
        assert worst.numeric == pytest.approx(other_worst.numeric, rel=1e-9)
        assert one.relative_error == pytest.approx(other.relative_error, rel=1e-9)


def test_untransposable_bwd_falls_back_with_the_reason():
    # A bwd that squares its cotangent is not linear: jax.linear_transpose cannot transpose
    # it, so the sparse plan (which needs the transposed columns) hands over to the dense
    # check's rows plan, saying why.
    f = rule(jnp.sin, lambda x, g: g * g * jnp.cos(x))
    x = jnp.linspace(-1.0, 1.0, 50)
    result, reason, summary = sparse_result("vjp", f, x)
    assert result is None and not summary.used
    assert reason.startswith("the VJP cannot be transposed")
