"""check_vjp / check_jvp in full mode: verdicts both ways, blocks named, complex convention, misuse."""

import json
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import vjp_mutant

import jaxcheck
from jaxcheck import _engine, _jacobian_full, _jacobian_kernels
from jaxcheck._flatten import build_layout, ravel_output, unravel

DTYPES = [jnp.float32, jnp.float64]


def _layer(params, x, n_steps):
    """A pytree -> pytree function with an integer leaf in (n_steps) and out ("count")."""
    h = jnp.tanh(params["W"] @ x + params["b"])
    return {"y": h * n_steps, "z": jnp.sum(x**2) + params["b"][0], "count": n_steps + 1}


def _inputs(key, dtype):
    k1, k2 = jax.random.split(key)
    params = {
        "W": jax.random.normal(k1, (3, 4), dtype),
        "b": jnp.linspace(-0.5, 0.5, 3).astype(dtype),
    }
    return params, jax.random.normal(k2, (4,), dtype), jnp.asarray(2, jnp.int32)


def _ctx(dtype):
    return jax.enable_x64(True) if dtype == jnp.float64 else jax.enable_x64(False)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("check", [jaxcheck.check_vjp, jaxcheck.check_jvp], ids=["vjp", "jvp"])
def test_correct_pytree_function_passes(key, dtype, check):
    with _ctx(dtype):
        args = _inputs(key, dtype)
        r = check(_layer, args)  # mode="auto": a small Jacobian is checked in full
    assert r.status == "passed", str(r)
    assert r.mode == "full"
    paths = {b.path for b in r.blocks}
    assert paths == {
        f"{i} -> {o}"
        for i in ("args[0]['W']", "args[0]['b']", "args[1]")
        for o in ("out['y']", "out['z']")
    }
    skipped = {s.path for s in r.skipped}
    assert skipped == {"args[2]", "out['count']"}
    assert r.block("args[0]['W']", "out['y']").n_checked == 12 * 3
    assert r.n_inputs == 19 and r.n_outputs == 4


# -- broken rules: the right block is named --------------------------------------------


def _matvec(bwd_w, bwd_x):
    @jax.custom_vjp
    def f(W, x):
        return W @ x

    f.defvjp(lambda W, x: (W @ x, (W, x)), lambda res, g: (bwd_w(res, g), bwd_x(res, g)))
    return f


GOOD_W = lambda res, g: jnp.outer(g, res[1])  # noqa: E731
GOOD_X = lambda res, g: res[0].T @ g  # noqa: E731


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_transposed_matrix_in_bwd_fails_naming_the_input_leaf(key, dtype):
    with _ctx(dtype):
        W = jax.random.normal(key, (4, 4), dtype)
        x = jnp.linspace(-1, 1, 4).astype(dtype)
        assert jaxcheck.check_vjp(_matvec(GOOD_W, GOOD_X), (W, x), mode="full").passed
        with pytest.raises(jaxcheck.GradCheckError, match=re.escape("args[1] -> out")) as info:
            jaxcheck.assert_vjp_correct(
                _matvec(GOOD_W, lambda res, g: res[0] @ g), (W, x), mode="full"
            )
    r = info.value.result  # what `check_vjp` returns, raised by its assert twin
    assert r.status == "failed"
    assert [b.path for b in r.failed_blocks] == ["args[1] -> out"]
    assert r.block("args[0]", "out").passed
    bad = r.blocks[0]
    i, j = bad.worst.input_index[0], bad.worst.output_index[0]
    assert i != j  # a transposed matrix is wrong off the diagonal
    assert bad.worst.analytic == pytest.approx(float(W[i, j]), rel=1e-5)
    assert bad.worst.numeric == pytest.approx(float(W[j, i]), rel=1e-5)


def _two_outputs(scale_a, scale_b, bug_b):
    """f(x) = {"a": scale_a * sin(x), "b": scale_b * x**2}, bwd bug on the "b" cotangent."""

    @jax.custom_vjp
    def f(x):
        return {"a": scale_a * jnp.sin(x), "b": scale_b * x**2}

    def bwd(x, g):
        return (scale_a * jnp.cos(x) * g["a"] + bug_b * scale_b * 2 * x * g["b"],)

    f.defvjp(lambda x: (f(x), x), bwd)
    return f


