"""Host-side: find every `jax.custom_vjp` / `jax.custom_jvp` call made while f runs.

Mechanism. A jaxpr names a custom rule's call (`custom_vjp_call` / `custom_jvp_call`
equations) but holds only JAX's flattened, wrapped versions of fun, fwd, bwd and jvp,
not the rule object a user wrote, so it cannot feed `check_custom_vjp`. The rule object
is seen only when it is called. So `discover` evaluates f once (jitted: one compilation;
eagerly when f cannot be traced) while
`intercepting()` wraps the two public classes' `__call__` (`jax.custom_vjp.__call__`,
`jax.custom_jvp.__call__`); each call records the rule object, its arguments (resolved
against `fun`'s signature, defaults bound, exactly as JAX does), the Python call path and
the caller's line, then calls JAX's own `__call__` unchanged. Concrete arguments are kept
as they are; traced ones (inside `jit`, `scan`, `cond`, `while_loop`, `vmap`,
`checkpoint`, another rule's primal) are sent to the host by a `jax.debug.callback`,
the public way to read values under every transformation. The first callback to arrive
is kept: scan and while iteration 0, and under `vmap` batch element 0 (debug callbacks
are unbatched one example at a time), so the battery sees an unbatched call as the user
wrote it. Rules inside another rule's fwd, bwd or jvp run only when f is differentiated:
each found rule is differentiated once more at its inputs (`jax.vjp` / `jax.jvp`), under
interception, to find them.

Scope and safety. The wrapper is installed only inside `intercepting()` (reference
counted, under a lock, restored in `finally`) and acts only in the context (thread or
task) that opened a discovery; anywhere else it calls JAX's `__call__` directly. During
discovery the trace-context option `jax_hlo_source_file_canonicalization_regex` is set to
a unique regex that never matches (source paths in HLO metadata are unchanged): jitted
functions traced before are then traced again instead of coming from JAX's caches
(otherwise their rules would go unseen), and the traces made here, which hold the debug
callbacks, are cached under a key no later user call uses. The option is process-wide,
so another thread tracing during a discovery may miss JAX's cache once.

Limits: a `cond` branch not taken at these inputs is found but has no inputs ("not
reached"). Rules called inside a `pure_callback` / `io_callback` run on XLA's threads,
outside the discovery's context, and are not recorded. `pmap` and `shard_map` are not
tested. An equinox `filter_custom_vjp` calls an inner `jax.custom_vjp` with equinox's
own argument layout; the site records the equinox object and the user's arguments
instead (read from equinox's `__call__` frame; with keyword arguments it is not
recorded), and equinox's `nondifferentiable` guards are skipped. One Python function
traced twice through a cache JAX keeps within one trace (the same function as the branch
of two `cond`s) is one site, its calls merged.
"""

import contextlib
import contextvars
import dataclasses
import functools as ft
import inspect
import itertools
import os
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._problem import function_name

PyTree = Any
NESTED_DEPTH = 2  # rules inside rules' fwd/bwd/jvp, inside those, are looked for this deep

_JAX_DIR = os.path.dirname(jax.__file__) + os.sep
_SELF_DIR = os.path.dirname(__file__) + os.sep
_STDLIB_DIR = os.path.dirname(os.__file__) + os.sep
# JAX entry points seen on the Python stack while a rule is traced, and their labels.
_LABELS = {
    "scan": "scan",
    "while_loop": "while_loop",
    "fori_loop": "fori_loop",
    "map": "map",
    "cond": "cond",
    "switch": "switch",
    "vmap_f": "vmap",
    "cache_miss": "jit",
    "fun_remat": "checkpoint",
}
_ABSORBS = {"fori_loop": {"scan", "while_loop"}, "map": {"scan"}}  # implemented by the other
LOOPS = ("scan", "while_loop", "fori_loop", "map")


