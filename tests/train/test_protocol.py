"""The evaluation protocol end to end: intervals and validation figures in metrics.json, paired comparisons."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from jjepa.train.config import resolve_finetune_config
from jjepa.train.report.metrics import tagging_metrics
from jjepa.train.runners.evaluate import PAIRED_COLUMNS, evaluate
from jjepa.train.runners.scan import scan


@pytest.fixture(scope="module")
def two_mode_scan(simulated_splits, pretrained, tmp_path_factory):
    """freeze and scratch, all labels, seeds 0 and 1, on the simulated jets; returns the scan folder."""
    out = tmp_path_factory.mktemp("protocol") / "scan"
    base = resolve_finetune_config({
        "train": str(simulated_splits["train"]), "val": str(simulated_splits["val"]),
        "test": str(simulated_splits["test"]), "out": str(out / "unused"), "checkpoint": str(pretrained),
        "batch_size": 64, "epochs": 1, "min_steps": 12, "device": "cpu", "prefetch": 2, "bootstrap_resamples": 200})
    scan(base, [1.0], ["freeze", "scratch"], [0, 1], out, progress=False)
    return out


def test_metrics_carry_intervals_counts_and_a_validation_block(two_mode_scan):
    metrics = json.loads((two_mode_scan / "freeze-f1-s0" / "metrics.json").read_text())
    for key in ("accuracy", "auc", "rej_at_50", "rej_at_30"):
        low, high = (float(v) for v in metrics[f"{key}_ci"])
        assert low <= float(metrics[key]) <= high or metrics.get(f"{key}_lower_bound")
    assert metrics["n_test_signal"] == 200 and metrics["n_test_background"] == 200
    assert 0 <= metrics["n_background_pass_at_30"] <= metrics["n_background_pass_at_50"] <= 200
    saved = np.load(two_mode_scan / "freeze-f1-s0" / "val_predictions.npz")
    val = tagging_metrics(saved["labels"], saved["probs"], [str(c) for c in saved["classes"]])
    assert metrics["val"]["auc"] == pytest.approx(val["auc"], abs=1e-12)
    assert len(saved["labels"]) == 400 and "auc_ci" in metrics["val"]
    # 1,200 jets in batches of 64: a 19-step run, too short for 40 validations, so every step is validated.
    assert metrics["steps_run"] == 19 and metrics["n_validations"] == 19
    assert 1 <= metrics["best_step"] <= 19
    assert metrics["best_at_edge"] == ("first" if metrics["best_step"] == 1 else
                                       "last" if metrics["best_step"] == 19 else None)


def test_evaluate_writes_paired_differences_that_match_the_runs(two_mode_scan, tmp_path):
    evaluate([two_mode_scan], tmp_path / "report", n_resamples=200)
    with open(tmp_path / "report" / "paired.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == PAIRED_COLUMNS
    assert {(r["mode"], r["baseline"], r["metric"]) for r in rows} == {
        ("freeze", "scratch", "auc"), ("freeze", "scratch", "rej_at_50_ratio")}
    auc = next(r for r in rows if r["metric"] == "auc")
    runs = {(mode, seed): json.loads((two_mode_scan / f"{mode}-f1-s{seed}" / "metrics.json").read_text())
            for mode in ("freeze", "scratch") for seed in (0, 1)}
    expected = np.mean([runs[("freeze", s)]["auc"] - runs[("scratch", s)]["auc"] for s in (0, 1)])
    assert float(auc["delta"]) == pytest.approx(expected, abs=1e-9)
    assert int(auc["n_seeds"]) == 2
    assert float(auc["ci95_low"]) <= float(auc["ci_low"]) <= float(auc["ci_high"]) <= float(auc["ci95_high"])
    comparison = (tmp_path / "report" / "comparison.md").read_text()
    assert "rejection ratio" in comparison and "68 %" in comparison
    with open(tmp_path / "report" / "label_efficiency.csv", newline="") as f:
        efficiency = list(csv.DictReader(f))
    assert {"rej_at_50_ci_low", "rej_at_50_seed_spread"} <= set(efficiency[0])


def _scan_copy(scan_folder, folder, seeds: set[int]):
    """A copy of a scan folder whose scan.csv lists only the cells of ``seeds``."""
    import shutil

    shutil.copytree(scan_folder, folder)
    with open(folder / "scan.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(folder / "scan.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if int(r["seed"]) in seeds)
    return folder


def test_evaluate_refuses_to_mix_cells_it_cannot_average_or_pair(two_mode_scan, tmp_path):
    from jjepa.common.errors import JJepaError

    reference = evaluate([two_mode_scan], tmp_path / "one")
    assert evaluate([two_mode_scan, two_mode_scan], tmp_path / "twice") == reference  # read once
    with pytest.raises(JJepaError, match=r"freeze-f1-s0 and .*freeze-f1-s0 are the same cell \(mode freeze, label "
                                         r"fraction 1, seed 0\) from two scans"):
        evaluate([two_mode_scan, _scan_copy(two_mode_scan, tmp_path / "copy", {0, 1})], tmp_path / "dup")
    # Seeds 0 and 1 from two scans are one configuration: the same report as the one scan.
    first, second = (_scan_copy(two_mode_scan, tmp_path / name, {seed}) for name, seed in (("a", 0), ("b", 1)))
    assert evaluate([first, second], tmp_path / "split") == reference
    config = second / "scratch-f1-s1" / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.001\n", "lr: 0.003\n"))
    with pytest.raises(JJepaError, match=r"were made with other settings \(lr: 0\.001 in scratch-f1-s0, 0\.003 in "
                                         r"scratch-f1-s1\); their seeds cannot be averaged"):
        evaluate([first, second], tmp_path / "mixed")
    config.write_text(config.read_text().replace("lr: 0.003\n", "lr: 0.001\n"))
    # Another test folder with the same labels in the same order: told apart by its shards' digest.
    metrics_path = second / "scratch-f1-s1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics_path.write_text(json.dumps({**metrics, "test_shards_sha256": "0" * 64}))
    with pytest.raises(JJepaError, match="were scored on different test jets"):
        evaluate([first, second], tmp_path / "other-test")


def test_evaluate_says_what_it_was_given_instead_of_a_scan(two_mode_scan, tmp_path):
    from jjepa.common.errors import JJepaError

    with pytest.raises(JJepaError, match=r"freeze-f1-s0: no scan\.csv \(a finetuning run\); evaluate compares scan "
                                         r"folders"):
        evaluate([two_mode_scan / "freeze-f1-s0"], tmp_path / "report")
