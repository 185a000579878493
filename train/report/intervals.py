"""Uncertainties of the test-set figures: a class-stratified bootstrap over the test jets, vectorised.

Every figure of merit (accuracy, ROC AUC, background rejection 1/εB at εS = 0.5 and 0.3) depends on
which jets happen to be in the test set; a rejection of 700 read where 3 background jets pass is
uncertain to ~60 %. The test jets are resampled with replacement *within each class*, so every
resample has the test set's class counts, and each figure is recomputed; the 16th and 84th
percentiles over the resamples are the 68 % interval ``<figure>_ci``.

How it stays fast: a resample is a vector of integer weights (how often each jet was drawn), and
every figure is a weighted sum over the jets sorted once by score. R resamples of J jets cost a few
cumulative sums over an (R, J) array, computed in chunks of resamples so memory stays bounded;
nothing is refitted or re-sorted per resample. With all weights 1 the same code gives
exactly the point estimates of :mod:`jjepa.train.report.metrics` (a test checks it).

Rejections are resampled as εB and inverted at the end, so a resample with no background passing
(εB = 0) bounds the interval instead of turning it into NaN. A point estimate with no background jet
passing is reported as a lower bound: 1/εB > n_bkg / 1.14, the 68 % CL Poisson upper limit on εB
for zero observed jets (−ln 0.32 = 1.14), flagged ``rej_at_XX_lower_bound``.

Paired comparisons (:func:`paired_deltas`) resample the same jets for both taggers, so everything
they share (the test jets) cancels; over several seeds the seeds are resampled too (a two-level
bootstrap), so the seed-to-seed spread is part of the interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from jjepa.train.report.metrics import (
    WORKING_POINTS,
    background_index,
    pair_score,
    rejection_of,
    tagging_metrics,
)

#: The 68 % interval's percentiles; the 95 % one's.
PERCENTILES_68: tuple[float, float] = (15.865, 84.135)
PERCENTILES_95: tuple[float, float] = (2.275, 97.725)

#: −ln(0.32): the 68 % CL Poisson upper limit on the mean when nothing is observed.
ZERO_COUNT_LIMIT_68 = -math.log(1.0 - 0.6827)

#: Elements of one (resamples × jets) weight chunk: bounds the memory of a bootstrap (~80 MB of int32).
_CHUNK_ELEMENTS = 20_000_000


@dataclass(frozen=True)
class ResampledFigures:
    """Figures of one tagger over R resamples of the test jets, each (R,) float64.

    ``background_efficiency`` maps a working-point suffix (``"50"``, ``"30"``) to εB at that εS;
    ``per_class`` (more than two classes) maps each signal class X to the same for X against the
    background alone, ranked by p_X / (p_X + p_bkg), the ParT paper's per-class figures.
    """

    accuracy: np.ndarray
    auc: np.ndarray
    background_efficiency: dict[str, np.ndarray]
    per_class: dict[str, dict[str, np.ndarray]]


def stratified_weights(labels: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap weights of the jets, class by class, in chunks: each chunk (r, J) int32, Σ r = ``n_resamples``.

    Row k of a chunk says how often each jet is drawn in resample k; within every class the weights
    sum to that class's jet count. The same ``labels``, ``n_resamples`` and ``seed`` always give the
    same weights, which is what makes paired comparisons paired.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    rows = max(1, min(n_resamples, _CHUNK_ELEMENTS // max(1, len(labels))))
    for start in range(0, n_resamples, rows):
        r = min(rows, n_resamples - start)
        weights = np.zeros((r, len(labels)), dtype=np.int32)
        for index in members:
            n = len(index)
            draws = rng.integers(0, n, size=(r, n)) + (np.arange(r) * n)[:, None]
            weights[:, index] = np.bincount(draws.ravel(), minlength=r * n).reshape(r, n)
        yield weights


class RocOrder:
    """One binary ROC's jets sorted once by descending score, with the groups of equal scores.

    Args:
        is_signal: (J,) bool, true for signal.
        scores: (J,) float, higher means more signal-like.
    """

    def __init__(self, is_signal: np.ndarray, scores: np.ndarray):
        self.order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        sorted_scores = np.asarray(scores, dtype=np.float64)[self.order]
        starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
        self.ends = None if len(starts) == len(sorted_scores) else np.r_[starts[1:], len(sorted_scores)] - 1
        self.signal = np.asarray(is_signal, dtype=bool)[self.order]

    def cumulative(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted signal and background counts at or above each distinct score, from the highest down.

        Returns two (r, G + 1) int32 arrays starting with 0 (the ROC's (0, 0) point), for weights (r, J):
        cumulative sums along the sorted jets read at the end of each group of equal scores, which
        is what a grouping by threshold would give, without a segmented reduction.
        """
        w = weights[:, self.order]
        signal_w = w * self.signal  # int32: the counts stay exact integers and the arrays half as large
        signal = np.cumsum(signal_w, axis=1, dtype=np.int32)
        background = np.cumsum(w - signal_w, axis=1, dtype=np.int32)
        if self.ends is not None:
            signal, background = signal[:, self.ends], background[:, self.ends]
        zero = np.zeros((len(w), 1), dtype=np.int32)
        return np.concatenate([zero, signal], axis=1), np.concatenate([zero, background], axis=1)

    def auc(self, weights: np.ndarray) -> np.ndarray:
        """ROC AUC per resample, (r,): P(signal scores above background) + ½ P(equal)."""
        return _auc(*self.cumulative(weights))

    def background_efficiency(self, weights: np.ndarray, efficiencies: Sequence[float]) -> list[np.ndarray]:
        """εB at each εS of ``efficiencies`` per resample, each (r,), read as in :func:`background_efficiency_at`."""
        return _efficiencies(*self.cumulative(weights), efficiencies)


