"""`check_custom_jvp` and `assert_custom_jvp_correct`: validate a `jax.custom_jvp` rule.

The jvp rule is called directly (as `jax.jvp` would call it) to check its primal output,
its tangent structure and its linearity in the tangent; the JVP through the rule is then
compared with the engine's directional finite differences, with JAX's autodiff of the
undecorated `f.fun`, with the VJP JAX derives from it by transposition (the dot-product
test), under `vmap` and `jit`, and optionally differentiated once more.
"""

from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from . import _rule_checks as rc
from . import _rule_fd as rfd
from ._errors import raise_unless_passed
from ._rule_checks import RuleError, Target, guarded, skipped
from ._rule_result import CheckReport, RuleCheckResult

PyTree = Any
N_ADJOINT = 3  # (u, v) pairs in the dot-product test
CHECK_ORDER = (
    "primal",
    "structure",
    "linearity",
    "fd",
    "autodiff",
    "adjoint",
    "vmap",
    "jit",
    "second-order",
)
# vmap and jit run before fd: when they fail, fd checks the eager JVP instead of check_jvp's jitted, vmapped one.
RUN_ORDER = (
    "primal",
    "structure",
    "linearity",
    "vmap",
    "jit",
    "fd",
    "autodiff",
    "adjoint",
    "second-order",
)
TRANSPOSE_HINT = (
    "JAX derives reverse mode (jax.grad, jax.vjp) by transposing the rule's tangent computation: it must be linear "
    "in the tangents and built from transposable ops (no stop_gradient, pure_callback, round or tangent-dependent "
    "`where` conditions on the tangents)."
)


