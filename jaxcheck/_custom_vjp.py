"""`check_custom_vjp` and `assert_custom_vjp_correct`: validate a `jax.custom_vjp` rule.

The fwd and bwd rules are called directly (as `jax.vjp` would call them) to check the
primal output, the cotangent structure and linearity; the VJP through the rule is then
compared with finite differences (the core engine, via `check_grad` of <u, f(x)>), with
JAX's autodiff of the undecorated `f.fun`, under `vmap` and `jit`, and optionally
differentiated once more.
"""

from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from . import _rule_checks as rc
from . import _rule_fd as rfd
from ._errors import raise_unless_passed
from ._grad import check_grad
from ._rule_checks import RuleError, Target, guarded, skipped
from ._rule_result import CheckReport, RuleCheckResult

PyTree = Any
N_COTANGENTS = 2  # seeded cotangents u for the finite-difference check of <u, f(x)>


def pair(outs: tuple, u: list, out: PyTree) -> jax.Array:
    """<u, out> over the floating-point output leaves (u holds one array per such leaf)."""
    total = jnp.zeros(())
    ys = [y for o, y in zip(outs, jtu.tree_leaves(out)) if o.inexact]
    for uu, y in zip(u, ys):
        y, uu = jnp.asarray(y), jnp.asarray(uu)
        term = (
            jnp.sum(jnp.real(uu) * jnp.real(y) + jnp.imag(uu) * jnp.imag(y))
            if jnp.iscomplexobj(y)
            else jnp.sum(uu * y)
        )
        total = total + term
    return total


