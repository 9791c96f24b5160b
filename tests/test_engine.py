"""The finite-difference engine: compiled-code reuse, bounded chunks, determinism."""

import logging
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck import _engine
from jaxcheck import _finite_diff as fd
from jaxcheck._flatten import build_layout
from jaxcheck._problem import _scalar_output


def counting_loss(counter: list[int]):
    """A small MLP loss whose every trace (never an eager call) bumps `counter[0]`."""

    def loss(params, x):
        if isinstance(params["w"], jax.core.Tracer):
            counter[0] += 1
        hidden = jnp.tanh(x @ params["w"] + params["b"][None, :])
        return jnp.sum(hidden**2) / x.shape[0]

    return loss


def mlp_point(key, dtype, scale=1.0):
    kw, kb, kx = jax.random.split(key, 3)
    params = {
        "w": (scale * jax.random.normal(kw, (4, 3))).astype(dtype),
        "b": (0.1 * scale * jax.random.normal(kb, (3,))).astype(dtype),
    }
    return params, jax.random.normal(kx, (5, 4)).astype(dtype)


def evaluator(f, args, reference="native"):
    layout, diff, dynamic = build_layout(args, (0,))
    return _engine.Evaluator(
        f, False, layout, diff, dynamic, reference, _scalar_output(f, args, False)[1], 0
    )


def without_seconds(result):
    data = result.to_dict()
    data.pop("seconds")
    return data


@pytest.fixture
def jitted(monkeypatch):
    """Runs small problems through the jitted kernels (as large ones are), not op by op."""
    monkeypatch.setattr(_engine, "EAGER_MAX_COORDINATES", 0)


def compiled_messages(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("Finished XLA compilation")
    ]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
def test_small_check_of_a_fresh_function_compiles_nothing(key, caplog, dtype):
    """Small problems run op by op: JAX's per-primitive cache serves a new function of the
    same shapes, so a parametrised test suite pays no compilation per test case."""

    def make(scale):
        def loss(params, x):
            return jnp.sum(jnp.tanh(x @ params["w"] * scale + params["b"][None, :]) ** 2)

        return loss

    with jax.enable_x64(dtype == jnp.float64):
        args = mlp_point(key, dtype)
        assert jaxcheck.check_grad(make(1.0), args).passed
        assert jaxcheck.check_vjp(lambda p, x: make(1.0)(p, x) * x, args).passed
        with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
            assert jaxcheck.check_grad(make(2.0), args).passed
            assert jaxcheck.check_vjp(lambda p, x: make(2.0)(p, x) * x, args).passed
    assert compiled_messages(caplog) == []


@pytest.mark.parametrize("batch_size", [None, 4], ids=["one_chunk", "chunked"])
@pytest.mark.parametrize("reference", ["auto", "native"])
def test_second_check_at_new_values_reuses_the_compiled_kernels(
    key, caplog, reference, batch_size, jitted
):
    counter = [0]
    loss = counting_loss(counter)
    k1, k2 = jax.random.split(key)
    first = jaxcheck.check_grad(
        loss, mlp_point(k1, jnp.float32), reference=reference, batch_size=batch_size
    )
    traces = counter[0]
    args = mlp_point(k2, jnp.float32, scale=2.0)
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
        second = jaxcheck.check_grad(loss, args, reference=reference, batch_size=batch_size)
    assert first.passed and second.passed
    assert traces > 0
    assert counter[0] == traces, (
        f"f was traced {counter[0] - traces} more times for new values of the same shapes"
    )
    assert compiled_messages(caplog) == []


def test_second_check_in_float64_reuses_the_compiled_kernels(key, jitted):
    counter = [0]
    loss = counting_loss(counter)
    k1, k2 = jax.random.split(key)
    with jax.enable_x64(True):
        assert jaxcheck.check_grad(loss, mlp_point(k1, jnp.float64)).passed
        traces = counter[0]
        assert jaxcheck.check_grad(loss, mlp_point(k2, jnp.float64, scale=0.5)).passed
    assert counter[0] == traces


