"""Helpers shared by test modules: deliberately wrong rules, report assertions."""

from collections.abc import Callable

import jax


def vjp_mutant(fn: Callable, factor: float | Callable, index: int | None = None) -> Callable:
    """`fn` as a custom_vjp whose bwd is the true VJP times `factor`.

    Args:
      fn: A function of one array.
      factor: The scale, or a function of the cotangent's dtype giving it (wrong in one
        precision only).
      index: Scale only this element of the cotangent (default: all).
    """

    @jax.custom_vjp
    def wrapped(x):
        return fn(x)

    def fwd(x):
        return jax.vjp(fn, x)

    def bwd(vjp_fn, g):
        (ct,) = vjp_fn(g)
        scale = factor(ct.dtype) if callable(factor) else factor
        if index is None:
            return (ct * scale,)
        return (ct.at[index].multiply(scale),)

    wrapped.defvjp(fwd, bwd)
    return wrapped


def assert_one_sequential_note(result, starts: str) -> None:
    """`result` has one note, starting with `starts`, that counts its evaluations done one at
    a time, and the report shows it."""
    (note,) = result.notes
    assert note.startswith(starts), note
    assert note.endswith(
        f"evaluated sequentially (jax.lax.map), {result.n_evaluations} evaluations one at a time"
    ), note
    assert f"  note: {note}" in str(result).splitlines()
