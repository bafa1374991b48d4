"""The statistics behind ``edgecloud calibrate``: exact binomial tails, Clopper–Pearson,
threshold candidates that mean what the Cascade does, and Learn-then-Test shown by resampling.

scipy is used here only to cross-check; the product code computes without it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edgecloud.errors import ConfigError
from edgecloud.routing.binomial import binom_cdf, binom_sf, cdf_table, clopper_pearson, lower_bound
from edgecloud.routing.calibrate import (
    _pick,
    calibrate,
    calibrate_report,
    outcomes,
    relative_interval,
    sweep,
)
from edgecloud.routing.confidence import CONFIDENCE
from edgecloud.routing.guarantee import certify, fixed_sequence

CASES = [(0, 1), (0, 10), (1, 10), (3, 10), (10, 10), (0, 500), (7, 500), (493, 500),
         (20, 2000), (1900, 2000), (5, 100_000)]  # fmt: skip


@pytest.mark.parametrize(("k", "n"), CASES)
def test_binomial_tails_and_clopper_pearson_match_scipy(k: int, n: int) -> None:
    for p in (0.0, 1e-4, 0.01, 0.3, 0.95, 1.0):
        assert binom_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-15)
        assert binom_sf(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9, abs=1e-15)
    for level in (0.9, 0.95, 0.99):
        exact = stats.binomtest(k, n).proportion_ci(level, method="exact")
        assert clopper_pearson(k, n, level) == pytest.approx((exact.low, exact.high), abs=1e-9)
    one_sided = stats.binomtest(k, n, alternative="greater").proportion_ci(0.95, "exact").low
    assert lower_bound(k, n, 0.05) == pytest.approx(one_sided, abs=1e-9)


def test_cdf_table_and_argument_checks() -> None:
    table = cdf_table(300, 0.02)
    assert table == pytest.approx(stats.binom.cdf(np.arange(301), 300, 0.02), rel=1e-9, abs=1e-15)
    assert np.all(np.diff(table) >= 0) and table[-1] == pytest.approx(1.0)
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    for bad in ((-1, 5, 0.5), (6, 5, 0.5), (1, 5, 1.5), (1, 5, float("nan"))):
        with pytest.raises(ValueError):
            binom_cdf(*bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        clopper_pearson(1, 5, 1.0)


def test_fixed_sequence_stops_at_the_first_failure() -> None:
    assert fixed_sequence([0.01, 0.04, 0.2, 0.001], 0.05) == 2
    assert fixed_sequence([0.5, 0.001], 0.05) == 0
    assert fixed_sequence([], 0.05) == 0
    assert fixed_sequence([0.01, float("nan"), 0.0], 0.05) == 1


def _probs(rng: np.random.Generator, labels: np.ndarray, right: np.ndarray, top: np.ndarray,
           classes: int) -> np.ndarray:  # fmt: skip
    """[rows, classes] float32 probabilities: argmax right where ``right``; max prob ``top``."""
    wrong = (labels + rng.integers(1, classes, len(labels))) % classes
    predicted = np.where(right, labels, wrong)
    probs = np.repeat(((1 - top) / (classes - 1))[:, None], classes, axis=1)
    probs[np.arange(len(labels)), predicted] = top
    return probs.astype(np.float32)


def _pair(rows: int, seed: int = 0, classes: int = 4) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    sure = rng.random(rows)
    small_right = rng.random(rows) < 0.45 + 0.55 * sure
    large_right = rng.random(rows) < 0.95
    top = 1 / classes + (1 - 1 / classes) * sure
    small = _probs(rng, labels, small_right, top, classes)
    large = _probs(rng, labels, large_right, np.full(rows, 0.9), classes)
    return small, large, labels


@pytest.mark.parametrize("measure", sorted(CONFIDENCE))
def test_every_candidate_threshold_escalates_exactly_what_the_cascade_would(measure: str) -> None:
    small, large, labels = _pair(3000)
    small[:5] = np.eye(4, dtype=np.float32)[labels[:5]]  # confidence exactly 1.0
    found = outcomes(small, large, labels, measure=measure)
    scores = CONFIDENCE[measure](small)
    assert np.all(np.diff(found.thresholds) > 0)
    assert found.thresholds[0] == 0.0 and found.thresholds[-1] <= 1.0
    right_small = small.argmax(1) == labels
    right_large = large.argmax(1) == labels
    for i in range(0, len(found.thresholds), 97):
        escalate = scores < found.thresholds[i]  # what Cascade.infer computes
        assert found.escalated[i] == escalate.sum()
        assert found.right[i] == np.where(escalate, right_large, right_small).sum()
        assert len(repr(float(found.thresholds[i]))) <= 12  # short decimals in the YAML
    # the distinct escalation sets are all there, the rows at confidence 1.0 never escalate
    assert len(found.thresholds) == len(np.unique(scores)) + (scores.max() < 1.0)


def test_plain_calibration_keeps_its_contract() -> None:
    small, large, labels = _pair(2000)
    point = calibrate(small, large, labels, target_relative_accuracy=0.97)
    assert point.relative_accuracy >= 0.97
    points = sweep(small, large, labels)
    assert point.escalation_rate == min(
        p.escalation_rate for p in points if p.relative_accuracy >= 0.97
    )
    capped = calibrate(small, large, labels, max_escalation_rate=0.2)
    assert capped.escalation_rate <= 0.2
    assert capped.accuracy == max(p.accuracy for p in points if p.escalation_rate <= 0.2)
    with pytest.raises(ConfigError, match="exactly one"):
        calibrate(small, large, labels)
    # a small model sure of wrong answers (confidence 1.0 never escalates) cannot keep 99 %
    sure_and_wrong = np.eye(4, dtype=np.float32)[(labels + 1) % 4]
    sure_and_wrong[: len(labels) // 2] = small[: len(labels) // 2]
    with pytest.raises(ConfigError, match=r"no threshold reaches 0.9900 .* the best is 0\.[0-8]"):
        calibrate(sure_and_wrong, large, labels, target_relative_accuracy=0.99)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s, b, y: (s[:0], b[:0], y[:0]), "got 0"),
        (lambda s, b, y: (np.where(np.arange(len(s))[:, None] == 3, np.nan, s), b, y),
         "not finite .NaN or inf. in 1 of 200 rows, first row 3"),
        (lambda s, b, y: (s, b * 7, y), "not probabilities"),
        (lambda s, b, y: (s, b[:, :3], y), "differ in shape"),
        (lambda s, b, y: (s, b, y.astype(float)), "integer class indices"),
        (lambda s, b, y: (s, b, y + 10), r"in \[0, 4\)"),
        (lambda s, b, y: (s, b, y[:-1]), "one label per row"),
        (lambda s, b, y: (s[:, :1], b[:, :1], y * 0), "at least 2 classes"),
    ],
)  # fmt: skip
def test_bad_probabilities_and_labels_are_refused(change, message: str) -> None:  # type: ignore[no-untyped-def]
    small, large, labels = change(*_pair(200))
    with pytest.raises(ConfigError, match=message):
        calibrate(small, large, labels, target_relative_accuracy=0.9)


def test_the_interval_warns_when_the_rows_cannot_back_the_target() -> None:
    small, large, labels = _pair(100)
    report = calibrate_report(small, large, labels, target_relative_accuracy=0.995)
    low, high = report.relative_accuracy_interval
    assert low < 0.995 <= high and report.rows == 100
    assert "lies inside the 95% interval" in report.warnings[0]
    assert "100 rows" in report.warnings[0]
    # calibrated on average, the target always sits at the edge of what the rows show:
    # more rows narrow the interval around it, but cannot back it
    big = calibrate_report(*_pair(20_000), target_relative_accuracy=0.995)
    low, high = big.relative_accuracy_interval
    assert low < 0.995 <= high and high - low < 0.02 and "20000 rows" in big.warnings[0]
    easy = calibrate_report(*_pair(20_000), target_relative_accuracy=0.6)
    assert easy.point.threshold == 0.0 and easy.warnings == []  # escalating nothing clears it
    assert easy.relative_accuracy_interval[0] > 0.6
    sure = calibrate_report(*_pair(20_000), target_relative_accuracy=0.995, guarantee=0.1)
    assert sure.warnings == [] and sure.guarantee == 0.1
    assert sure.point.relative_accuracy > big.point.relative_accuracy


def test_the_relative_accuracy_interval_covers_at_its_level() -> None:
    """On fixed thresholds, the simultaneous interval holds in >= 95 % of draws."""
    small, large, labels = _pair(200_000, seed=1)
    small_right, large_right = small.argmax(1) == labels, large.argmax(1) == labels
    rng = np.random.default_rng(2)
    misses = 0
    draws = 100
    for _ in range(draws):
        rows = rng.choice(len(labels), 1000, replace=False)
        found = outcomes(small[rows], large[rows], labels[rows])
        i = len(found.thresholds) // 2
        escalate = small.max(axis=1) < found.thresholds[i]  # on the whole population
        truth = np.where(escalate, large_right, small_right).sum() / large_right.sum()
        low, high = relative_interval(found, i)
        misses += not low <= truth <= high
    assert misses <= 5 + 6  # 95 % coverage: expected <= 5, binomial slack for 100 draws


def test_no_certifiable_threshold_is_refused_with_what_would_do() -> None:
    small, large, labels = _pair(60)
    found = outcomes(small, large, labels)
    with pytest.raises(ConfigError, match="no threshold can be certified.*needs about \\d+ rows"):
        certify(found, delta=0.1, target=0.99)
    with pytest.raises(ConfigError, match="in \\(0, 1\\)"):
        certify(found, delta=1.0, target=0.99)
    with pytest.raises(ConfigError, match="no threshold can be certified to escalate"):
        certify(found, delta=0.05, max_escalation=0.01)


def test_the_guarantee_holds_over_validation_draws_and_average_calibration_does_not() -> None:
    """Learn then Test, shown by resampling (LTT, Angelopoulos et al. 2021).

    A population of 200 000 rows (large model right 95 %, a small model whose
    confidence tracks its correctness); 300 validation draws of 2 000 rows;
    each calibrated to keep 98 % of the large model's accuracy, on average and
    with ``--guarantee 0.1``; each threshold measured on the whole population
    (its true relative accuracy). With a guarantee, at most δ of the draws may
    miss the target: asserted up to the binomial slack of 300 draws (the 99.9 %
    quantile of Binomial(300, 0.1) is 47, i.e. 15.7 %). On average, about
    half miss.
    """
    small, large, labels = _pair(200_000, seed=3)
    scores = small.max(axis=1)
    order = np.argsort(scores)
    sorted_scores = scores[order]
    small_right = (small.argmax(1) == labels)[order]
    large_right = (large.argmax(1) == labels)[order]
    cum_large = np.concatenate([[0], np.cumsum(large_right)])
    cum_small = np.concatenate([[0], np.cumsum(small_right)])

    def true_relative(t: float) -> float:
        k = np.searchsorted(sorted_scores, np.float32(t), side="left")  # rows escalated
        right = cum_large[k] + cum_small[-1] - cum_small[k]
        return float(right / cum_large[-1])

    target, delta, draws = 0.98, 0.1, 300
    rng = np.random.default_rng(4)
    missed = {"average": 0, "guaranteed": 0}
    escalation = {"average": 0.0, "guaranteed": 0.0}
    for _ in range(draws):
        rows = rng.choice(len(labels), 2000, replace=False)
        found = outcomes(small[rows], large[rows], labels[rows])
        for kind, i in (("average", _pick(found, target, None)),
                        ("guaranteed", certify(found, delta=delta, target=target))):  # fmt: skip
            missed[kind] += true_relative(found.thresholds[i]) < target
            escalation[kind] += found.escalated[i] / found.rows / draws
    assert missed["guaranteed"] <= stats.binom.ppf(0.999, draws, delta)
    assert 0.3 * draws <= missed["average"] <= 0.7 * draws
    # the guarantee costs escalations, but not all of them
    assert escalation["average"] < escalation["guaranteed"] < 0.9


@pytest.mark.parametrize("rows", [1, 2, 5, 30, 100, 2000])
def test_intervals_stay_within_what_the_ratio_can_be(rows: int) -> None:
    """Relative accuracy is >= 0 and at most 1 / (the large model's lowest accuracy)."""
    small, large, labels = _pair(rows, seed=rows)
    found = outcomes(small, large, labels)
    if found.large_right == 0:
        assert relative_interval(found, 0) == (0.0, float("inf"))
        return
    each = 1 - 0.05 / 3
    cap = 1 / clopper_pearson(found.large_right, rows, each)[0]
    for i in range(len(found.thresholds)):
        low, high = relative_interval(found, i)
        assert 0.0 <= low <= found.point(i).relative_accuracy <= high <= cap + 1e-12


def test_threshold_zero_warns_like_any_other_and_few_rows_warn() -> None:
    """The target inside the interval warns whatever the threshold; 30 rows say little."""
    small, large, labels = _pair(30, seed=3)
    # a small model that is right on 2/3 of the rows and always sure: threshold 0
    small = np.eye(4)[np.where(np.arange(30) % 3 == 0, (labels + 1) % 4, labels)] * 0.8 + 0.05
    large = np.eye(4)[labels] * 0.9 + 0.025
    report = calibrate_report(small, large, labels, target_relative_accuracy=0.6)
    assert report.point.threshold == 0.0 and report.escalated == 0
    low, high = report.relative_accuracy_interval
    assert low < 0.6 <= high and low >= 0.0
    assert report.escalation_interval == (0.0, 0.0)  # threshold 0 escalates nothing, ever
    assert any("lies inside the 95% interval" in w for w in report.warnings)
    assert any("only 30 rows" in w and "too wide" in w for w in report.warnings)
    one = calibrate_report(small[:1], large[:1], labels[:1], target_relative_accuracy=0.7)
    assert one.relative_accuracy_interval[0] == 0.0
    assert any("only 1 rows" in w for w in one.warnings)
    # the too-few warning also stands under a guarantee; the escalation budget of a
    # threshold that escalates nothing is met exactly: no warning for it
    budget = calibrate_report(*_pair(20_000), max_escalation_rate=0.0)
    assert budget.escalation_interval == (0.0, 0.0) and budget.warnings == []


def test_calibration_refuses_what_the_cascade_refuses() -> None:
    """Scores that are not one distribution per row (independent sigmoids, logits) are
    refused by calibration exactly as the Cascade refuses them at run time."""
    from edgecloud.routing.calibrate import calibrate_report
    from edgecloud.routing.confidence import not_probabilities

    good = np.array([[0.7, 0.3], [0.2, 0.8]], np.float32)
    sigmoids = np.array([[0.9, 0.8], [0.1, 0.3]], np.float32)  # in [0, 1], rows not summing to 1
    assert not_probabilities(sigmoids)
    with pytest.raises(ConfigError, match="small model's output is not probabilities .*sum"):
        calibrate_report(sigmoids, good, np.array([0, 1]), target_relative_accuracy=0.9)
