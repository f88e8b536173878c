import json
import pickle

import numpy as np
import pytest

from monitoring.drift import (
    ConceptDriftMonitor,
    DriftDetection,
    FeatureDriftMonitor,
    chi2,
    ks,
    psi,
)


def bernoulli(rates_and_lengths, seed):
    rng = np.random.default_rng(seed)
    return [float(e) for rate, n in rates_and_lengths for e in rng.random(n) < rate]


def detections(monitor, stream):
    return [d for x in stream if (d := monitor.update(x)) is not None]


def as_json(detection: DriftDetection) -> dict:
    # What goes into the Kafka control event: strict JSON, no NaN.
    return json.loads(json.dumps(detection.evidence, allow_nan=False))


def rows(n, seed, shift=None, names=("x", "y", "z")):
    shift = shift or {}
    rng = np.random.default_rng(seed)
    return [{name: float(rng.normal(shift.get(name, 0.0))) for name in names} for _ in range(n)]


# -- statistics ---------------------------------------------------------------------------


def test_psi_is_zero_on_identical_samples_and_small_on_the_same_distribution():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5000), rng.normal(size=5000)
    assert psi(a, a) == 0.0
    assert psi(a, b) < 0.02


def test_psi_is_large_on_a_shifted_distribution():
    rng = np.random.default_rng(1)
    a = rng.normal(size=5000)
    assert psi(a, rng.normal(0.5, size=5000)) > 0.2
    assert psi(a, rng.normal(1.0, size=5000)) > 0.8


def test_psi_sees_a_change_in_a_spiky_or_binary_feature():
    rng = np.random.default_rng(2)
    # 90% zeros: most quantile edges coincide and are deduplicated, the change still shows.
    before = (rng.random(5000) < 0.1).astype(float)
    after = (rng.random(5000) < 0.5).astype(float)
    assert psi(before, (rng.random(5000) < 0.1).astype(float)) < 0.01
    assert psi(before, after) > 0.5
    # A constant reference: everything above it falls in the open last bin.
    assert psi(np.zeros(100), np.ones(100)) > 5


def test_psi_rejects_empty_samples_and_a_single_bin():
    with pytest.raises(ValueError):
        psi([], [1.0])
    with pytest.raises(ValueError):
        psi([1.0], [1.0], bins=1)