class _VjpCheck:
    """State shared by the checks of one `check_custom_vjp` call."""

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
        self.t = Target(f, args, "vjp")
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
        self._grad_results: dict[int, Any] = {}
        self.fd_x64 = False  # whether the fd check's reference ran in float64
        self._L = rc.MirrorFn(
            self.t,
            lambda fr, u: pair(self.outs, u, self.t.closed(fr)),
            n_extra=1,
            name=f"<u, {self.t.name}>",
        )
        self.kw = {"rtol": rtol, "atol": atol}
        self.outs: tuple = ()
        self.res: Any = None
        self.fatal: str | None = None  # why later checks cannot run
        self.cts: list[list[np.ndarray]] = []  # fd cotangents (float outputs only)
        self.rule_grads: list[list] = []
        self._rule_grad: Any = None
        self.jitted_pair = jax.jit(
            self.vjp_pair
        )  # shared by the vmap loop and the jit check: one compilation

    # -- helpers -----------------------------------------------------------------

    @property
    def float_outs(self) -> list:
        return [o for o in self.outs if o.inexact]

    def full_ct(self, u: list) -> PyTree:
        it = iter(rc.as_jax_values(list(u)))
        return jtu.tree_unflatten(
            self.out_tree,
            [next(it) if o.inexact else np.zeros(o.shape, jax.dtypes.float0) for o in self.outs],
        )

    def float_ct(self, salt: str) -> list[np.ndarray]:
        return [rc.leaf_normal(self.seed, salt, o.path, o.shape, o.dtype) for o in self.float_outs]

    def rule_grad(self, u: list) -> list:
        """The VJP through the rule at the point (jitted once per check, eager when bwd cannot be traced)."""
        if self._rule_grad is None:
            self._rule_grad = rc.jit_or_eager(self.rule_grad_at)
        return self._rule_grad(self.t.free_values, u)

    def vjp_pair(self, free: list, u: list) -> tuple:
        out, vjp_fn = jax.vjp(self.t.closed, free)
        (grads,) = vjp_fn(self.full_ct(u))
        return out, grads

    def fwd_args(self) -> tuple:
        if not self.f.symbolic_zeros:
            return self.t.args
        from jax.custom_derivatives import CustomVJPPrimal

        wrap = lambda x: CustomVJPPrimal(x, rc._is_inexact_array(x))  # noqa: E731
        return tuple(
            a if i in self.t.nondiff else jtu.tree_map(wrap, a) for i, a in enumerate(self.t.args)
        )

    def call_bwd(self, ct: PyTree) -> Any:
        nondiff = [self.t.args[i] for i in self.t.nondiff]
        ct = rc.as_jax_values(ct)
        return guarded("bwd", self.f.bwd, *nondiff, self.res, ct, inputs=(*nondiff, self.res, ct))

    # -- 1. primal ------------------------------------------------------------------

    def primal(self) -> CheckReport:
        try:
            out = guarded("f.fun(*args)", rc.jit_or_eager(self.f.fun), *self.t.args)
        except RuleError:
            self.fatal = "f.fun(*args) raised (see primal)"
            raise
        self.outs, self.out_tree = rc.out_leaves(out)
        try:
            pair_out = guarded("fwd", self.f.fwd, *self.fwd_args(), inputs=self.t.args)
        except RuleError:
            self.fatal = "fwd raised (see primal)"
            raise
        if not isinstance(pair_out, (tuple, list)) or len(pair_out) != 2:
            self.fatal = "fwd did not return (primal_out, residuals) (see primal)"
            return CheckReport(
                name="primal",
                status="failed",
                message=f"fwd must return a pair (primal_out, residuals); it returned {rc.describe(pair_out)}",
            )
        fwd_out, self.res = pair_out
        if jtu.tree_structure(fwd_out) != self.out_tree:
            self.fatal = "fwd's primal output has the wrong structure (see primal)"
            return CheckReport(
                name="primal",
                status="failed",
                message=f"fwd's primal output has structure {rc.describe(fwd_out)}; f.fun returns {rc.describe(out)}",
            )
        paths = [o.path for o in self.outs]
        bad = rc.compare_trees(
            jtu.tree_leaves(fwd_out),
            jtu.tree_leaves(out),
            paths,
            [o.dtype for o in self.outs],
            rc.PRIMAL_ULPS,
            **self.kw,
        )
        for o, y in zip(self.outs, jtu.tree_leaves(fwd_out)):
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
                "fwd's primal output differs from f.fun(*args) at {where} (an approximation or a different formula in fwd?)",
                bad,
                names=("fwd", "f.fun"),
            )
        return CheckReport(
            name="primal",
            status="passed",
            message=f"fwd's primal output equals f.fun(*args) ({len(self.outs)} output leaf/leaves)",
        )

    # -- 2. structure ------------------------------------------------------------------

    def structure(self) -> CheckReport:
        ct = self.full_ct(self.float_ct("structure"))
        cts = self.call_bwd(ct)
        problems = self._structure_problems(cts)
        if problems:
            self.fatal = "bwd's output is malformed (see structure)"
            arg, path, msg = problems[0]
            return CheckReport(
                name="structure",
                status="failed",
                message=msg,
                argument=arg,
                path=path,
                details=tuple(m for _, _, m in problems[1:8]),
            )
        names = ", ".join(f"args[{i}]" for i in self.t.diff_pos)
        return CheckReport(
            name="structure",
            status="passed",
            message=f"bwd returns one cotangent per differentiable argument ({names}) with matching structure, shapes and dtypes",
        )

    def _structure_problems(self, cts: Any) -> list[tuple[str | None, str | None, str]]:
        n = len(self.t.diff_pos)
        expected = ", ".join(f"args[{i}]" for i in self.t.diff_pos)
        excluded = f"; nondiff_argnums={self.t.nondiff} excluded" if self.t.nondiff else ""
        if not isinstance(cts, (tuple, list)):
            return [
                (
                    None,
                    None,
                    f"bwd must return a tuple of {n} cotangent(s) ({expected}{excluded}); it returned {rc.describe(cts)}. Did you mean `return (ct,)`?",
                )
            ]
        if len(cts) != n:
            return [
                (
                    None,
                    None,
                    f"bwd returned a tuple of {len(cts)} cotangent(s); expected {n}, one per differentiable argument ({expected}{excluded})",
                )
            ]
        problems = []
        for argnum, entry in zip(self.t.diff_pos, cts):
            arg = f"args[{argnum}]"
            try:
                pairs = _pair_up(entry, self.t.args[argnum], argnum)
            except (ValueError, TypeError):
                problems.append(
                    (
                        arg,
                        arg,
                        f"the cotangent for {arg} has structure {rc.describe(entry)}; expected {rc.describe(self.t.args[argnum])} (or None)",
                    )
                )
                continue
            for path, primal, c, kind in pairs:
                msg = _leaf_problem(path, primal, c, kind)
                if msg:
                    problems.append((arg, path, msg))
        return problems

    def aligned(self, cts: Any) -> list[np.ndarray]:
        """bwd's cotangents for every floating-point leaf of the differentiable arguments (None -> zeros)."""
        out = []
        for argnum, entry in zip(self.t.diff_pos, cts):
            for _, primal, c, _ in _pair_up(entry, self.t.args[argnum], argnum):
                if rc._is_inexact_array(primal):
                    out.append(
                        np.zeros(np.shape(primal), primal.dtype)
                        if c is None or _is_symbolic_zero(c)
                        else np.asarray(c)
                    )
        return out

    def aligned_paths(self) -> tuple[list[str], list[np.dtype]]:
        paths, dtypes = [], []
        for argnum in self.t.diff_pos:
            for path, primal, _, _ in _pair_up(None, self.t.args[argnum], argnum, zeros=True):
                if rc._is_inexact_array(primal):
                    paths.append(path)
                    dtypes.append(np.dtype(primal.dtype))
        return paths, dtypes

    # -- 3. linearity ------------------------------------------------------------------

    def linearity(self) -> CheckReport:
        u, v = self.float_ct("linearity-u"), self.float_ct("linearity-v")
        a, b = (
            rc.uniform_scalar(self.seed, "linearity-a"),
            rc.uniform_scalar(self.seed, "linearity-b"),
        )
        w = [(a * _c(x) + b * _c(y)).astype(x.dtype) for x, y in zip(u, v)]
        zero = [np.zeros_like(x) for x in u]
        bu, bv, bw, b0 = (self.aligned(self.call_bwd(self.full_ct(c))) for c in (u, v, w, zero))
        paths, dtypes = self.aligned_paths()
        zero_scale = [
            np.full(
                np.shape(x),
                float(np.max(np.abs(x), initial=0.0)) + float(np.max(np.abs(y), initial=0.0)),
            )
            for x, y in zip(bu, bv)
        ]
        bad = [
            m
            for m in (
                rc.compare_leaf(x, np.zeros_like(x), p, d, rc.LINEARITY_ULPS, scale=s, **self.kw)
                for x, p, d, s in zip(b0, paths, dtypes, zero_scale)
            )
            if m
        ]
        if bad:
            return rc.mismatch_report(
                "linearity",
                "bwd is not linear in the cotangent: a zero cotangent gives a nonzero {where}",
                bad,
                names=("bwd(0)", "zero"),
                argument_of=rc.argument_of,
            )
        combo = [a * _c(x) + b * _c(y) for x, y in zip(bu, bv)]
        scale = [
            np.abs(a * _c(x)) + np.abs(b * _c(y)) + np.abs(_c(z)) for x, y, z in zip(bu, bv, bw)
        ]
        bad = [
            m
            for m in (
                rc.compare_leaf(z, c, p, d, rc.LINEARITY_ULPS, scale=s, **self.kw)
                for z, c, p, d, s in zip(bw, combo, paths, dtypes, scale)
            )
            if m
        ]
        if bad:
            return rc.mismatch_report(
                "linearity",
                "bwd is not linear in the cotangent: bwd(a*u + b*v) != a*bwd(u) + b*bwd(v) at {where}",
                bad,
                names=("bwd(a*u+b*v)", "a*bwd(u)+b*bwd(v)"),
                argument_of=rc.argument_of,
                extra=(
                    f"a = {a:.4g}, b = {b:.4g}; u, v seeded normal cotangents (seed {self.seed})",
                ),
            )
        return CheckReport(
            name="linearity",
            status="passed",
            message=f"bwd(0) = 0 and bwd(a*u + b*v) = a*bwd(u) + b*bwd(v) (a={a:.3g}, b={b:.3g})",
        )

    # -- 4. finite differences -----------------------------------------------------------

    def _scaled_cotangents(self) -> list[list[np.ndarray]]:
        """Seeded cotangents, each output leaf's block scaled so its VJP contribution has unit norm."""
        _, vjp_fn = guarded(
            "jax.vjp through the rule",
            jax.vjp,
            self.t.closed,
            self.t.free_values,
            inputs=self.t.free_values,
        )
        out = []
        for k in range(N_COTANGENTS):
            z = self.float_ct(f"fd{k}")
            for j in range(len(z)) if len(z) > 1 else ():
                masked = [z[i] if i == j else np.zeros_like(z[i]) for i in range(len(z))]
                (g,) = guarded("bwd", vjp_fn, self.full_ct(masked), inputs=masked)
                norm = float(
                    np.sqrt(sum(np.sum(np.abs(np.asarray(x, np.float64)) ** 2) for x in g))
                )
                scale = (
                    1.0 / norm
                    if np.isfinite(norm) and norm > 0
                    else 1.0 / np.sqrt(max(z[j].size, 1))
                )
                z[j] = (np.asarray(z[j]) * scale).astype(z[j].dtype)
            out.append(z)
        return out

    def fd(self) -> CheckReport:
        if not self.float_outs:
            return skipped("fd", "f has no floating-point outputs: nothing to differentiate")
        self.cts = self._scaled_cotangents()
        for u in self.cts:
            self.rule_grads.append(
                guarded(
                    "the VJP through the rule (jax.grad of <u, f(x)>)",
                    self.rule_grad,
                    u,
                    inputs=(self.t.free_values, u),
                )
            )
        check_vjp = rfd.jacobian_backend("check_vjp")
        unsafe = [n for n in ("vmap", "jit") if self.statuses.get(n) in ("failed", "error")]
        note = ""
        if check_vjp is not None and not unsafe:
            fn = rc.MirrorFn(self.t, self.t.closed, name=self.t.name)
            try:
                res = check_vjp(
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
            except Exception as error:  # noqa: BLE001 - fall back to the eager path below
                note = f"check_vjp could not run ({type(error).__name__}: {rc.first_line(error)}); checked <u, f(x)> with the eager VJP instead"
            else:
                self.mode = res.mode
                self.fd_x64 = res.reference_fallback is None and res.reference.startswith("float64")
                if res.status != "failed" or self._eager_confirms(res):
                    return rfd.jacobian_report(
                        res,
                        "the VJP",
                        "bwd",
                        extra=(
                            "check_vjp: rows of the Jacobian through jax.vjp (the rule's bwd), jitted and vmapped",
                        ),
                    )
                note = "check_vjp (jit + vmap of the VJP) disagrees with finite differences but the eager VJP agrees with them: see the vmap and jit checks"
        elif unsafe:
            note = f"the {' and '.join(unsafe)} check failed, so the VJP is checked eagerly (<u, f(x)> per seeded cotangent), not through check_vjp's jitted, vmapped Jacobian"
        return self._eager_fd(note)

    def _eager_result(self, k: int, u: list | None = None, r: list | None = None) -> Any:
        """`check_grad` of <u_k, f(x)> with the rule's eager VJP as the analytic gradient (cached per k)."""
        key = k if u is None else None
        if key is not None and key in self._grad_results:
            return self._grad_results[key]
        u = self.cts[k] if u is None else u
        r = self.rule_grads[k] if r is None else r
        mirror = self.t.mirror()
        grads = _per_argnum(self.t, mirror, r)
        res = guarded(
            "finite differences of <u, f(x)> (f evaluated under jit and vmap)",
            lambda: check_grad(
                self._L,
                (*mirror, u),
                argnums=self.t.fd_argnums,
                grad_fn=lambda *a: grads,
                eps=self.eps,
                rtol=self.rtol,
                atol=self.atol,
                seed=self.seed,
                mode=self.mode_arg,
                reference=self.reference,
                devices=self.devices,
                locate_rules=False,
            ),
            inputs=self.t.free_values,
        )
        if key is not None:
            self._grad_results[key] = res
        return res

    def _eager_confirms(self, res: Any) -> bool:
        """Whether the unbatched VJP also disagrees at check_vjp's worst entry (else its vmapped rows were wrong)."""
        b = res.failed_blocks[0]
        w = b.worst
        outs = [o.path for o in self.float_outs]
        if (
            w is None
            or w.input_part
            or w.output_part
            or b.output_path not in outs
            or b.input_path not in self.t.free_paths
        ):
            j = outs.index(b.output_path) if b.output_path in outs else None
            u = (
                self.cts[0]
                if j is None
                else [x if i == j else np.zeros_like(x) for i, x in enumerate(self.cts[0])]
            )
            return (
                self._eager_result(
                    0, u, guarded("the VJP through the rule", self.rule_grad, u)
                ).status
                == "failed"
            )
        j = outs.index(b.output_path)
        u = [np.zeros(o.shape, o.dtype) for o in self.float_outs]
        u[j][tuple(w.output_index)] = 1
        row = guarded("the VJP through the rule", self.rule_grad, u)
        value = float(np.asarray(row[self.t.free_paths.index(b.input_path)])[tuple(w.input_index)])
        return not abs(value - w.numeric) <= w.tolerance

    def _eager_fd(self, note: str) -> CheckReport:
        results = [self._eager_result(k) for k in range(len(self.cts))]
        self.mode = results[0].mode
        self.fd_x64 = results[0].reference_fallback is None and results[0].reference.startswith(
            "float64"
        )
        extra = (note,) if note else ()
        failed = [(k, r) for k, r in enumerate(results) if r.status == "failed"]
        if failed:
            k, res = failed[0]
            leaf = res.failed_leaves[0]
            msg = f"the VJP disagrees with finite differences at {leaf.path}{list(leaf.worst_index)}: bwd gives {rc.fmt(leaf.worst_analytic)}, finite differences {rc.fmt(leaf.worst_numeric)}"
            details = [
                *extra,
                f"cotangent u #{k} (seeded normal, each output leaf's block scaled to a unit VJP; seed {self.seed})",
            ]
            details += self._localize_outputs(self.cts[k])
            details += ["", *str(res).splitlines()]
            return CheckReport(
                name="fd",
                status="failed",
                message=msg,
                argument=rc.argument_of(leaf.path),
                path=leaf.path,
                index=tuple(leaf.worst_index),
                details=tuple(details),
                results=tuple(results),
            )
        unsure = [r for r in results if r.status == "inconclusive"]
        if unsure:
            return CheckReport(
                name="fd",
                status="skipped",
                inconclusive=True,
                message=f"inconclusive: {unsure[0].reason}",
                details=extra + tuple(str(unsure[0]).splitlines()),
                results=tuple(results),
            )
        worst = max(r.relative_error for r in results)
        return CheckReport(
            name="fd",
            status="passed",
            details=extra,
            results=tuple(results),
            message=f"the VJP matches finite differences for {len(results)} seeded cotangents (relative error {worst:.1e}; {results[0].reference.split(';')[0]})",
        )

    def _localize_outputs(self, u: list) -> list[str]:
        """With several output leaves, which output's VJP block is wrong: one masked cotangent each."""
        if len(u) < 2:
            return []
        lines = ["per output leaf (cotangent nonzero on that leaf only):"]
        for j, o in enumerate(self.float_outs[:8]):
            masked = [x if i == j else np.zeros_like(x) for i, x in enumerate(u)]
            try:
                res = self._eager_result(-1, masked, self.rule_grad(masked))
            except Exception as error:  # noqa: BLE001 - localisation is best effort
                lines.append(f"  {o.path}: could not check ({type(error).__name__})")
                continue
            where = (
                f" at {res.failed_leaves[0].path}{list(res.failed_leaves[0].worst_index)}"
                if res.status == "failed"
                else ""
            )
            lines.append(f"  {o.path}: {res.status}{where}")
        return lines

    # -- 5. autodiff of f.fun -----------------------------------------------------------

    def autodiff(self) -> CheckReport:
        if not self.cts:
            return skipped("autodiff", "no cotangents (the fd check did not run)")
        use64 = self.fd_x64 and not all(
            d in (np.float64, np.complex128) for d in self.t.free_dtypes
        )
        grad_fun = rc.jit_or_eager(
            lambda fr, u: jax.grad(lambda x: pair(self.outs, u, self.t.fun_closed(x)))(fr)
        )
        for k, (u, r) in enumerate(zip(self.cts, self.rule_grads)):
            try:
                a = grad_fun(self.t.free_values, u)
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
                        for x in grad_fun(
                            [rc.upcast(x) for x in self.t.free_values], [rc.upcast(x) for x in u]
                        )
                    ]
                noise = [np.abs(rc._as_host(x) - rc._as_host(y)) for x, y in zip(a, ref)]
            reply = _autodiff_verdict(
                self, k, r, ref, noise, "float64" if use64 else "native precision"
            )
            if reply is not None:
                return reply
        return CheckReport(
            name="autodiff",
            status="passed",
            message=f"the VJP equals JAX's autodiff of f.fun for {len(self.cts)} cotangents (to rounding; {'float64' if use64 else 'native'} reference)",
        )

    # -- 6-8. transformations -------------------------------------------------------------

    def out_and_grad_paths(self) -> tuple[list[str], list[np.dtype]]:
        return [o.path for o in self.outs] + self.t.free_paths, [
            o.dtype for o in self.outs
        ] + self.t.free_dtypes

    def vmap(self) -> CheckReport:
        xs = rc.batch_point(self.t, self.seed)
        ws = [self.float_ct(f"vmap{b}") for b in range(rc.BATCH)]
        paths, dtypes = self.out_and_grad_paths()
        return rc.vmap_check(self.vjp_pair, self.jitted_pair, xs, ws, paths, dtypes, "VJP", self.kw)

    def jit(self) -> CheckReport:
        paths, dtypes = self.out_and_grad_paths()
        return rc.jit_check(
            self.vjp_pair,
            self.jitted_pair,
            self.t.free_values,
            self.float_ct("jit"),
            paths,
            dtypes,
            "VJP",
            self.kw,
        )

    def second_order(self) -> CheckReport:
        u = self.cts[0] if self.cts else self.float_ct("second-order")
        G = lambda fr: list(self.rule_grad_at(fr, u))  # noqa: E731
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
            out_prefix="vjp",
            label="the VJP x -> bwd(u)",
        )
        _rename(d, self.t.free_paths)
        return rfd.directional_report(
            "second-order",
            "the derivative of the VJP (bwd differentiated by jax.jvp)",
            d,
            extra=("u: the fd check's first cotangent; directions seeded per input leaf",),
        )

    def rule_grad_at(self, free: list, u: list) -> list:
        return jax.grad(lambda fr: pair(self.outs, u, self.t.closed(fr)))(free)


