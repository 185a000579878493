"""Finetuning for jet tagging, and honest evaluation on the held-out test set.

One call of ``finetune`` fills a run folder::

    out/config.yaml             the resolved configuration
    out/train_log.csv           step, epoch, train_loss, val_loss, val_accuracy, lr
    out/checkpoints/best.pt     the classifier with the best validation loss
    out/metrics.json            test-set metrics of that classifier (accuracy, auc, rej_at_50, rej_at_30, …)
    out/roc.csv, out/roc.png    the test-set ROC (for ``dvc plots``) and its figure; one curve per signal class
    out/test_predictions.npz    labels (J,), class probabilities (J, C) and class names, test set

The model kept is the one with the lowest *validation* loss (early stopping after ``patience``
validations without improvement); the reported numbers come from it, once, on the *test* set.
Only the training shards are reduced to the label fraction.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from jjepa.common.atomic import atomic_path, write_json_atomic
from jjepa.common.errors import JJepaError
from jjepa.train.config import PRESETS, FinetuneConfig, ModelConfig, config_from_dict
from jjepa.train.data.loader import PRETRAIN_FIELDS, ShardLoader, ShardSet
from jjepa.train.data.subsets import stratified_subset
from jjepa.train.data.transform import InputTransform, batch_inputs
from jjepa.train.mechanics.checkpoint import load_checkpoint, save_checkpoint
from jjepa.train.mechanics.distributed import autocast, resolve_device
from jjepa.train.mechanics.optim import lr_at, param_groups, set_lr
from jjepa.train.model.classifier import JetClassifier, encoder_state, load_encoder
from jjepa.train.report.metrics import (
    json_safe,
    tagging_curves,
    tagging_metrics,
    write_roc_curves_csv,
)
from jjepa.train.report.plots import plot_roc
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

FINETUNE_FIELDS: tuple[str, ...] = PRETRAIN_FIELDS + ("labels",)
LOG_COLUMNS: tuple[str, ...] = ("step", "epoch", "train_loss", "val_loss", "val_accuracy", "lr")


def architecture(config: FinetuneConfig, checkpoint: dict | None, shards: ShardSet) -> tuple[ModelConfig, InputTransform]:
    """The encoder hyperparameters and input transform: the checkpoint's, or the preset's for ``scratch``."""
    if config.preset is not None:
        model = config.model or PRESETS[config.preset]
        transform = config.transform
    else:
        saved = config_from_dict(checkpoint["config"])
        model, transform = saved.model, saved.transform
    return shards.bind(model), transform


def tagging_classes(train: ShardSet, val: ShardSet, test: ShardSet) -> tuple[tuple[str, ...], np.ndarray]:
    """The classes the tagger learns: those of the shards' class names that have training jets.

    Shards in the JetClass layout name all ten JetClass classes even when a file set holds two of
    them (e.g. top and QCD): classes without a single training jet are dropped, so that sample
    becomes a binary tagger. Returns the kept names and an int64 map from shard label to tagger
    label (−1 for dropped classes).

    Raises:
        JJepaError: the folders name different classes, fewer than two classes have training jets,
            validation/test jets belong to a class with no training jets, or a kept class has no test
            jets.
    """
    names = tuple(train.manifest.classes)
    others = (val, test)
    for other in others:
        if tuple(other.manifest.classes) != names:
            raise JJepaError(f"{other.folder}: classes {list(other.manifest.classes)} differ from the training "
                             f"shards' {list(names)}")
    counts = np.sum([r.class_counts for r in train.manifest.shards], axis=0) if names else np.zeros(0)
    present = np.flatnonzero(counts > 0)
    if len(present) < 2:
        raise JJepaError(f"{train.folder}: {len(present)} class(es) have training jets; tagging needs at least 2")
    for other in others:
        other_counts = np.sum([r.class_counts for r in other.manifest.shards], axis=0)
        stray = [names[i] for i in np.flatnonzero((other_counts > 0) & (counts == 0))]
        if stray:
            raise JJepaError(f"{other.folder}: holds jets of {stray}, which the training shards never show")
    test_counts = np.sum([r.class_counts for r in test.manifest.shards], axis=0)
    absent = [names[i] for i in present if test_counts[i] == 0]
    if absent:
        raise JJepaError(f"{test.folder}: no test jets of {absent}; every class the tagger learns needs test "
                         "jets for the ROC (use test shards with all the training classes)")
    mapping = np.full(len(names), -1, dtype=np.int64)
    mapping[present] = np.arange(len(present))
    if len(present) < len(names):
        log.info("classes with training jets: %s (the others named by the shards are dropped)",
                 [names[i] for i in present])
    return tuple(names[i] for i in present), mapping


def to_device(batch, transform: InputTransform, device: torch.device, label_map: torch.Tensor | None = None):
    """(inputs, labels) of a raw batch, on ``device``; ``label_map`` turns shard labels into tagger labels."""
    batch = batch.to(device)
    labels = batch["labels"] if label_map is None else label_map[batch["labels"]]
    return batch_inputs(batch, transform, device), labels


@torch.no_grad()
def predict(model: nn.Module, shards: ShardSet, transform: InputTransform, device: torch.device,
            batch_size: int, label_map: torch.Tensor, max_batches: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (J, C) float64 and tagger labels (J,) of the jets of ``shards``.

    All jets in file order; or, with ``max_batches``, that many batches of a fixed shuffled order
    (blocks of 64 jets), so a partial validation mixes every shard and is the same jets every time.
    """
    partial = max_batches is not None
    loader = ShardLoader(shards, batch_size, block_size=64 if partial else batch_size, seed=0, shuffle=partial,
                         rank=0, world_size=1,
                         epochs=1, fields=FINETUNE_FIELDS, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for index, batch in enumerate(loader.batches()):
        if max_batches is not None and index >= max_batches:
            break
        inputs, y = to_device(batch, transform, device, label_map)
        with autocast(device):
            logits = model(inputs)
        probs.append(torch.softmax(logits.float(), dim=-1).double().cpu().numpy())
        labels.append(y.cpu().numpy())
    model.train(was_training)
    return np.concatenate(probs), np.concatenate(labels)


def _val_figures(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Cross-entropy and accuracy of predicted probabilities."""
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(p).mean()), float((probs.argmax(1) == labels).mean())


def _make_optimizer(model: JetClassifier, config: FinetuneConfig) -> torch.optim.AdamW:
    groups = param_groups(model.head, config.weight_decay)
    if config.mode != "freeze":
        scale = config.encoder_lr_scale if config.mode == "finetune" else 1.0
        groups += param_groups(model.encoder, config.weight_decay, lr_scale=scale)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def build_classifier(config: FinetuneConfig, model_config: ModelConfig, n_classes: int,
                     checkpoint: dict | None) -> JetClassifier:
    """The classifier, seeded; in ``finetune``/``freeze`` mode with the checkpoint's encoder loaded."""
    torch.manual_seed(config.seed)
    model = JetClassifier(model_config, n_classes, config.aggregation, freeze_encoder=config.mode == "freeze")
    if config.mode != "scratch":
        load_encoder(model, encoder_state(checkpoint, config.encoder), f"{config.checkpoint} ({config.encoder} encoder)")
    return model


def finetune(config: FinetuneConfig, progress: bool = True) -> dict:
    """Train a tagger as configured and evaluate it on the test set; returns the metrics written.

    Args:
        config: resolved configuration; ``train``, ``val``, ``test`` and ``out`` must be set.
        progress: show a progress bar.
    """
    missing = [k for k in ("train", "val", "test", "out") if getattr(config, k) is None]
    if missing:
        raise JJepaError(f"finetuning needs {', '.join('--' + k for k in missing)}")
    device = resolve_device(config.device)
    out = Path(config.out)
    train_set, val_set, test_set = ShardSet(config.train), ShardSet(config.val), ShardSet(config.test)
    classes, mapping = tagging_classes(train_set, val_set, test_set)
    label_map = torch.from_numpy(mapping).to(device)
    checkpoint = load_checkpoint(config.checkpoint) if config.checkpoint else None
    model_config, transform = architecture(config, checkpoint, train_set)

    n_available = train_set.n_jets
    if config.label_fraction is not None or config.n_labels is not None:
        train_set = train_set.select(stratified_subset(train_set.labels(), config.seed, config.label_fraction,
                                                       config.n_labels))
    n_train = train_set.n_jets
    class_counts = np.bincount(mapping[np.concatenate(train_set.labels())], minlength=len(classes))
    log.info("training on %d labelled jets (%s)", n_train,
             ", ".join(f"{c}: {n}" for c, n in zip(classes, class_counts, strict=True)))

    model = build_classifier(config, model_config, len(classes), checkpoint).to(device)
    optimizer = _make_optimizer(model, config)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    steps = max(config.min_steps, math.ceil(config.epochs * steps_per_epoch))
    eval_every = config.eval_every or max(steps_per_epoch, 25)
    warmup = int(config.warmup_fraction * steps)

    out.mkdir(parents=True, exist_ok=True)
    resolved = {**config.to_dict(), "model": asdict(model_config), "transform": asdict(transform)}
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({**resolved, "total_steps": steps, "n_train_labels": n_train,
                                       "classes": list(classes)}, sort_keys=False))
    with atomic_path(out / "train_log.csv") as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerow(LOG_COLUMNS)

    loader = ShardLoader(train_set, config.batch_size, config.block_size, config.seed, shuffle=True, rank=0,
                         world_size=1, epochs=None, fields=FINETUNE_FIELDS, pin_memory=device.type == "cuda")
    best = {"val_loss": math.inf, "step": 0, "state": copy.deepcopy(model.state_dict())}
    bad_evals, running, n_running = 0, 0.0, 0
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=steps, disable=not progress, unit="step", dynamic_ncols=True)
    with loader.prefetch(depth=config.prefetch) as batches:
        for step in range(steps):
            batch = next(batches)
            lr = lr_at(step, steps, config.lr, config.final_lr, warmup)
            set_lr(optimizer, lr)
            inputs, labels = to_device(batch, transform, device, label_map)
            with autocast(device):
                logits = model(inputs)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
            optimizer.step()
            running += float(loss.detach())
            n_running += 1
            bar.update(1)
            if (step + 1) % eval_every and step + 1 != steps:
                continue
            val_loss, val_acc = _val_figures(*predict(model, val_set, transform, device, config.batch_size,
                                                      label_map, config.val_batches))
            with open(out / "train_log.csv", "a", newline="") as f:
                csv.writer(f).writerow([step + 1, f"{(step + 1) / steps_per_epoch:.3f}", f"{running / n_running:.6g}",
                                        f"{val_loss:.6g}", f"{val_acc:.6g}", f"{lr:.6g}"])
            bar.set_postfix(train=f"{running / n_running:.4f}", val=f"{val_loss:.4f}", acc=f"{val_acc:.3f}")
            running, n_running = 0.0, 0
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "step": step + 1, "state": copy.deepcopy(model.state_dict())}
                bad_evals = 0
            else:
                bad_evals += 1
                if bad_evals >= config.patience:
                    log.info("early stop at step %d: no better validation loss for %d validations", step + 1,
                             bad_evals)
                    break
    bar.close()
    elapsed = time.perf_counter() - start

    model.load_state_dict(best["state"])
    save_checkpoint(out / "checkpoints" / "best.pt", {
        "classifier": model.state_dict(), "config": resolved, "classes": list(classes),
        "step": best["step"], "val_loss": best["val_loss"]})
    probs, labels = predict(model, test_set, transform, device, config.batch_size, label_map)
    with atomic_path(out / "test_predictions.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, labels=labels, probs=probs.astype(np.float32), classes=np.array(classes))
    metrics = tagging_metrics(labels, probs, classes)
    metrics.update({"n_train_labels": int(n_train), "mode": config.mode, "seed": config.seed,
                    "label_fraction": n_train / n_available,
                    "aggregation": config.aggregation, "best_step": best["step"],
                    "best_val_loss": best["val_loss"], "steps_run": step + 1, "train_seconds": round(elapsed, 1),
                    "n_test": int(len(labels))})
    metrics = json_safe(metrics)
    write_json_atomic(out / "metrics.json", metrics)
    curves = tagging_curves(labels, probs, classes)
    write_roc_curves_csv(out / "roc.csv", curves)
    plot_roc({f"{config.mode}, {name}": curve for name, curve in curves.items()}, out / "roc.png")
    log.info("test: accuracy %.4f, AUC %.4f", metrics["accuracy"], metrics["auc"])
    return metrics
