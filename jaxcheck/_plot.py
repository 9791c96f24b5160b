"""Host-side: the two-panel figure of a gradient check (`result.plot(path)`).

(a) Relative error of each leaf, ||a - n|| / (||a|| + ||n||), on a log scale. The bar
    colour is the check's verdict for that leaf, which comes from per-element
    tolerances (see the report). The dotted lines at 1e-7, 1e-4 and 1e-2 are the rules
    of thumb often quoted for gradient checks in double precision (CS231n's notes:
    below ~1e-7 good, 1e-4..1e-2 uncomfortable, above 1e-2 probably wrong); they are
    drawn as a guide only. The verdict does not use them: a correct float32 gradient
    can sit at 1e-6, and a gradient wrong in one element of a large leaf can sit low.
(b) For the check's worst element, the central-difference estimate at each step size h
    compared with the reference (`numeric`) and with the derivative under test
    (`analytic`), on log-log axes: |estimate(h) - numeric| traces the V of truncation
    error (right, ~h**2) and rounding error (left, ~1/h), with the step the check used
    marked. A correct derivative lets |estimate(h) - analytic| follow the same V; a wrong
    one flattens out at |analytic - numeric| however well h is chosen.

matplotlib is an optional dependency (`pip install 'jaxcheck[plot]'`), imported here
lazily; the figure is built with the object-oriented API (no pyplot global state, no
display needed).
"""

from typing import Any

import numpy as np

STATUS_COLORS = {"passed": "#2e7d32", "failed": "#c62828", "inconclusive": "#f9a825"}
GUIDES = ((1e-7, "1e-7"), (1e-4, "1e-4"), (1e-2, "1e-2"))
MAX_BARS = 30
ZERO_FLOOR = 1e-17


def _matplotlib_figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "`result.plot` needs matplotlib, which is an optional dependency of jaxcheck: "
            "install it with `pip install 'jaxcheck[plot]'` (or `pip install matplotlib`)."
        ) from error
    return Figure


def _gradient_result(result: Any) -> Any:
    """The result whose leaves are drawn: `result` itself, or for a custom-rule result
    (`RuleCheckResult`) its worst nested finite-difference `GradCheckResult`."""
    if getattr(result, "leaves", None) is not None or getattr(result, "blocks", None) is not None:
        return result
    nested = tuple(getattr(result, "fd_results", None) or ())
    if not nested:
        return result
    rank = {"failed": 0, "inconclusive": 1, "passed": 2}
    return min(nested, key=lambda r: rank.get(getattr(r, "status", ""), 3))


def _rows(result: Any) -> tuple[str, list[tuple[str, float, str]]]:
    """("leaf" or "block", [(label, relative error, status)]) for a gradient or Jacobian result."""
    unit, items = "leaf", getattr(result, "leaves", None)
    if items is None:
        unit, items = "block", getattr(result, "blocks", None)  # JacobianCheckResult
    return unit, [(str(i.path), float(i.relative_error), str(i.status)) for i in items or ()]