class _JvpCheck:
    """State shared by the checks of one `check_custom_jvp` call."""

    def __init__(
        self,
        f: Any,
        args: tuple,
        *,
        order: int,
        mode: str,
        eps: Any,
        rtol: Any,
        atol: Any,
        seed: int,
        reference: str,
        devices: tuple,
    ):
        self.t = Target(f, args, "jvp")
        self.devices = devices  # resolved: every finite-difference evaluation is split over them
        self.f, self.order, self.eps, self.rtol, self.atol, self.seed, self.reference = (
            f,
            order,
            eps,
            rtol,
            atol,
            seed,
            reference,
        )
        self.mode_arg = mode
        self.mode = mode  # the finite-difference mode actually used (set by the fd check)
        self.statuses: dict[str, str] = {}
        self._rule_jvp: Any = None
        self.jitted_pair = jax.jit(
            self.jvp_pair
        )  # shared by rule_jvp, the vmap loop and the jit check: one compilation
        self.fd_x64 = False  # whether the fd check's reference ran in float64
        self.kw = {"rtol": rtol, "atol": atol}
        self.outs: tuple = ()
        self.fatal: str | None = None
        self.tangent_out: Any = None
        self.fd_dir: rfd.Directional | None = None

    # -- helpers -----------------------------------------------------------------

    @property
    def primals(self) -> tuple:
        return tuple(self.t.args[i] for i in self.t.diff_pos)

    def tangents(self, salt: str | None) -> tuple:
        """A tangent for every differentiable argument: seeded normal for free leaves, zeros for held floats, float0 otherwise."""
        free = set(self.t.free_paths)

        def one(kp: tuple, x: Any, argnum: int) -> Any:
            path = f"args[{argnum}]" + jtu.keystr(kp)
            if rc._is_inexact_array(x):
                if path in free and salt is not None:
                    return rc.leaf_normal(self.seed, salt, path, tuple(x.shape), x.dtype)
                return np.zeros(x.shape, x.dtype)
            return np.zeros(np.shape(x), jax.dtypes.float0)

        return tuple(
            jtu.tree_map_with_path(lambda kp, x, i=i: one(kp, x, i), self.t.args[i])
            for i in self.t.diff_pos
        )

    def call_jvp(self, tangents: tuple) -> tuple:
        nondiff = [self.t.args[i] for i in self.t.nondiff]
        tangents = rc.as_jax_values(tangents)
        out = guarded(
            "jvp",
            self.f.jvp,
            *nondiff,
            self.primals,
            tangents,
            inputs=(*nondiff, self.primals, tangents),
        )
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise RuleError(
                f"the jvp rule must return a pair (primal_out, tangent_out); it returned {rc.describe(out)}"
            )
        return out

    def jvp_pair(self, free: list, v: list) -> tuple:
        return jax.jvp(self.t.closed, (free,), (list(v),))

    def rule_jvp(self, v: list) -> tuple:
        """(out, J v) through the rule at the point (jitted once per check, eager when the rule cannot be traced)."""
        if self._rule_jvp is None:
            self._rule_jvp = rc.jit_or_eager(self.jvp_pair, self.jitted_pair)
        return self._rule_jvp(self.t.free_values, list(v))

    def float_leaves(self, tree: Any) -> list:
        return [x for o, x in zip(self.outs, jtu.tree_leaves(tree)) if o.inexact]

    # -- 1. primal ------------------------------------------------------------------

    def primal(self) -> CheckReport:
        try:
            out = guarded("f.fun(*args)", rc.jit_or_eager(self.f.fun), *self.t.args)
        except RuleError:
            self.fatal = "f.fun(*args) raised (see primal)"
            raise
        self.outs, self.out_tree = rc.out_leaves(out)
        try:
            primal_out, self.tangent_out = self.call_jvp(self.tangents("structure"))
        except RuleError:
            self.fatal = "the jvp rule raised (see primal)"
            raise
        if jtu.tree_structure(primal_out) != self.out_tree:
            self.fatal = "the jvp rule's primal output has the wrong structure (see primal)"
            return CheckReport(
                name="primal",
                status="failed",
                message=f"the jvp rule's primal output has structure {rc.describe(primal_out)}; f.fun returns {rc.describe(out)}",
            )
        paths = [o.path for o in self.outs]
        bad = rc.compare_trees(
            jtu.tree_leaves(primal_out),
            jtu.tree_leaves(out),
            paths,
            [o.dtype for o in self.outs],
            rc.PRIMAL_ULPS,
            **self.kw,
        )
        for o, y in zip(self.outs, jtu.tree_leaves(primal_out)):
            if np.dtype(getattr(y, "dtype", np.asarray(y).dtype)) != o.dtype and not any(
                m.path == o.path for m in bad
            ):
                bad.insert(
                    0,
                    rc.Mismatch(
                        o.path,
                        None,
                        None,
                        None,
                        0.0,
                        0,
                        0,
                        f"dtype {np.dtype(y.dtype)} where f.fun returns {o.dtype}",
                    ),
                )
        if bad:
            return rc.mismatch_report(
                "primal",
                "the jvp rule's primal output differs from f.fun(*args) at {where} (an approximation or a different formula?)",
                bad,
                names=("jvp rule", "f.fun"),
            )
        return CheckReport(
            name="primal",
            status="passed",
            message=f"the jvp rule's primal output equals f.fun(*args) ({len(self.outs)} output leaf/leaves)",
        )

    # -- 2. structure ------------------------------------------------------------------

    def structure(self) -> CheckReport:
        t_out = self.tangent_out
        if jtu.tree_structure(t_out) != self.out_tree:
            self.fatal = "the tangent output is malformed (see structure)"
            return CheckReport(
                name="structure",
                status="failed",
                message=f"the jvp rule's tangent output has structure {rc.describe(t_out)}; the primal output is {rc.describe(jtu.tree_unflatten(self.out_tree, [np.zeros(o.shape, o.dtype) for o in self.outs]))}",
            )
        problems = []
        for o, x in zip(self.outs, jtu.tree_leaves(t_out)):
            expected = o.dtype if o.inexact else jax.dtypes.float0
            if type(x).__name__ == "SymbolicZero":
                shape, dtype = tuple(x.aval.shape), x.aval.dtype
            elif hasattr(x, "shape") and hasattr(x, "dtype"):
                shape, dtype = tuple(x.shape), x.dtype
            elif (
                isinstance(x, (float, int))
                and not isinstance(x, bool)
                and o.shape == ()
                and o.inexact
            ):
                continue
            else:
                problems.append(
                    (o.path, f"the tangent at {o.path} is a {type(x).__name__}, not an array")
                )
                continue
            if shape != o.shape:
                problems.append(
                    (
                        o.path,
                        f"the tangent at {o.path} has shape {shape}; the output has shape {o.shape}",
                    )
                )
            elif dtype != expected:
                problems.append(
                    (
                        o.path,
                        f"the tangent at {o.path} has dtype {rc._dtype_name(dtype)}; expected {rc._dtype_name(expected)} for a {o.dtype} output",
                    )
                )
        if problems:
            self.fatal = "the tangent output is malformed (see structure)"
            return CheckReport(
                name="structure",
                status="failed",
                message=problems[0][1],
                path=problems[0][0],
                details=tuple(m for _, m in problems[1:8]),
            )
        return CheckReport(
            name="structure",
            status="passed",
            message=f"the tangent output matches the primal output's structure, shapes and dtypes ({len(self.outs)} leaf/leaves)",
        )

    # -- 3. linearity ------------------------------------------------------------------

    def linearity(self) -> CheckReport:
        a, b = (
            rc.uniform_scalar(self.seed, "linearity-a"),
            rc.uniform_scalar(self.seed, "linearity-b"),
        )
        tu, tv = self.tangents("linearity-u"), self.tangents("linearity-v")

        def combine(x: Any, y: Any) -> Any:
            if getattr(x, "dtype", None) == jax.dtypes.float0:
                return x
            return (
                a * np.asarray(x, np.float64 if not np.iscomplexobj(x) else np.complex128)
                + b * np.asarray(y)
            ).astype(x.dtype)

        tw = jtu.tree_map(combine, tu, tv)
        ju, jv, jw, j0 = (
            self.float_leaves(self.call_jvp(tan)[1]) for tan in (tu, tv, tw, self.tangents(None))
        )
        outs = [o for o in self.outs if o.inexact]
        paths, dtypes = [o.path for o in outs], [o.dtype for o in outs]
        zero_scale = [
            np.full(
                np.shape(x),
                float(np.max(np.abs(rc._as_host(x)), initial=0.0))
                + float(np.max(np.abs(rc._as_host(y)), initial=0.0)),
            )
            for x, y in zip(ju, jv)
        ]
        bad = [
            m
            for m in (
                rc.compare_leaf(
                    x, np.zeros(np.shape(x)), p, d, rc.LINEARITY_ULPS, scale=s, **self.kw
                )
                for x, p, d, s in zip(j0, paths, dtypes, zero_scale)
            )
            if m
        ]
        if bad:
            return rc.mismatch_report(
                "linearity",
                "the jvp rule is not linear in the tangent: a zero tangent gives a nonzero {where}",
                bad,
                names=("jvp(0)", "zero"),
            )
        h = rc._as_host
        combo = [a * h(x) + b * h(y) for x, y in zip(ju, jv)]
        scale = [np.abs(a * h(x)) + np.abs(b * h(y)) + np.abs(h(z)) for x, y, z in zip(ju, jv, jw)]
        bad = [
            m
            for m in (
                rc.compare_leaf(z, c, p, d, rc.LINEARITY_ULPS, scale=s, **self.kw)
                for z, c, p, d, s in zip(jw, combo, paths, dtypes, scale)
            )
            if m
        ]
        if bad:
            return rc.mismatch_report(
                "linearity",
                "the jvp rule is not linear in the tangent: jvp(a*t1 + b*t2) != a*jvp(t1) + b*jvp(t2) at {where}",
                bad,
                names=("jvp(a*t1+b*t2)", "a*jvp(t1)+b*jvp(t2)"),
                extra=(
                    f"a = {a:.4g}, b = {b:.4g}; t1, t2 seeded normal tangents (seed {self.seed})",
                ),
            )
        return CheckReport(
            name="linearity",
            status="passed",
            message=f"jvp(0) = 0 and jvp(a*t1 + b*t2) = a*jvp(t1) + b*jvp(t2) (a={a:.3g}, b={b:.3g})",
        )

    # -- 4. finite differences -------------------------------------------------------------

    def fd(self) -> CheckReport:
        if not any(o.inexact for o in self.outs):
            return skipped("fd", "f has no floating-point outputs: nothing to differentiate")
        check_jvp = rfd.jacobian_backend("check_jvp")
        unsafe = [n for n in ("vmap", "jit") if self.statuses.get(n) in ("failed", "error")]
        note = ""
        if check_jvp is not None and not unsafe:
            fn = rc.MirrorFn(self.t, self.t.closed, name=self.t.name)
            try:
                res = check_jvp(
                    fn,
                    self.t.mirror(),
                    argnums=self.t.fd_argnums,
                    mode=self.mode_arg,
                    eps=self.eps,
                    rtol=self.rtol,
                    atol=self.atol,
                    seed=self.seed,
                    reference=self.reference,
                    devices=self.devices,
                    locate_rules=False,
                )
            except Exception as error:  # noqa: BLE001 - fall back to the eager directional check below
                note = f"check_jvp could not run ({type(error).__name__}: {rc.first_line(error)}); checked the eager JVP along seeded directions instead"
            else:
                self.mode = res.mode
                self.fd_x64 = res.reference_fallback is None and res.reference.startswith("float64")
                if res.status != "failed" or self._eager_confirms(res):
                    return rfd.jacobian_report(
                        res,
                        "the JVP",
                        "the jvp rule",
                        extra=(
                            "check_jvp: columns of the Jacobian through jax.jvp (the rule), jitted and vmapped",
                        ),
                    )
                note = "check_jvp (jit + vmap of the JVP) disagrees with finite differences but the eager JVP agrees with them: see the vmap and jit checks"
        elif unsafe:
            note = f"the {' and '.join(unsafe)} check failed, so the JVP is checked eagerly along seeded directions, not through check_jvp's jitted, vmapped Jacobian"
        d = self.directional_fd()
        self.mode, self.fd_x64 = "probe", d.x64
        return rfd.directional_report(
            "fd",
            "the JVP",
            d,
            extra=(
                f"one seeded direction per input leaf (seed {self.seed})",
                *((note,) if note else ()),
            ),
        )

    def _eager_confirms(self, res: Any) -> bool:
        """Whether the unbatched JVP also disagrees at check_jvp's worst entry (else its vmapped columns were wrong)."""
        b = res.failed_blocks[0]
        w = b.worst
        outs = [o.path for o in self.outs if o.inexact]
        if (
            w is None
            or w.input_part
            or w.output_part
            or b.output_path not in outs
            or b.input_path not in self.t.free_paths
        ):
            return self.directional_fd().status == "failed"
        i = self.t.free_paths.index(b.input_path)
        v = [np.zeros(x.shape, d) for x, d in zip(self.t.free_values, self.t.free_dtypes)]
        v[i][tuple(w.input_index)] = 1
        column = self.float_leaves(guarded("the JVP", self.rule_jvp, v)[1])
        value = float(np.asarray(column[outs.index(b.output_path)])[tuple(w.output_index)])
        return not abs(value - w.numeric) <= w.tolerance

    def directional_fd(self) -> rfd.Directional:
        """The eager JVP along one seeded direction per input leaf vs the engine's stencil (cached)."""
        if self.fd_dir is None:
            self.fd_dir = rfd.directional(
                self.t,
                self.t.closed,
                lambda v: self.rule_jvp(v)[1],
                salt="fd",
                seed=self.seed,
                eps=self.eps,
                rtol=self.rtol,
                atol=self.atol,
                reference=self.reference,
                devices=self.devices,
                label=self.t.name,
            )
        return self.fd_dir

    # -- 5. autodiff of f.fun ------------------------------------------------------------------

    def autodiff(self) -> CheckReport:
        if self.statuses.get("fd") not in ("passed", "failed", "skipped"):
            return skipped("autodiff", "not run: the fd check raised")
        use64 = self.fd_x64 and not all(
            x in (np.float64, np.complex128) for x in self.t.free_dtypes
        )
        jvp_fun = rc.jit_or_eager(
            lambda fr, v: self.float_leaves(jax.jvp(self.t.fun_closed, (fr,), (v,))[1])
        )
        directions = self.fd_dir.tangents if self.fd_dir is not None else self._leaf_directions()
        found = self._compare_along(directions, jvp_fun, use64)
        if isinstance(found, CheckReport):
            return found
        if found is not None and self.statuses.get("fd") == "passed":
            d = (
                self.directional_fd()
            )  # finite differences along the same kind of directions, to see who is wrong
            found = self._compare_along(d.tangents, jvp_fun, use64)
            if isinstance(found, CheckReport):
                return found
            if found is not None and self._fd_sides_with_rule(*found[:3]):
                return skipped(
                    "autodiff",
                    f"JAX's autodiff of f.fun disagrees with finite differences along {self.t.free_paths[found[0]]} while the rule agrees with them: f.fun's own derivative is inaccurate here, not the rule",
                )
        if found is not None:
            j, _, _, bad = found
            along = self.t.free_paths[j]
            report = rc.mismatch_report(
                "autodiff",
                "the JVP along "
                + along
                + " differs from JAX's autodiff of f.fun at {where} (beyond rounding)",
                bad,
                names=("rule", "autodiff"),
                extra=(
                    f"direction: a seeded direction in {along} only; autodiff evaluated in {'float64' if use64 else 'native precision'}",
                ),
            )
            return _with_argument(report, along)
        return CheckReport(
            name="autodiff",
            status="passed",
            message=f"the JVP equals JAX's autodiff of f.fun along {len(directions)} direction(s) (to rounding; {'float64' if use64 else 'native'} reference)",
        )

    def _leaf_directions(self) -> list[list[np.ndarray]]:
        """One seeded direction per free leaf (zero on the other leaves)."""
        out = []
        for j, (p, x, d) in enumerate(
            zip(self.t.free_paths, self.t.free_values, self.t.free_dtypes)
        ):
            out.append(
                [
                    rc.leaf_normal(self.seed, "autodiff", p, tuple(x.shape), d)
                    if i == j
                    else np.zeros(x.shape, d)
                    for i, x in enumerate(self.t.free_values)
                ]
            )
        return out

    def _compare_along(self, directions: list, jvp_fun: Any, use64: bool) -> Any:
        """None if the rule's JVP equals autodiff of f.fun along every direction; a skipped report when
        autodiff is unavailable or not finite; else (direction index, rule values, reference values, mismatches)."""
        paths = [o.path for o in self.outs if o.inexact]
        dtypes = [o.dtype for o in self.outs if o.inexact]
        for j, v in enumerate(directions):
            r = self.float_leaves(guarded("the JVP", self.rule_jvp, v)[1])
            try:
                a = jvp_fun(self.t.free_values, v)
            except Exception as error:  # noqa: BLE001
                return skipped(
                    "autodiff",
                    f"f.fun is not differentiable by JAX ({type(error).__name__}: {rc.first_line(error)}); the rule is checked against finite differences only",
                )
            ref, noise = a, None
            if use64:
                with jax.enable_x64(True):
                    ref = [
                        np.asarray(x)
                        for x in jvp_fun(
                            [rc.upcast(x) for x in self.t.free_values], [rc.upcast(x) for x in v]
                        )
                    ]
                noise = [np.abs(rc._as_host(x) - rc._as_host(y)) for x, y in zip(a, ref)]
            bad = []
            for i, (x, y, p, dt) in enumerate(zip(r, ref, paths, dtypes)):
                if not np.all(np.isfinite(rc._as_host(y))) and np.all(np.isfinite(rc._as_host(x))):
                    return skipped(
                        "autodiff",
                        f"JAX's autodiff of f.fun is not finite at {p} (NaN/Inf) where the rule is finite: the kind of point custom rules exist for",
                    )
                m = rc.compare_leaf(
                    x,
                    y,
                    p,
                    dt,
                    rc.AUTODIFF_ULPS / 2 if use64 else rc.AUTODIFF_ULPS,
                    noise=None if noise is None else noise[i],
                    **self.kw,
                )
                if m:
                    bad.append(m)
            if bad:
                return j, r, ref, bad
        return None

    def _fd_sides_with_rule(self, j: int, r: list, ref: list) -> bool:
        d = self.fd_dir
        if d is None or d.status != "passed":
            return False
        flat_r, flat_a = rc.ravel_host(r), rc.ravel_host(ref)
        numeric = d.numeric[j][self._float_positions()]
        if numeric.shape != flat_r.shape:
            return False
        return float(np.linalg.norm(flat_a - numeric)) > 10 * float(
            np.linalg.norm(flat_r - numeric)
        )

    def _float_positions(self) -> np.ndarray:
        idx = [np.arange(o.offset, o.offset + o.size) for o in self.outs if o.inexact]
        return np.concatenate(idx) if idx else np.zeros(0, int)

    # -- 6. adjoint (dot-product) test -----------------------------------------------------------

    def adjoint(self) -> CheckReport:
        float_outs = [o for o in self.outs if o.inexact]
        if not float_outs:
            return skipped("adjoint", "f has no floating-point outputs")
        try:
            _, vjp_fn = jax.vjp(self.t.closed, self.t.free_values)
        except Exception as error:  # noqa: BLE001
            return CheckReport(
                name="adjoint",
                status="error",
                message=f"JAX cannot derive a VJP from the jvp rule: {type(error).__name__}: {rc.first_line(error)}",
                details=(TRANSPOSE_HINT,),
            )
        lines = []
        for k in range(N_ADJOINT):
            v = rc.random_free(self.t, self.seed, f"adjoint-v{k}")
            u = [
                rc.leaf_normal(self.seed, f"adjoint-u{k}", o.path, o.shape, o.dtype)
                for o in float_outs
            ]
            jv = self.float_leaves(guarded("the JVP", self.rule_jvp, v)[1])
            it = iter(u)
            ct = jtu.tree_unflatten(
                self.out_tree,
                [
                    next(it) if o.inexact else np.zeros(o.shape, jax.dtypes.float0)
                    for o in self.outs
                ],
            )
            try:
                (jtu_,) = vjp_fn(ct)
            except Exception as error:  # noqa: BLE001
                return CheckReport(
                    name="adjoint",
                    status="error",
                    message=f"JAX cannot transpose the jvp rule into a VJP: {type(error).__name__}: {rc.first_line(error)}",
                    details=(TRANSPOSE_HINT,),
                )
            lhs_terms = [np.real(np.conj(rc._as_host(a)) * rc._as_host(b)) for a, b in zip(u, jv)]
            rhs_terms = [np.real(np.conj(rc._as_host(a)) * rc._as_host(b)) for a, b in zip(jtu_, v)]
            lhs, rhs = (
                sum(float(np.sum(x)) for x in lhs_terms),
                sum(float(np.sum(x)) for x in rhs_terms),
            )
            mag = sum(float(np.sum(np.abs(x))) for x in lhs_terms + rhs_terms)
            eps = float(np.finfo(np.result_type(*self.t.free_dtypes)).eps)
            tol = (
                rc.LINEARITY_ULPS * eps * mag
                + (self.atol or 0.0)
                + (self.rtol or 0.0) * abs(rhs)
                + 1e-300
            )
            lines.append(
                f"pair {k}: <u, J v> = {rc.fmt(lhs)}, <J^T u, v> = {rc.fmt(rhs)} (|diff| {abs(lhs - rhs):.2e}, tolerance {tol:.2e})"
            )
            if not abs(lhs - rhs) <= tol:
                return CheckReport(
                    name="adjoint",
                    status="failed",
                    message=f"<u, J v> from the jvp rule ({rc.fmt(lhs)}) != <J^T u, v> from its transpose ({rc.fmt(rhs)}): the rule's tangent is not linear (an affine term?) or not transposable",
                    details=tuple(lines)
                    + (f"u, v seeded normal (seed {self.seed})", TRANSPOSE_HINT),
                )
        return CheckReport(
            name="adjoint",
            status="passed",
            message=f"<u, J v> = <J^T u, v> for {N_ADJOINT} seeded pairs (the transposed rule is consistent)",
            details=tuple(lines),
        )

    # -- 7-9. transformations -------------------------------------------------------------------

    def _paths(self) -> tuple[list[str], list]:
        return [o.path for o in self.outs] + [f"tangent {o.path}" for o in self.outs], [
            o.dtype for o in self.outs
        ] * 2

    def vmap(self) -> CheckReport:
        xs = rc.batch_point(self.t, self.seed)
        ws = [rc.random_free(self.t, self.seed, f"vmap{b}") for b in range(rc.BATCH)]
        paths, dtypes = self._paths()
        return rc.vmap_check(self.jvp_pair, self.jitted_pair, xs, ws, paths, dtypes, "JVP", self.kw)

    def jit(self) -> CheckReport:
        paths, dtypes = self._paths()
        return rc.jit_check(
            self.jvp_pair,
            self.jitted_pair,
            self.t.free_values,
            rc.random_free(self.t, self.seed, "jit"),
            paths,
            dtypes,
            "JVP",
            self.kw,
        )

    def second_order(self) -> CheckReport:
        v1 = rc.random_free(self.t, self.seed, "second-order-v1")
        G = lambda fr: jax.jvp(self.t.closed, (fr,), (v1,))[1]  # noqa: E731
        d = rfd.directional(
            self.t,
            G,
            lambda v: jax.jvp(G, (self.t.free_values,), (list(v),))[1],
            salt="second-order",
            seed=self.seed,
            eps=self.eps,
            rtol=self.rtol,
            atol=self.atol,
            reference=self.reference,
            devices=self.devices,
            label="the JVP x -> J(x) v1",
        )
        return rfd.directional_report(
            "second-order",
            "the derivative of the JVP (the jvp rule differentiated by jax.jvp)",
            d,
            extra=("v1: a seeded tangent over all input leaves; directions seeded per input leaf",),
        )


