"""Precision: bf16/fp16/fp32 autocast, fp16 with a gradient scaler, metrics from fp32 logits.

CPU autocast runs fp16 and bf16 (PyTorch >= 2.3), so these tests run the real fp16 path with the
scaler enabled, on the CPU.
"""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
from jjepa.common.errors import JJepaError
from jjepa.common.testing import toy_jets
from jjepa.train.config import PRESETS, ConfigError, resolve_finetune_config, resolve_pretrain_config
from jjepa.train.data.transform import InputTransform
from jjepa.train.mechanics.checkpoint import load_checkpoint
from jjepa.train.mechanics.distributed import autocast, grad_scaler, resolve_precision
from jjepa.train.model.classifier import JetClassifier
from jjepa.train.runners import pretrain as pretrain_module
from jjepa.train.runners.finetune import finetune
from jjepa.train.runners.pretrain import pretrain

S, N = 10, 12
CPU = torch.device("cpu")


def test_auto_is_fp32_on_the_cpu_and_the_scaler_is_for_fp16_only():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert grad_scaler(CPU, "fp16").is_enabled()
    assert not grad_scaler(CPU, "bf16").is_enabled() and not grad_scaler(CPU, "auto").is_enabled()
    with autocast(CPU, "fp16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float16
    with autocast(CPU, "auto"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(JJepaError, match="precision"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ConfigError, match="precision"):
        resolve_pretrain_config({"steps": 1, "precision": "half"})


def pretrain_losses(data, out, precision: str) -> list[float]:
    config = resolve_pretrain_config({"data": str(data), "out": str(out), "preset": "tiny", "steps": 60,
                                      "batch_size": 64, "lr": 1e-3, "log_every": 10, "device": "cpu",
                                      "prefetch": 2, "val_every": 0, "precision": precision})
    pretrain(config, progress=False)
    with open(out / "train_log.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def autocast_spy(monkeypatch, owner, name: str) -> list:
    """Wrap ``owner.name``; each call appends the CPU autocast dtype in force (None when autocast is off)."""
    seen, real = [], getattr(owner, name)

    def spy(*args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return seen


def test_fp16_pretraining_with_the_scaler_lowers_the_loss_as_fp32_does(toy_train, tmp_path, monkeypatch):
    seen = autocast_spy(monkeypatch, pretrain_module, "jepa_forward")
    fp16 = pretrain_losses(toy_train, tmp_path / "fp16", "fp16")
    assert seen == [torch.float16] * 60, "every training step runs under fp16 autocast"
    seen.clear()
    fp32 = pretrain_losses(toy_train, tmp_path / "fp32", "fp32")
    assert seen == [None] * 60
    assert all(np.isfinite(fp16)) and len(fp16) == 6
    assert fp16[-1] < 0.9 * fp16[0], fp16
    assert fp16 != fp32 and abs(fp16[-1] - fp32[-1]) < 0.05 * fp32[-1], (fp16, fp32)
    saved = load_checkpoint(tmp_path / "fp16" / "checkpoints" / "last.pt")
    assert saved["config"]["precision"] == "fp16"
    assert saved["scaler"]["scale"] > 0  # the scaler ran and its state is kept for --resume
    assert load_checkpoint(tmp_path / "fp32" / "checkpoints" / "last.pt")["scaler"] == {}


def test_classifier_logits_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = JetClassifier(replace(PRESETS["tiny"], n_subjets=S, n_particles=N), n_classes=2, aggregation="flatten")
    jets = toy_jets(256, 1, S, N, seed=0)
    raw = {k: torch.from_numpy(getattr(jets, k)) for k in ("particles", "particle_mask", "subjets", "subjet_mask")}
    inputs = InputTransform()(raw["particles"], raw["particle_mask"], raw["subjets"], raw["subjet_mask"])
    with autocast(CPU, "bf16"):
        logits = model(inputs)
    assert logits.dtype == torch.float32
    scores = torch.softmax(logits, -1)[:, 1]
    assert len(torch.unique(scores)) > 250  # bf16 scores would tie (8 bits of mantissa)


def test_fp16_finetuning_trains_and_reports_metrics(toy_train, toy_val, toy_test, tmp_path, monkeypatch):
    seen = autocast_spy(monkeypatch, JetClassifier, "forward")
    config = resolve_finetune_config({"train": str(toy_train), "val": str(toy_val), "test": str(toy_test),
                                      "out": str(tmp_path / "ft"), "mode": "scratch", "preset": "tiny",
                                      "batch_size": 64, "epochs": 1, "min_steps": 30, "eval_every": 15,
                                      "lr": 2e-3, "device": "cpu", "prefetch": 2, "precision": "fp16",
                                      "bootstrap_resamples": 20})
    metrics = finetune(config, progress=False)
    assert metrics["auc"] > 0.8, metrics
    assert len(seen) > 30 and set(seen) == {torch.float16}, "training and evaluation run under fp16 autocast"