@dataclasses.dataclass(eq=False)
class Site:
    """One call site of a custom rule: a place in the code where f called it (mutable while
    discovery runs; read-only afterwards).

    Attributes:
      rule: The `jax.custom_vjp` / `jax.custom_jvp` object.
      kind: "custom_vjp" or "custom_jvp".
      name: The rule's function's `__name__`.
      defined_at: `file.py:line` of its definition, or "" when Python does not know it.
      call_path: e.g. "loss -> scan -> cell -> smooth_relu".
      labels: The JAX transformations on the path ("scan", "vmap", ...).
      line: `file.py:line` of the call.
      key: The call signature: rule, argument structure, shapes, dtypes and static values.
      args: The concrete inputs (the first call's), or None when the site never ran.
      calls: How many times the site ran during the evaluation.
      nested_in: For a rule found inside another rule's fwd/bwd/jvp, "fwd/bwd" or "jvp".
      problem: Why inputs could not be recorded, if so.
    """

    rule: Any
    kind: str
    name: str
    defined_at: str
    call_path: str
    labels: tuple[str, ...]
    line: str
    key: tuple
    args: tuple | None = None
    calls: int = 0
    nested_in: str = ""
    problem: str = ""
    _flat: list = dataclasses.field(default_factory=list, repr=False)
    _treedef: Any = dataclasses.field(default=None, repr=False)
    _array_slots: tuple = dataclasses.field(default=(), repr=False)
    _lock: Any = dataclasses.field(default_factory=threading.Lock, repr=False)

    def receive(self, *values: Any) -> None:
        """Host callback: the site's array inputs at one call (the first is kept)."""
        with self._lock:
            self.calls += 1
            if self.args is None:
                self.args = self._rebuild([np.array(v) for v in values])

    def _rebuild(self, values: list) -> tuple:
        flat = list(self._flat)
        for slot, value in zip(self._array_slots, values):
            flat[slot] = jnp.asarray(value, dtype=flat[slot].dtype)
        return tuple(jtu.tree_unflatten(self._treedef, flat))

    @property
    def iteration(self) -> str:
        """Which call's inputs were recorded, in words ("" for a single plain call)."""
        if self.args is None:
            return ""
        loops = [l for l in self.labels if l in LOOPS]
        batched = "vmap" in self.labels
        if self.calls <= 1:
            return f"{loops[-1]} iteration 0" if loops else ""
        parts = []
        if loops:
            parts.append(f"{loops[-1]} iteration 0")
        if batched:
            parts.append("vmap batch element 0")
        first = " and ".join(parts) if parts else "the first call"
        return f"{first} (the first of {self.calls} calls here)"


def _defined_at(fun: Any) -> str:
    while isinstance(fun, ft.partial):
        fun = fun.func
    fun = inspect.unwrap(fun) if callable(fun) else fun
    code = getattr(fun, "__code__", None)
    if code is None:
        return ""
    return f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"


def _resolve(rule: Any, args: tuple, kwargs: dict) -> tuple:
    """The positional arguments JAX's `__call__` passes on (`resolve_kwargs`: defaults bound)."""
    fun = rule.fun
    if isinstance(fun, ft.partial):
        return tuple(args)
    try:
        bound = inspect.signature(fun).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return tuple(args)
    bound.apply_defaults()
    return tuple(bound.args)


def _is_equinox_internal(rule: Any) -> bool:
    fun = rule.fun
    while isinstance(fun, ft.partial):
        fun = fun.func
    return (getattr(fun, "__module__", None) or "").split(".")[0] == "equinox"


def _equinox_owner(rule: Any) -> tuple[Any, tuple, dict] | None:
    """For the `jax.custom_vjp` inside an `equinox.filter_custom_vjp`: (the equinox object,
    its arguments as the user passed them, {}), read from equinox's `__call__` frame."""
    from ._rule_checks import is_equinox_custom_vjp

    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if is_equinox_custom_vjp(owner) and getattr(owner, "fn_wrapped", None) is rule:
            local = frame.f_locals
            if local.get("kwargs"):
                return None  # keyword arguments: the checks call rules positionally
            return owner, (local["vjp_arg"], *local.get("args", ())), {}
        frame = frame.f_back
    return None