def test_progress_path_reuses_the_compiled_kernels(key, jitted):
    counter = [0]
    loss = counting_loss(counter)
    k1, k2 = jax.random.split(key)
    calls = []
    jaxcheck.check_grad(
        loss,
        mlp_point(k1, jnp.float32),
        batch_size=4,
        progress=lambda done, total: calls.append((done, total)),
    )
    traces = counter[0]
    jaxcheck.check_grad(
        loss,
        mlp_point(k2, jnp.float32),
        batch_size=4,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert counter[0] == traces
    assert calls[-1] == (15, 15) and all(done <= total for done, total in calls)


def test_auto_batch_size_shrinks_as_n_grows_and_bounds_the_chunk():
    def loss(x):
        return jnp.sum(jnp.sin(x) * x)

    batches = []
    for n in (16, 1024, 16384, 262144):
        ev = evaluator(loss, (jnp.linspace(-1.0, 1.0, n),))
        batch = ev.auto_batch_size(len(fd.STENCIL))
        batches.append(batch)
        assert 1 <= batch <= _engine.MAX_BATCH
        # The perturbed copies of theta alone: bounded by the budget (one coordinate always allowed).
        chunk_bytes = batch * len(fd.STENCIL) * n * np.dtype(ev.theta_dtype).itemsize
        assert batch == 1 or chunk_bytes <= _engine.CHUNK_BUDGET_BYTES
    assert batches == sorted(batches, reverse=True)
    assert batches[-1] < batches[0]


@pytest.mark.parametrize("batch_size", [None, 1, 7])
@pytest.mark.parametrize("with_progress", [False, True])
def test_values_at_coordinates_never_sees_more_than_a_chunk(monkeypatch, batch_size, with_progress):
    seen = []
    kernel = fd.values_at_coordinates

    def spy(spec, theta, dynamic, coords, points):
        seen.append(int(coords.shape[0]))
        return kernel(spec, theta, dynamic, coords, points)

    monkeypatch.setattr(fd, "values_at_coordinates", spy)

    def loss(x):  # a fresh function: nothing cached, so every kernel is traced and seen
        return jnp.sum(jnp.cos(x) * x)

    n = 4096
    ev = evaluator(loss, (jnp.linspace(-1.0, 1.0, n),))
    limit = batch_size or ev.auto_batch_size(len(fd.STENCIL))
    assert limit < n  # the automatic chunk does not take all coordinates at this size
    coords = np.arange(0, n, 97)  # 43 coordinates
    progress = (lambda done, total: None) if with_progress else None
    values, points = ev.stencil(coords, ev.steps(None)[coords], batch_size, progress)
    assert values.shape == (coords.size, len(fd.STENCIL), 1) and points.shape == (
        coords.size,
        len(fd.STENCIL),
    )
    assert seen and max(seen) <= limit


def broken_softplus():
    @jax.custom_vjp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    def fwd(x):
        return softplus(x), x

    def bwd(x, g):
        return (g * jax.nn.sigmoid(-x),)  # wrong sign inside: sigmoid(-x)

    softplus.defvjp(fwd, bwd)
    return softplus


def verdicts(result):
    """Everything a verdict consists of: statuses, counts, worst elements and their kinds."""
    return (
        result.status,
        tuple(
            (
                leaf.path,
                leaf.status,
                leaf.n_failed,
                leaf.n_nonsmooth,
                leaf.n_nonfinite,
                leaf.worst_index,
                tuple((e.index, e.kind) for e in leaf.elements),
            )
            for leaf in result.leaves
        ),
    )


def assert_same_up_to_rounding(result, reference):
    """Same verdicts; each reported numeric value within its element's tolerance of the other run's.

    XLA compiles the vmapped f differently for different chunk widths (on CPU a reduction
    is vectorised differently from 128 evaluations per chunk on), so f's last bits, and
    after division by the step the reference's rounding noise, may differ between batch sizes.
    """
    assert verdicts(result) == verdicts(reference)
    jax.tree.map(
        np.testing.assert_array_equal, result.analytic, reference.analytic
    )  # never batched
    for leaf, ref_leaf in zip(result.leaves, reference.leaves):
        for e, ref_e in zip(leaf.elements, ref_leaf.elements):
            assert abs(e.numeric - ref_e.numeric) <= ref_e.tolerance


@pytest.mark.parametrize("batch_size", [1, 2, 5, 16, 64])
def test_passing_check_agrees_for_every_batch_size(key, batch_size):
    loss = counting_loss([0])
    args = mlp_point(key, jnp.float32)
    reference = jaxcheck.check_grad(loss, args)
    assert_same_up_to_rounding(jaxcheck.check_grad(loss, args, batch_size=batch_size), reference)


def broken_op_check(key, **kwargs):
    softplus = broken_softplus()

    def loss(x, w):
        return jnp.sum(w * softplus(x))

    kx, kw = jax.random.split(key)
    args = (jax.random.normal(kx, (37,)), jax.random.uniform(kw, (37,)))
    return jaxcheck.check_grad(loss, args, reference="native", **kwargs)


@pytest.fixture(scope="module")
def failing_reference():
    """The failing check in one chunk (automatic batch size), shared by the batch sizes below.

    `locate_rules=False` here and below: the diagnosis a failed check appends re-checks the
    rule after the verdict, never changes it, and is not part of `verdicts` (test_rules and
    the bit-identical test below cover it).
    """
    key = jax.random.key(zlib.crc32(b"test_failing_check_agrees_for_every_batch_size"))
    reference = broken_op_check(key, locate_rules=False)
    assert reference.status == "failed"
    return key, reference


@pytest.mark.parametrize("batch_size", [1, 3, 8, 32, 64])
def test_failing_check_agrees_for_every_batch_size(failing_reference, batch_size):
    key, reference = failing_reference
    result = broken_op_check(key, batch_size=batch_size, locate_rules=False)
    assert_same_up_to_rounding(result, reference)


@pytest.mark.parametrize("batch_size", [None, 5])
def test_reports_are_bit_identical_across_runs(key, batch_size):
    loss = counting_loss([0])
    args = mlp_point(key, jnp.float32)
    first = without_seconds(jaxcheck.check_grad(loss, args, batch_size=batch_size))
    assert without_seconds(jaxcheck.check_grad(loss, args, batch_size=batch_size)) == first
    assert (
        without_seconds(jaxcheck.check_grad(counting_loss([0]), args, batch_size=batch_size))
        == first
    )  # fresh compile
    assert (
        without_seconds(
            jaxcheck.check_grad(
                loss, args, batch_size=batch_size, progress=lambda done, total: None
            )
        )
        == first
    )
    failing = without_seconds(broken_op_check(key, batch_size=batch_size))
    assert without_seconds(broken_op_check(key, batch_size=batch_size)) == failing


@pytest.mark.parametrize("check", ["grad", "vjp", "jvp"])
def test_a_float64_evaluation_failing_mid_check_falls_back_to_native(check, monkeypatch):
    # JAX can fail a float64 evaluation partway through a check (a compiled pure_callback
    # recorded for float32 operands: JAX's sparse spsolve in JAX's own test suite): the
    # check finishes in the native dtypes and says why, instead of raising JAX's error.
    real = _engine.Evaluator.stencil

    def failing(self, *a, **k):
        if self.reference.x64:
            raise jax.errors.JaxRuntimeError("INTERNAL: CpuCallback error calling callback")
        return real(self, *a, **k)

    monkeypatch.setattr(_engine.Evaluator, "stencil", failing)
    x = jnp.linspace(0.5, 1.5, 5, dtype=jnp.float32)
    run, f = (
        (jaxcheck.check_grad, lambda v: jnp.sum(jnp.sin(v)))
        if check == "grad"
        else (
            getattr(jaxcheck, f"check_{check}"),
            jnp.sin,
        )
    )
    result = run(f, (x,), mode="full")
    assert result.status == "passed", str(result)
    assert "failed during the check (JaxRuntimeError: INTERNAL" in result.reference_fallback
    assert result.reference.startswith("native float32")
    with pytest.raises(Exception, match="CpuCallback"):  # float64 asked for: no fallback
        run(f, (x,), mode="full", reference="float64")
