"""Jet-tagging figures of merit, computed the way the jet-tagging literature reports them.

A finetuned tagger is compared with ParticleNet, ParT and the Top Tagging reference through four
numbers: the accuracy, the ROC AUC, and the background rejection 1/εB at a signal efficiency εS of
0.5 and 0.3 (``rej_at_50``, ``rej_at_30``). The ROC comes from scikit-learn (``roc_curve`` with
``drop_intermediate=False``, ``roc_auc_score``); only the read-out of εB at a given εS is done here:

* the ROC is the piecewise-linear path through sklearn's points (εS = tpr, εB = fpr), and εB at εS
  is linearly interpolated between the two neighbouring points (``np.interp`` on that segment);
* where the path is vertical at exactly that εS (several points share the tpr: tied scores or
  only background between two thresholds), the lowest εB is taken, the best working point there;
* where εB is 0 the rejection is ``inf`` (a float). Strict JSON has no infinity, so
  :func:`json_safe` turns non-finite values into the strings ``"inf"``, ``"-inf"`` and ``"nan"``
  before ``metrics.json`` is written: ``dvc metrics show`` displays them as ``inf``, and
  ``float("inf")`` reads them back (JSON ``null`` would be dropped from that table, and Python's
  bare ``Infinity`` is rejected by every strict JSON reader).

With more than two classes (JetClass) the ParT paper's per-class rejection is used: for every
signal class X, only the jets of class X or of the background class are kept and ranked by
p_X / (p_X + p_bkg). The background class is the one named ``QCD`` (any case), else class 0.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from jjepa.common.atomic import atomic_path
from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve

#: The signal efficiencies at which background rejection is reported, by metric name suffix.
WORKING_POINTS: dict[str, float] = {"50": 0.5, "30": 0.3}

#: Columns of ``roc.csv``.
ROC_COLUMNS: tuple[str, ...] = ("signal_efficiency", "background_efficiency", "background_rejection")

#: The default background class name (matched case-insensitively).
BACKGROUND_NAME = "QCD"



# --------------------------------------------------------------------------------------------------
# Figures of merit
# --------------------------------------------------------------------------------------------------


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every point of the ROC: ``(tpr, fpr)``, i.e. (εS, εB), both (K,) non-decreasing, from (0, 0) to (1, 1).

    Args:
        labels: (J,) int in {0, 1}, 1 for signal; both classes must be present.
        scores: (J,) float, higher means more signal-like.
    """
    labels, scores = _check_binary(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return tpr, fpr


def background_efficiency_at(tpr: np.ndarray, fpr: np.ndarray, signal_efficiency: float) -> float:
    """εB at ``signal_efficiency`` on the ROC path through the points (tpr, fpr), both (K,) non-decreasing.

    Linear interpolation between the last point below and the first point at or above the requested
    εS; when points lie exactly at it (a vertical stretch of the path), the lowest of their εB.
    """
    if not 0.0 <= signal_efficiency <= 1.0:
        raise ValueError(f"signal efficiency {signal_efficiency} is outside [0, 1]")
    above = int(np.searchsorted(tpr, signal_efficiency, side="left"))  # first point with tpr >= εS
    if above == len(tpr):
        raise ValueError(f"the ROC never reaches a signal efficiency of {signal_efficiency}")
    if tpr[above] == signal_efficiency or above == 0:
        return float(fpr[above])
    below = above - 1  # last point with tpr < εS: the start of the segment that crosses εS
    return float(np.interp(signal_efficiency, tpr[below:above + 1], fpr[below:above + 1]))


def backgroundrejection_of(labels: np.ndarray, scores: np.ndarray, signal_efficiency: float) -> float:
    """1/εB at ``signal_efficiency`` (see :func:`background_efficiency_at`); ``inf`` where εB is 0.

    Args:
        labels: (J,) int in {0, 1}, 1 for signal.
        scores: (J,) float signal score.
        signal_efficiency: εS in [0, 1], e.g. 0.5.
    """
    tpr, fpr = roc_points(labels, scores)
    return rejection_of(background_efficiency_at(tpr, fpr, signal_efficiency))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, AUC and background rejection at εS = 0.5 and 0.3 of a signal-vs-background tagger.

    Args:
        labels: (J,) int in {0, 1}, 1 for signal; both classes must be present.
        scores: either (J,) float, the signal score (a probability: the jet is called signal when
            its score is above ``threshold``), or (J, 2) float, the probabilities of (background,
            signal): the accuracy then uses the argmax and the ranking uses column 1.
        threshold: the signal-score cut of the accuracy (ignored for (J, 2) probabilities).

    Returns:
        ``accuracy``, ``auc``, ``rej_at_50``, ``rej_at_30`` as Python floats; a rejection is
        ``inf`` where εB is 0 at that εS (pass the dict through :func:`json_safe` before JSON).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2:
        if scores.shape[1] != 2:
            raise ValueError(f"binary probabilities must be (J, 2), got {scores.shape}")
        predicted = scores.argmax(axis=1)
        scores = scores[:, 1]
    else:
        predicted = (scores > threshold).astype(np.int64)
    labels, scores = _check_binary(labels, scores)
    tpr, fpr = roc_points(labels, scores)
    metrics = {"accuracy": float(accuracy_score(labels, predicted)),
               "auc": float(roc_auc_score(labels, scores))}
    for suffix, efficiency in WORKING_POINTS.items():
        metrics[f"rej_at_{suffix}"] = rejection_of(background_efficiency_at(tpr, fpr, efficiency))
    return metrics


def background_index(classes: Sequence[str], background: str | None = None) -> int:
    """The index of the background class: ``background`` if given, else ``QCD``, else 0 (names match in any case).

    Raises:
        ValueError: ``background`` is given and is not one of ``classes``.
    """
    lowered = [str(name).lower() for name in classes]
    if background is not None:
        if background.lower() not in lowered:
            raise ValueError(f"background class {background!r} is not one of {list(classes)}")
        return lowered.index(background.lower())
    return lowered.index(BACKGROUND_NAME.lower()) if BACKGROUND_NAME.lower() in lowered else 0


def multiclass_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                       background: str | None = None) -> dict[str, float]:
    """Accuracy, macro AUC and the ParT per-class rejections of a C-class tagger.

    Args:
        labels: (J,) int in [0, C); every class must be present.
        probs: (J, C) float softmax probabilities (rows sum to 1).
        classes: the C class names, in label order.
        background: the background class name (any case); ``None``: ``QCD`` if present, else class 0.

    Returns:
        ``accuracy`` (argmax), ``auc`` (macro one-vs-rest; with C == 2 the AUC of the signal
        class's probability, which the one-vs-rest average equals), and for every other class X
        ``rej_at_50_<X>`` and ``rej_at_30_<X>``: 1/εB on the jets of X or the background ranked by
        p_X / (p_X + p_bkg). Also the plain ``rej_at_50`` and ``rej_at_30``: with C == 2 those of the
        pair; with C > 2 those of "any signal class against the background", ranked by 1 − p_bkg
        (the headline figure the scan and its plots use for every number of classes).
    """
    labels, probs = _check_multiclass(labels, probs, classes)
    bkg = background_index(classes, background)
    if len(classes) == 2:  # sklearn's one-vs-rest AUC wants a 1-D score for two classes
        auc = roc_auc_score(labels == 1 - bkg, probs[:, 1 - bkg])
    else:
        auc = roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=np.arange(len(classes)))
    metrics = {"accuracy": float(accuracy_score(labels, probs.argmax(axis=1))), "auc": float(auc)}
    for name, is_signal, score in _signal_pairs(labels, probs, classes, bkg):
        tpr, fpr = roc_points(is_signal, score)
        for suffix, efficiency in WORKING_POINTS.items():
            rejection = rejection_of(background_efficiency_at(tpr, fpr, efficiency))
            metrics[f"rej_at_{suffix}_{name}"] = rejection
            if len(classes) == 2:
                metrics[f"rej_at_{suffix}"] = rejection
    if len(classes) > 2:
        tpr, fpr = roc_points((labels != bkg).astype(np.int64), 1.0 - probs[:, bkg])
        for suffix, efficiency in WORKING_POINTS.items():
            metrics[f"rej_at_{suffix}"] = rejection_of(background_efficiency_at(tpr, fpr, efficiency))
    return metrics


