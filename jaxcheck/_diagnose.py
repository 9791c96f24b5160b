"""Host-side: JAX's own errors from inside a check, told as one clear error about the user's f.

A check jits, vmaps and differentiates the user's function. When JAX refuses one of those
for a reason that lies in f (a Python `if` on a traced value, reverse mode through a
`lax.while_loop`, a custom_vjp bwd rule returning the wrong cotangents), the error JAX
raises names jaxcheck's internals. `explained` turns those into one error that names the
construct or the rule and what to do, without JAX's traceback from inside jaxcheck (JAX's
error stays on the new one as its `jax_error` attribute).
"""

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax

from ._engine import first_line

TRACER_ERRORS = (
    jax.errors.TracerBoolConversionError,
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)
_WHILE_REVERSE = "Reverse-mode differentiation does not work for lax.while_loop"
_BWD_RULE = "Custom VJP bwd rule must produce"
_JVP_OF_CUSTOM_VJP = "can't apply forward-mode autodiff (jvp) to a custom_vjp function"


def _custom_vjp_sites(jaxpr: Any) -> Iterator[tuple[str, int]]:
    """(rule name, number of primal inputs) of every custom_vjp call in a jaxpr, nested too."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "custom_vjp_call":
            call = eqn.params.get("call_jaxpr")
            info = getattr(getattr(call, "jaxpr", None), "debug_info", None)
            src = getattr(info, "func_src_info", None) or "?"
            n_inputs = len(eqn.invars) - int(eqn.params.get("num_consts", 0))
            yield src.split(" ")[0], n_inputs
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _custom_vjp_sites(inner)


def _leaf_count(structure: str) -> int:
    return structure.count("*")


def _bwd_message(error: BaseException, entry: str, f: Callable, args: tuple) -> str:
    text = str(error)
    found = re.search(
        r"bwd output structure (PyTreeDef\(.*?\)) for primal input structure (PyTreeDef\(.*\))",
        text,
    )
    n_out = n_in = None
    if found:
        n_out, n_in = _leaf_count(found.group(1)), _leaf_count(found.group(2))
    sites: list[tuple[str, int]] = []
    try:
        sites = list(_custom_vjp_sites(jax.make_jaxpr(f)(*args).jaxpr))
    except Exception:  # noqa: BLE001 - naming the rule is a courtesy; the message stands without
        pass
    names = sorted({name for name, count in sites if n_in is None or count == n_in})
    rule = f"`{names[0]}`" if len(names) == 1 else "inside f"
    if found:
        what = f"returned {n_out} cotangent{'s' * (n_out != 1)} for {n_in} inputs"
    else:
        shapes = re.search(
            r"at output(\S*) the bwd rule produced an output of \S+ (\S+) "
            r"corresponding to an input of \S+ (\S+?),? ",
            text,
        )
        what = "returned a cotangent of the wrong shape or dtype"
        if shapes:
            what = (
                f"returned a {shapes.group(2)} cotangent for the input of {shapes.group(3)} "
                f"(cotangent{shapes.group(1)})"
            )
    if len(names) > 1:
        rule = "inside f (one of " + ", ".join(f"`{n}`" for n in names) + ")"
    return (
        f"`{entry}` cannot differentiate f: the custom_vjp rule {rule} {what}. A bwd rule must "
        "return a tuple with one cotangent per primal input, each shaped like its input (None "
        "for an input with no derivative). Fix the rule, then check it alone with "
        "`jaxcheck.check_custom_vjp`."
    )


@contextlib.contextmanager
def own_config() -> Iterator[None]:
    """The JAX configuration a check's own kernels run under: the user's, except
    `jax_enable_checks`, which is scoped off. It checks JAX's internal invariants, not the
    user's code, and JAX itself fails some of its own rules under it (`jax.jit(jax.jvp(...))`
    of `jax.scipy.special.log_ndtr`, a custom_jvp with a non-differentiable argument, trips
    its debug-info assertion). Every other option (rank and dtype promotion, x64,
    `disable_jit`, debug NaNs) stays as the user set it.
    """
    if not jax.config.jax_enable_checks:
        yield
        return
    with jax.enable_checks(False):
        yield


@contextlib.contextmanager
def explained(entry: str, f: Callable, args: tuple) -> Iterator[None]:
    """Runs a check, translating JAX errors caused by f into one clear error.

    Args:
      entry: The entry point, e.g. "check_grad", named in the messages.
      f, args: The user's function and arguments (to name the custom rule at fault).

    Raises:
      TypeError: f is not traceable, a custom_vjp bwd rule returns the wrong cotangents, or
        forward mode meets a `jax.custom_vjp` function.
      ValueError: reverse mode through a `lax.while_loop`.
    """
    try:
        with own_config():
            yield
    except TRACER_ERRORS as error:
        new = TypeError(
            f"jaxcheck needs a jax-traceable `f`: `{entry}` evaluates f under `jax.jit`, "
            "`jax.vmap` and autodiff, where array values are abstract tracers, so f's Python "
            "control flow must not depend on them. Replace a Python `if`/`while`/`bool()`/"
            "`float()` on an array value by `jnp.where`, `lax.cond` or `lax.while_loop`. "
            f"(JAX: {first_line(error)})"
        )
        new.jax_error = error  # type: ignore[attr-defined]
        raise new from None
    except (TypeError, ValueError) as error:
        text = str(error)
        if _WHILE_REVERSE in text:
            forward = "use `jaxcheck.check_jvp`" if entry != "check_jvp" else "check forward mode"
            new: Exception = ValueError(
                f"reverse mode through lax.while_loop is not supported by JAX: {forward} "
                "(forward mode works through while_loop), or replace the loop by `lax.scan` or "
                f"a `lax.fori_loop` with static bounds to use `{entry}`."
            )
        elif _BWD_RULE in text:
            new = TypeError(_bwd_message(error, entry, f, args))
        elif _JVP_OF_CUSTOM_VJP in text:
            new = TypeError(
                f"`{entry}` cannot differentiate f in forward mode: f calls a `jax.custom_vjp` "
                "function, which defines reverse mode only, and JAX has no `jax.jvp` through "
                "it. Check f with `jaxcheck.check_vjp` or `jaxcheck.check_grad`, or give the "
                "function a `jax.custom_jvp` rule instead."
            )
        else:
            raise
        new.jax_error = error  # type: ignore[attr-defined]
        raise new from None