def test_sign_error_on_one_output_leaf_names_that_leaf():
    x = jnp.linspace(0.1, 1.0, 5)
    assert jaxcheck.check_vjp(_two_outputs(1.0, 1.0, 1.0), (x,), mode="full").passed
    r = jaxcheck.check_vjp(_two_outputs(1.0, 1.0, -1.0), (x,), mode="full")
    assert [b.path for b in r.failed_blocks] == ["args[0] -> out['b']"]
    assert r.block("args[0]", "out['a']").passed
    assert "sign error" in " ".join(r.hints)


def test_lost_gradient_on_small_output_leaf_next_to_large_one():
    x = jnp.linspace(0.1, 1.0, 5)
    r = jaxcheck.check_vjp(_two_outputs(1e4, 1e-4, 0.0), (x,), mode="full")
    assert [b.path for b in r.failed_blocks] == ["args[0] -> out['b']"]
    worst = r.failed_blocks[0].worst
    assert worst.analytic == 0.0 and worst.numeric != 0.0


def test_bug_on_one_input_leaf_only(key):
    @jax.custom_vjp
    def affine(p, x):
        return jnp.tanh(p["W"] @ x + p["b"])

    def bwd(res, g):
        p, x = res
        d = g * (1 - jnp.tanh(p["W"] @ x + p["b"]) ** 2)
        return {"W": jnp.outer(d, x), "b": 1.1 * d}, p["W"].T @ d  # bug: 1.1 on b only

    affine.defvjp(lambda p, x: (affine(p, x), (p, x)), bwd)
    params, x, _ = _inputs(key, jnp.float32)
    r = jaxcheck.check_vjp(affine, (params, x), mode="full")
    assert [b.path for b in r.failed_blocks] == ["args[0]['b'] -> out"]
    assert "1.1" in " ".join(r.hints)


def test_custom_jvp_bug_fails_check_jvp():
    @jax.custom_jvp
    def f(x):
        return jnp.exp(x) * jnp.sin(x)

    f.defjvp(
        lambda p, t: (f(p[0]), jnp.exp(p[0]) * jnp.cos(p[0]) * t[0])
    )  # dropped the exp * sin term
    x = jnp.linspace(0.2, 1.0, 4)
    r = jaxcheck.check_jvp(f, (x,), mode="full")
    assert jaxcheck.check_jvp(lambda x: jnp.exp(x) * jnp.sin(x), (x,), mode="full").passed
    assert r.status == "failed" and r.blocks[0].n_failed == 4  # the diagonal


def test_bwd_ignoring_the_cotangent_is_caught_as_nonlinear():
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)), lambda c, g: (c,))  # forgot `* g`
    r = jaxcheck.check_vjp(f, (jnp.linspace(0.5, 1.5, 4),), mode="full")
    assert r.status == "failed"
    assert "zero cotangent is not zero" in r.reason
    assert "VJP rows" in r.analytic_source  # fell back to the rows plan
    assert any("linear in its cotangent" in h for h in r.hints)


# -- complex: JAX's convention in the real view ---------------------------------------


def _real_view_jacobian(f, z):
    """d real-view outputs / d real-view inputs by jax.jacfwd of the real-view function (float64)."""
    layout, _, _ = build_layout((z,), (0,))
    dtypes = (z.dtype,)
    return jax.jacfwd(lambda th: ravel_output(f(*unravel(layout, th, dtypes))))(
        jnp.concatenate([z.real, z.imag])
    )


@pytest.mark.parametrize(
    "f",
    [
        lambda z: z**2,
        lambda z: jnp.abs(z) ** 2,
        lambda z: jnp.stack([jnp.sin(z), 2 * jnp.conj(z) + z.real * z]),
    ],
    ids=["holomorphic", "real-valued", "nonholomorphic"],
)
def test_real_view_mapping_matches_jax_conventions(f):
    with jax.enable_x64(True):
        z = jnp.asarray([0.7 + 0.3j, -0.2 + 1.1j], jnp.complex128)
        J = np.asarray(_real_view_jacobian(f, z))
        layout, diff_values, dynamic = build_layout((z,), (0,))
        out = f(z)
        outs = (_jacobian_kernels.OutLeaf("out", out.shape, np.dtype(out.dtype), 0, J.shape[0]),)
        sel = _jacobian_kernels.OutputSelect(f, False, (0,))
        rows = np.asarray(
            _jacobian_kernels.vjp_rows(
                sel, layout, outs, diff_values, dynamic, jnp.arange(J.shape[0])
            )
        )
        cols = np.asarray(
            _jacobian_kernels.jvp_columns(
                sel, layout, outs, diff_values, dynamic, jnp.arange(J.shape[1])
            )
        )
    np.testing.assert_allclose(rows, J, atol=1e-12)
    np.testing.assert_allclose(cols.T, J, atol=1e-12)