def _with_argument(report: CheckReport, along: str) -> CheckReport:
    import dataclasses

    return dataclasses.replace(report, argument=rc.argument_of(along))


def check_custom_jvp(
    f: Any,
    args: tuple,
    *,
    order: int = 1,
    mode: str = "auto",
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    reference: str = "auto",
    devices: Any = None,
) -> RuleCheckResult:
    """Validates a `jax.custom_jvp` rule at `args`: values, structure, linearity, transformations.

    Runs these checks, each reported as passed, failed, skipped or error:

    - `primal`: the jvp rule's primal output equals `f.fun(*args)` (to rounding).
    - `structure`: the tangent output matches the primal output's pytree, shapes and
      dtypes (float0 for integer outputs; SymbolicZero allowed).
    - `linearity`: jvp(0) = 0 and jvp(a t1 + b t2) = a jvp(t1) + b jvp(t2).
    - `fd`: the JVP along one seeded direction per input leaf matches the engine's 4-point
      central differences along it, naming the input leaf and the output element.
    - `autodiff`: the JVP equals `jax.jvp` of `f.fun` to rounding (skipped, with the reason,
      when `f.fun` is not differentiable by JAX or its autodiff is the inaccurate one).
    - `adjoint`: <u, J v> = <J^T u, v> between the rule's JVP and the VJP JAX derives by
      transposing it (what `jax.grad` uses).
    - `vmap`: `jax.vmap` of the JVP over 3 examples equals a loop; `jit`: jitted equals eager.
    - `second-order` (`order=2`): the JVP differentiated again matches finite differences.

    Exceptions raised by the jvp rule or f.fun are reported as "error" findings.

    Args:
      f: A `jax.custom_jvp` function with its rule defined.
      args: Tuple of arguments, as in `f(*args)` (nondiff arguments included, in place).
      order: 1, or 2 to check second derivatives through the rule.
      mode: "full" (every Jacobian entry, through `check_jvp`), "probe" (random projections
        per block) or "auto"; the eager fallback is directional (one direction per input leaf).
      eps: Absolute finite-difference step; `None` picks one per coordinate.
      rtol, atol: Loosen the tolerances (finite-difference and exact comparisons alike).
      seed: Seed of every random tangent, cotangent, direction and batch. Recorded.
      reference: "auto", "float64" or "native": where finite differences are evaluated.
      devices: Devices the finite differences are split over: None (all devices of the
        arguments' platform; all global devices in a multi-process run), an int k (the
        first k) or a sequence of `jax.Device`. Recorded as `result.devices`.

    Returns:
      A `RuleCheckResult`; `str(result)` is the full report.

    Raises:
      TypeError: `f` is not a `jax.custom_jvp` (or has no rule); misuse of the options.

    Example:
      >>> jaxcheck.check_custom_jvp(jax.nn.relu, (jnp.array([-1.5, 0.5, 2.0]),)).status
      'passed'
    """
    return rc.run_battery(
        "jvp",
        _JvpCheck,
        f,
        args,
        order=order,
        mode=mode,
        eps=eps,
        rtol=rtol,
        atol=atol,
        seed=seed,
        reference=reference,
        devices=devices,
        run_order=RUN_ORDER,
        report_order=CHECK_ORDER,
    )


def assert_custom_jvp_correct(
    f: Any, args: tuple, *, allow_inconclusive: bool = False, **kwargs: Any
) -> RuleCheckResult:
    """Asserts that `check_custom_jvp(f, args, **kwargs)` passes.

    Args:
      f, args: As in `check_custom_jvp`.
      allow_inconclusive: Accept an inconclusive verdict instead of failing.
      **kwargs: Passed to `check_custom_jvp`.

    Returns:
      The `RuleCheckResult` when every check passes.

    Raises:
      GradCheckError: some check failed or raised; the message is the report.
    """
    __tracebackhide__ = True
    return raise_unless_passed(check_custom_jvp(f, args, **kwargs), allow_inconclusive)