def _auc(signal: np.ndarray, background: np.ndarray) -> np.ndarray:
    """AUC from cumulative counts (r, G + 1): each group's signal times the background below it, ties halved.

    Integer arithmetic (doubled to keep the halves exact) until the final division.
    """
    n_s, n_b = signal[:, -1].astype(np.float64), background[:, -1].astype(np.float64)
    per_group_signal, per_group_background = np.diff(signal, axis=1), np.diff(background, axis=1)
    twice_below = 2 * (background[:, -1:] - background[:, 1:]) + per_group_background
    return np.einsum("ij,ij->i", per_group_signal, twice_below, dtype=np.int64) / (2.0 * n_s * n_b)


def _efficiencies(signal: np.ndarray, background: np.ndarray, efficiencies: Sequence[float]) -> list[np.ndarray]:
    """εB at each εS, per row of cumulative counts (r, G + 1), reading only the two ROC points around it."""
    rows = np.arange(len(signal))
    n_s, n_b = signal[:, -1].astype(np.float64), background[:, -1].astype(np.float64)
    results = []
    for efficiency in efficiencies:
        # First point with tpr >= εS; tpr < εS compared in counts: signal < εS·n_s.
        above = np.minimum((signal < efficiency * n_s[:, None]).sum(axis=1), signal.shape[1] - 1)
        below = np.maximum(above - 1, 0)
        tpr = signal[rows[:, None], np.stack([below, above], axis=1)] / n_s[:, None]
        fpr = background[rows[:, None], np.stack([below, above], axis=1)] / n_b[:, None]
        results.append(_efficiency_at(tpr, fpr, efficiency, above))
    return results


class PreparedTagger:
    """A tagger's test-set scores sorted once for every ROC its figures read (built once, resampled many times).

    Args:
        labels: (J,) int in [0, C).
        probs: (J, C) float class probabilities.
        classes: the C class names.
    """

    def __init__(self, labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]):
        labels = np.asarray(labels)
        probs = np.asarray(probs, dtype=np.float64)
        bkg = background_index(classes)
        self.correct = probs.argmax(axis=1) == labels
        if len(classes) == 2:
            self.headline = RocOrder(labels != bkg, probs[:, 1 - bkg])
            self.auc_orders: list[RocOrder] = []
            self.pairs: dict[str, tuple[RocOrder, np.ndarray]] = {}
        else:
            self.headline = RocOrder(labels != bkg, 1.0 - probs[:, bkg])
            self.auc_orders = [RocOrder(labels == k, probs[:, k]) for k in range(len(classes))]
            self.pairs = {name: (RocOrder(labels == k, pair_score(probs[:, k], probs[:, bkg])),
                                 (labels == k) | (labels == bkg))
                          for k, name in enumerate(classes) if k != bkg}

    def figures(self, weights: np.ndarray) -> ResampledFigures:
        """The figures under each row of ``weights`` (r, J); all ones: the point estimates."""
        weights = np.asarray(weights)
        accuracy = (weights * self.correct).sum(axis=1) / weights.sum(axis=1).astype(np.float64)
        counts = self.headline.cumulative(weights)
        auc = (np.mean([order.auc(weights) for order in self.auc_orders], axis=0) if self.auc_orders
               else _auc(*counts))
        efficiencies = list(WORKING_POINTS.values())
        per_class = {name: dict(zip(WORKING_POINTS, order.background_efficiency(weights * members, efficiencies),
                                    strict=True))
                     for name, (order, members) in self.pairs.items()}
        return ResampledFigures(accuracy, auc, dict(zip(WORKING_POINTS, _efficiencies(*counts, efficiencies),
                                                        strict=True)), per_class)


