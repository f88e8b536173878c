"""Drift detection: concept drift on the served error stream, feature drift between the rows
the serving model was trained on and the most recent rows.

:class:`ConceptDriftMonitor` wraps River's ADWIN or Page-Hinkley over the errors of the
scores as served (0/1 mistakes of a classifier, absolute errors of a regression).
:class:`FeatureDriftMonitor` compares a reference window with a sliding live window, feature
by feature: PSI and Kolmogorov-Smirnov for numeric features, chi-squared for categorical ones.
Both return a :class:`DriftDetection` when they fire, and both pickle (they are checkpointed
with the learner). Everything here is pure: no Kafka, no Redis.

>>> monitor = ConceptDriftMonitor("adwin")
>>> hits = [d for e in [0.0] * 1000 + [1.0] * 100 if (d := monitor.update(e))]
>>> [(d.seen, d.evidence["error_mean_before"], d.evidence["direction"]) for d in hits]
[(1024, 0.0, 'up')]
>>> features = FeatureDriftMonitor(["x"], reference_size=100, window=100, check_every=100)
>>> rows = [{"x": float(i % 10)} for i in range(100)] + [{"x": i % 10 + 5.0} for i in range(100)]
>>> hits = [d for row in rows if (d := features.update(row))]
>>> hits[0].evidence["worst"], round(hits[0].evidence["features"]["x"]["psi"], 2)
('x', 4.35)
>>> psi([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
0.0
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from river import drift
from scipy import stats

DETECTORS = {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley}
# Declarations carry detector parameters as floats; River's ADWIN (Rust) rejects a float
# where it needs an integer.
_INT_PARAMS = frozenset({"clock", "max_buckets", "min_window_length", "grace_period",
                         "min_instances"})
# The proportion an empty bin (or category) counts as in PSI, so that log(0) never happens.
_EPS = 1e-4


@dataclass(frozen=True)
class DriftDetection:
    """One detection, as the learner publishes it on the control topic."""

    kind: str                 # "concept" or "feature"
    detector: str             # "adwin", "page_hinkley" or "psi_ks_chi2"
    seen: int                 # observations fed to the monitor since its (re)start
    evidence: dict[str, Any]  # JSON-serialisable numbers and strings only


class ConceptDriftMonitor:
    """Concept drift on the error stream of the served model.

    ``detector`` is ``"adwin"`` or ``"page_hinkley"``; ``params`` go to River's
    ``drift.ADWIN`` or ``drift.PageHinkley`` (e.g. ``delta=0.002``). The evidence of a
    detection holds ``seen``; ``segment``, the errors since the (re)start or the previous
    detection; the mean error of the last ``recent`` of them (``error_mean_recent``) and of the
    segment before those (``error_mean_before`` and ``direction``, ``"up"`` or ``"down"``,
    when the segment is longer than the recent part); and for ADWIN its window's ``width`` and
    mean (``estimation``) after the cut. A detector fires a few dozen errors after a change,
    so the recent mean still holds older errors: it understates the new level.

    After a detection the monitor keeps running. River's detectors (0.26) rebuild themselves
    from scratch on the update that follows a detection (ADWIN drops the window it had kept
    after its cut too), so the segment statistics here restart at a detection as well.
    """

    RECENT = 200  # errors in the "recent" mean of the evidence

    def __init__(self, detector: str = "adwin", **params: Any) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"unknown concept drift detector {detector!r}; "
                             f"choose from {sorted(DETECTORS)}")
        self.detector = detector
        self.params = {k: int(v) if k in _INT_PARAMS and isinstance(v, float) and v.is_integer()
                       else v for k, v in params.items()}
        self.reset()  # River raises TypeError here on an unknown parameter

    def reset(self) -> None:
        """Forget the error stream: a new model is served."""
        self._river = DETECTORS[self.detector](**self.params)
        self.seen = 0
        self._segment_n = 0
        self._segment_sum = 0.0
        self._recent: deque[float] = deque(maxlen=self.RECENT)

    def update(self, error: float) -> DriftDetection | None:
        """Add one served error; a detection when the detector fires on it.

        Raises ValueError on a non-finite error: NaN would poison the detector for good.
        """
        error = float(error)
        if not math.isfinite(error):
            raise ValueError(f"the error must be finite, got {error}")
        self.seen += 1
        self._segment_n += 1
        self._segment_sum += error
        self._recent.append(error)
        self._river.update(error)
        if not self._river.drift_detected:
            return None
        detection = DriftDetection("concept", self.detector, self.seen, self._evidence())
        self._segment_n, self._segment_sum = 0, 0.0
        self._recent.clear()
        return detection

    def _evidence(self) -> dict[str, Any]:
        recent_sum = math.fsum(self._recent)
        recent_mean = recent_sum / len(self._recent)
        evidence: dict[str, Any] = {"seen": self.seen, "segment": self._segment_n,
                                    "recent": len(self._recent),
                                    "error_mean_recent": recent_mean}
        before_n = self._segment_n - len(self._recent)
        if before_n > 0:
            before_mean = (self._segment_sum - recent_sum) / before_n
            evidence["error_mean_before"] = before_mean
            evidence["direction"] = "up" if recent_mean >= before_mean else "down"
        if isinstance(self._river, drift.ADWIN):
            evidence["width"] = int(self._river.width)
            evidence["estimation"] = float(self._river.estimation)
        return evidence


def psi(reference: Sequence[float], live: Sequence[float], bins: int = 10) -> float:
    """Population Stability Index of ``live`` against ``reference`` (finite values).

    Bins are cut at the reference's inner quantiles, deduplicated, and closed on the right,
    with open ends: a spike (many zeros) is one bin, and a 0/1 feature still gets two.

    >>> round(psi(range(100), [x + 50 for x in range(100)]), 2)
    4.35
    """
    if bins < 2:
        raise ValueError("psi needs at least 2 bins")
    return _psi_sorted(np.sort(_array(reference)), np.sort(_array(live)), bins)


def ks(reference: Sequence[float], live: Sequence[float], *,
       method: str = "auto") -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov (statistic, p-value), ``scipy.stats.ks_2samp``."""
    result = stats.ks_2samp(_array(reference), _array(live), method=method)
    return float(result.statistic), float(result.pvalue)


