"""Tagging metrics: rejections against hand-worked ROCs, AUC/accuracy against sklearn, roc.csv and the figure."""

from __future__ import annotations

import csv
import json
import math

import matplotlib
import numpy as np
import pytest
from jjepa.train.report.metrics import (
    ROC_COLUMNS,
    background_index,
    binary_metrics,
    json_safe,
    multiclass_metrics,
    roc_table,
    tagging_curves,
    tagging_metrics,
    write_roc_curves_csv,
)
from jjepa.train.report.plots import plot_roc
from sklearn.metrics import accuracy_score, roc_auc_score

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jets(signal: list[float], background: list[float]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([1] * len(signal) + [0] * len(background))
    return labels, np.array(signal + background, dtype=float)


def _brute_background_efficiency(labels: np.ndarray, scores: np.ndarray, efficiency: float) -> float:
    """εB at εS for tie-free scores, by counting: a ROC independent of sklearn, interpolated by hand."""
    order = np.argsort(-scores)
    tpr = np.concatenate([[0.0], np.cumsum(labels[order] == 1) / (labels == 1).sum()])
    fpr = np.concatenate([[0.0], np.cumsum(labels[order] == 0) / (labels == 0).sum()])
    first = int(np.argmax(tpr >= efficiency))
    if tpr[first] == efficiency:
        return float(fpr[first])
    t0, t1, f0, f1 = tpr[first - 1], tpr[first], fpr[first - 1], fpr[first]
    return float(f0 + (f1 - f0) * (efficiency - t0) / (t1 - t0))


def _toy_probs(labels: np.ndarray, n_classes: int, separation: float, rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(size=(len(labels), n_classes))
    logits[np.arange(len(labels)), labels] += separation
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


# -- binary: rejections worked out by hand ----------------------------------------------------------


def test_rejection_interpolates_on_a_sloped_roc_segment():
    # Ranked: S .9 | B .8 | S .6, S .6, B .6 (tied) | B .3 | S .2 | B .1.  ROC (εS, εB):
    # (0, 0) (.25, 0) (.25, .25) (.75, .5) (.75, .75) (1, .75) (1, 1). εS = .5 and .3 fall on the
    # sloped segment (.25, .25)-(.75, .5): εB = .25 + .25 * (.25 / .5) = .375 and .25 + .25 * (.05 / .5) = .275.
    labels, scores = _jets([0.9, 0.6, 0.6, 0.2], [0.8, 0.6, 0.3, 0.1])
    metrics = binary_metrics(labels, scores)
    assert metrics["rej_at_50"] == pytest.approx(1 / 0.375)
    assert metrics["rej_at_30"] == pytest.approx(1 / 0.275)


def test_rejection_takes_the_best_point_where_the_roc_is_vertical():
    # Alternating S .9, B .8, S .7, B .6, S .5, B .4, S .3, B .2. ROC: (0, 0) (.25, 0) (.25, .25)
    # (.5, .25) (.5, .5) (.75, .5) ... At εS = .5 exactly two points qualify, εB .25 and .5: the
    # cut above the background jet at .4 achieves .25, so 1/εB = 4. At εS = .3 the segment
    # (.25, .25)-(.5, .25) is flat: εB = .25 again.
    labels, scores = _jets([0.9, 0.7, 0.5, 0.3], [0.8, 0.6, 0.4, 0.2])
    metrics = binary_metrics(labels, scores)
    assert metrics["rej_at_50"] == pytest.approx(4.0)
    assert metrics["rej_at_30"] == pytest.approx(4.0)
    assert metrics["auc"] == pytest.approx(10 / 16)  # pairs (S, B) in order: 4 + 3 + 2 + 1


def test_rejection_is_inf_where_no_background_passes():
    # The two best-scored jets are signal: εS = .5 (and .3) without any background jet.
    labels, scores = _jets([0.9, 0.8, 0.7, 0.6], [0.65, 0.3, 0.2, 0.1])
    metrics = binary_metrics(labels, scores)
    assert metrics["rej_at_50"] == math.inf and metrics["rej_at_30"] == math.inf
    assert metrics["auc"] == pytest.approx(15 / 16)  # only (S .6, B .65) out of order
    assert metrics["accuracy"] == pytest.approx(7 / 8)  # B .65 is above the .5 cut


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_matches_sklearn_and_a_counting_roc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=3000)
    scores = 1 / (1 + np.exp(-(rng.normal(size=3000) + 0.75 * (2 * labels - 1))))
    metrics = binary_metrics(labels, scores)
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, scores > 0.5))
    for key, efficiency in (("rej_at_50", 0.5), ("rej_at_30", 0.3)):
        assert metrics[key] == pytest.approx(1 / _brute_background_efficiency(labels, scores, efficiency))
    assert 1 < metrics["rej_at_50"] < metrics["rej_at_30"]


