"""Bootstrap intervals, paired comparisons and seed summaries, checked against independent estimates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from jjepa.train.report.intervals import (
    ZERO_COUNT_LIMIT_68,
    metrics_with_intervals,
    paired_deltas,
    resampled_figures,
    stratified_weights,
)
from jjepa.train.report.metrics import json_safe, tagging_metrics
from jjepa.train.report.summary import format_figure, summarise, summary_markdown
from jjepa.train.runners.finetune import best_at_edge, validation_interval
from sklearn.metrics import roc_auc_score

BINARY = ["QCD", "top"]


def _binary_tagger(rng, n_signal, n_background, separation=1.0, decimals=None):
    """Labels (J,) and (J, 2) probabilities of a Gaussian-score tagger; rounding makes ties."""
    labels = np.r_[np.zeros(n_background, dtype=np.int64), np.ones(n_signal, dtype=np.int64)]
    scores = rng.normal(separation * labels, 1.0)
    if decimals is not None:
        scores = np.round(scores, decimals)
    p = 1.0 / (1.0 + np.exp(-scores))
    return labels, np.c_[1.0 - p, p]


def _delong_auc_std(labels, scores):
    """The DeLong et al. (1988) standard error of the AUC, from its placement values."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = greater.mean(axis=1), greater.mean(axis=0)
    return math.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))


def test_unit_weights_give_exactly_the_point_estimates_with_ties():
    rng = np.random.default_rng(0)
    labels, probs = _binary_tagger(rng, 700, 900, decimals=1)
    point = tagging_metrics(labels, probs, BINARY)
    figures = resampled_figures(labels, probs, BINARY, np.ones((1, len(labels)), dtype=np.int32))
    assert figures.accuracy[0] == pytest.approx(point["accuracy"], abs=1e-15)
    assert figures.auc[0] == pytest.approx(point["auc"], rel=1e-12)
    assert 1 / figures.background_efficiency["50"][0] == pytest.approx(point["rej_at_50"], rel=1e-12)
    assert 1 / figures.background_efficiency["30"][0] == pytest.approx(point["rej_at_30"], rel=1e-12)


def test_unit_weights_match_the_multiclass_headline_figures():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 3000)
    logits = rng.normal(size=(3000, 3))
    logits[np.arange(3000), labels] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    classes = ["Wqq", "QCD", "Tbqq"]  # the background is not class 0
    point = tagging_metrics(labels, probs, classes)
    figures = resampled_figures(labels, probs, classes, np.ones((1, 3000), dtype=np.int32))
    assert figures.auc[0] == pytest.approx(point["auc"], rel=1e-12)
    assert 1 / figures.background_efficiency["50"][0] == pytest.approx(point["rej_at_50"], rel=1e-12)
    assert figures.accuracy[0] == pytest.approx(point["accuracy"])
    for name in ("Wqq", "Tbqq"):  # the ParT paper's per-class figures: X against the background alone
        for suffix in ("50", "30"):
            assert 1 / figures.per_class[name][suffix][0] == pytest.approx(point[f"rej_at_{suffix}_{name}"], rel=1e-12)
    with_intervals = metrics_with_intervals(labels, probs, classes, n_resamples=100)
    low, high = with_intervals["rej_at_50_Tbqq_ci"]
    assert low < with_intervals["rej_at_50_Tbqq"] < high
    assert with_intervals["n_background_pass_at_50_Tbqq"] > 0 and not with_intervals["rej_at_50_Tbqq_lower_bound"]


def test_resampling_is_class_stratified_and_seeded():
    labels = np.r_[np.zeros(37), np.ones(61), np.full(5, 2)].astype(np.int64)
    chunks = list(stratified_weights(labels, 50, seed=3))
    weights = np.concatenate(chunks)
    assert weights.shape == (50, len(labels))
    for value, count in ((0, 37), (1, 61), (2, 5)):
        assert (weights[:, labels == value].sum(axis=1) == count).all()
    assert (weights.std(axis=0) > 0).all()  # every jet is sometimes drawn more or less than once
    assert np.array_equal(weights, np.concatenate(list(stratified_weights(labels, 50, seed=3))))
    assert not np.array_equal(weights, np.concatenate(list(stratified_weights(labels, 50, seed=4))))