def _square_with_bwd(conjugate):
    @jax.custom_vjp
    def sq(z):
        return z * z

    def bwd(z, g):
        d = 2 * z
        return (g * (jnp.conj(d) if conjugate else d),)

    sq.defvjp(lambda z: (z * z, z), bwd)
    return sq


def _abs2_with_bwd(conjugate):
    @jax.custom_vjp
    def abs2(z):
        return jnp.real(z * jnp.conj(z))

    def bwd(z, g):
        return (g * 2 * (jnp.conj(z) if conjugate else z),)

    abs2.defvjp(lambda z: (abs2(z), z), bwd)
    return abs2


def test_complex_functions_pass():
    z = jnp.asarray([0.7 + 0.3j, -0.2 + 1.1j, 0.4 - 0.5j], jnp.complex64)
    f = lambda z: {"sin": jnp.sin(z), "abs2": jnp.abs(z) ** 2, "mixed": jnp.conj(z) * z**2 + z.real}  # noqa: E731
    assert jaxcheck.check_vjp(f, (z,), mode="full").passed
    assert jaxcheck.check_jvp(f, (z,), mode="full").passed


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128], ids=lambda d: d.__name__)
def test_conjugation_bugs_fail(dtype):
    with _ctx(jnp.float64 if dtype == jnp.complex128 else jnp.float32):
        z = jnp.asarray([0.7 + 0.3j, -0.2 + 1.1j, 0.4 - 0.5j], dtype)
        # JAX convention for holomorphic z**2: vjp returns g * f'(z), no conjugate.
        assert jaxcheck.check_vjp(_square_with_bwd(conjugate=False), (z,), mode="full").passed
        bad = jaxcheck.check_vjp(_square_with_bwd(conjugate=True), (z,), mode="full")
        # For real f(z) = |z|**2: vjp returns g * (df/dx - i df/dy) = 2 g conj(z).
        assert jaxcheck.check_vjp(_abs2_with_bwd(conjugate=True), (z,), mode="full").passed
        bad2 = jaxcheck.check_vjp(_abs2_with_bwd(conjugate=False), (z,), mode="full")
    # Conjugating flips the sign of exactly the entries that mix real and imaginary parts.
    assert bad.status == "failed" and bad2.status == "failed"
    wrong = [e for e in bad.blocks[0].elements if e.kind == "mismatch"]
    assert wrong and all(e.input_part != e.output_part for e in wrong)
    assert {
        (e.input_part, e.output_part) for e in bad2.blocks[0].elements if e.kind == "mismatch"
    } == {("imag", "")}
    assert "conjugate" in " ".join(bad.hints)


# A real 4x4 matrix with two real eigenvalues and a complex pair (JAX's testEigGradRealInputs0).
_EIG_INPUT = np.array(
    [
        [2.824187, -2.7098029, 2.1498396, 0.48706248],
        [1.9126577, 2.7552464, -2.329518, 3.3294609],
        [-1.6899264, 7.6728125, -0.11910225, 7.4849062],
        [3.5821447, -2.7597349, -0.35363433, 5.7594724],
    ],
    np.float32,
)


def _eigen(a):
    w, v = jax.lax.linalg.eig(a, compute_left_eigenvectors=False, enable_eigvec_derivs=True)[:2]
    return w, v * v  # v * v: invariant under the sign LAPACK leaves free