def resampled_figures(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                      weights: np.ndarray) -> ResampledFigures:
    """The headline figures of a tagger under each row of ``weights`` (r, J).

    The same definitions as :func:`~jjepa.train.report.metrics.tagging_metrics`: accuracy of the argmax;
    with two classes the AUC and rejections of the signal probability; with more, the macro
    one-vs-rest AUC, the rejections of "any signal class vs the background" ranked by 1 − p_bkg, and
    per signal class those of X against the background.

    Args:
        labels: (J,) int in [0, C).
        probs: (J, C) float class probabilities.
        classes: the C class names.
        weights: (r, J) bootstrap weights (all ones: the point estimate).
    """
    return PreparedTagger(labels, probs, classes).figures(weights)


def bootstrap_figures(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                      n_resamples: int, seed: int) -> ResampledFigures:
    """The figures over ``n_resamples`` class-stratified resamples (seeded), concatenated; one sort per ROC."""
    tagger = PreparedTagger(labels, probs, classes)
    parts = [tagger.figures(w) for w in stratified_weights(labels, n_resamples, seed)]
    return ResampledFigures(
        np.concatenate([p.accuracy for p in parts]), np.concatenate([p.auc for p in parts]),
        {k: np.concatenate([p.background_efficiency[k] for p in parts]) for k in WORKING_POINTS},
        {name: {k: np.concatenate([p.per_class[name][k] for p in parts]) for k in WORKING_POINTS}
         for name in parts[0].per_class})


def metrics_with_intervals(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                           n_resamples: int = 1000, seed: int = 0) -> dict[str, object]:
    """:func:`~jjepa.train.report.metrics.tagging_metrics` plus 68 % intervals and the counts behind them.

    Adds ``accuracy_ci``, ``auc_ci``, ``rej_at_50_ci``, ``rej_at_30_ci`` ([low, high]; a rejection's
    high end is ``inf`` when some resamples pass no background jet), ``n_test_signal``,
    ``n_test_background`` (for more than two classes: all signal classes together vs the background),
    ``n_background_pass_at_50`` / ``_30`` (background jets at or above the score where εS first
    reaches the working point) and ``rej_at_XX_lower_bound``. Where no background jet passes, the
    rejection is the 68 % CL lower bound n_bkg / 1.14 instead of ``inf``.

    Args:
        labels: (J,) int in [0, C).
        probs: (J, C) float class probabilities.
        classes: the C class names.
        n_resamples: bootstrap resamples (≥ 500 for stable 68 % intervals).
        seed: seeds the resampling; the same seed gives every tagger on these jets the same resamples.
    """
    labels = np.asarray(labels)
    metrics: dict[str, object] = dict(tagging_metrics(labels, probs, classes))
    bkg = background_index(classes)
    n_background = int((labels == bkg).sum())
    metrics["n_test_signal"] = int(len(labels) - n_background)
    metrics["n_test_background"] = n_background
    tagger = PreparedTagger(labels, probs, classes)
    figures = bootstrap_figures(labels, probs, classes, n_resamples, seed)
    metrics["accuracy_ci"] = _interval(figures.accuracy)
    metrics["auc_ci"] = _interval(figures.auc)
    ranked = {"": (figures.background_efficiency, tagger.headline, None)}
    ranked.update({f"_{name}": (figures.per_class[name], *tagger.pairs[name]) for name in figures.per_class})
    for tail, (resampled, order, members) in ranked.items():
        for suffix, efficiency in WORKING_POINTS.items():
            low, high = _interval(resampled[suffix])
            passing = _background_passing(order, efficiency, members)
            metrics[f"rej_at_{suffix}{tail}_ci"] = [rejection_of(high), rejection_of(low)]
            metrics[f"n_background_pass_at_{suffix}{tail}"] = passing
            metrics[f"rej_at_{suffix}{tail}_lower_bound"] = passing == 0
            if passing == 0:
                metrics[f"rej_at_{suffix}{tail}"] = n_background / ZERO_COUNT_LIMIT_68
    metrics["bootstrap_resamples"] = int(n_resamples)
    return metrics