def test_binary_accepts_two_column_probabilities_with_argmax_accuracy():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=500)
    probs = _toy_probs(labels, 2, 1.0, rng)
    from_probs = binary_metrics(labels, probs)
    assert from_probs["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(axis=1)))
    assert from_probs["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert from_probs["rej_at_50"] == pytest.approx(binary_metrics(labels, probs[:, 1])["rej_at_50"])


def test_threshold_moves_the_accuracy_only():
    labels, scores = _jets([0.9, 0.6, 0.6, 0.2], [0.8, 0.6, 0.3, 0.1])
    low, high = binary_metrics(labels, scores, threshold=0.15), binary_metrics(labels, scores, threshold=0.85)
    assert low["accuracy"] == pytest.approx(5 / 8) and high["accuracy"] == pytest.approx(5 / 8)
    assert binary_metrics(labels, scores, threshold=0.5)["accuracy"] == pytest.approx(5 / 8)
    assert binary_metrics(labels, scores, threshold=0.7)["accuracy"] == pytest.approx(4 / 8)
    assert low["rej_at_50"] == high["rej_at_50"]


@pytest.mark.parametrize(("labels", "scores"), [
    ([1, 1, 1], [0.1, 0.2, 0.3]),            # one class only
    ([0, 1, 2], [0.1, 0.2, 0.3]),            # not binary
    ([0, 1], [0.1, float("nan")]),            # NaN score
    ([0, 1, 1], [0.1, 0.2]),                  # shape mismatch
])
def test_binary_rejects_bad_input(labels, scores):
    with pytest.raises(ValueError):
        binary_metrics(np.array(labels), np.array(scores))


# -- multiclass -------------------------------------------------------------------------------------


def test_multiclass_auc_accuracy_and_per_class_rejection():
    rng = np.random.default_rng(4)
    classes = ("Hbb", "qcd", "Top")  # background found by name, in any case, not at index 0
    labels = rng.integers(0, 3, size=4000)
    probs = _toy_probs(labels, 3, 1.2, rng)
    metrics = multiclass_metrics(labels, probs, classes)
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(axis=1)))
    assert set(metrics) == {"accuracy", "auc", "rej_at_50_Hbb", "rej_at_30_Hbb", "rej_at_50_Top", "rej_at_30_Top",
                            "rej_at_50", "rej_at_30"}
    # Headline: any signal class against the background, ranked by 1 - p_bkg, over all jets.
    any_signal = (labels != 1).astype(int)
    assert metrics["rej_at_50"] == pytest.approx(1 / _brute_background_efficiency(any_signal, 1 - probs[:, 1], 0.5))
    assert metrics["rej_at_30"] == pytest.approx(binary_metrics(any_signal, 1 - probs[:, 1])["rej_at_30"])
    for signal, name in ((0, "Hbb"), (2, "Top")):
        keep = (labels == signal) | (labels == 1)
        subset = (labels[keep] == signal).astype(int)
        score = probs[keep, signal] / (probs[keep, signal] + probs[keep, 1])
        by_hand = binary_metrics(subset, score)
        assert metrics[f"rej_at_50_{name}"] == pytest.approx(by_hand["rej_at_50"])
        assert metrics[f"rej_at_30_{name}"] == pytest.approx(by_hand["rej_at_30"])
        assert metrics[f"rej_at_50_{name}"] == pytest.approx(1 / _brute_background_efficiency(subset, score, 0.5))
        # Not the one-vs-rest ranking by p_X alone over all jets: the pair ratio is what ParT reports.
        assert metrics[f"rej_at_50_{name}"] != pytest.approx(binary_metrics(labels == signal, probs[:, signal])["rej_at_50"])


def test_multiclass_background_argument_and_fallback():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=600)
    probs = _toy_probs(labels, 3, 1.0, rng)
    assert {k for k in multiclass_metrics(labels, probs, ("a", "b", "c")) if k.startswith("rej_at_50_")} == \
        {"rej_at_50_b", "rej_at_50_c"}
    assert {k for k in multiclass_metrics(labels, probs, ("a", "b", "c"), background="C") if k.startswith("rej_at_50_")} == \
        {"rej_at_50_a", "rej_at_50_b"}
    with pytest.raises(ValueError, match="background"):
        multiclass_metrics(labels, probs, ("a", "b", "c"), background="QCD")
    assert background_index(("top", "QCD")) == 1 and background_index(("x", "y")) == 0


