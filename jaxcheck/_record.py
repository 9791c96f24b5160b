"""Host-side: the base every result record shares (verdict, lookup, JSON, report text).

`GradCheckResult`, `JacobianCheckResult`, `RuleCheckResult` (and the rule-site results) are
frozen dataclasses that inherit `CheckResult`: `status`/`passed`/`reason`, lookup of one
per-item record (`_find`), the failing items, `to_dict()`/`to_json()` and `__str__` all
live here once; each subclass names its items and writes its report lines.
"""

import dataclasses
import json
from collections.abc import Callable
from typing import Any, ClassVar

import jax.tree_util as jtu
import numpy as np

STATUSES = ("passed", "failed", "inconclusive")
SCHEMA_VERSION = 1


def plain(obj: Any, skip: tuple[str, ...] = ()) -> Any:
    """JSON-able data: dataclasses -> dicts (fields in `skip` left out at this level),
    records with their own `to_dict` -> it, tuples -> lists, non-finite floats -> strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: plain(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.name not in skip
        }
    if isinstance(obj, (list, tuple)):
        return [x.to_dict() if hasattr(x, "to_dict") else plain(x) for x in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def read_only(tree: Any) -> Any:
    """`tree` with every numpy array leaf replaced by a read-only copy (results are frozen:
    writing into `result.analytic` must not silently change what the report says)."""

    def freeze(leaf: Any) -> Any:
        if not isinstance(leaf, np.ndarray):
            return leaf
        leaf = np.array(leaf, copy=True)
        leaf.setflags(write=False)
        return leaf

    return jtu.tree_map(freeze, tree)


def order_note(order: int) -> str:
    """The footer's order suffix: empty at order 1 (so first-order reports read as ever)."""
    return f", order {order}" if order > 1 else ""


class CheckResult:
    """Mixin of every result record (a frozen dataclass with `status` and `reason` fields).

    Subclasses set `ITEMS` (the field holding the per-item records: leaves, blocks, checks,
    rules), optionally `FAILED` (item statuses that count as failed), `DICT_SKIP` (fields
    left out of `to_dict`, e.g. arrays) and `DICT_EXTRA` (constant keys added to it), and
    implement `report_lines()`.
    """

    status: str
    reason: str
    ITEMS: ClassVar[str] = ""
    FAILED: ClassVar[tuple[str, ...]] = ("failed",)
    DICT_SKIP: ClassVar[tuple[str, ...]] = ()
    DICT_EXTRA: ClassVar[dict[str, Any]] = {}

    @property
    def passed(self) -> bool:
        """Whether the verdict is "passed" (an inconclusive check has not passed)."""
        return self.status == "passed"

    def _items(self) -> tuple:
        return getattr(self, self.ITEMS)

    def _failed(self) -> tuple:
        return tuple(x for x in self._items() if x.status in self.FAILED)

    def _find(self, matches: Callable[[Any], bool], what: str, names: Callable[[Any], str]) -> Any:
        """The one item for which `matches(item)` holds.

        Raises:
          KeyError: naming `what` was looked for and listing what there is.
        """
        for item in self._items():
            if matches(item):
                return item
        raise KeyError(f"no {what}; {self.ITEMS} are {[names(x) for x in self._items()]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (no arrays); the schema is docs/json_schema.md."""
        data = plain(self, skip=self.DICT_SKIP)
        data["passed"] = self.passed
        data.update(self.DICT_EXTRA)
        data["schema_version"] = SCHEMA_VERSION
        return data

    def to_json(self, **kwargs: Any) -> str:
        """`to_dict()` as a JSON string (strict JSON: non-finite numbers are strings)."""
        return json.dumps(self.to_dict(), **kwargs)

    def report_lines(self) -> list[str]:  # pragma: no cover - every subclass implements it
        raise NotImplementedError

    def __str__(self) -> str:
        return "\n".join(self.report_lines())
