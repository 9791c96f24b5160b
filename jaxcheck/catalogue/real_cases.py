"""Issue 10's suites: derivatives of real code, correct and broken, in float32 and float64.

Two catalogues of `RealCase`s, each a function, a point and the check to run on it:

* `family_cases()`: the classes behind issue 10's false alarms and silent passes --
  cancellation inside f (gelu tanh far left, log_ndtr and logsumexp tails, softplus at
  large |x|, a variance as a difference of large numbers), exact zero derivatives at
  singular points (det of a rank-1 matrix, sin at pi/2, erf at 10), a leaf of mixed
  scales, and a tiny-gradient leaf beside a large one. Each comes correct (JAX's own
  rule) and broken (the same f with a rule wrong by a planted error).
* `lax_op_cases(rel_bug, where)`: the differentiable `jax.lax` elementwise ops at the
  points JAX's own `tests/lax_autodiff_test.py` uses (its `rand_default`, `rand_small`,
  `rand_positive`, `rand_not_small`, `rand_uniform` generators, arrays of shape (3,),
  plus its special values as scalars: near zero and in the tails), correct or wrong by
  a relative `rel_bug` globally (`where="all"`) or in one element (`where="one"`).

A correct checker passes every case with `broken=False` and fails (or reports
inconclusive, with a reason) every case with `broken=True`, never passing it.

Points are drawn with numpy's `RandomState` seeded from the case name, in float64 and
rounded to the case's dtype, so float32 and float64 check the same points up to
rounding. Call `build(dtype)` and the checker inside `jax.enable_x64(True)` for float64.

Example:
  >>> case = {c.name: c for c in family_cases()}["cancel/gelu_tanh_left"]
  >>> case.kind, case.broken
  ('vjp', False)
"""

import dataclasses
import functools as ft
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
from jax import lax

from .grad_cases import CaseSetup

KINDS = ("grad", "vjp")
# Planted relative error of the broken family cases, by dtype name.
FAMILY_BUG = {"float32": 1e-2, "float64": 1e-6}
# Mutant size of the lax suites that issue 10 demands be caught every time.
LAX_BUG = {"float32": 1e-4, "float64": 1e-8}
# A mutant of a true derivative below this cannot be seen by any finite-difference
# reference (sin at pi/2, erf at 10, max(x, y) on its smaller side): no mutant there.
MIN_VISIBLE_DERIVATIVE = 1e-12


@dataclasses.dataclass(frozen=True, kw_only=True)
class RealCase:
    """One entry of the real-code suites.

    Attributes:
      name: Readable id, e.g. "cancel/gelu_tanh_left" or "lax/exp@one".
      family: "cancellation", "exact-zero", "mixed-scale", "tiny-beside-large" or "lax".
      kind: The check to run: "grad" (`check_grad`) or "vjp" (`check_vjp`).
      broken: Whether the derivative under test is wrong.
      bad_path: For broken cases, the leaf (or Jacobian input leaf) a checker must name.
      build: `build(dtype) -> CaseSetup`; `setup.kwargs` go to the checker.
      note: What the case exercises or what is planted.
    """

    name: str
    family: str
    kind: str
    broken: bool
    bad_path: str | None
    build: Callable[[Any], CaseSetup]
    note: str = ""


def _rng(name: str) -> np.random.RandomState:
    return np.random.RandomState(zlib.crc32(name.encode()) % 2**31)


def _perturbed_vjp(
    fn: Callable, factor: float, index: Any = None, add: float = 0.0, argnum: int = 0
) -> Callable:
    """`fn` as a custom_vjp whose bwd is the true VJP, then modified for argument `argnum`.

    That argument's cotangent is multiplied by `factor` (in element `index` only, if
    given) and `add` is added to that element: the planted bug.
    """

    @jax.custom_vjp
    def wrapped(*xs):
        return fn(*xs)

    def fwd(*xs):
        return jax.vjp(fn, *xs)

    def bwd(vjp_fn, g):
        cts = list(vjp_fn(g))
        ct = cts[argnum]
        if index is None:
            cts[argnum] = ct * factor + add
        else:
            cts[argnum] = ct.at[index].multiply(factor).at[index].add(add)
        return tuple(cts)

    wrapped.defvjp(fwd, bwd)
    return wrapped