def test_auc_interval_matches_the_true_sampling_spread_and_delong():
    """68 % interval half-width vs the AUC's spread over 300 independent test sets, and vs DeLong."""
    rng = np.random.default_rng(2)
    true_spread = np.std([roc_auc_score(*(lambda y, p: (y, p[:, 1]))(*_binary_tagger(rng, 400, 600)))
                          for _ in range(300)])
    labels, probs = _binary_tagger(rng, 400, 600)
    metrics = metrics_with_intervals(labels, probs, BINARY, n_resamples=1000, seed=0)
    half_width = (metrics["auc_ci"][1] - metrics["auc_ci"][0]) / 2
    assert half_width == pytest.approx(true_spread, rel=0.2)
    assert half_width == pytest.approx(_delong_auc_std(labels, probs[:, 1]), rel=0.12)
    assert metrics["auc_ci"][0] < metrics["auc"] < metrics["auc_ci"][1]


def test_rejection_interval_width_scales_like_one_over_sqrt_of_passing_background():
    """Relative width ∝ 1/sqrt(n_background_pass): 16x more passing jets, 4x narrower."""
    rng = np.random.default_rng(3)
    widths = {}
    for n_background in (2_000, 32_000):
        labels, probs = _binary_tagger(rng, 4000, n_background, separation=2.5)
        m = metrics_with_intervals(labels, probs, BINARY, n_resamples=600, seed=1)
        low, high = m["rej_at_50_ci"]
        widths[n_background] = ((high - low) / m["rej_at_50"], m["n_background_pass_at_50"])
    (w_small, pass_small), (w_large, pass_large) = widths[2_000], widths[32_000]
    assert pass_large / pass_small == pytest.approx(16, rel=0.15)
    # Signal-efficiency fluctuations add a little on top of the Poisson term; the ratio stays near 4.
    assert w_small / w_large == pytest.approx(math.sqrt(pass_large / pass_small), rel=0.25)


def test_zero_background_passing_is_a_finite_lower_bound():
    labels = np.r_[np.zeros(300), np.ones(200)].astype(np.int64)
    score = np.r_[np.linspace(0.0, 0.4, 300), np.linspace(0.6, 1.0, 200)]  # perfectly separated
    metrics = metrics_with_intervals(labels, np.c_[1 - score, score], BINARY, n_resamples=200)
    assert metrics["n_background_pass_at_50"] == 0 and metrics["n_background_pass_at_30"] == 0
    assert metrics["rej_at_50_lower_bound"] is True
    assert metrics["rej_at_50"] == pytest.approx(300 / ZERO_COUNT_LIMIT_68)
    safe = json_safe(metrics)
    assert isinstance(safe["rej_at_50"], float) and math.isfinite(safe["rej_at_50"])
    assert safe["rej_at_50_ci"][1] == "inf"  # every resample passes no background: the interval is open above


def test_counts_behind_the_rejection():
    rng = np.random.default_rng(4)
    labels, probs = _binary_tagger(rng, 1000, 3000)
    m = metrics_with_intervals(labels, probs, BINARY, n_resamples=100)
    assert (m["n_test_signal"], m["n_test_background"]) == (1000, 3000)
    threshold = np.sort(probs[labels == 1, 1])[::-1][499]  # the 500th signal jet: εS reaches 0.5
    assert m["n_background_pass_at_50"] == int((probs[labels == 0, 1] >= threshold).sum())
    assert m["rej_at_50"] == pytest.approx(3000 / m["n_background_pass_at_50"], rel=0.05)
    assert m["rej_at_50_lower_bound"] is False


def test_a_tagger_against_itself_is_exactly_zero_with_zero_width():
    rng = np.random.default_rng(5)
    labels, probs = _binary_tagger(rng, 300, 300)
    other = _binary_tagger(rng, 300, 300)[1]
    for seeds in ([probs], [probs, other]):
        result = paired_deltas(labels, BINARY, seeds, seeds, n_resamples=200)
        assert result["auc"]["delta"] == 0.0 and result["auc"]["ci68"] == [0.0, 0.0]
        assert result["auc"]["ci95"] == [0.0, 0.0]
        assert result["rej_at_50_ratio"]["delta"] == 1.0 and result["rej_at_50_ratio"]["ci68"] == [1.0, 1.0]