def _panel_errors(ax: Any, result: Any) -> None:
    unit, rows = _rows(result)
    ax.set_title(f"(a) relative error per {unit}  ||a-n|| / (||a||+||n||)", fontsize=9)
    if not rows:
        ax.text(
            0.5,
            0.5,
            "no per-leaf errors recorded in this result",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return
    hidden = max(0, len(rows) - MAX_BARS)
    rows = rows[:MAX_BARS]  # results list leaves worst first
    labels = [r[0] for r in rows]
    raw = np.array([r[1] for r in rows], dtype=np.float64)
    values = np.where(np.isfinite(raw), np.maximum(raw, ZERO_FLOOR), 1.0)  # the ratio is at most 1
    colors = [STATUS_COLORS.get(r[2], "#757575") for r in rows]
    y = np.arange(len(rows))[::-1]
    bars = ax.barh(y, values, color=colors, height=0.6, log=True)
    for bar, value in zip(bars, raw):
        if not np.isfinite(value):
            bar.set_hatch("//")
            bar.set_edgecolor("black")
        note = "nan" if not np.isfinite(value) else ("0" if value <= 0 else f"{value:.1e}")
        ax.text(
            bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + note, va="center", fontsize=7
        )
    pad = max(0.0, (3 - len(rows)) / 2)  # keep one or two bars from filling the panel
    ax.set_ylim(-0.75 - pad, len(rows) - 0.25 + pad)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    lo = min(1e-9, float(values.min()) / 3)
    ax.set_xlim(lo, 30.0)
    for value, text in GUIDES:
        ax.axvline(value, color="#9e9e9e", linestyle=":", linewidth=1)
        ax.text(
            value,
            0.995,
            " " + text,
            transform=ax.get_xaxis_transform(),
            ha="left",
            va="top",
            fontsize=7,
            color="#616161",
        )
    ax.tick_params(axis="x", labelsize=7)
    handles = [
        _patch(STATUS_COLORS[s], s)
        for s in ("passed", "failed", "inconclusive")
        if any(r[2] == s for r in rows)
    ]
    ax.legend(
        handles=handles,
        fontsize=7,
        loc="lower right",
        title="verdict (per-element tolerance)",
        title_fontsize=7,
    )
    note = "dotted: rule-of-thumb guides, not the pass test"
    if hidden:
        note += f"; {hidden} more {'leaves' if unit == 'leaf' else 'blocks'} not shown"
    ax.set_xlabel(note, fontsize=7)


def _patch(color: str, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def _panel_sweep(ax: Any, result: Any) -> None:
    sweep = getattr(result, "step_sweep", None)
    if sweep is None:
        ax.set_title("(b) finite-difference error vs step", fontsize=9)
        ax.text(
            0.5,
            0.5,
            "no step sweep recorded for this check",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return
    steps = np.asarray(sweep.steps, np.float64)
    estimates = np.asarray(sweep.estimates, np.float64)

    def positive(x: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(x) & (x > 0), x, np.nan)  # gaps instead of clipping zeros

    where = f"{sweep.path}[{','.join(str(i) for i in sweep.index)}]" + (
        f".{sweep.part}" if sweep.part else ""
    )
    ax.set_title(
        f"(b) worst element {where}: central difference vs step ({sweep.dtype})", fontsize=9
    )
    err_numeric = positive(np.abs(estimates - sweep.numeric))
    err_analytic = positive(np.abs(estimates - sweep.analytic))
    ax.loglog(
        steps, err_numeric, "o-", ms=3, color="#1565c0", label="|estimate(h) - numeric|  (FD error)"
    )
    ax.loglog(steps, err_analytic, "s--", ms=3, color="#c62828", label="|estimate(h) - analytic|")
    if np.all(np.isnan(err_numeric)) and np.all(np.isnan(err_analytic)):
        finite = np.isfinite(estimates)
        why = (
            "every estimate equals the reference exactly (zero error)"
            if finite.all()
            else f"{int((~finite).sum())} of {finite.size} estimates are NaN/Inf"
        )
        ax.text(
            0.5,
            0.5,
            f"nothing to draw on log axes:\n{why}",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=8,
        )
    gap = abs(sweep.analytic - sweep.numeric)
    if np.isfinite(gap) and gap > 0:
        ax.axhline(
            gap,
            color="#c62828",
            linestyle=":",
            linewidth=1,
            label=f"|analytic - numeric| = {gap:.2g}",
        )
    ax.axvline(
        sweep.chosen_step,
        color="#424242",
        linestyle="-.",
        linewidth=1,
        label=f"step used h = {sweep.chosen_step:.2g}",
    )
    ax.set_xlabel("step h", fontsize=8)
    ax.set_ylabel("absolute error of the derivative estimate", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="best")


def _first_line(result: Any, prefix: str = "", suffix: str = "", width: int = 150) -> str:
    line = prefix + str(result).split("\n", 1)[0]
    if len(line) + len(suffix) > width:
        line = line[: width - len(suffix) - 3] + "..."
    return line + suffix


def plot_result(result: Any, path: Any = None, *, dpi: int = 120) -> Any:
    """Draws the two-panel figure of a check result and optionally saves it.

    Args:
      result: A `GradCheckResult`. A `JacobianCheckResult` (`check_vjp`/`check_jvp`) draws
        panel (a) per Jacobian block and says in panel (b) that it records no step sweep;
        a custom-rule `RuleCheckResult` draws its worst nested finite-difference check.
      path: File to write (format from the suffix, e.g. ".png", ".svg", ".pdf"); `None`
        only returns the figure.
      dpi: Resolution of raster output.

    Returns:
      The `matplotlib.figure.Figure` (two axes: (a) and (b)).

    Raises:
      ImportError: matplotlib is not installed (`pip install 'jaxcheck[plot]'`).
    """
    Figure = _matplotlib_figure()
    fig = Figure(figsize=(12.0, 4.6), layout="constrained")
    ax_errors, ax_sweep = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.2]})
    source = _gradient_result(result)
    _panel_errors(ax_errors, source)
    _panel_sweep(ax_sweep, source)
    title = _first_line(result)
    if source is not result:
        title += "\n" + _first_line(
            source, prefix="(panels: the finite-difference check ", suffix=")"
        )
    fig.suptitle(title, fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