# ----------------------------------------------------------------------------
# Families: cancellation, exact zeros, mixed scales, tiny beside large.


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def _variance(x):
    return jnp.mean(x**2) - jnp.mean(x) ** 2  # a difference of two numbers of ~1e6


def _logsumexp_tail(x):
    return jss.logsumexp(x)


def _det(a):
    return jnp.linalg.det(a)


def _sin(x):
    return jnp.sin(x)


def _erf(x):
    return jss.erf(x)


def _log1p_square_sum(x):
    return jnp.sum(jnp.log1p(x**2))


def _softplus(x):
    return jax.nn.softplus(x)


def _two_scale_loss(p):
    return jnp.sum(p["big"] ** 2) + jnp.sum(jnp.sin(p["small"]))


def _two_scale_grad(p, *, zero_small: bool):
    small = jnp.zeros_like(p["small"]) if zero_small else jnp.cos(p["small"])
    return {"big": 2 * p["big"], "small": small}


# (name, family, kind, f, point(dtype) -> numpy float64 array, bad index, additive bug)
# An additive bug (for exact-zero derivatives, where a relative one is no bug) is in
# units of the planted relative size times the typical derivative scale.
def _points_gelu(_):
    return np.linspace(-6.0, -4.0, 16)


def _points_log_ndtr(_):
    return np.linspace(-30.0, -5.0, 16)


def _points_logsumexp(_):
    return np.array([0.0, -20.0, -40.0, -60.0, 5.0, -90.0])


def _points_softplus(_):
    return np.array([-40.0, -30.0, -20.0, -15.0, 15.0, 20.0, 30.0, 40.0])


def _points_variance(_):
    return 1e3 + _rng("variance").standard_normal(8)


def _points_det_rank1(_):
    return np.outer([1.0, 2.0, 3.0], [0.5, -1.0, 2.0])


def _points_pi_2(_):
    return np.array(np.pi / 2)


def _points_ten(_):
    return np.array(10.0)


def _points_mixed(_):
    return np.array([1e-8, 1.0, 1e8, -3e3])


_FAMILIES = (
    ("cancel/gelu_tanh_left", "cancellation", "vjp", _gelu_tanh, _points_gelu, (14,), 0.0),
    ("cancel/log_ndtr_tail", "cancellation", "vjp", jss.log_ndtr, _points_log_ndtr, (2,), 0.0),
    ("cancel/logsumexp_tail", "cancellation", "grad", _logsumexp_tail, _points_logsumexp, (4,), 0),
    ("cancel/softplus_large", "cancellation", "vjp", _softplus, _points_softplus, (6,), 0.0),
    ("cancel/variance_large_mean", "cancellation", "grad", _variance, _points_variance, (5,), 0),
    ("zero/det_rank1", "exact-zero", "grad", _det, _points_det_rank1, (0, 1), 1.0),
    ("zero/sin_pi_2", "exact-zero", "grad", _sin, _points_pi_2, (), 1.0),
    ("zero/erf_10", "exact-zero", "grad", _erf, _points_ten, (), 1.0),
    ("mixed/log1p_square", "mixed-scale", "grad", _log1p_square_sum, _points_mixed, (1,), 0.0),
)


def _family_build(dtype, *, fn, points, index, additive, broken):
    x = jnp.asarray(points(dtype), dtype)
    bug = FAMILY_BUG[np.dtype(dtype).name]
    if not broken:
        return CaseSetup(f=fn, args=(x,), kwargs={})
    if additive:
        f = _perturbed_vjp(fn, 1.0, index, add=bug * additive)
    else:
        f = _perturbed_vjp(fn, 1.0 + bug, index)
    return CaseSetup(f=f, args=(x,), kwargs={}, true_f=fn)