def test_a_better_tagger_is_resolved_by_the_paired_bootstrap():
    rng = np.random.default_rng(6)
    labels = np.r_[np.zeros(1500), np.ones(1500)].astype(np.int64)
    base = rng.normal(labels * 1.0, 1.0)
    better = base + 0.4 * labels + rng.normal(0, 0.1, len(labels))

    def probs(s):
        p = 1 / (1 + np.exp(-s))
        return np.c_[1 - p, p]

    result = paired_deltas(labels, BINARY, [probs(better)], [probs(base)], n_resamples=500)
    auc = result["auc"]
    expected = roc_auc_score(labels, better) - roc_auc_score(labels, base)
    assert auc["delta"] == pytest.approx(expected, abs=1e-12)
    assert 0 < auc["ci95"][0] < auc["delta"] < auc["ci95"][1]
    # Paired, the interval is much narrower than the AUC's own test-set interval.
    own = metrics_with_intervals(labels, probs(base), BINARY, n_resamples=500)["auc_ci"]
    assert auc["ci68"][1] - auc["ci68"][0] < 0.5 * (own[1] - own[0])
    assert result["rej_at_50_ratio"]["ci95"][0] > 1.0


def _row(mode, seed, rej, auc=0.9, bound=False):
    return {"mode": mode, "label_fraction": 0.1, "seed": seed, "n_train_labels": 100, "accuracy": 0.8,
            "accuracy_ci_low": 0.79, "accuracy_ci_high": 0.81, "auc": auc, "auc_ci_low": auc - 0.01,
            "auc_ci_high": auc + 0.01, "rej_at_50": rej, "rej_at_50_ci_low": 0.8 * rej, "rej_at_50_ci_high": 1.25 * rej,
            "rej_at_30": rej * 2, "rej_at_30_ci_low": 1.6 * rej, "rej_at_30_ci_high": 2.5 * rej,
            "rej_at_50_lower_bound": bound, "rej_at_30_lower_bound": False, "best_at_edge": ""}


def test_summary_averages_rejections_in_log_space_and_never_prints_zero_spread():
    summary = summarise([_row("finetune", 0, 10.0), _row("finetune", 1, 40.0)])
    (entry,) = summary
    assert entry["rej_at_50_mean"] == pytest.approx(20.0)  # geometric, not 25
    assert entry["rej_at_50_seed_spread"] == pytest.approx(np.std(np.log([10, 40]), ddof=1))
    assert entry["rej_at_50_ci_low"] == pytest.approx(16.0) and entry["rej_at_50_ci_high"] == pytest.approx(25.0)
    assert "± " in format_figure(entry, "rej_at_50") and "[16.0, 25.0]" in format_figure(entry, "rej_at_50")
    single = summarise([_row("scratch", 0, 10.0)])[0]
    assert single["auc_seed_spread"] is None
    text = summary_markdown([single])
    assert "± " not in text.split("\n\n")[0] and "[0.8900, 0.9100]" in text


def test_a_lower_bound_in_any_seed_makes_the_cell_a_lower_bound():
    entry = summarise([_row("finetune", 0, 50.0), _row("finetune", 1, 300.0, bound=True)])[0]
    assert entry["rej_at_50_lower_bound"] is True
    assert format_figure(entry, "rej_at_50").startswith("> ")


def test_validation_is_frequent_enough_to_bracket_the_best_step_with_few_labels():
    # 300 labels, batch 256: an epoch is 2 steps and the run its 100 minimum steps.
    assert validation_interval(steps_per_epoch=2, steps=100) == 2
    assert validation_interval(steps_per_epoch=1, steps=100) == 1
    # Many labels: once per epoch unless that gives fewer than ~40 validations.
    assert validation_interval(steps_per_epoch=4700, steps=94_000) == 2350
    assert validation_interval(steps_per_epoch=100, steps=20_000) == 100
    assert best_at_edge(2, [2, 4, 6]) == "first"
    assert best_at_edge(6, [2, 4, 6]) == "last"
    assert best_at_edge(4, [2, 4, 6]) is None