def tagging_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """The test-set figures of a tagger, dispatched on the number of classes.

    Args:
        labels: (J,) int in [0, C).
        probs: (J, C) float softmax probabilities.
        classes: the C class names; the background is ``QCD`` (any case) when present, else class 0.

    Returns:
        C == 2: :func:`binary_metrics` with the other class as signal (score: its probability;
        accuracy: argmax). C > 2: :func:`multiclass_metrics`. Rejections may be ``inf``.
    """
    labels, probs = _check_multiclass(labels, probs, classes)
    if len(classes) > 2:
        return multiclass_metrics(labels, probs, classes)
    bkg = background_index(classes)
    signal = 1 - bkg
    return binary_metrics((labels == signal).astype(np.int64), probs[:, [bkg, signal]])


def json_safe(metrics: Mapping[str, object]) -> dict[str, object]:
    """A copy of ``metrics`` that strict JSON can hold: non-finite floats become ``"inf"``, ``"-inf"``, ``"nan"``.

    numpy scalars become Python numbers; nested mappings and lists are converted too.
    """
    return {str(key): _json_value(value) for key, value in metrics.items()}


# --------------------------------------------------------------------------------------------------
# ROC table and figure
# --------------------------------------------------------------------------------------------------


def roc_table(labels: np.ndarray, scores: np.ndarray, max_points: int = 1000) -> dict[str, np.ndarray]:
    """The ROC as at most ``max_points`` rows of ``signal_efficiency``, ``background_efficiency``, ``background_rejection``.

    The rows are ROC points (sklearn's corners; collinear points are dropped), thinned, when there
    are more, to the first points at or above ``max_points - 1`` evenly spaced signal efficiencies
    (and the last point). Rows with
    εB = 0 (infinite rejection) are omitted, so every rejection is finite and equals 1/εB. Both
    efficiencies are non-decreasing down the table.

    Args:
        labels: (J,) int in {0, 1}, 1 for signal.
        scores: (J,) float signal score.
        max_points: the most rows (at least 2).

    Returns:
        The three columns, each (R,) float64, R <= ``max_points``.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    labels, scores = _check_binary(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=True)
    if len(tpr) > max_points:
        targets = np.linspace(0.0, 1.0, max_points - 1)
        reached = np.clip(np.searchsorted(tpr, targets, side="left"), 0, len(tpr) - 1)
        keep = np.unique(np.append(reached, len(tpr) - 1))
        tpr, fpr = tpr[keep], fpr[keep]
    finite = fpr > 0
    tpr, fpr = tpr[finite], fpr[finite]
    return {"signal_efficiency": tpr.astype(np.float64), "background_efficiency": fpr.astype(np.float64),
            "background_rejection": 1.0 / fpr}


def tagging_curves(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, tuple]:
    """The ROC inputs of a tagger: one curve per signal class X, against the background.

    Args:
        labels: (J,) int in [0, C).
        probs: (J, C) float softmax probabilities.
        classes: the C class names; the background is ``QCD`` (any case) when present, else class 0.

    Returns:
        ``"X vs <background>"`` -> ``(is_signal, score)`` for every class X but the background, on the
        jets of X or the background, scored by p_X / (p_X + p_bkg) (the ParT convention; with two
        classes this is p_X itself).
    """
    labels, probs = _check_multiclass(labels, probs, classes)
    bkg = background_index(classes)
    return {f"{name} vs {classes[bkg]}": (is_signal, score)
            for name, is_signal, score in _signal_pairs(labels, probs, classes, bkg)}


def _signal_pairs(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], bkg: int):
    """Per signal class X (every class but ``bkg``): ``(name, is_signal, score)`` on the jets of X or
    the background, ``is_signal`` (M,) int64 and ``score`` (M,) p_X / (p_X + p_bkg)."""
    for signal, name in enumerate(classes):
        if signal != bkg:
            keep = (labels == signal) | (labels == bkg)
            yield name, (labels[keep] == signal).astype(np.int64), pair_score(probs[keep, signal], probs[keep, bkg])


def write_roc_curves_csv(path: str | Path, curves: Mapping[str, tuple], max_points: int = 1000) -> None:
    """Write the :func:`roc_table` of every curve to ``path`` as CSV, atomically, for ``dvc plots``.

    One curve: the header is :data:`ROC_COLUMNS`. Several (multi-class taggers): a leading ``signal``
    column names each row's curve (the keys of ``curves``), in long format.
    """
    columns = ROC_COLUMNS if len(curves) == 1 else ("signal", *ROC_COLUMNS)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for name, (labels, scores) in curves.items():
            table = roc_table(labels, scores, max_points)
            for row in zip(*(table[column] for column in ROC_COLUMNS), strict=True):
                writer.writerow(([name] if len(curves) > 1 else []) + [f"{value:.10g}" for value in row])


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def rejection_of(background_efficiency: float) -> float:
    """1/εB, ``inf`` where εB is 0."""
    return math.inf if background_efficiency <= 0.0 else 1.0 / background_efficiency


def pair_score(p_signal: np.ndarray, p_background: np.ndarray) -> np.ndarray:
    """p_X / (p_X + p_bkg), 0.5 where both are 0 (float underflow: the jet is neither)."""
    total = p_signal + p_background
    return np.divide(p_signal, total, out=np.full_like(total, 0.5), where=total > 0)


def _check_binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(f"labels and scores must both be (J,), got {labels.shape} and {scores.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("binary labels must be 0 (background) or 1 (signal)")
    if labels.all() or not labels.any():
        raise ValueError(f"the ROC needs jets of both classes; all {len(labels)} jets have label "
                         f"{int(labels[0]) if len(labels) else 'none'}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    return labels.astype(np.int64), scores


def _check_multiclass(labels: np.ndarray, probs: np.ndarray,
                      classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(f"a tagger needs at least two classes, got {list(classes)}")
    if labels.ndim != 1 or probs.shape != (len(labels), n_classes):
        raise ValueError(f"labels must be (J,) and probs (J, {n_classes}), got {labels.shape} and {probs.shape}")
    if ((labels < 0) | (labels >= n_classes)).any():
        raise ValueError(f"labels outside [0, {n_classes}) (unlabelled jets cannot be evaluated)")
    missing = [str(name) for k, name in enumerate(classes) if not (labels == k).any()]
    if missing:
        raise ValueError(f"no jets of class {', '.join(missing)}: every class needs jets for the ROC")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities contain NaN or infinity")
    return labels.astype(np.int64), probs


def _json_value(value):
    if isinstance(value, Mapping):
        return json_safe(value)
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