@pytest.mark.parametrize(
    "check", [jaxcheck.check_jvp, jaxcheck.check_vjp], ids=lambda c: c.__name__
)
def test_exact_zero_imaginary_part_of_a_complex_output_is_not_a_false_alarm(check):
    # The imaginary part of a real eigenvalue has derivative exactly 0; float32 complex
    # arithmetic gives it eps times the real part's derivative (~1e-8). Its allowance follows
    # the complex entry's size (`complex_row_max`), not the imaginary row's own (~1e-8).
    result = check(_eigen, (jnp.asarray(_EIG_INPUT),))
    assert result.status == "passed", str(result)


def test_complex_row_max_shares_the_larger_maximum_of_the_two_parts():
    outs = (
        _jacobian_kernels.OutLeaf("out[0]", (2,), np.dtype(np.complex64), 0, 4),
        _jacobian_kernels.OutLeaf("out[1]", (1,), np.dtype(np.float32), 4, 1),
    )
    leaf_max = np.array([[1.0, 0.0, 1e-8, 3.0, 5.0]])
    paired = _jacobian_kernels.complex_row_max(outs, leaf_max)
    assert paired.tolist() == [[1.0, 3.0, 1.0, 3.0, 5.0]]
    assert leaf_max.tolist() == [[1.0, 0.0, 1e-8, 3.0, 5.0]]  # not mutated


def test_a_wrong_imaginary_part_of_a_complex_output_still_fails():
    # exp(i x): the JVP's imaginary part cos(x) scaled by 1 + 1e-3, and a spurious imaginary
    # part on an output whose true one has derivative 0 (|z|**2 as a complex number).
    @jax.custom_jvp
    def f(x):
        return jnp.exp(1j * x), (x * x).astype(jnp.complex64)

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        d_phase = (-jnp.sin(x) + 1j * jnp.cos(x) * (1 + 1e-3)) * t
        d_square = (2 * x + 1j * 1e-3 * x) * t
        return f(x), (d_phase, d_square.astype(jnp.complex64))

    x = jnp.asarray([0.3, 1.2, -0.7], jnp.float32)
    result = jaxcheck.check_jvp(f, (x,))
    assert result.status == "failed", str(result)
    assert {b.output_path for b in result.failed_blocks} == {"out[0]", "out[1]"}, str(result)


# -- non-smooth, non-finite, determinism ------------------------------------------------


def test_kink_is_accepted_between_one_sided_slopes():
    x = jnp.asarray([-1.0, 0.0, 2.0])
    r = jaxcheck.check_vjp(jax.nn.relu, (x,), mode="full")
    assert r.status == "passed", str(r)
    assert r.blocks[0].n_nonsmooth == 1


def test_analytic_nan_fails_and_nonfinite_value_is_inconclusive():
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(
        lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x) / (x - 1.0),)
    )  # NaN/Inf at x = 1
    r = jaxcheck.check_vjp(f, (jnp.asarray([1.0, 2.0]),), mode="full")
    assert r.status == "failed"
    assert any(e.kind == "analytic-nonfinite" for e in r.blocks[0].elements)
    r = jaxcheck.check_jvp(lambda x: jnp.log(x), (jnp.asarray([0.0, 2.0]),), mode="full")
    assert r.status == "inconclusive"


def test_nondeterministic_function_is_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="not deterministic"):
        jaxcheck.check_vjp(lambda x: x * rng.normal(), (jnp.ones(2),))


# -- misuse ---------------------------------------------------------------------------------


def test_misuse_errors_name_the_argument():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="`mode`"):
        jaxcheck.check_vjp(jnp.sin, (x,), mode="fast")
    with pytest.raises(ValueError, match="`n_probes`"):
        jaxcheck.check_vjp(jnp.sin, (x,), n_probes=0)
    with pytest.raises(TypeError, match="`args` must be a tuple"):
        jaxcheck.check_vjp(jnp.sin, x)
    with pytest.raises(ValueError, match="no floating-point outputs"):
        jaxcheck.check_vjp(lambda x: jnp.argmax(x), (x,))
    with pytest.raises(TypeError, match="has_aux"):
        jaxcheck.check_vjp(jnp.sin, (x,), has_aux=True)
    with pytest.raises(TypeError, match="check_vjp"):
        jaxcheck.check_jvp(_two_outputs(1.0, 1.0, 1.0), (x,))