def test_ks_p_values():
    rng = np.random.default_rng(3)
    a = rng.normal(size=2000)
    stat_same, p_same = ks(a, rng.normal(size=2000))
    stat_shift, p_shift = ks(a, rng.normal(0.5, size=2000))
    assert p_same > 0.01 and stat_same < 0.05
    assert p_shift < 1e-10 and stat_shift > 0.15
    assert ks([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == (0.0, 1.0)


def test_chi2_p_values_over_the_union_of_categories():
    rng = np.random.default_rng(4)
    ref = rng.choice([0.0, 1.0, 2.0], size=2000, p=[0.6, 0.3, 0.1])
    assert chi2(ref, rng.choice([0.0, 1.0, 2.0], size=2000, p=[0.6, 0.3, 0.1]))[1] > 0.01
    assert chi2(ref, rng.choice([0.0, 1.0, 2.0], size=2000, p=[0.2, 0.3, 0.5]))[1] < 1e-10
    # A category only the live sample has counts.
    assert chi2([0.0] * 100, [0.0] * 50 + [3.0] * 50)[1] < 1e-10
    # Works on labels as well as codes.
    assert chi2(["a", "b"] * 50, ["a", "b"] * 50)[1] > 0.99


def test_chi2_of_one_and_the_same_category_is_no_drift_not_an_error():
    assert chi2([1.0] * 50, [1.0] * 20) == (0.0, 1.0)


# -- concept drift --------------------------------------------------------------------------


def test_adwin_detects_an_error_rate_jump_soon_after_it():
    monitor = ConceptDriftMonitor("adwin", delta=0.002)
    found = detections(monitor, bernoulli([(0.1, 1000), (0.6, 1000)], seed=42))
    assert found, "the jump from 0.1 to 0.6 was missed"
    first = found[0]
    assert (first.kind, first.detector) == ("concept", "adwin")
    assert 1000 < first.seen <= 1150  # within 150 observations of the change
    ev = as_json(first)
    assert ev["seen"] == first.seen
    # The recent mean still holds errors from before the change: a lower bound of the jump.
    assert 0.05 < ev["error_mean_before"] < 0.15
    assert ev["error_mean_recent"] > ev["error_mean_before"] + 0.05
    assert ev["recent"] == 200 and ev["segment"] == first.seen
    assert ev["direction"] == "up"
    assert ev["width"] > 0 and 0.0 <= ev["estimation"] <= 1.0


@pytest.mark.parametrize("seed", [42, 7, 2024])
def test_adwin_does_not_fire_on_a_stationary_stream_of_the_same_length(seed):
    monitor = ConceptDriftMonitor("adwin", delta=0.002)
    assert detections(monitor, bernoulli([(0.1, 2000)], seed=seed)) == []
    assert monitor.seen == 2000


def test_the_monitor_keeps_running_after_a_detection():
    # Up, stable for long, down: one detection per change, counted from the start.
    monitor = ConceptDriftMonitor("adwin")
    found = detections(monitor, bernoulli([(0.1, 1000), (0.6, 3000), (0.05, 1000)], seed=5))
    assert [d.evidence["direction"] for d in found] == ["up", "down"]
    assert 1000 < found[0].seen <= 1150 and 4000 < found[1].seen <= 4150
    # The second detection's segment starts after the first one.
    assert found[1].evidence["segment"] == found[1].seen - found[0].seen


def test_reset_forgets_the_old_error_stream():
    monitor = ConceptDriftMonitor("adwin")
    assert detections(monitor, bernoulli([(0.1, 1000)], seed=6)) == []
    monitor.reset()
    assert monitor.seen == 0
    # A new model that errs more from the start: no jump within its own stream.
    assert detections(monitor, bernoulli([(0.6, 1000)], seed=7)) == []


def test_page_hinkley_detects_a_jump_in_regression_errors():
    rng = np.random.default_rng(8)
    errors = np.abs(np.concatenate([rng.normal(0, 1.0, 1000), rng.normal(0, 4.0, 500)]))
    # Parameters as a declaration carries them: floats, min_instances too.
    monitor = ConceptDriftMonitor("page_hinkley", threshold=50.0, min_instances=30.0)
    found = detections(monitor, errors)
    assert found and found[0].detector == "page_hinkley"
    first_seen = found[0].seen
    assert 1000 < first_seen <= 1100
    ev = as_json(found[0])
    assert ev["error_mean_before"] == pytest.approx(np.mean(errors[:first_seen - 200]))
    assert ev["error_mean_recent"] == pytest.approx(np.mean(errors[first_seen - 200:first_seen]))
    assert ev["direction"] == "up"
    assert "width" not in ev


def test_page_hinkley_stays_quiet_on_the_stationary_part():
    rng = np.random.default_rng(8)
    monitor = ConceptDriftMonitor("page_hinkley", threshold=50.0)
    assert detections(monitor, np.abs(rng.normal(0, 1.0, 1500))) == []


def test_a_bad_detector_name_or_parameter_or_error_is_refused():
    with pytest.raises(ValueError, match="adwin.*page_hinkley"):
        ConceptDriftMonitor("ddm")
    with pytest.raises(TypeError):
        ConceptDriftMonitor("adwin", threshold=3.0)
    with pytest.raises(ValueError):
        ConceptDriftMonitor().update(float("nan"))


def test_concept_monitor_pickles_mid_stream_and_resumes_identically():
    stream = bernoulli([(0.1, 1000), (0.6, 1000)], seed=9)
    monitor = ConceptDriftMonitor("adwin")
    detections(monitor, stream[:990])
    copy = pickle.loads(pickle.dumps(monitor))
    ours, theirs = detections(monitor, stream[990:]), detections(copy, stream[990:])
    assert ours and ours == theirs


# -- feature drift --------------------------------------------------------------------------


def small_monitor(**kw):
    params = dict(reference_size=1000, window=1000, check_every=250)
    return FeatureDriftMonitor(["x", "y", "z"], **{**params, **kw})


def test_a_mean_shift_of_one_feature_fires_and_names_it():
    monitor = small_monitor()
    found = detections(monitor, rows(1000, seed=10) + rows(1000, seed=11, shift={"y": 1.0}))
    assert len(found) == 1
    d = found[0]
    assert (d.kind, d.detector, d.seen) == ("feature", "psi_ks_chi2", 2000)
    ev = as_json(d)
    assert ev["worst"] == "y" and set(ev["features"]) == {"y"}
    assert ev["features"]["y"]["psi"] > 0.25 and ev["features"]["y"]["p_value"] < 0.001
    assert set(ev["features"]["y"]) == {"psi", "ks", "p_value"}
    assert (ev["reference_size"], ev["window"]) == (1000, 1000)


def test_the_worst_feature_is_the_most_shifted_one():
    monitor = small_monitor()
    stream = rows(1000, seed=12) + rows(1000, seed=13, shift={"x": 0.8, "z": 2.0})
    (d,) = detections(monitor, stream)
    assert set(d.evidence["features"]) == {"x", "z"} and d.evidence["worst"] == "z"


def test_a_stationary_stream_does_not_fire():
    monitor = small_monitor()
    assert monitor.last_statistics() == {}
    assert detections(monitor, rows(6000, seed=14)) == []
    stats = monitor.last_statistics()
    assert set(stats) == {"x", "y", "z"}
    assert all(s["psi"] < 0.1 and set(s) == {"psi", "ks", "p_value"} for s in stats.values())


def test_a_significant_but_negligible_shift_does_not_fire():
    # Both conditions are needed: with 2000 rows a 0.2-sd shift is significant for KS,
    # but its PSI is far below the threshold.
    monitor = FeatureDriftMonitor(["x"], reference_size=2000, window=2000, check_every=500)
    stream = rows(2000, seed=15, names=("x",)) + rows(2000, seed=16, shift={"x": 0.2},
                                                       names=("x",))
    assert detections(monitor, stream) == []
    s = monitor.last_statistics()["x"]
    assert s["p_value"] < 0.001 and s["psi"] < 0.25


def test_the_check_waits_for_a_full_live_window_then_runs_every_check_every_rows():
    monitor = small_monitor(check_every=300)
    for i, row in enumerate(rows(1000 + 1299, seed=17)):
        monitor.update(row)
        if i + 1 == 1999:
            assert monitor.last_statistics() == {}  # live window one row short
        if i + 1 == 2000:
            first = monitor.last_statistics()
            assert first
    # Next check at 2300, not before.
    assert monitor.last_statistics() == first


def test_monitor_statistics_equal_the_public_functions():
    monitor = small_monitor()
    stream = rows(1000, seed=18) + rows(1000, seed=19, shift={"x": 0.1})
    detections(monitor, stream)
    for name, s in monitor.last_statistics().items():
        ref = [r[name] for r in stream[:1000]]
        live = [r[name] for r in stream[1000:]]
        assert s["psi"] == pytest.approx(psi(ref, live), rel=1e-12)
        assert (s["ks"], s["p_value"]) == pytest.approx(ks(ref, live, method="asymp"),
                                                        rel=1e-9)


def test_one_shift_fires_once_the_live_window_becoming_the_reference():
    monitor = small_monitor()
    stream = rows(1000, seed=20) + rows(4000, seed=21, shift={"x": 1.0})
    found = detections(monitor, stream)
    assert [d.seen for d in found] == [2000]
    # The shifted rows are the reference now: the same shift is no longer drift ...
    assert monitor.last_statistics()["x"]["psi"] < 0.1
    # ... and a further shift is.
    found = detections(monitor, rows(1000, seed=22, shift={"x": 3.0}))
    assert [d.evidence["worst"] for d in found] == ["x"]


def test_a_categorical_distribution_change_fires_on_chi2():
    rng = np.random.default_rng(23)

    def stream(n, p):
        return [{"amount": float(rng.normal()), "kind": float(rng.choice(3, p=p))}
                for _ in range(n)]

    monitor = FeatureDriftMonitor(["amount", "kind"], categorical=["kind"],
                                  reference_size=1000, window=1000, check_every=250)
    assert detections(monitor, stream(3000, [0.6, 0.3, 0.1])) == []
    assert set(monitor.last_statistics()["kind"]) == {"chi2", "p_value", "psi"}
    found = detections(monitor, stream(1000, [0.3, 0.3, 0.4]))
    assert len(found) == 1
    ev = as_json(found[0])
    assert ev["worst"] == "kind" and set(ev["features"]) == {"kind"}
    assert ev["features"]["kind"]["p_value"] < 0.001 and ev["features"]["kind"]["chi2"] > 50


def test_set_reference_replaces_the_baseline_and_empties_the_live_window():
    monitor = small_monitor()
    detections(monitor, rows(1000, seed=24) + rows(900, seed=25))
    monitor.set_reference(rows(1500, seed=26, shift={"x": 1.0}))  # the last 1000 are kept
    assert monitor.seen == 0
    # 999 live rows would have filled the old live window; the new one needs 1000.
    assert detections(monitor, rows(999, seed=27, shift={"x": 1.0})) == []
    assert monitor.last_statistics() == {}
    # Against the new reference, unshifted data is the drift.
    found = detections(monitor, rows(1000, seed=28))
    assert [d.evidence["worst"] for d in found] == ["x"]


def test_a_short_reference_is_topped_up_from_the_stream():
    monitor = small_monitor()
    monitor.set_reference(rows(400, seed=29))
    found = detections(monitor, rows(600, seed=30) + rows(1000, seed=31, shift={"z": 1.0}))
    assert [(d.seen, d.evidence["reference_size"], d.evidence["worst"]) for d in found] == [
        (1600, 1000, "z")]


def test_missing_and_non_finite_values_are_skipped_per_feature():
    monitor = small_monitor()
    stream = rows(1000, seed=32) + rows(1000, seed=33, shift={"x": 1.0})
    for i, row in enumerate(stream):
        if i % 2:
            del row["y"]
        if i % 3 == 0:
            row["z"] = float("nan")
        if i < 1000 and i % 5 == 0:
            del row["x"]
    found = detections(monitor, stream)
    assert [d.evidence["worst"] for d in found] == ["x"]
    assert monitor.last_statistics()["y"]["psi"] < 0.1  # compared on the rows that had it


def test_a_feature_never_seen_is_not_compared():
    monitor = FeatureDriftMonitor(["x", "never"], reference_size=100, window=100,
                                  check_every=100)
    detections(monitor, rows(200, seed=34, names=("x",)))
    assert set(monitor.last_statistics()) == {"x"}


def test_categorical_features_must_be_declared_features():
    with pytest.raises(ValueError, match="kind"):
        FeatureDriftMonitor(["x"], categorical=["kind"])
    with pytest.raises(ValueError):
        FeatureDriftMonitor(["x"], window=0)


def test_feature_monitor_pickles_mid_stream_and_resumes_identically():
    stream = rows(1000, seed=35) + rows(1500, seed=36, shift={"x": 1.0})
    monitor = small_monitor()
    detections(monitor, stream[:1700])
    copy = pickle.loads(pickle.dumps(monitor))
    ours, theirs = detections(monitor, stream[1700:]), detections(copy, stream[1700:])
    assert ours and ours == theirs
    assert copy.last_statistics() == monitor.last_statistics()
