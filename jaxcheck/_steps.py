"""Host-side: the ladder of steps a gradient coordinate may be evaluated at, and the search
along it. Runs after device_get; never traced.

Every coordinate's ladder is its default step h (`_tolerance.relative_step` x its scale),
then `_tolerance.GROWTH` times h (16 h, 256 h), capped at `_tolerance.MAX_GROWN_STEP` of the
scale. The default step balances truncation against rounding of a few ulps of |f|; where f
rounds far coarser than that along a coordinate (a sum of many terms, cancellation inside f,
a coordinate much smaller than the scale on which f varies, a leaf whose effect on f is tiny
beside another leaf's), a higher rung resolves the derivative better. A coordinate moves one
rung at a time, and only while moving pays:

  - up, while its estimate is bound by f's rounding noise (`_stencil.noise_bound`) and the
    rung just tried gave the smallest error, or while it fails narrowly
    (`_stencil.near_miss`: a stencil whose error estimate missed rounding coarser than f's
    own is exposed by the estimates at other steps; a wrong formula stays wrong at every
    step);
  - down (only from a start above h, `calibrated_rungs`), while its error is mostly
    truncation and the rung just tried gave the smallest error.

Each rung tried costs the 4-point stencil there, for the coordinates that try it. A
coordinate whose climb ends on a rung where truncation bounds its estimate takes one
higher-order look there (`_stencil.refined_truncation`: the stencil at twice that step
bounds the extrapolated value's own O(h**4) error, where the 4-point stencil alone bounds
it by the O(h**2) error of its central difference), where its analytic value is at least
LOOK_SHARE of its tolerance away from the estimate. Every estimate a coordinate got enters
`_stencil.best_of` (each error raised to what the others prove), and the one with the
smallest error is kept.
"""

import numpy as np

from . import _stencil as st
from . import _tolerance
from ._problem import Problem

# The higher-order look is taken where the analytic value's distance from the kept estimate
# exceeds this share of its tolerance: below it, the look would have to shrink the tolerance
# more than 1 / LOOK_SHARE times to change the verdict (the rest keep the reported
# tolerance, which says what was resolved).
LOOK_SHARE = 1.0 / 16.0

# A coordinate starts a calibrated leaf's higher rung when at least this share of the leaf's
# calibration sample chose that rung or a higher one (`calibrated_rungs`).
CALIBRATED_SHARE = 0.5