def _two_scale_build(dtype, *, broken: bool):
    params = {
        "big": jnp.asarray([1000.0, 1001.0, 999.0, 1002.0], dtype),
        "small": jnp.asarray([1e-4, -2e-4, 1.5e-4], dtype),
    }
    grad_fn = ft.partial(_two_scale_grad, zero_small=broken)
    return CaseSetup(f=_two_scale_loss, args=(params,), kwargs={"grad_fn": grad_fn})


def family_cases() -> tuple[RealCase, ...]:
    """The family suites, each correct and broken (see the module docstring)."""
    cases = []
    for name, family, kind, fn, points, index, additive in _FAMILIES:
        for broken in (False, True):
            build = ft.partial(
                _family_build,
                fn=fn,
                points=points,
                index=index,
                additive=additive,
                broken=broken,
            )
            what = "additive" if additive else "relative"
            note = "JAX's own rule" if not broken else f"{what} error planted at {list(index)}"
            cases.append(
                RealCase(
                    name=name + ("@broken" if broken else ""),
                    family=family,
                    kind=kind,
                    broken=broken,
                    bad_path="args[0]" if broken else None,
                    build=build,
                    note=note,
                )
            )
    for broken in (False, True):
        cases.append(
            RealCase(
                name="tiny/zeroed_small_leaf" + ("@broken" if broken else ""),
                family="tiny-beside-large",
                kind="grad",
                broken=broken,
                bad_path="args[0]['small']" if broken else None,
                build=ft.partial(_two_scale_build, broken=broken),
                note="grad_fn returns zeros for the ~1e-4 leaf" if broken else "true grad_fn",
            )
        )
    return tuple(cases)


# ----------------------------------------------------------------------------
# The lax elementwise ops at JAX's own test points (tests/lax_autodiff_test.py).


def _rand_default(rng, shape):
    return 3.0 * rng.standard_normal(shape)


def _rand_small(rng, shape):
    return 1e-3 * rng.standard_normal(shape)


def _rand_positive(rng, shape):
    return 2.0 * rng.random_sample(shape) + 1.0


def _rand_not_small(rng, shape):
    x = 3.0 * rng.standard_normal(shape)
    return x + np.where(x > 0, 10.0, -10.0)


def _rand_uniform(low, high):
    return lambda rng, shape: rng.random_sample(shape) * (high - low) + low


