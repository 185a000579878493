"""Finetuning under torchrun (2 gloo processes on the CPU): each rank trains on its share, and the validation and
test figures gathered over the ranks are those one process computes for the same model on the same jets."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from jjepa.train.data.loader import ShardSet
from jjepa.train.mechanics.checkpoint import load_checkpoint
from jjepa.train.report.intervals import metrics_with_intervals
from jjepa.train.report.metrics import json_safe
from jjepa.train.runners.finetune_setup import tagging_classes
from jjepa.train.runners.inference import predict
from jjepa.train.runners.predict import load_tagger

FIGURES = ("accuracy", "auc", "rej_at_50", "rej_at_30", "accuracy_ci", "auc_ci", "rej_at_50_ci", "rej_at_30_ci")


@pytest.mark.slow
def test_two_process_ddp_finetune_reports_the_single_process_figures(toy_train, toy_val, toy_test, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 48 jets per rank and step, 12 steps; val_batches=3 exercises the partial validation split over ranks.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "jjepa.train", "finetune", "--train", str(toy_train), "--val", str(toy_val), "--test",
               str(toy_test), "--out", str(out), "--mode", "scratch", "--preset", "tiny", "--batch-size", "48",
               "--n-labels", "1100", "--epochs", "1", "--device", "cpu", "--no-progress", "--set", "min_steps=12",
               "--set", "eval_every=4", "--set", "val_batches=3", "--set", "bootstrap_resamples=20",
               "--set", "prefetch=2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.strip().splitlines()) == 1, "only rank 0 reports"
    metrics = json.loads(done.stdout)
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["steps_run"] == 12 and metrics["n_validations"] == 3
    with open(out / "train_log.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["4", "8", "12"]
    assert not (out / "checkpoints" / "last.pt").exists()

    # One process, the same model (best.pt), the same jets: the same probabilities and figures.
    tagger = load_tagger(out / "checkpoints" / "best.pt")
    sets = {name: ShardSet(folder) for name, folder in (("train", toy_train), ("val", toy_val), ("test", toy_test))}
    classes, mapping = tagging_classes(sets["train"], sets["val"], sets["test"])
    for name, figures in (("test", metrics), ("val", metrics["val"])):
        probs, labels = predict(tagger.model, sets[name], tagger.transform, torch.device("cpu"), 48,
                                torch.from_numpy(mapping), precision="fp32")
        saved = np.load(out / f"{name}_predictions.npz")
        assert np.array_equal(saved["labels"], labels)
        # Each jet is evaluated in the same batch as in one process: bit for bit the same probabilities.
        np.testing.assert_array_equal(saved["probs"], probs)
        single = json.loads(json.dumps(json_safe(metrics_with_intervals(labels, probs, classes, 20))))
        for key in FIGURES:
            assert figures[key] == single[key], f"{name} {key}"
    assert load_checkpoint(out / "checkpoints" / "best.pt", kind="finetune")["step"] == metrics["best_step"]