def test_multiclass_with_two_classes_adds_the_plain_rejections():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, size=800)
    probs = _toy_probs(labels, 2, 1.0, rng)
    metrics = multiclass_metrics(labels, probs, ("QCD", "top"))
    binary = binary_metrics(labels, probs)
    assert metrics["rej_at_50"] == metrics["rej_at_50_top"] == pytest.approx(binary["rej_at_50"])
    assert metrics["rej_at_30"] == pytest.approx(binary["rej_at_30"])
    assert metrics["auc"] == pytest.approx(binary["auc"])


def test_perfect_classifier():
    labels = np.repeat(np.arange(4), 50)
    probs = np.full((200, 4), 0.02)
    probs[np.arange(200), labels] = 0.94
    metrics = tagging_metrics(labels, probs, ("QCD", "W", "Z", "top"))
    assert metrics["auc"] == 1.0 and metrics["accuracy"] == 1.0
    assert all(metrics[f"rej_at_{e}_{c}"] == math.inf for e in ("50", "30") for c in ("W", "Z", "top"))


def test_random_classifier():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, size=30_000)
    probs = rng.dirichlet(np.ones(3), size=30_000)
    metrics = tagging_metrics(labels, probs, ("QCD", "W", "top"))
    assert metrics["auc"] == pytest.approx(0.5, abs=0.01)
    assert metrics["accuracy"] == pytest.approx(1 / 3, abs=0.02)
    assert metrics["rej_at_50_W"] == pytest.approx(2.0, abs=0.1)  # a random tagger has εB = εS
    assert metrics["rej_at_30_top"] == pytest.approx(1 / 0.3, abs=0.2)


def test_multiclass_rejects_a_missing_class():
    labels = np.array([0, 0, 1, 1])
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="no jets of class c"):
        multiclass_metrics(labels, probs, ("a", "b", "c"))


# -- dispatch and JSON ------------------------------------------------------------------------------


def test_tagging_metrics_binary_uses_the_non_background_column():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, size=1000)
    probs = _toy_probs(labels, 2, 1.0, rng)
    qcd_first = tagging_metrics(labels, probs, ("QCD", "top"))
    assert set(qcd_first) == {"accuracy", "auc", "rej_at_50", "rej_at_30"}
    assert qcd_first == pytest.approx(binary_metrics(labels, probs[:, 1]) | {
        "accuracy": accuracy_score(labels, probs.argmax(axis=1))})
    # Same jets with the columns and labels swapped: QCD is now class 1, the signal column is 0.
    qcd_second = tagging_metrics(1 - labels, probs[:, ::-1], ("top", "qcd"))
    assert qcd_second == pytest.approx(qcd_first)


def test_tagging_metrics_multiclass_dispatch():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 3, size=900)
    probs = _toy_probs(labels, 3, 1.0, rng)
    assert tagging_metrics(labels, probs, ("QCD", "W", "top")) == multiclass_metrics(labels, probs, ("QCD", "W", "top"))


def test_json_safe_makes_strict_json():
    metrics = {"auc": np.float64(0.9), "rej_at_50": math.inf, "n": np.int64(3), "x": -math.inf,
               "y": math.nan, "nested": {"r": [math.inf, 1.0]}}
    safe = json_safe(metrics)
    text = json.dumps(safe, allow_nan=False)
    assert json.loads(text) == {"auc": 0.9, "rej_at_50": "inf", "n": 3, "x": "-inf", "y": "nan",
                                "nested": {"r": ["inf", 1.0]}}
    assert float(safe["rej_at_50"]) == math.inf
    assert metrics["rej_at_50"] == math.inf  # the input is left alone


# -- roc.csv and the figure -------------------------------------------------------------------------


