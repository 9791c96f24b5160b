"""`result.plot(path)`: per-leaf errors and the step-sweep V, saved as a real image."""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck
from jaxcheck._plot import STATUS_COLORS, plot_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def loss(params, x):
    return jnp.sum(jnp.tanh(x @ params["w"] + params["b"]) ** 2)


def wrong_grad(params, x):
    g = jax.grad(loss)(params, x)
    return {"w": g["w"], "b": 1.5 * g["b"]}  # the bias gradient is wrong


@pytest.fixture(scope="module")
def failed_result() -> jaxcheck.GradCheckResult:
    params = {"w": jnp.full((3, 2), 0.3, jnp.float32), "b": jnp.array([0.1, -0.2], jnp.float32)}
    x = jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3)
    result = jaxcheck.check_grad(loss, (params, x), grad_fn=wrong_grad)
    assert result.status == "failed" and result.step_sweep is not None
    return result


def test_png_with_both_panels(failed_result, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    path = tmp_path / "check.png"
    fig = failed_result.plot(path)
    assert len(fig.axes) == 2
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
    assert matplotlib is not None


def test_panel_a_has_one_bar_per_leaf_coloured_by_verdict(failed_result):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex

    ax = plot_result(failed_result).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [leaf.path for leaf in failed_result.leaves]  # worst first, top to bottom
    bars = ax.patches
    assert [to_hex(b.get_facecolor()) for b in bars] == [
        STATUS_COLORS[leaf.status] for leaf in failed_result.leaves
    ]
    assert [b.get_width() for b in bars] == pytest.approx(
        [leaf.relative_error for leaf in failed_result.leaves]
    )
    assert ax.get_xscale() == "log"


def test_panel_b_is_the_step_sweep_of_the_worst_element(failed_result):
    pytest.importorskip("matplotlib")
    sweep = failed_result.step_sweep
    ax = plot_result(failed_result).axes[1]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) == len(sweep.steps)]
    assert len(curves) == 2
    np.testing.assert_allclose(curves[0].get_xdata(), sweep.steps)
    np.testing.assert_allclose(
        curves[0].get_ydata(), np.abs(np.asarray(sweep.estimates) - sweep.numeric)
    )
    # The wrong derivative: |estimate - analytic| never gets below |analytic - numeric| / 2.
    gap = abs(sweep.analytic - sweep.numeric)
    assert np.nanmin(curves[1].get_ydata()) > gap / 2
    chosen = [line for line in ax.get_lines() if list(line.get_xdata()) == [sweep.chosen_step] * 2]
    assert len(chosen) == 1  # the step used is marked
    assert "args[0]['b']" in ax.get_title()


def test_without_a_step_sweep_panel_b_says_so(failed_result, tmp_path):
    pytest.importorskip("matplotlib")
    fig = plot_result(dataclasses.replace(failed_result, step_sweep=None), tmp_path / "x.svg")
    assert len(fig.axes) == 2
    assert any("no step sweep recorded" in t.get_text() for t in fig.axes[1].texts)
    assert (tmp_path / "x.svg").read_text().lstrip().startswith("<?xml")


def test_a_passing_check_plots_too(tmp_path):
    pytest.importorskip("matplotlib")
    result = jaxcheck.check_grad(
        lambda x: jnp.sum(jnp.sin(x)), (jnp.linspace(0.0, 1.0, 4, dtype=jnp.float32),)
    )
    path = tmp_path / "pass.png"
    fig = result.plot(path)
    assert len(fig.axes) == 2 and path.read_bytes()[:8] == PNG_MAGIC
    assert fig.get_suptitle().startswith("PASSED")


def test_custom_rule_result_plots_its_finite_difference_check(failed_result):
    pytest.importorskip("matplotlib")
    rule = pytest.importorskip("jaxcheck._rule_result")
    check = rule.CheckReport(
        name="fd", status="failed", message="bwd disagrees", results=(failed_result,)
    )
    result = rule.RuleCheckResult(
        name="my_rule",
        kind="custom_vjp",
        status="failed",
        reason="fd failed",
        checks=(check,),
        order=1,
        mode="full",
        seed=0,
        seconds=0.1,
    )
    fig = plot_result(result)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        leaf.path for leaf in failed_result.leaves
    ]
    assert "the finite-difference check FAILED: check_grad(loss)" in fig.get_suptitle()


def test_missing_matplotlib_says_how_to_install(failed_result, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'jaxcheck\[plot\]'"):
        failed_result.plot("never-written.png")


def test_jacobian_result_plots_one_bar_per_block(tmp_path):
    pytest.importorskip("matplotlib")
    jacobian = pytest.importorskip("jaxcheck._jacobian")

    @jax.custom_vjp
    def double_cos(x):
        return jnp.sin(x)

    double_cos.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (2.0 * g * jnp.cos(x),))  # wrong by 2
    result = jacobian.check_vjp(double_cos, (jnp.array([0.1, 0.2, 0.3], jnp.float32),))
    fig = plot_result(result, tmp_path / "jac.png")
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [b.path for b in result.blocks]
    assert "per block" in fig.axes[0].get_title()
    assert any("no step sweep recorded" in t.get_text() for t in fig.axes[1].texts)
    assert (tmp_path / "jac.png").read_bytes()[:8] == PNG_MAGIC