def _static_repr(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 200 else text[:200]


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


class _Discovery:
    """The state of one `discover` call: the sites found, in the order they were traced."""

    def __init__(self, root: Callable):
        self.sites: list[Site] = []
        self.root = root  # the frame function below which the call path starts
        self.prefix: tuple[str, ...] = ()
        self.nested_in = ""
        self.problems: list[str] = []

    def record(self, rule: Any, kind: str, args: tuple, kwargs: dict) -> None:
        if getattr(rule, "jaxcheck_adapts", None) is not None:
            return  # jaxcheck's own stand-in for a rule being differentiated here
        if _is_equinox_internal(rule):
            owner = _equinox_owner(rule)
            if owner is None:
                return  # equinox's own guards (`nondifferentiable`): not a derivative rule
            rule, args, kwargs = owner
        else:
            args = _resolve(rule, args, kwargs)
        names, labels, line = self._path()
        fun = rule.fn if kind == "custom_vjp" and not hasattr(rule, "fun") else rule.fun
        name = function_name(fun)
        flat, treedef = jtu.tree_flatten(args)
        slots = tuple(i for i, x in enumerate(flat) if _is_array(x))
        shapes = tuple((tuple(np.shape(flat[i])), str(flat[i].dtype)) for i in slots)
        statics = tuple(_static_repr(x) for i, x in enumerate(flat) if i not in slots)
        site = Site(
            rule=rule,
            kind=kind,
            name=name,
            defined_at=_defined_at(fun),
            call_path=" -> ".join((*self.prefix, *names, name)),
            labels=labels,
            line=line,
            key=(id(rule), str(treedef), shapes, statics),
            nested_in=self.nested_in,
            _flat=flat,
            _treedef=treedef,
            _array_slots=slots,
        )
        self.sites.append(site)
        traced = [flat[i] for i in slots if isinstance(flat[i], jax.core.Tracer)]
        if not traced:
            site.calls, site.args = 1, tuple(args)
            return
        try:
            jax.debug.callback(site.receive, *[flat[i] for i in slots])
        except Exception as error:  # noqa: BLE001 - e.g. PRNG-key inputs: report, do not fail f
            site.problem = f"inputs could not be recorded ({type(error).__name__}: {error})"

    def _path(self) -> tuple[list[str], tuple[str, ...], str]:
        """User functions and JAX transformations between the root and the rule's call."""
        stack = traceback.extract_stack()[:-3]  # drop _path, record and the wrapper
        root = self.root.__code__
        start = 0
        for i, frame in enumerate(stack):
            if frame.name == root.co_name and frame.filename == root.co_filename:
                start = i + 1
        names: list[str] = []
        labels: list[str] = []
        run: list[str] = []  # labels of the current run of JAX frames
        for frame in stack[start:]:
            if frame.filename.startswith(_JAX_DIR):
                label = _LABELS.get(frame.name)
                if label and not any(label in _ABSORBS.get(l, ()) for l in run):
                    run.append(label)
                    names.append(label)
                    labels.append(label)
                continue
            run = []
            if frame.filename.startswith((_SELF_DIR, _STDLIB_DIR)) or "site-packages" in (
                frame.filename
            ):
                continue
            if not any(n not in _LABELS.values() for n in names):
                names, labels = [], []  # discovery's own jit of f is not on f's path
            names.append(frame.name)
        caller = stack[-1] if stack else None
        line = f"{os.path.basename(caller.filename)}:{caller.lineno}" if caller else ""
        return names, tuple(labels), line


_CURRENT: contextvars.ContextVar["_Discovery | None"] = contextvars.ContextVar(
    "jaxcheck_rule_discovery", default=None
)
_LOCK = threading.Lock()
_INSTALLED: dict[str, Any] = {"count": 0, "originals": {}}
_SESSION_IDS = itertools.count()
_CACHE_OPTION = "jax_hlo_source_file_canonicalization_regex"


def _wrapper(original: Callable, kind: str) -> Callable:
    @ft.wraps(original)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        discovery = _CURRENT.get()
        if discovery is not None:
            try:
                discovery.record(self, kind, args, kwargs)
            except Exception as error:  # noqa: BLE001 - discovery must never break f
                discovery.problems.append(
                    f"a call of {function_name(self.fun)} could not be recorded "
                    f"({type(error).__name__}: {error})"
                )
        return original(self, *args, **kwargs)

    __call__._jaxcheck_original = original  # type: ignore[attr-defined]
    return __call__


@contextlib.contextmanager
def intercepting(discovery: _Discovery) -> Iterator[None]:
    """Records the custom-rule calls made in this context into `discovery` (see the module doc)."""
    classes = {"custom_vjp": jax.custom_vjp, "custom_jvp": jax.custom_jvp}
    with _LOCK:
        if _INSTALLED["count"] == 0:
            for kind, cls in classes.items():
                _INSTALLED["originals"][kind] = cls.__call__
                cls.__call__ = _wrapper(cls.__call__, kind)
        _INSTALLED["count"] += 1
        previous_option = getattr(jax.config, _CACHE_OPTION)
        unique = f"(?!)jaxcheck-discovery-{uuid.uuid4().hex}-{next(_SESSION_IDS)}"
        option = unique if not previous_option else f"{previous_option}|{unique}"
        jax.config.update(_CACHE_OPTION, option)
    token = _CURRENT.set(discovery)
    try:
        yield
    finally:
        _CURRENT.reset(token)
        with _LOCK:
            jax.config.update(_CACHE_OPTION, previous_option)
            _INSTALLED["count"] -= 1
            if _INSTALLED["count"] == 0:
                for kind, cls in classes.items():
                    cls.__call__ = _INSTALLED["originals"].pop(kind)


def _evaluate_f(f: Callable, args: tuple, jit: bool) -> Any:
    """The root frame of the call paths: f's own frames start right below it.

    Under `jit` f is traced and compiled once (eager ops would each compile anew under
    discovery's fresh trace context); `discover` falls back to `jit=False` when f cannot
    be traced (Python control flow on values, numpy inside).
    """
    if not jit:
        return jax.block_until_ready(f(*args))
    return jax.block_until_ready(jax.jit(_Call(f))(*args))


class _Call:
    """f as a fresh callable for `jax.jit` (never a cache hit on the user's own jit of f)."""

    def __init__(self, f: Callable):
        self.f = f

    def __call__(self, *args: Any) -> Any:
        return self.f(*args)


def _differentiate_rule(site: Site) -> None:
    """The root frame for rules nested in fwd/bwd/jvp: runs the rule's derivative at its inputs."""
    from ._rule_checks import Target, adapt_rule, bind_defaults  # local: no import cycle

    kind = "vjp" if site.kind == "custom_vjp" else "jvp"
    rule = adapt_rule(site.rule, site.args, kind)
    target = Target(rule, bind_defaults(rule, site.args), kind)
    if not target.free_slots:
        return

    def derivative(free: list) -> Any:
        if site.kind == "custom_vjp":
            out, vjp_fn = jax.vjp(target.closed, free)
            return vjp_fn(jtu.tree_map(_unit_like, out))
        tangent = [jnp.ones_like(x) for x in free]
        return jax.jvp(target.closed, (free,), (tangent,))

    discovery = _CURRENT.get()
    try:
        traced = jax.jit(derivative).trace(target.free_values)
    except Exception:  # noqa: BLE001 - not traceable: run it eagerly
        return jax.block_until_ready(derivative(target.free_values))
    if discovery is not None and not discovery.sites:
        return None  # tracing met no rule: nothing to run (the common case costs no compile)
    return jax.block_until_ready(traced.lower().compile()(target.free_values))


def _unit_like(x: Any) -> Any:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.ones_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


@dataclasses.dataclass(frozen=True)
class Discovered:
    """What `discover` found: the sites in trace order and notes about the evaluation."""

    sites: tuple[Site, ...]
    notes: tuple[str, ...]


def discover(f: Callable, args: tuple) -> Discovered:
    """Evaluates `f(*args)` once and returns every custom-rule call site it made.

    Rules inside found rules' fwd, bwd or jvp are looked for by differentiating each found
    rule once at its recorded inputs (`NESTED_DEPTH` levels deep).

    Raises:
      Whatever `f` raises.
    """
    main = _Discovery(_evaluate_f)
    try:
        with intercepting(main):
            _evaluate_f(f, args, jit=True)
    except Exception:  # noqa: BLE001 - not traceable: evaluate as written (f's errors surface)
        main = _Discovery(_evaluate_f)
        with intercepting(main):
            _evaluate_f(f, args, jit=False)
    sites = list(main.sites)
    notes = list(main.problems)
    todo, seen = list(sites), set()
    for _depth in range(NESTED_DEPTH):
        found = []
        for site in todo:
            if site.args is None or site.key in seen:
                continue
            seen.add(site.key)
            nested = _Discovery(_differentiate_rule)
            nested.prefix = tuple(site.call_path.split(" -> "))
            nested.nested_in = "fwd/bwd" if site.kind == "custom_vjp" else "jvp"
            try:
                with intercepting(nested):
                    _differentiate_rule(site)
            except Exception as error:  # noqa: BLE001 - the battery will report the rule itself
                notes.append(
                    f"rules inside {site.name}'s {nested.nested_in} were not looked for: "
                    f"differentiating it raised {type(error).__name__}"
                )
            notes.extend(nested.problems)
            found.extend(s for s in nested.sites if s.key not in seen)
        sites.extend(found)
        todo = found
    return Discovered(tuple(sites), tuple(notes))