def test_roc_table_omits_zero_background_and_is_monotonic():
    labels, scores = _jets([0.9, 0.6, 0.6, 0.2], [0.8, 0.6, 0.3, 0.1])
    table = roc_table(labels, scores)
    # Corners with εB > 0: (.25, .25) (.75, .5) (.75, .75) (1, .75) (1, 1); (0, 0) and (.25, 0) omitted.
    np.testing.assert_allclose(table["signal_efficiency"], [0.25, 0.75, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(table["background_efficiency"], [0.25, 0.5, 0.75, 0.75, 1.0])
    np.testing.assert_allclose(table["background_rejection"], [4.0, 2.0, 4 / 3, 4 / 3, 1.0])


def test_roc_csv(tmp_path):
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 2, size=5000)
    scores = rng.normal(size=5000) + labels
    path = tmp_path / "roc.csv"
    write_roc_curves_csv(path, {"signal": (labels, scores)}, max_points=200)
    assert [p.name for p in tmp_path.iterdir()] == ["roc.csv"]
    with open(path, newline="") as f:
        reader = csv.reader(f)
        assert tuple(next(reader)) == ROC_COLUMNS
        rows = np.array([[float(v) for v in row] for row in reader])
    assert 50 < len(rows) <= 200
    signal, background, rejection = rows.T
    assert np.all(np.diff(signal) >= 0) and np.all(np.diff(background) >= 0)
    assert np.all(background > 0) and signal[-1] == 1.0 and background[-1] == 1.0
    np.testing.assert_allclose(rejection, 1 / background, rtol=1e-8)
    # The thinned curve still passes close to the reported working point.
    rej_50 = binary_metrics(labels, scores)["rej_at_50"]
    assert np.interp(0.5, signal, rejection) == pytest.approx(rej_50, rel=0.05)


def test_roc_table_keeps_small_curves_whole():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, size=100)
    scores = rng.normal(size=100) + labels
    whole, thinned = roc_table(labels, scores, max_points=1000), roc_table(labels, scores, max_points=10)
    assert len(thinned["signal_efficiency"]) <= 10 < len(whole["signal_efficiency"])


def test_plot_roc_writes_a_png_and_leaves_no_temporary(tmp_path, monkeypatch):
    from jjepa.train.report import plots

    figures, real_save = [], plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or real_save(fig, path))
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 2, size=2000)
    font_size = matplotlib.rcParams["font.size"]
    perfect = (labels, labels + rng.uniform(0, 0.5, size=2000))  # rejection is inf: the legend shows ∞
    curves = {"finetune": (labels, rng.normal(size=2000) + 2 * labels), "scratch": (labels, rng.normal(size=2000) + labels),
              "perfect": perfect}
    path = tmp_path / "roc.png"
    plot_roc(curves, path, title="toy")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]
    assert matplotlib.rcParams["font.size"] == font_size  # the style stays scoped
    # What is drawn: each tagger's ROC as roc_table gives it, its AUC and rejection in the legend, and chance.
    lines = figures[0].axes[0].get_lines()
    assert [line.get_label().split(":")[0] for line in lines] == ["finetune", "scratch", "perfect", "random"]
    for line, (labels_, scores) in zip(lines, curves.values(), strict=False):
        table = roc_table(labels_, scores)
        np.testing.assert_array_equal(line.get_xdata(), table["signal_efficiency"])
        np.testing.assert_array_equal(line.get_ydata(), table["background_rejection"])
        figures_of = binary_metrics(labels_, scores)
        assert f"AUC {figures_of['auc']:.4f}" in line.get_label()
    assert lines[2].get_label() == "perfect: AUC 1.0000, ∞"


def test_plot_roc_failure_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        plot_roc({"bad": (np.array([1, 1]), np.array([0.1, 0.2]))}, tmp_path / "roc.png")
    assert list(tmp_path.iterdir()) == []


def test_tagging_curves_pair_each_signal_class_with_the_background():
    rng = np.random.default_rng(3)
    classes = ("Tbqq", "QCD", "Wqq")
    labels = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    probs[np.arange(300), labels] += 0.3
    probs /= probs.sum(axis=1, keepdims=True)
    curves = tagging_curves(labels, probs, classes)
    assert list(curves) == ["Tbqq vs QCD", "Wqq vs QCD"]
    metrics = multiclass_metrics(labels, probs, classes)
    for signal, name in ((0, "Tbqq"), (2, "Wqq")):
        is_signal, score = curves[f"{name} vs QCD"]
        keep = (labels == signal) | (labels == 1)
        assert np.array_equal(is_signal, labels[keep] == signal)
        expected = probs[keep, signal] / (probs[keep, signal] + probs[keep, 1])
        assert np.allclose(score, expected)
        assert roc_auc_score(is_signal, score) == pytest.approx(roc_auc_score(labels[keep] == signal, expected))
        assert binary_metrics(is_signal, score)["rej_at_50"] == pytest.approx(metrics[f"rej_at_50_{name}"])