def _rename(d: "rfd.Directional", names: list[str]) -> None:
    """Output leaves of the VJP are cotangents of the free leaves: name them by those leaves."""
    import dataclasses

    d.outs = tuple(dataclasses.replace(o, path=n) for o, n in zip(d.outs, names))
    mapping = {f"vjp[{i}]": n for i, n in enumerate(names)}
    d.reports = [
        (p, dataclasses.replace(r, path=mapping.get(r.path, r.path))) for p, r in d.reports
    ]


def _c(x: Any) -> np.ndarray:
    return rc._as_host(x)


def _is_symbolic_zero(x: Any) -> bool:
    return type(x).__name__ == "SymbolicZero"


def _pair_up(
    entry: Any, primal: Any, argnum: int, zeros: bool = False
) -> list[tuple[str, Any, Any, str]]:
    """Aligns a cotangent entry (None allowed for any subtree) with its primal argument.

    Returns (path, primal leaf, cotangent or None, kind) per primal leaf; kind is "leaf",
    "none" or "subtree" (an array where the primal has a pytree).

    Raises:
      ValueError, TypeError: the structures do not match.
    """
    out: list[tuple[str, Any, Any, str]] = []
    if zeros:
        return [
            (f"args[{argnum}]" + jtu.keystr(kp), leaf, None, "none")
            for kp, leaf in jtu.tree_flatten_with_path(primal)[0]
        ]

    def visit(kp: tuple, c: Any, p: Any) -> None:
        prefix = f"args[{argnum}]" + jtu.keystr(kp)
        sub = jtu.tree_flatten_with_path(p)[0]
        if c is None:
            out.extend((prefix + jtu.keystr(skp), leaf, None, "none") for skp, leaf in sub)
        elif len(sub) == 1 and sub[0][0] == () and jtu.treedef_is_leaf(jtu.tree_structure(p)):
            out.append((prefix, p, c, "leaf"))
        else:
            out.append((prefix, p, c, "subtree"))

    jtu.tree_map_with_path(visit, entry, primal, is_leaf=lambda x: x is None)
    return out


