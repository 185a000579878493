"""Finetuning for jet tagging, and honest evaluation on the held-out test set.

One call of ``finetune`` fills a run folder::

    out/config.yaml             the resolved configuration
    out/train_log.csv           step, epoch, train_loss, val_loss, val_accuracy, lr
    out/checkpoints/best.pt     the classifier with the best validation loss
    out/metrics.json            test-set metrics of that classifier (accuracy, auc, rej_at_50, rej_at_30, …)
                                with 68 % bootstrap intervals (``<figure>_ci``) and the counts behind them,
                                and the same figures on the whole validation set under ``val``
    out/roc.csv, out/roc.png    the test-set ROC (for ``dvc plots``) and its figure; one curve per signal class
    out/test_predictions.npz    labels (J,), class probabilities (J, C) and class names, test set
    out/val_predictions.npz     the same on the validation set (choices between variants are made on it)

The model kept is the one with the lowest *validation* loss; validation runs once per epoch or
more often at small label counts (about 40 validations per run), so the best step is bracketed,
and early stopping (``patience`` validations without improvement) starts only after ``min_steps``.
A best step at the first or the last validation is flagged (``best_at_edge``): the kept model may
be under- or over-trained. The reported numbers come from the kept model, once, on the *test* set.
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
from jjepa.common.schema import config_dict
from jjepa.train.config import PRESETS, FinetuneConfig, ModelConfig, config_from_dict
from jjepa.train.data.loader import PRETRAIN_FIELDS, ShardLoader, ShardSet
from jjepa.train.data.part_inputs import PartFeatures
from jjepa.train.data.subsets import stratified_subset
from jjepa.train.data.transform import InputTransform, batch_inputs
from jjepa.train.mechanics.checkpoint import FinetuneCheckpoint, load_checkpoint, save_checkpoint
from jjepa.train.mechanics.distributed import autocast, grad_scaler, resolve_device
from jjepa.train.mechanics.optim import lr_at, param_groups, set_lr
from jjepa.train.model.classifier import JetClassifier, encoder_state, load_encoder
from jjepa.train.model.part import PartTagger
from jjepa.train.report.intervals import metrics_with_intervals
from jjepa.train.report.metrics import json_safe, tagging_curves, write_roc_curves_csv
from jjepa.train.report.plots import plot_roc
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

#: What finetuning reads of a shard; ``jets`` (pT, η, E of the jet) are inputs of the ``part`` mode.
FINETUNE_FIELDS: tuple[str, ...] = PRETRAIN_FIELDS + ("labels", "jets")
LOG_COLUMNS: tuple[str, ...] = ("step", "epoch", "train_loss", "val_loss", "val_accuracy", "lr")

#: Validations per run aimed at when the label count is small (an epoch is then only a few steps).
VALIDATIONS_PER_RUN = 40


def architecture(config: FinetuneConfig, checkpoint: dict | None,
                 shards: ShardSet) -> tuple[ModelConfig | None, InputTransform | PartFeatures]:
    """The encoder hyperparameters and input transform: the checkpoint's, or the preset's for ``scratch``.

    In ``part`` mode there is no encoder: (None, the ParT input builder with its sequence length).
    """
    if config.mode == "part":
        return None, PartFeatures(config.part.max_particles or shards.n_subjets * shards.n_particles)
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
    """(inputs, labels) of a raw batch, on ``device``; ``label_map`` turns shard labels into tagger labels.

    ``transform`` is the subjet encoder's ``InputTransform``, or ``PartFeatures`` in ``part`` mode.
    """
    batch = batch.to(device)
    labels = batch["labels"] if label_map is None else label_map[batch["labels"]]
    if isinstance(transform, PartFeatures):
        return transform.from_batch(batch), labels
    return batch_inputs(batch, transform, device), labels


@torch.no_grad()
def predict(model: nn.Module, shards: ShardSet, transform: InputTransform, device: torch.device,
            batch_size: int, label_map: torch.Tensor, max_batches: int | None = None,
            precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (J, C) float64 and tagger labels (J,) of the jets of ``shards``.

    The encoder runs in ``precision`` (autocast); the probabilities come from float32 or wider logits.

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
        with autocast(device, precision):
            logits = model(inputs)
        probs.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())  # float64: no ties near p = 1
        labels.append(y.cpu().numpy())
    model.train(was_training)
    return np.concatenate(probs), np.concatenate(labels)


def validation_interval(steps_per_epoch: int, steps: int) -> int:
    """Steps between validations: an epoch, or less when that gives fewer than ~40 validations per run.

    With a few hundred labels an epoch is one or two steps while the run takes ``min_steps``; one
    validation per 25 steps then missed the best model (it came before the first validation).
    """
    return max(1, min(steps_per_epoch, steps // VALIDATIONS_PER_RUN))


def best_at_edge(best_step: int, validated: list[int]) -> str | None:
    """``"first"`` or ``"last"`` when the best validation is the run's first or last one, else None."""
    if len(validated) < 2:
        return "first" if validated else None
    if best_step == validated[0]:
        return "first"
    return "last" if best_step == validated[-1] else None