def ladder(p: Problem, coords: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The rungs of `coords`: [h, 16 h, 256 h] capped, each (k,), and (R, k) whether each rung
    exists for each coordinate (a capped rung no larger than the one below does not)."""
    base = p.h_default[coords]
    rungs = [base] + _tolerance.grown_steps(base, p.scales[coords])
    exists = np.ones((len(rungs), coords.size), bool)
    for r in range(1, len(rungs)):
        exists[r] = rungs[r] > rungs[r - 1] * (1 + 1e-9)
    return rungs, exists


def _dummy(k: int, m: int) -> st.Estimates:
    """An estimate never chosen: error inf and no movement (`_stencil.best_of`)."""
    zeros = np.zeros((k, m))
    return st.Estimates(
        zeros, np.full((k, m), np.inf), np.full((k, m), np.inf), np.zeros((4, k, m))
    )


def put_rows(into: st.Estimates, rows: np.ndarray, est: st.Estimates) -> None:
    """Writes `est` (r, m) into the rows `rows` of `into` (in place)."""
    into.slopes[:, rows] = est.slopes
    for field in range(3):
        into[field][rows] = est[field]


class _Search:
    """The state of one search over coordinates `coords` (see the module docstring)."""

    def __init__(self, p: Problem, coords, est, atol, noise, start):
        self.p, self.coords, self.atol, self.noise = p, coords, atol, noise
        self.rungs, self.exists = ladder(p, coords)
        self.eps = coordinate_eps(p, coords)
        k, m = est.numeric.shape
        est = st.Estimates(*(np.asarray(x, np.float64) for x in est))
        # Candidate 0 is each row's starting estimate; candidate 1 + r its estimate at rung r.
        self.candidates = [est] + [_dummy(k, m) for _ in self.rungs]
        self.start = start
        self.tried = np.zeros(k, bool)

    def _noise_bound(self, est: st.Estimates, rung: np.ndarray) -> np.ndarray:
        p = self.p
        h = np.choose(rung, self.rungs)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return st.noise_bound_host(
                est,
                2 * h,
                p.scales[self.coords],
                self.eps,
                p.tol.rtol,
                self.atol[:, None],
                p.tol.safety,
                p.analytic[self.coords, None],
            )[:, 0]

    def _distance_and_tolerance(self, est: st.Estimates) -> tuple[np.ndarray, np.ndarray]:
        """(k,) |analytic - estimate| and the tolerance of each row against `est`."""
        p = self.p
        num = est.numeric[:, 0]
        with np.errstate(invalid="ignore", over="ignore"):
            tolerance = p.tol.safety * est.fd_error[:, 0] + p.tol.rtol * np.abs(num) + self.atol
            return np.abs(num - p.analytic[self.coords]), tolerance

    def _failing_narrowly(self, est: st.Estimates) -> np.ndarray:
        distance, tolerance = self._distance_and_tolerance(est)
        with np.errstate(invalid="ignore"):
            return (distance > tolerance) & st.near_miss(
                self.p.analytic[self.coords], est.numeric[:, 0]
            )

    def _doubtful(self, est: st.Estimates) -> np.ndarray:
        """Rows whose analytic value is at least LOOK_SHARE of their tolerance from `est`."""
        distance, tolerance = self._distance_and_tolerance(est)
        with np.errstate(invalid="ignore"):
            return ~(distance <= LOOK_SHARE * tolerance)

    @staticmethod
    def _truncation_bound(est: st.Estimates) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return (est.fd_error[:, 0] - est.noise[:, 0]) > est.noise[:, 0]

    def _evaluate(self, rows: np.ndarray, rung: np.ndarray) -> None:
        """The 4-point stencil of `rows` at their rungs `rung` (one pass per distinct rung)."""
        p = self.p
        for r in np.unique(rung):
            mine = rows[rung == r]
            c = self.coords[mine]
            values, points = p.ev.stencil_subset(c, self.rungs[r][mine], p.batch_size)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                est = st.combine_host(
                    values, p.ev.f0, points, p.ev.theta[c], self.eps[mine], self.noise
                )
            put_rows(self.candidates[1 + r], mine, est)
        self.tried[rows] = True

    def _look_higher(self, rows: np.ndarray, rung: np.ndarray) -> None:
        """Replaces the candidates of `rows` at `rung` by their higher-order look."""
        p = self.p
        for r in np.unique(rung):
            mine = rows[rung == r]
            c = self.coords[mine]
            values, points = p.ev.stencil_subset(c, 2 * self.rungs[r][mine], p.batch_size)
            near = st.Estimates(*(x[..., mine, :] for x in self.candidates[1 + r]))
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                refined = st.refined_truncation_host(
                    near, values, p.ev.f0, points, p.ev.theta[c], self.eps[mine], self.noise
                )
            put_rows(self.candidates[1 + r], mine, refined)
        p.higher_order_looks += int(rows.size)

    def _best(self) -> tuple[st.Estimates, np.ndarray]:
        with np.errstate(invalid="ignore", over="ignore"):
            best, which = st.best_of_host(self.candidates)
        return best, which[:, 0]

    def run(self) -> tuple[st.Estimates, np.ndarray, np.ndarray]:
        """Searches; returns the best estimates (k, m), each row's chosen step (k,), and the
        step each row chose before the higher-order look (k,)."""
        first = self.candidates[0]
        top = len(self.rungs) - 1
        up = self._noise_bound(first, self.start) | self._failing_narrowly(first)
        down = ~up & (self.start > 0) & self._truncation_bound(first)
        stalled = np.full(self.coords.size, -1)  # the rung a climb ended on, truncation-bound
        for direction, active in ((1, up), (-1, down)):
            last = self.start.copy()
            while True:
                nxt = np.clip(last + direction, 0, top)
                ok = active & (nxt != last)
                ok[ok] = self.exists[nxt[ok], np.flatnonzero(ok)]
                rows = np.flatnonzero(ok)
                if rows.size == 0:
                    break
                self._evaluate(rows, nxt[rows])
                best, which = self._best()
                won = ok & (which == 1 + nxt)
                at_new = self._at(nxt)
                if direction == 1:
                    keep = (won & self._noise_bound(at_new, nxt)) | self._failing_narrowly(best)
                    ends = ok & ~keep & self._truncation_bound(at_new)
                    stalled = np.where(ends, nxt, stalled)
                else:
                    keep = won & self._truncation_bound(at_new)
                last = np.where(ok, nxt, last)
                active = ok & keep
        best, which = self._best()
        climbed = self._steps(which)
        rows = np.flatnonzero((stalled >= 0) & self._doubtful(best))
        if rows.size:
            self._look_higher(rows, stalled[rows])
        best, which = self._best()
        return best, self._steps(which), climbed

    def _steps(self, which: np.ndarray) -> np.ndarray:
        """(k,) the step of each row's candidate `which` (0: its start)."""
        steps = np.choose(np.maximum(which - 1, 0), self.rungs)
        return np.where(which == 0, np.choose(self.start, self.rungs), steps)

    def _at(self, rung: np.ndarray) -> st.Estimates:
        """Each row's candidate at `rung` (k,)."""
        index = 1 + rung
        fields = []
        for name in st.Estimates._fields:
            stacked = np.stack([getattr(c, name) for c in self.candidates])
            if name == "slopes":
                fields.append(np.take_along_axis(stacked, index[None, None, :, None], 0)[0])
            else:
                fields.append(np.take_along_axis(stacked, index[None, :, None], 0)[0])
        return st.Estimates(*fields)


def coordinate_eps(p: Problem, coords: np.ndarray) -> np.ndarray:
    """(k, 1) machine epsilon of the dtype each coordinate is evaluated in."""
    ev = p.ev
    eps = np.array([float(np.finfo(d).eps) for d in ev.real_dtypes])
    return eps[ev.coord_dtype_codes[coords]][:, None]


def search(
    p: Problem,
    coords: np.ndarray,
    est: st.Estimates,
    atol: np.ndarray,
    noise: np.ndarray,
    start: np.ndarray | None = None,
) -> st.Estimates:
    """Moves `coords` along their ladders where that pays (module docstring).

    Args:
      p: A kind-"grad" problem; its steps `p.h[coords]` are updated to the steps kept.
      coords: (k,) coordinates; est: their 4-point estimates (k, 1) at their current steps.
      atol: (k,) their absolute allowances; noise: (1,) the noise floor the estimates were
        combined with.
      start: (k,) the rung each estimate was taken at (default: 0, the default step).

    Returns:
      The kept estimates (k, 1). `p.grown_steps` counts the coordinates that tried a rung.
    """
    return _search(p, coords, est, atol, noise, start)[0]


def _search(p, coords, est, atol, noise, start=None) -> tuple[st.Estimates, np.ndarray]:
    """`search`, and the step each coordinate kept before the higher-order look (k,)."""
    if p.eps is not None or coords.size == 0:  # the user chose the step
        return est, p.h[coords]
    start = np.zeros(coords.size, np.int64) if start is None else np.asarray(start, np.int64)
    s = _Search(p, coords, est, atol, noise, start)
    best, steps, climbed = s.run()
    p.h[coords] = steps
    p.grown_steps += int(np.count_nonzero(s.tried))
    return best, climbed


def calibrate(
    p: Problem, sample: np.ndarray, est: st.Estimates, atol: np.ndarray, noise: np.ndarray
) -> tuple[st.Estimates, np.ndarray]:
    """`search` on a calibration sample, and the rung every coordinate starts at.

    Returns:
      The sample's kept estimates (k, 1), and (n,) each coordinate's starting rung
      (`calibrated_rungs` of the steps the sample's climbs kept: the higher-order look
      refines a sample coordinate's own estimate, not the plain stencil the others get).
    """
    best, climbed = _search(p, sample, est, atol, noise)
    return best, calibrated_rungs(p, sample, climbed)


def calibrated_rungs(p: Problem, sample: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """(n,) the rung every coordinate starts at, from the steps `kept` (k,) by its leaf's
    calibration sample: the lowest rung that at least CALIBRATED_SHARE of the leaf's sample
    reached; 0 for leaves without a sample or with the user's step."""
    rungs = np.zeros(p.n, np.int64)
    if p.eps is not None:
        return rungs
    ladders, _ = ladder(p, sample)
    reached = np.zeros(sample.size, np.int64)
    for r in range(1, len(ladders)):
        reached = np.where(kept >= ladders[r] * (1 - 1e-9), r, reached)
    for leaf in p.layout.diff:
        mine = (sample >= leaf.offset) & (sample < leaf.offset + leaf.size)
        if not np.any(mine):
            continue
        order = np.sort(reached[mine])[::-1]
        need = int(np.ceil(CALIBRATED_SHARE * order.size)) - 1
        rungs[leaf.offset : leaf.offset + leaf.size] = order[min(max(need, 0), order.size - 1)]
    return rungs