def _leaf_problem(path: str, primal: Any, c: Any, kind: str) -> str | None:
    """What is wrong with one cotangent leaf, or None."""
    if kind == "none":
        return None
    if kind == "subtree":
        return f"the cotangent at {path} is {rc.describe(c)} where the argument has the pytree {rc.describe(primal)}"
    shape = tuple(np.shape(primal))
    if _is_symbolic_zero(c):
        c_shape, c_dtype = tuple(c.aval.shape), c.aval.dtype
    elif isinstance(c, (int, float, complex)) and not isinstance(c, bool):
        c_shape, c_dtype = (), None  # Python scalars are weakly typed
    elif hasattr(c, "shape") and hasattr(c, "dtype"):
        c_shape, c_dtype = tuple(c.shape), c.dtype
    else:
        return f"the cotangent at {path} is a {type(c).__name__}, not an array"
    if not rc._is_inexact_array(primal):
        is_float0 = c_dtype is not None and c_dtype == jax.dtypes.float0
        if is_float0 and c_shape == shape:
            return None
        return (
            f"{path} is a non-float input ({rc.describe(primal)}); its cotangent must be None or float0 zeros "
            f"(`np.zeros({shape}, jax.dtypes.float0)`), got {rc.describe(c)}"
        )
    if c_shape != shape:
        return f"the cotangent at {path} has shape {c_shape}; the argument has shape {shape} ({rc.describe(primal)})"
    if c_dtype is not None and np.dtype(c_dtype) != np.dtype(primal.dtype):
        return f"the cotangent at {path} has dtype {rc._dtype_name(c_dtype)}; the argument has dtype {np.dtype(primal.dtype)} (return `.astype({np.dtype(primal.dtype)})`)"
    return None