def chi2(reference: Sequence[Any], live: Sequence[Any]) -> tuple[float, float]:
    """Chi-squared (statistic, p-value) of the category counts of both samples, over the
    union of their categories (``scipy.stats.chi2_contingency``).

    >>> chi2([1.0, 1.0], [1.0])
    (0.0, 1.0)
    """
    return _chi2_table(_contingency(reference, live))


def _array(values: Sequence[Any]) -> np.ndarray:
    out = np.asarray(values, dtype=float)
    if out.size == 0:
        raise ValueError("drift statistics need non-empty samples")
    return out


def _psi_sorted(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> float:
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    # Values <= each edge, by binary search in the sorted samples: right-closed bins.
    return _psi_counts(np.diff(np.searchsorted(ref, edges, side="right"), prepend=0,
                               append=ref.size),
                       np.diff(np.searchsorted(cur, edges, side="right"), prepend=0,
                               append=cur.size))


def _psi_counts(ref_counts: np.ndarray, live_counts: np.ndarray) -> float:
    p = np.maximum(ref_counts / ref_counts.sum(), _EPS)
    q = np.maximum(live_counts / live_counts.sum(), _EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def _contingency(reference: Sequence[Any], live: Sequence[Any]) -> np.ndarray:
    ref, cur = np.asarray(reference), np.asarray(live)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("drift statistics need non-empty samples")
    categories, codes = np.unique(np.concatenate([ref, cur]), return_inverse=True)
    return np.stack([np.bincount(codes[:ref.size], minlength=categories.size),
                     np.bincount(codes[ref.size:], minlength=categories.size)])


def _chi2_table(table: np.ndarray) -> tuple[float, float]:
    # One category only: scipy returns (0, 1) for zero degrees of freedom.
    result = stats.chi2_contingency(table)
    return float(result.statistic), float(result.pvalue)


class FeatureDriftMonitor:
    """Feature drift between a reference window and a sliding live window.

    Until the reference holds ``reference_size`` rows, rows fill it (the first rows seen, or
    what :meth:`set_reference` left short); after that they go to a live window of the last
    ``window`` rows. Every ``check_every`` live rows, once the live window is full, each
    feature is compared: a numeric one drifts when its PSI exceeds ``psi_threshold`` *and* the
    KS p-value is below ``p_value`` (the p-value alone flags negligible shifts at these sample
    sizes, PSI alone flags noise in small samples); a categorical one (numbers as category
    codes) when its chi-squared p-value is below ``p_value``. Missing or non-finite values are
    skipped for that feature; a feature with no value on one side is not compared.

    When it fires, the live window becomes the reference (its last ``reference_size`` rows)
    and the live window starts empty, so one shift is reported once, not at every check
    until a retrain. The retrain that follows sets the real baseline anyway, the new model's
    training rows, through :meth:`set_reference`.

    The evidence: ``features`` (the drifting ones, ``{"psi", "ks", "p_value"}`` or
    ``{"chi2", "p_value", "psi"}``, PSI over the categories for a categorical one), ``worst``
    (the drifting feature with the largest PSI), ``reference_size`` and ``window`` (rows
    compared).
    """

    DETECTOR = "psi_ks_chi2"

    def __init__(self, features: Sequence[str], *, categorical: Sequence[str] = (),
                 reference_size: int = 2000, window: int = 2000, check_every: int = 500,
                 psi_threshold: float = 0.25, p_value: float = 0.001) -> None:
        self.features = tuple(features)
        unknown = sorted(set(categorical) - set(self.features))
        if unknown:
            raise ValueError(f"categorical features {unknown} are not among {self.features}")
        if min(reference_size, window, check_every) < 1:
            raise ValueError("reference_size, window and check_every must be positive")
        self.categorical = frozenset(categorical)
        self.reference_size = reference_size
        self.window = window
        self.check_every = check_every
        self.psi_threshold = psi_threshold
        self.p_value = p_value
        self._stats: dict[str, dict[str, float]] = {}
        self.set_reference(())

    def update(self, features: Mapping[str, float]) -> DriftDetection | None:
        """Add one row of features; a detection when a check finds drifting features."""
        self.seen += 1
        row = [_value(features.get(name)) for name in self.features]
        if self._ref_n < self.reference_size:
            self._reference[self._ref_n] = row
            self._ref_n += 1
            return None
        self._live[self._live_pos] = row
        self._live_pos = (self._live_pos + 1) % self.window
        self._live_n = min(self._live_n + 1, self.window)
        self._since_check += 1
        if self._live_n < self.window or self._since_check < self.check_every:
            return None
        self._since_check = 0
        return self._check()

    def set_reference(self, rows: Iterable[Mapping[str, float]]) -> None:
        """Compare with ``rows`` from now on (the new model's training rows; the last
        ``reference_size`` of them) and empty the live window."""
        data = [[_value(row.get(name)) for name in self.features] for row in rows]
        self._load_reference(np.array(data, dtype=float) if data
                             else np.empty((0, len(self.features))))
        self.seen = 0

    def last_statistics(self) -> dict[str, dict[str, float]]:
        """Each compared feature's statistics at the last check; ``{}`` before the first."""
        return {name: dict(values) for name, values in self._stats.items()}

    def _load_reference(self, rows: np.ndarray) -> None:
        rows = rows[len(rows) - min(len(rows), self.reference_size):]
        self._reference = np.full((self.reference_size, len(self.features)), np.nan)
        self._reference[:len(rows)] = rows
        self._ref_n = len(rows)
        self._live = np.full((self.window, len(self.features)), np.nan)
        self._live_pos = self._live_n = self._since_check = 0

    def _check(self) -> DriftDetection | None:
        reference, live = self._reference[:self._ref_n], self._live
        self._stats, numeric, ds, ens = {}, [], [], []
        for j, name in enumerate(self.features):
            ref, cur = reference[:, j], live[:, j]
            ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
            if ref.size == 0 or cur.size == 0:
                continue
            if name in self.categorical:
                table = _contingency(ref, cur)
                statistic, p = _chi2_table(table)
                self._stats[name] = {"chi2": statistic, "p_value": p,
                                     "psi": _psi_counts(table[0], table[1])}
            else:
                ref.sort()
                cur.sort()
                numeric.append(name)
                ds.append(_ks_statistic(ref, cur))
                ens.append(round(ref.size * cur.size / (ref.size + cur.size)))
                self._stats[name] = {"psi": _psi_sorted(ref, cur), "ks": ds[-1]}
        # What ks(..., method="asymp") computes, with one p-value call for every feature
        # instead of one ks_2samp each: its per-call overhead was most of a check's time. At
        # these sizes the asymptotic p-value equals the exact one to the digits that matter.
        if numeric:
            ps = np.clip(stats.kstwo.sf(np.array(ds), np.array(ens, dtype=float)), 0.0, 1.0)
            for name, p in zip(numeric, ps, strict=True):
                self._stats[name]["p_value"] = float(p)
        drifting = {name: values for name, values in self._stats.items() if (
            values["p_value"] < self.p_value
            and (name in self.categorical or values["psi"] > self.psi_threshold))}
        if not drifting:
            return None
        evidence = {"features": {name: dict(v) for name, v in drifting.items()},
                    "worst": max(drifting, key=lambda name: drifting[name]["psi"]),
                    "reference_size": int(self._ref_n), "window": int(self._live_n)}
        # The live window in arrival order (the oldest row sits at the write position).
        self._load_reference(np.roll(live, -self._live_pos, axis=0))
        return DriftDetection("feature", self.DETECTOR, self.seen, evidence)


def _ks_statistic(ref: np.ndarray, cur: np.ndarray) -> float:
    """The two-sample KS statistic of sorted samples, as ``scipy.stats.ks_2samp`` has it."""
    both = np.concatenate([ref, cur])
    return float(np.max(np.abs(np.searchsorted(ref, both, side="right") / ref.size
                               - np.searchsorted(cur, both, side="right") / cur.size)))


def _value(value: Any) -> float:
    """A feature value as a float; NaN (skipped) when missing or not finite."""
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan
