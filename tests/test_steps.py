"""The ladder of steps (`jaxcheck._steps`): coordinates move up only while it pays, leaves of
large problems start on the rung their calibration sample chose, and neither hides a bug."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck import _engine, _grad_full, _steps

N_LARGE = 600  # above _grad_full.TWO_POINT_MIN: the calibrated two-point path


def _sum_loss(n: int):
    """A sum of n softplus terms: f rounds like |f| ~ n, far coarser than one term moves it,
    so the default step is noise-bound and 16 h resolves the derivative better."""
    w = jnp.linspace(0.5, 1.5, n, dtype=jnp.float64)

    def f(x):
        return jnp.sum(w * jax.nn.softplus(x))

    def grad(x):
        return w * jax.nn.sigmoid(x)

    return f, grad, jnp.linspace(-2.0, 2.0, n, dtype=jnp.float64)


def test_a_calibrated_leaf_starts_above_h_at_about_2n_evaluations():
    with jax.enable_x64(True):
        f, grad, x = _sum_loss(N_LARGE)
        result = jaxcheck.check_grad(f, (x,), grad_fn=grad, mode="full")
    assert result.status == "passed", str(result)
    assert "args[0] at 16 h" in result.step_policy, result.step_policy
    # About 2n: the +-h pass, the calibration sample and the fixed overhead (~100).
    assert result.n_evaluations < 2 * N_LARGE + 12 * _grad_full.CALIBRATION + 150


def test_a_calibrated_leaf_resolves_a_bug_the_default_step_misses(monkeypatch):
    # 3e-8 relative in one element: below what the default step resolves for this f (its
    # rounding term is about 16 times larger there), above what 16 h resolves.
    def check():
        f, grad, x = _sum_loss(N_LARGE)
        return jaxcheck.check_grad(
            f, (x,), grad_fn=lambda v: grad(v).at[584].multiply(1 + 3e-8), mode="full"
        )

    with jax.enable_x64(True):
        calibrated = check()
        monkeypatch.setattr(_steps, "calibrated_rungs", lambda p, *_: np.zeros(p.n, int))
        at_h = check()
    assert calibrated.status == "failed", str(calibrated)
    assert calibrated.leaves[0].worst_index == (584,), str(calibrated)
    assert at_h.status == "passed", str(at_h)


def test_search_climbs_only_while_the_new_rung_wins(monkeypatch):
    # A sum of 400 terms in float64 (four points everywhere, below TWO_POINT_MIN): every
    # coordinate is noise-bound at h and tries 16 h; only those that won there and are
    # still noise-bound try 256 h (the sin term's coordinates and the tails do not).
    calls = []
    real = _engine.Evaluator.stencil_subset

    def spy(self, coords, h, batch_size=None, offsets=(-2, -1, 1, 2)):
        calls.append(set(np.asarray(coords).tolist()))
        return real(self, coords, h, batch_size, offsets)

    monkeypatch.setattr(_engine.Evaluator, "stencil_subset", spy)
    with jax.enable_x64(True):
        f, grad, x = _sum_loss(400)
        result = jaxcheck.check_grad(
            lambda v: f(v) + jnp.sum(jnp.sin(10 * v[:8])),
            (x,),
            grad_fn=lambda v: grad(v).at[:8].add(10 * jnp.cos(10 * v[:8])),
            mode="full",
        )
    assert result.status == "passed", str(result)
    assert len(calls) == 2, [len(c) for c in calls]
    assert calls[1] < calls[0] and not calls[1] & set(range(8)), [len(c) for c in calls]


@pytest.mark.parametrize("relative", [1e-3, 1e-6])
def test_the_ladder_never_hides_a_wrong_derivative(relative):
    # Every coordinate of the sum loss is noise-bound; a bug of any size above what the
    # kept step resolves fails, on either path.
    with jax.enable_x64(True):
        for n in (64, N_LARGE):
            f, grad, x = _sum_loss(n)
            result = jaxcheck.check_grad(
                f, (x,), grad_fn=lambda v: grad(v) * (1 + relative), mode="full"
            )
            assert result.status == "failed", (n, str(result))


@pytest.mark.parametrize("factor", [1.0, 1 + 1e-8, 1 - 1e-8], ids=["right", "plus", "minus"])
def test_a_climb_ending_on_truncation_takes_the_higher_order_look(factor):
    # atan at x = 1000 in float64 (JAX's special value): rounding bounds the estimate at h,
    # the O(h**2) truncation of D(256 h) the next rung's; the look at +-512 h bounds the
    # extrapolated value's own error, which resolves a derivative wrong by a relative 1e-8
    # (the kept 16 h estimate's tolerance was 7e-14, the bug 1e-14). The right derivative,
    # within 1/16 of that tolerance of the kept estimate, needs no look.
    with jax.enable_x64(True):
        result = jaxcheck.check_grad(
            jax.lax.atan,
            (jnp.float64(1000.0),),
            grad_fn=lambda x: factor / (1 + x**2),
        )
    looked = "took the stencil at twice their largest step" in result.step_policy
    assert looked == (factor != 1.0), result.step_policy
    assert result.status == ("passed" if factor == 1.0 else "failed"), str(result)