_U13 = _rand_uniform(-1.3, 1.3)
_ASIN_DOMAIN = _rand_uniform(-0.9, 0.9)  # JAX draws in [-1.3, 1.3]; outside [-1, 1] is NaN
# (name, op, generators per argument): LAX_GRAD_OPS of lax_autodiff_test.py, real dtypes,
# less floor/ceil/round (derivative 0 everywhere: no mutant to catch).
LAX_OPS = (
    ("neg", lax.neg, (_rand_default,)),
    ("exp", lax.exp, (_rand_small,)),
    ("exp2", lax.exp2, (_rand_small,)),
    ("expm1", lax.expm1, (_rand_default,)),
    ("log", lax.log, (_rand_positive,)),
    ("log1p", lax.log1p, (_rand_positive,)),
    ("sinh", lax.sinh, (_rand_default,)),
    ("cosh", lax.cosh, (_rand_default,)),
    ("tanh", lax.tanh, (_rand_default,)),
    ("sin", lax.sin, (_rand_default,)),
    ("cos", lax.cos, (_rand_default,)),
    ("tan", lax.tan, (_U13,)),
    ("asin", lax.asin, (_ASIN_DOMAIN,)),
    ("acos", lax.acos, (_ASIN_DOMAIN,)),
    ("atan2", lax.atan2, (_rand_default, _rand_default)),
    ("erf", lax.erf, (_rand_small,)),
    ("erfc", lax.erfc, (_rand_small,)),
    ("erf_inv", lax.erf_inv, (_rand_small,)),
    ("bessel_i0e", lax.bessel_i0e, (_rand_default,)),
    ("bessel_i1e", lax.bessel_i1e, (_rand_default,)),
    ("abs", lax.abs, (_rand_positive,)),
    ("pow", lax.pow, (_rand_positive, _rand_positive)),
    ("sqrt", lax.sqrt, (_rand_positive,)),
    ("rsqrt", lax.rsqrt, (_rand_positive,)),
    ("cbrt", lax.cbrt, (_rand_not_small,)),
    ("logistic", lax.logistic, (_rand_default,)),
    ("add", lax.add, (_rand_default, _rand_default)),
    ("sub", lax.sub, (_rand_default, _rand_default)),
    ("mul", lax.mul, (_rand_default, _rand_default)),
    ("div", lax.div, (_rand_not_small, _rand_not_small)),
    ("max", lax.max, (_rand_default, _rand_default)),
    ("min", lax.min, (_rand_default, _rand_default)),
)
# LAX_GRAD_SPECIAL_VALUE_TESTS of lax_autodiff_test.py: scalars near zero and in the tails.
LAX_SPECIAL_VALUES = (
    ("sinh", lax.sinh, (0.0,)),
    ("cosh", lax.cosh, (0.0,)),
    ("tanh", lax.tanh, (0.0, 1000.0)),
    ("sin", lax.sin, (0.0, np.pi, np.pi / 2, np.pi / 4)),
    ("cos", lax.cos, (0.0, np.pi, np.pi / 2, np.pi / 4)),
    ("tan", lax.tan, (0.0,)),
    ("asin", lax.asin, (0.0,)),
    ("acos", lax.acos, (0.0,)),
    ("atan", lax.atan, (0.0, 1000.0)),
    ("erf", lax.erf, (0.0, 10.0)),
    ("erfc", lax.erfc, (0.0, 10.0)),
)
LAX_SHAPE = (3,)
WHERE = ("all", "one")


def _value_name(value: float) -> str:
    named = {np.pi: "pi", np.pi / 2: "pi_2", np.pi / 4: "pi_4"}
    return named.get(value, f"{value:g}")


def _lax_build(dtype, *, name, op, generators, argnum, factor, index):
    """All arguments are passed (as JAX's tests pass them); `argnum` is differentiated."""
    rng = _rng(f"lax/{name}")
    values = tuple(jnp.asarray(gen(rng, LAX_SHAPE), dtype) for gen in generators)
    kwargs = {"argnums": argnum} if len(generators) > 1 else {}
    if factor is None:
        return CaseSetup(f=op, args=values, kwargs=kwargs)
    f = _perturbed_vjp(op, factor, index, argnum=argnum)
    return CaseSetup(f=f, args=values, kwargs=kwargs, true_f=op)


def _special_build(dtype, *, op, value, factor):
    x = jnp.asarray(value, dtype)
    f = op if factor is None else _perturbed_vjp(op, factor)
    return CaseSetup(f=f, args=(x,), kwargs={}, true_f=None if factor is None else op)


def special_derivative_visible(op: Callable, value: float) -> bool:
    """Whether a relative mutant of `op'` at `value` can be seen at all (float64 truth)."""
    with jax.enable_x64(True):
        derivative = float(jax.grad(op)(jnp.float64(value)))
    return abs(derivative) >= MIN_VISIBLE_DERIVATIVE


def _array_mutant_visible(name, op, generators, argnum, index) -> bool:
    """Whether the mutated elements have a derivative a relative mutant can change."""
    with jax.enable_x64(True):
        rng = _rng(f"lax/{name}")
        values = [jnp.asarray(gen(rng, LAX_SHAPE), jnp.float64) for gen in generators]
        _, vjp = jax.vjp(op, *values)
        derivative = np.abs(np.asarray(vjp(jnp.ones(LAX_SHAPE, jnp.float64))[argnum]))
    visible = derivative >= MIN_VISIBLE_DERIVATIVE
    return bool(visible[index]) if index is not None else bool(np.any(visible))