def test_has_aux_and_argnums(key):
    params, x, n = _inputs(key, jnp.float32)
    r = jaxcheck.check_jvp(
        lambda p, x: (jnp.tanh(p["W"] @ x), {"aux": "ignored"}),
        (params, x),
        argnums=1,
        has_aux=True,
    )
    assert r.passed and {b.input_path for b in r.blocks} == {"args[1]"}


# -- results -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transposed_x():
    """A failing full check (the bwd transposes W for x's cotangent) and its arguments:
    one run, read by the report test and compared with the device-side comparison."""
    W = jax.random.normal(jax.random.key(zlib.crc32(b"transposed_x")), (3, 3))
    f = _matvec(GOOD_W, lambda res, g: res[0] @ g)
    return f, (W, jnp.ones(3)), jaxcheck.check_vjp(f, (W, jnp.ones(3)), mode="full")


def test_report_and_json(transposed_x):
    _, _, r = transposed_x
    text = str(r)
    assert text.splitlines()[0].startswith(
        "FAILED: check_vjp(f): 1 of 2 blocks wrong: args[1] -> out"
    )
    assert "input -> output" in text and "mode full, seed 0" in text
    data = json.loads(r.to_json())
    assert (
        data["status"] == "failed"
        and data["kind"] == "vjp"
        and data["blocks"][0]["path"] == "args[1] -> out"
    )
    assert data["blocks"][0]["worst"]["kind"] == "mismatch"


def test_device_and_host_comparisons_agree(monkeypatch, transposed_x):
    f, args, host = transposed_x  # small: compared on the host
    monkeypatch.setattr(_jacobian_full, "HOST_ENTRIES", 0)
    device = jaxcheck.check_vjp(f, args, mode="full")
    assert [(b.path, b.status, b.n_failed, b.worst.where) for b in host.blocks] == [
        (b.path, b.status, b.n_failed, b.worst.where) for b in device.blocks
    ]
    assert host.relative_error == pytest.approx(device.relative_error, rel=1e-9)


def test_compiled_code_is_reused_at_new_arguments(key, monkeypatch):
    monkeypatch.setattr(_engine, "EAGER_MAX_COORDINATES", 0)  # the jitted path, as for large n
    traces = []

    def f(p, x):
        if isinstance(x, jax.core.Tracer):
            traces.append(1)
        return {"y": jnp.tanh(p["W"] @ x + p["b"]), "z": jnp.sum(x**2)}

    params, x, _ = _inputs(key, jnp.float32)
    for check, mode in (
        (jaxcheck.check_vjp, "full"),
        (jaxcheck.check_jvp, "full"),
        (jaxcheck.check_vjp, "probe"),
        (jaxcheck.check_jvp, "probe"),
    ):
        # The dense kernels; the sparse plan re-traces f to read its pattern (no compilation).
        # Both points once (a float64 second look at entries that lose digits to float32
        # rounding compiles its kernels the first time it is needed), then both again.
        points = [(params, x), (jax.tree.map(lambda a: a * 1.5 + 0.1, params), x - 0.3)]
        for args in points:
            check(f, args, mode=mode, sparse=False)
        count = len(traces)
        for p, y in points:
            check(f, (jax.tree.map(lambda a: a * 0.999, p), y * 0.999), mode=mode, sparse=False)
        assert len(traces) == count, f"{check.__name__} mode={mode} retraced"


@pytest.mark.parametrize("on_device", [False, True], ids=["host-tiles", "device-tiles"])
@pytest.mark.parametrize("factor", [1.0, 1 + 1e-8, 1 - 1e-8], ids=["right", "plus", "minus"])
def test_the_retake_takes_the_higher_order_look(factor, on_device, monkeypatch):
    # atan at x = 1000 in float64 (test_steps has the check_grad twin): the tile is
    # noise-bound at h and retaken at 16 h, 256 h and 512 h; the last bounds the 256 h
    # estimate's own error and resolves a VJP wrong by a relative 1e-8.
    if on_device:
        monkeypatch.setattr(_jacobian_full, "HOST_ENTRIES", 0)
    with jax.enable_x64(True):
        result = jaxcheck.check_vjp(vjp_mutant(jax.lax.atan, factor), (jnp.float64(1000.0),))
    assert "took the stencil at twice their largest step" in result.step_policy
    assert result.status == ("passed" if factor == 1.0 else "failed"), str(result)