def paired_deltas(labels: np.ndarray, classes: Sequence[str], probs_a: Sequence[np.ndarray],
                  probs_b: Sequence[np.ndarray], n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Tagger A against tagger B on the same test jets, seed by seed, with a paired two-level bootstrap.

    ``probs_a[i]`` and ``probs_b[i]`` come from the same seed (same label subset); each is (J, C) over
    the same jets in the same order. Every resample draws jet weights (shared by all taggers and
    seeds) and, with more than one seed, the seeds with replacement; the statistic is averaged over
    the drawn seeds.

    Returns:
        ``{"auc": {...}, "rej_at_50_ratio": {...}}``, each with ``delta`` (AUC: A − B; rejection:
        rej_A / rej_B, averaged in log space), ``ci68`` and ``ci95`` ([low, high]), ``n_seeds``.
        εB is floored at half a background jet so a resample passing no background stays finite.
        The same tagger against itself gives exactly 0 (ratio 1) with a zero-width interval.
    """
    if len(probs_a) != len(probs_b) or not probs_a:
        raise ValueError(f"paired seeds must match: {len(probs_a)} against {len(probs_b)}")
    labels = np.asarray(labels)
    floor = 0.5 / max(1, int((labels == background_index(classes)).sum()))
    n_seeds = len(probs_a)

    taggers = [(PreparedTagger(labels, a, classes), PreparedTagger(labels, b, classes))
               for a, b in zip(probs_a, probs_b, strict=True)]

    def statistics(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        auc, log_ratio = [], []
        for tagger_a, tagger_b in taggers:
            fa, fb = tagger_a.figures(weights), tagger_b.figures(weights)
            auc.append(fa.auc - fb.auc)
            log_ratio.append(np.log(np.maximum(fb.background_efficiency["50"], floor))
                             - np.log(np.maximum(fa.background_efficiency["50"], floor)))
        return np.array(auc), np.array(log_ratio)  # (n_seeds, r)

    point_auc, point_log = statistics(np.ones((1, len(labels)), dtype=np.int32))
    rng = np.random.default_rng(seed + 1)
    resampled_auc, resampled_log = [], []
    for weights in stratified_weights(labels, n_resamples, seed):
        auc, log_ratio = statistics(weights)
        drawn = (rng.integers(0, n_seeds, size=(n_seeds, len(weights))) if n_seeds > 1
                 else np.zeros((1, len(weights)), dtype=np.int64))
        columns = np.arange(len(weights))
        resampled_auc.append(auc[drawn, columns].mean(axis=0))
        resampled_log.append(log_ratio[drawn, columns].mean(axis=0))
    auc_draws, log_draws = np.concatenate(resampled_auc), np.concatenate(resampled_log)
    return {
        "auc": {"delta": float(point_auc.mean()), "ci68": _interval(auc_draws),
                "ci95": _interval(auc_draws, PERCENTILES_95), "n_seeds": n_seeds},
        "rej_at_50_ratio": {"delta": float(np.exp(point_log.mean())),
                            "ci68": [float(v) for v in np.exp(_interval(log_draws))],
                            "ci95": [float(v) for v in np.exp(_interval(log_draws, PERCENTILES_95))],
                            "n_seeds": n_seeds},
    }


def _background_passing(order: RocOrder, efficiency: float, members: np.ndarray | None) -> int:
    """Background jets at or above the score where εS first reaches ``efficiency`` (unit weights;
    ``members``: only those jets take part)."""
    weights = np.ones((1, len(order.order)), dtype=np.int32)
    signal, background = order.cumulative(weights if members is None else weights * members)
    return int(background[0, int(np.searchsorted(signal[0] / signal[0, -1], efficiency, side="left"))])


def _efficiency_at(tpr: np.ndarray, fpr: np.ndarray, efficiency: float, above: np.ndarray) -> np.ndarray:
    """Row-wise εB at εS = ``efficiency`` from the ROC points (r, 2) just below and at-or-above it.

    ``above`` (r,) is the index of the at-or-above point on the full path; where it is 0, or where the
    point sits exactly at εS, its εB is taken (the lowest of a vertical stretch); otherwise εB is
    linearly interpolated, as :func:`~jjepa.train.report.metrics.background_efficiency_at` does.
    """
    (t_lo, t_hi), (f_lo, f_hi) = tpr.T, fpr.T
    exact = (t_hi == efficiency) | (above == 0)
    span = np.where(exact, 1.0, t_hi - t_lo)
    return np.where(exact, f_hi, f_lo + (efficiency - t_lo) * (f_hi - f_lo) / span)


def _interval(values: np.ndarray, percentiles: tuple[float, float] = PERCENTILES_68) -> list[float]:
    low, high = np.percentile(values, percentiles)
    return [float(low), float(high)]