def _per_argnum(t: Target, mirror: tuple, grads: list) -> tuple:
    """Free-leaf gradients as `check_grad`'s `grad_fn` output: one pytree per fd argnum."""
    slots = t.treedef.flatten_up_to(mirror)
    for s, g in zip(t.free_slots, grads):
        slots[s] = g
    full = jtu.tree_unflatten(t.treedef, slots)
    return tuple(full[a] for a in t.fd_argnums)


def _numeric_by_path(t: Target, res: Any) -> dict[str, np.ndarray]:
    out = {}
    for kp, leaf in jtu.tree_flatten_with_path(res.numeric)[0]:
        argnum = t.fd_argnums[kp[0].idx]
        out[f"args[{argnum}]" + jtu.keystr(kp[1:])] = np.asarray(leaf)
    return out


def _autodiff_verdict(
    c: _VjpCheck, k: int, r: list, ref: list, noise: list | None, label: str
) -> CheckReport | None:
    """None when the rule's VJP equals autodiff of f.fun; else a failed or (autodiff at fault) skipped report."""
    ulps = rc.AUTODIFF_ULPS / 2 if noise is not None else rc.AUTODIFF_ULPS
    paths, dtypes = c.t.free_paths, c.t.free_dtypes
    bad = []
    for i, (x, y, p, d) in enumerate(zip(r, ref, paths, dtypes)):
        y_host = rc._as_host(y)
        if not np.all(np.isfinite(y_host)) and np.all(np.isfinite(rc._as_host(x))):
            return skipped(
                "autodiff",
                f"JAX's autodiff of f.fun is not finite at {p} (NaN/Inf) where the rule is finite: the kind of point custom rules exist for",
            )
        m = rc.compare_leaf(x, y, p, d, ulps, noise=None if noise is None else noise[i], **c.kw)
        if m:
            bad.append(m)
    if not bad:
        return None
    bad.sort(
        key=lambda m: -abs(m.actual - m.expected) / m.tolerance if m.actual is not None else np.inf
    )
    fd_res = c._eager_result(k) if c.statuses.get("fd") == "passed" else None
    if fd_res is not None and fd_res.status == "passed":
        numeric = _numeric_by_path(c.t, fd_res)
        sided = True
        for m in bad:
            i = paths.index(m.path)
            n = numeric.get(m.path)
            if n is None:
                sided = False
                break
            d_rule = float(np.linalg.norm(rc._as_host(r[i]) - n))
            d_ad = float(np.linalg.norm(rc._as_host(ref[i]) - n))
            sided &= d_ad > 10 * d_rule
        if sided:
            return skipped(
                "autodiff",
                f"JAX's autodiff of f.fun disagrees with finite differences at {bad[0].path} while the rule agrees with them: f.fun's own derivative is inaccurate here (integer ops, stop_gradient or rounding), not the rule",
            )
    return rc.mismatch_report(
        "autodiff",
        "the VJP differs from JAX's autodiff of f.fun at {where} (beyond rounding)",
        bad,
        names=("rule", "autodiff"),
        argument_of=rc.argument_of,
        extra=(
            f"cotangent u #{k}; autodiff evaluated in {label}; tolerance from dtype rounding only",
        ),
    )


