"""Sparse against dense full Jacobian checks: time and evaluations (a script; pytest does not collect it).

Each configuration is a custom_vjp whose bwd rule is correct; check_vjp in full mode.
"sparse" runs `_sparse.run_sparse` (pattern from the jaxpr, colouring, grouped stencils,
validation) on the same `Problem` the dense path builds; "dense" is today's
`jaxcheck.check_vjp(mode="full")`. Each is run twice: cold (first call for this function
and shape in the process: tracing and XLA compilation included) and warm (the same call
again). Dense runs only where affordable (4 n evaluations of f plus n m comparisons); the
lines say where it is skipped. Ratios are printed in the same run.

Cases: elementwise (sin) at 1e4, 1e5, 1e6 elements; a banded finite-difference stencil
(x[2:] - 2 x[1:-1]^2 + x[:-2]) at 1e4; layer-norm and softmax over the last axis at
(64, 256) and (512, 1024) (the latter with --large: 1024 colours of 524288 outputs, about
5.4e8 entries compared).

Usage: python benchmarks/bench_sparse.py [--large] [--no-dense]
"""

import argparse
import time

import jax
import jax.numpy as jnp

import jaxcheck
from jaxcheck._jacobian import finish
from jaxcheck._problem import build_problem
from jaxcheck._sparse import run_sparse

DENSE_MAX_INPUTS = 20_000  # beyond this a dense full check is not attempted here


def _custom(primal):
    f = jax.custom_vjp(primal)
    f.defvjp(lambda x: (primal(x), x), lambda x, g: (jax.vjp(primal, x)[1](g)[0],))
    f.__name__ = primal.__name__
    return f


def sin(x):
    return jnp.sin(x)


def stencil(x):
    return x[2:] - 2 * x[1:-1] ** 2 + x[:-2]


def layer_norm(x):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5)


def softmax(x):
    return jax.nn.softmax(x, axis=-1)


def check_sparse(f, x):
    p = build_problem(
        "vjp", f, (x,), argnums=None, mode="full", eps=None, rtol=None, atol=None,
        batch_size=None, seed=0, reference="auto", has_aux=False,
    )  # fmt: skip
    acc, source, summary = run_sparse(p)
    if acc is None:
        return None, summary
    blocks = [acc.report(i, o) for i in range(p.n_in) for o in range(p.n_out)]
    return finish(p, blocks, "full", acc.relative_error(), source), summary


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def line(case: str, size: str, plan: str, **fields: object) -> None:
    device = jax.devices()[0].device_kind
    extra = "  ".join(f"{k}={v}" for k, v in fields.items())
    print(
        f"[{device} jax {jax.__version__}] {case:12s} size={size:12s} {plan:6s} {extra}", flush=True
    )


def run_case(case: str, primal, shape: tuple[int, ...], dense: bool) -> None:
    f = _custom(primal)
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    size = "x".join(str(s) for s in shape)
    (result, summary), cold = timed(lambda: check_sparse(f, x))
    (_, _), warm = timed(lambda: check_sparse(f, x))
    if result is None:
        line(case, size, "sparse", fallback=repr(summary.reason))
        sparse_evals = None
    else:
        sparse_evals = result.n_evaluations
        line(
            case, size, "sparse", status=result.status, evaluations=sparse_evals,
            colours=summary.n_colors, density=f"{summary.density:.2e}",
            cold=f"{cold:.2f}s", warm=f"{warm:.2f}s",
        )  # fmt: skip
    if not dense or x.size > DENSE_MAX_INPUTS:
        why = "--no-dense" if not dense else f"n={x.size} > {DENSE_MAX_INPUTS}: 4n evaluations"
        line(case, size, "dense", skipped=why, evaluations_needed=f">={4 * x.size}")
        return
    r, dcold = timed(lambda: jaxcheck.check_vjp(f, (x,), mode="full"))
    _, dwarm = timed(lambda: jaxcheck.check_vjp(f, (x,), mode="full"))
    ratios = {}
    if sparse_evals:
        ratios = {
            "evals_ratio": f"{r.n_evaluations / sparse_evals:.0f}x",
            "cold_ratio": f"{dcold / cold:.1f}x",
            "warm_ratio": f"{dwarm / warm:.1f}x",
        }
    line(
        case, size, "dense", status=r.status, evaluations=r.n_evaluations,
        cold=f"{dcold:.2f}s", warm=f"{dwarm:.2f}s", **ratios,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also the (512, 1024) row-wise ops")
    parser.add_argument("--no-dense", action="store_true", help="skip every dense check")
    args = parser.parse_args()
    dense = not args.no_dense
    cases = [
        ("elementwise", sin, (10**4,)),
        ("elementwise", sin, (10**5,)),
        ("elementwise", sin, (10**6,)),
        ("banded", stencil, (10**4,)),
        ("layer-norm", layer_norm, (64, 256)),
        ("softmax", softmax, (64, 256)),
    ]
    if args.large:
        cases += [("layer-norm", layer_norm, (512, 1024)), ("softmax", softmax, (512, 1024))]
    else:
        for case in ("layer-norm", "softmax"):
            line(case, "512x1024", "sparse", skipped="pass --large")
    for case, primal, shape in cases:
        run_case(case, primal, shape, dense)


if __name__ == "__main__":
    main()