def lax_op_cases(rel_bug: float | None = None, where: str = "all") -> tuple[RealCase, ...]:
    """The lax elementwise ops at JAX's test points, correct or wrong by `rel_bug`.

    Args:
      rel_bug: `None` for JAX's own rules, or `r`: the VJP is multiplied by `1 + r`.
      where: "all" (every element) or "one" (element [1] of the (3,) arrays; scalars
        have one element, so "one" repeats no scalar case). Mutants are planted only
        where the true derivative is visible (not 0, as for `max` on its smaller side).

    Returns:
      Cases "lax/<op>[argnum]" on arrays of shape (3,), and "lax/<op>@<value>" scalars.
    """
    if where not in WHERE:
        raise ValueError(f"`where` must be one of {WHERE}; got {where!r}.")
    factor = None if rel_bug is None else 1.0 + rel_bug
    suffix = "" if rel_bug is None else f"@{where}"
    cases = []
    for name, op, generators in LAX_OPS:
        for argnum in range(len(generators)):
            label = f"lax/{name}" + (f"[{argnum}]" if len(generators) > 1 else "")
            index = None if where == "all" else 1
            if rel_bug is not None and not _array_mutant_visible(
                name, op, generators, argnum, index
            ):
                continue  # e.g. max(x, y) wrt x where x < y: derivative 0, no bug to plant
            build = ft.partial(
                _lax_build,
                name=name,
                op=op,
                generators=generators,
                argnum=argnum,
                factor=factor,
                index=index,
            )
            cases.append(
                RealCase(
                    name=label + suffix,
                    family="lax",
                    kind="vjp",
                    broken=rel_bug is not None,
                    bad_path=None if rel_bug is None else f"args[{argnum}]",
                    build=build,
                    note="JAX's rule"
                    if rel_bug is None
                    else f"VJP times 1 + {rel_bug:g} ({where})",
                )
            )
    if rel_bug is not None and where == "one":
        return tuple(cases)
    for name, op, values in LAX_SPECIAL_VALUES:
        for value in values:
            if rel_bug is not None and not special_derivative_visible(op, value):
                continue
            cases.append(
                RealCase(
                    name=f"lax/{name}@{_value_name(value)}" + suffix,
                    family="lax",
                    kind="grad",
                    broken=rel_bug is not None,
                    bad_path=None if rel_bug is None else "args[0]",
                    build=ft.partial(_special_build, op=op, value=value, factor=factor),
                    note="JAX's special value" + ("" if rel_bug is None else f", 1 + {rel_bug:g}"),
                )
            )
    return tuple(cases)


def run_case(case: RealCase, dtype) -> Any:
    """Builds `case` in `dtype` and runs its check at jaxcheck's defaults.

    Call inside `jax.enable_x64(True)` for float64. Returns the result object.
    """
    import jaxcheck  # a client of the public API

    setup = case.build(dtype)
    check = jaxcheck.check_grad if case.kind == "grad" else jaxcheck.check_vjp
    return check(setup.f, setup.args, **setup.kwargs)


def classify(case: RealCase, result: Any = None, error: BaseException | None = None) -> str:
    """One word for a case's outcome: "ok", "false-alarm", "miss", "inconclusive", "crash".

    A correct case is "ok" when passed, a "false-alarm" when failed; a broken case is "ok"
    when failed and a "miss" when passed. "inconclusive" either way; "crash" on an exception.
    """
    if error is not None:
        return "crash"
    if result.status == "inconclusive":
        return "inconclusive"
    if case.broken:
        return "ok" if result.status == "failed" else "miss"
    return "ok" if result.status == "passed" else "false-alarm"