CHECK_ORDER = ("primal", "structure", "linearity", "fd", "autodiff", "vmap", "jit", "second-order")
# vmap and jit run before fd: when they fail, fd checks the eager VJP instead of check_vjp's jitted, vmapped one.
RUN_ORDER = ("primal", "structure", "linearity", "vmap", "jit", "fd", "autodiff", "second-order")


def check_custom_vjp(
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
    """Validates a `jax.custom_vjp` rule at `args`: values, structure, linearity, transformations.

    Runs these checks, each reported as passed, failed, skipped or error:

    - `primal`: fwd's primal output equals `f.fun(*args)` (to rounding).
    - `structure`: bwd returns a tuple with one cotangent per differentiable argument
      (`nondiff_argnums` excluded), each matching its argument's pytree, shapes and dtypes
      (None allowed; non-float inputs take None or float0).
    - `linearity`: bwd(0) = 0 and bwd(a u + b v) = a bwd(u) + b bwd(v).
    - `fd`: the VJP through the rule matches central finite differences: `check_grad` of
      <u, f(x)> for seeded cotangents u, naming the input leaf and element.
    - `autodiff`: the VJP equals `jax.vjp` of `f.fun` to rounding (skipped, with the reason,
      when `f.fun` is not differentiable by JAX or its autodiff is the inaccurate one).
    - `vmap`: `jax.vmap` of the VJP over 3 examples equals a loop; `jit`: jitted equals eager.
    - `second-order` (`order=2`): the VJP differentiated again (`jax.jvp` of x -> bwd(u))
      matches finite differences of the VJP.

    Exceptions raised by fwd, bwd or f.fun are reported as "error" findings.

    Args:
      f: A `jax.custom_vjp` function with its rule defined.
      args: Tuple of arguments, as in `f(*args)` (nondiff arguments included, in place).
      order: 1, or 2 to check second derivatives through the rule.
      mode: "full" (every input coordinate), "probe" (seeded directions per leaf) or "auto".
      eps: Absolute finite-difference step; `None` picks one per coordinate.
      rtol, atol: Loosen the tolerances (finite-difference and exact comparisons alike).
      seed: Seed of every random cotangent, direction and batch. Recorded.
      reference: "auto", "float64" or "native": where finite differences are evaluated.
      devices: Devices the finite differences are split over: None (all devices of the
        arguments' platform; all global devices in a multi-process run), an int k (the
        first k) or a sequence of `jax.Device`. Recorded as `result.devices`.

    Returns:
      A `RuleCheckResult`; `str(result)` is the full report.

    Raises:
      TypeError: `f` is not a `jax.custom_vjp` (or has no rule); misuse of the options.

    Example:
      >>> f = jax.custom_vjp(jnp.sin)
      >>> f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
      >>> jaxcheck.check_custom_vjp(f, (jnp.arange(3.0),)).status
      'passed'
    """
    return rc.run_battery(
        "vjp",
        _VjpCheck,
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


def assert_custom_vjp_correct(
    f: Any, args: tuple, *, allow_inconclusive: bool = False, **kwargs: Any
) -> RuleCheckResult:
    """Asserts that `check_custom_vjp(f, args, **kwargs)` passes.

    Args:
      f, args: As in `check_custom_vjp`.
      allow_inconclusive: Accept an inconclusive verdict instead of failing.
      **kwargs: Passed to `check_custom_vjp`.

    Returns:
      The `RuleCheckResult` when every check passes.

    Raises:
      GradCheckError: some check failed or raised; the message is the report.
    """
    __tracebackhide__ = True
    return raise_unless_passed(check_custom_vjp(f, args, **kwargs), allow_inconclusive)
