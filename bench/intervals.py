"""Bootstrap intervals of the test-set figures: the vectorised bootstrap against per-resample sklearn refits.

Both compute the same 68 % intervals of the AUC and 1/εB at εS = 0.5 / 0.3 over class-stratified
resamples of a Top-Tagging-sized test set; the naive way calls ``tagging_metrics`` (sklearn's
``roc_curve``/``roc_auc_score``) once per resample, as a per-resample Python loop. Prints one JSON
line with both times and their ratio. Example::

    python bench/intervals.py --n-jets 400000 --resamples 1000 --naive-resamples 50
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from jjepa.train.report.intervals import metrics_with_intervals, stratified_weights
from jjepa.train.report.metrics import tagging_metrics

CLASSES = ["QCD", "top"]


def toy_test_set(n_jets: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (J,) and (J, 2) probabilities of a tagger with AUC ≈ 0.98 (scores rounded like float32 outputs)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_jets)
    score = rng.normal(2.9 * labels, 1.0).astype(np.float32).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-score))
    return labels, np.c_[1.0 - p, p]


def naive(labels: np.ndarray, probs: np.ndarray, n_resamples: int, seed: int) -> float:
    """Seconds per resample of a refit per resample (the same class-stratified draws)."""
    start = time.perf_counter()
    done = 0
    for weights in stratified_weights(labels, n_resamples, seed):
        for row in weights:
            index = np.repeat(np.arange(len(labels)), row)
            tagging_metrics(labels[index], probs[index], CLASSES)
            done += 1
    return (time.perf_counter() - start) / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-jets", type=int, default=400_000, help="test jets (Top Tagging's test set: 404,000)")
    parser.add_argument("--resamples", type=int, default=1000, help="resamples of the vectorised bootstrap")
    parser.add_argument("--naive-resamples", type=int, default=20, help="resamples timed the naive way")
    args = parser.parse_args()
    labels, probs = toy_test_set(args.n_jets)
    start = time.perf_counter()
    metrics = metrics_with_intervals(labels, probs, CLASSES, n_resamples=args.resamples, seed=0)
    ours = (time.perf_counter() - start) / args.resamples
    theirs = naive(labels, probs, args.naive_resamples, seed=0)
    print(json.dumps({
        "n_jets": args.n_jets, "resamples": args.resamples, "ours_s_per_resample": round(ours, 5),
        "naive_s_per_resample": round(theirs, 4), "ratio": round(theirs / ours, 1),
        "ours_total_s": round(ours * args.resamples, 2), "naive_total_s_extrapolated": round(theirs * args.resamples, 1),
        "auc": round(metrics["auc"], 5), "auc_ci": [round(v, 5) for v in metrics["auc_ci"]],
        "rej_at_50": round(metrics["rej_at_50"], 1), "rej_at_50_ci": [round(v, 1) for v in metrics["rej_at_50_ci"]],
        "n_background_pass_at_50": metrics["n_background_pass_at_50"], "machine": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