def _val_figures(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Cross-entropy and accuracy of predicted probabilities."""
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(p).mean()), float((probs.argmax(1) == labels).mean())


def _make_optimizer(model: JetClassifier | PartTagger, config: FinetuneConfig) -> torch.optim.AdamW:
    if config.mode == "part":
        return torch.optim.AdamW([g for g in param_groups(model, config.weight_decay) if g["params"]], lr=config.lr)
    groups = param_groups(model.head, config.weight_decay)
    if config.mode != "freeze":
        scale = config.encoder_lr_scale if config.mode == "finetune" else 1.0
        groups += param_groups(model.encoder, config.weight_decay, lr_scale=scale)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def build_classifier(config: FinetuneConfig, model_config: ModelConfig | None, n_classes: int,
                     checkpoint: dict | None) -> JetClassifier | PartTagger:
    """The classifier, seeded; in ``finetune``/``freeze`` mode with the checkpoint's encoder loaded; in
    ``part`` mode the Particle Transformer (weaver-core), sized by ``config.part``."""
    torch.manual_seed(config.seed)
    if config.mode == "part":
        return PartTagger(config.part, n_classes)
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
    train_set, val_set, test_set = (ShardSet(f, verify=config.verify_shards) for f in (config.train, config.val,
                                                                                      config.test))
    for role, other in (("--val", val_set), ("--test", test_set)):
        train_set.check_like(other, role)
    classes, mapping = tagging_classes(train_set, val_set, test_set)
    label_map = torch.from_numpy(mapping).to(device)
    if config.mode == "part" and config.checkpoint:
        log.info("mode part trains the Particle Transformer from scratch; %s is not used", config.checkpoint)
    checkpoint = (load_checkpoint(config.checkpoint, kind="pretrain") if config.checkpoint and config.mode != "part"
                  else None)
    model_config, transform = architecture(config, checkpoint, train_set)
    train_set, val_set, test_set = (s.with_min_subjets(config.min_subjets) for s in (train_set, val_set, test_set))
    kept = {"n_train_jets": train_set.n_jets, "n_val_jets": val_set.n_jets, "n_test_jets": test_set.n_jets}
    if config.min_subjets > 0:
        log.info("jets with at least %d real subjets: %s", config.min_subjets, kept)

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
    scaler = grad_scaler(device, config.precision)  # fp16 only; a no-op for bf16 and fp32
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    steps = max(config.min_steps, math.ceil(config.epochs * steps_per_epoch))
    eval_every = config.eval_every or validation_interval(steps_per_epoch, steps)
    warmup = int(config.warmup_fraction * steps)

    out.mkdir(parents=True, exist_ok=True)
    resolved = {**config.to_dict(), "model": model_config and asdict(model_config), "transform": asdict(transform)}
    with atomic_path(out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({**resolved, "total_steps": steps, "n_train_labels": n_train,
                                       "classes": list(classes)}, sort_keys=False))
    with atomic_path(out / "train_log.csv") as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerow(LOG_COLUMNS)

    loader = ShardLoader(train_set, config.batch_size, config.block_size, config.seed, shuffle=True, rank=0,
                         world_size=1, epochs=None, fields=FINETUNE_FIELDS, pin_memory=device.type == "cuda")
    best = {"val_loss": math.inf, "step": 0, "state": copy.deepcopy(model.state_dict())}
    bad_evals, running, n_running = 0, 0.0, 0
    validated: list[int] = []
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=steps, disable=not progress, unit="step", dynamic_ncols=True)
    with loader.prefetch(depth=config.prefetch) as batches:
        for step in range(steps):
            batch = next(batches)
            lr = lr_at(step, steps, config.lr, config.final_lr, warmup)
            set_lr(optimizer, lr)
            inputs, labels = to_device(batch, transform, device, label_map)
            with autocast(device, config.precision):
                logits = model(inputs)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            running += float(loss.detach())
            n_running += 1
            bar.update(1)
            if (step + 1) % eval_every and step + 1 != steps:
                continue
            val_loss, val_acc = _val_figures(*predict(model, val_set, transform, device, config.batch_size,
                                                      label_map, config.val_batches, config.precision))
            if not (math.isfinite(running) and math.isfinite(val_loss)):  # never report an untrained head
                raise JJepaError(f"finetuning diverged (a NaN or inf loss) by step {step + 1}; nothing is reported "
                                 f"from it. Try a lower --lr (now {config.lr:g}) or --encoder-lr-scale")
            with open(out / "train_log.csv", "a", newline="") as f:
                csv.writer(f).writerow([step + 1, f"{(step + 1) / steps_per_epoch:.3f}", f"{running / n_running:.6g}",
                                        f"{val_loss:.6g}", f"{val_acc:.6g}", f"{lr:.6g}"])
            bar.set_postfix(train=f"{running / n_running:.4f}", val=f"{val_loss:.4f}", acc=f"{val_acc:.3f}")
            running, n_running = 0.0, 0
            validated.append(step + 1)
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "step": step + 1, "state": copy.deepcopy(model.state_dict())}
                bad_evals = 0
            else:
                bad_evals += 1
                if bad_evals >= config.patience and step + 1 >= config.min_steps:
                    log.info("early stop at step %d: no better validation loss for %d validations", step + 1,
                             bad_evals)
                    break
    bar.close()
    elapsed = time.perf_counter() - start

    model.load_state_dict(best["state"])
    save_checkpoint(out / "checkpoints" / "best.pt", FinetuneCheckpoint(
        classifier=model.state_dict(), config=resolved, classes=list(classes),
        cluster=config_dict(train_set.manifest.cluster), step=best["step"], val_loss=best["val_loss"]))
    val_probs, val_labels = predict(model, val_set, transform, device, config.batch_size, label_map,
                                    precision=config.precision)
    probs, labels = predict(model, test_set, transform, device, config.batch_size, label_map,
                            precision=config.precision)
    for name, (p, y) in {"val": (val_probs, val_labels), "test": (probs, labels)}.items():
        with atomic_path(out / f"{name}_predictions.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, labels=y, probs=p, classes=np.array(classes))
    metrics = metrics_with_intervals(labels, probs, classes, config.bootstrap_resamples)
    edge = best_at_edge(best["step"], validated)
    if edge:
        log.warning("the best validation loss is at the %s validation (step %d of %d): the kept model may be "
                    "%s-trained; validate more often (eval_every) or train %s", edge, best["step"], step + 1,
                    "under" if edge == "last" else "over", "longer" if edge == "last" else "with a lower lr")
    metrics.update({"n_train_labels": int(n_train), "mode": config.mode, "seed": config.seed,
                    "label_fraction": n_train / n_available,
                    "aggregation": config.aggregation, "best_step": best["step"],
                    "best_val_loss": best["val_loss"], "steps_run": step + 1, "n_validations": len(validated),
                    "best_at_edge": edge, "train_seconds": round(elapsed, 1), "n_test": int(len(labels)),
                    "val": metrics_with_intervals(val_labels, val_probs, classes, config.bootstrap_resamples)})
    metrics.update(kept)
    metrics = json_safe(metrics)
    write_json_atomic(out / "metrics.json", metrics)
    curves = tagging_curves(labels, probs, classes)
    write_roc_curves_csv(out / "roc.csv", curves)
    plot_roc({f"{config.mode}, {name}": curve for name, curve in curves.items()}, out / "roc.png")
    log.info("test: accuracy %.4f, AUC %.4f", metrics["accuracy"], metrics["auc"])
    return metrics
