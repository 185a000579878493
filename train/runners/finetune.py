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
    out/checkpoints/last.pt     while the run is unfinished: written every ``checkpoint_every`` steps, at
                                ``stop_after``, on Ctrl-C and SIGTERM, and when training ends (so a failure in
                                the final evaluation loses no training); ``--resume`` continues from it exactly
                                (bit for bit on the CPU) and it is removed when the run finishes

The model kept is the one with the lowest *validation* loss; validation runs once per epoch or
more often at small label counts (about 40 validations per run), so the best step is bracketed,
and early stopping (``patience`` validations without improvement) starts only after ``min_steps``.
A best step at the first or the last validation is flagged (``best_at_edge``): the kept model may
be under- or over-trained. The reported numbers come from the kept model, once, on the *test* set.
Only the training shards are reduced to the label fraction.

Under ``torchrun`` (DDP) each rank trains on its share of the labelled jets (``batch_size`` per
process); validation and test predictions are split over the ranks by single-process batch and
gathered back in one process's order, so every figure (and every early-stopping decision) is the one a
single process computes for the same model.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from jjepa.common.atomic import atomic_path, write_json_atomic
from jjepa.common.errors import JJepaError
from jjepa.common.schema import config_dict
from jjepa.train.config import FinetuneConfig, describe_differences
from jjepa.train.data.loader import FINETUNE_FIELDS, training_loader
from jjepa.train.data.provenance import check_same_jets
from jjepa.train.mechanics.checkpoint import FinetuneCheckpoint, save_checkpoint
from jjepa.train.mechanics.distributed import (
    DistInfo,
    autocast,
    check_world_size,
    gather_objects,
    init_distributed,
    mean_over_ranks,
    shutdown_distributed,
)
from jjepa.train.mechanics.optim import lr_at, optimizer_step, set_lr
from jjepa.train.mechanics.runlog import RunLog
from jjepa.train.mechanics.signals import any_rank, stop_requests
from jjepa.train.report.intervals import metrics_with_intervals
from jjepa.train.report.metrics import json_safe, tagging_curves, write_roc_curves_csv
from jjepa.train.report.plots import plot_roc
from jjepa.train.runners.finetune_setup import Prepared, prepare
from jjepa.train.runners.finetune_state import (
    FinetuneState,
    build_state,
    check_resumable,
    finished_run_differences,
    open_run,
    restore_state,
    run_checkpoint,
)
from jjepa.train.runners.inference import predict_over_ranks, to_device
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LOG_COLUMNS: tuple[str, ...] = ("step", "epoch", "train_loss", "val_loss", "val_accuracy", "lr")

#: Validations per run aimed at when the label count is small (an epoch is then only a few steps).
VALIDATIONS_PER_RUN = 40


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


@dataclass
class Run:
    """The fixed facts of a run that the step, validation and evaluation functions share."""

    config: FinetuneConfig
    data: Prepared
    dist: DistInfo
    out: Path
    steps: int
    stop: int  # steps of this call (``stop_after``)
    steps_per_epoch: int  # per rank
    eval_every: int
    warmup: int
    train_model: nn.Module  # the classifier as trained: DDP- and/or compile-wrapped
    eval_model: nn.Module  # the classifier as evaluated: compile-wrapped or plain

    @property
    def last(self) -> Path:
        return self.out / "checkpoints" / "last.pt"


def finetune(config: FinetuneConfig, progress: bool = True, resume: bool = False) -> dict:
    """Train a tagger as configured and evaluate it on the test set; returns the metrics written.

    Under ``torchrun`` every rank trains on its share of the labelled jets (DDP); validation and test
    predictions are gathered over the ranks in the order one process reads them, so the figures are
    those of a single-process evaluation of the same model. Rank 0 writes the run folder and returns
    the metrics; the other ranks return ``{}``.

    Args:
        config: resolved configuration; ``train``, ``val``, ``test`` and ``out`` must be set.
        progress: show a progress bar (rank 0).
        resume: continue the unfinished run of ``out/checkpoints/last.pt`` exactly.
    """
    missing = [k for k in ("train", "val", "test", "out") if getattr(config, k) is None]
    if missing:
        raise JJepaError(f"finetuning needs {', '.join('--' + k for k in missing)}")
    info = init_distributed(config.device)
    try:
        return _finetune(config, info, progress, resume)
    finally:
        shutdown_distributed()


def _finetune(config: FinetuneConfig, info: DistInfo, progress: bool, resume: bool) -> dict:
    out = Path(config.out)
    if resume and not (out / "checkpoints" / "last.pt").exists() and (out / "metrics.json").exists():
        differences = finished_run_differences(out, config)
        if differences:
            raise JJepaError(f"{out} is a finished run made with other settings "
                             f"({describe_differences(differences)}); its figures are not those of the run asked "
                             "for: choose another --out")
        log.info("%s is finished; nothing to do (start a new run with another --out)", out)
        return json.loads((out / "metrics.json").read_text()) if info.is_main else {}
    saved = open_run(config, out, resume)
    data = prepare(config, info.device)
    if saved is not None:
        check_resumable(data.resolved, saved["config"], out / "checkpoints" / "last.pt")
        for role, jets in (saved.get("data") or {}).items():
            check_same_jets(jets, data.fingerprints[role], role, out / "checkpoints" / "last.pt")
        check_world_size(int(saved["world_size"]), info, out / "checkpoints" / "last.pt")
    state = build_state(config, data, info.device)
    data.pretrained = None  # its encoder is loaded: free the pretraining checkpoint for the run
    if saved is not None:
        restore_state(state, saved, info.rank, info.device)
        log.info("resuming %s at step %d", out, state.step)
    run = _make_run(config, data, info, out, state)
    if info.is_main:
        _start_outputs(run, state.validated if saved is not None else None)
    with stop_requests() as terminate:
        try:
            if not state.done:
                _train(state, run, terminate, progress)
            if not state.done:
                _save(state, run, coordinated=True)
                log.info("stopped at step %d of %d (stop_after); continue with --resume", state.step, run.steps)
                return {"step": state.step, "total_steps": run.steps, "stopped": True}
            _save(state, run, coordinated=True)  # training is over: a failure while evaluating keeps it (--resume)
            metrics = final_evaluation(state, run)
        except KeyboardInterrupt as interrupt:
            _save(state, run, coordinated=getattr(interrupt, "coordinated", False))
            log.warning("interrupted at step %d; checkpoint saved, continue with --resume", state.step)
            raise
    if info.is_main:
        run.last.unlink(missing_ok=True)  # the run is finished: best.pt and the figures are its product
    return metrics


def _make_run(config: FinetuneConfig, data: Prepared, info: DistInfo, out: Path, state: FinetuneState) -> Run:
    """Step counts (equal on every rank) and the wrapped models of a run."""
    # A rank's share is at most ceil(J / W) jets; every rank takes the same number of steps.
    steps_per_epoch = math.ceil(math.ceil(data.train_set.n_jets / info.world_size) / config.batch_size)
    steps = max(config.min_steps, math.ceil(config.epochs * steps_per_epoch))
    train_model: nn.Module = state.model
    eval_model: nn.Module = state.model
    if info.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)
    if config.compile:
        train_model, eval_model = torch.compile(train_model), torch.compile(eval_model)
    return Run(config=config, data=data, dist=info, out=out, steps=steps,
               stop=min(steps, config.stop_after) if config.stop_after is not None else steps,
               steps_per_epoch=steps_per_epoch, eval_every=config.eval_every or validation_interval(steps_per_epoch,
                                                                                                      steps),
               warmup=int(config.warmup_fraction * steps), train_model=train_model, eval_model=eval_model)


def _start_outputs(run: Run, validated: list[int] | None) -> None:
    """Write config.yaml and start train_log.csv (on resume: keep the rows of the validations done)."""
    run.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(run.out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({**run.data.resolved, "total_steps": run.steps,
                                       "n_train_labels": run.data.train_set.n_jets, "classes": list(run.data.classes),
                                       "world_size": run.dist.world_size}, sort_keys=False))
    done = set(validated or ())
    RunLog(run.out / "train_log.csv", LOG_COLUMNS,
           keep=None if validated is None else lambda row: int(row["step"]) in done)


#: Under DDP, the ranks agree on a SIGTERM every this many steps (a one-integer all-reduce, a device sync).
_AGREE_EVERY = 10


def _train(state: FinetuneState, run: Run, terminate, progress: bool) -> None:
    """Steps from ``state.step`` to the end, ``stop_after`` or an early stop; validations and checkpoints on the way.

    A validation due at the current step is run first, so a checkpoint written between a step and its
    validation resumes exactly. SIGTERM stops between steps with a coordinated checkpoint.
    """
    config, info = run.config, run.dist
    loader = training_loader(run.data.train_set, config.batch_size, config.block_size, config.seed, info.rank,
                             info.world_size, FINETUNE_FIELDS, info.device)
    state.cursor = loader.resumed_cursor(state.step, state.cursor)  # each rank's own (a checkpoint holds rank 0's)
    saved_at, start = state.step, time.perf_counter()
    base_seconds = state.train_seconds
    state.model.train()
    bar = tqdm(total=run.stop, initial=state.step, disable=not (progress and info.is_main), unit="step",
               dynamic_ncols=True)
    try:
        with loader.prefetch(state.cursor, depth=config.prefetch) as batches:
            while True:
                state.train_seconds = base_seconds + time.perf_counter() - start
                if _validation_due(state, run):
                    validate(state, run, bar)
                if state.done or state.step >= run.steps:
                    state.done = True
                    return
                if state.step >= run.stop:
                    return
                if state.step % config.checkpoint_every == 0 and state.step != saved_at:
                    _save(state, run, coordinated=True)
                    saved_at = state.step
                if (info.world_size == 1 or state.step % _AGREE_EVERY == 0) and \
                        any_rank(terminate.is_set(), info):
                    interrupt = KeyboardInterrupt()
                    interrupt.coordinated = True  # every rank stops here: the checkpoint may gather
                    raise interrupt
                train_step(state, run, next(batches))
                bar.update(1)
    finally:
        state.train_seconds = base_seconds + time.perf_counter() - start
        bar.close()


def train_step(state: FinetuneState, run: Run, batch) -> None:
    """One optimizer step on ``batch``: forward (autocast), cross-entropy on fp32 logits, scaled backward,
    clipping of the unscaled gradients, step; the loss is summed on the device (no sync)."""
    config = run.config
    set_lr(state.optimizer, lr_at(state.step, run.steps, config.lr, config.final_lr, run.warmup))
    inputs, labels = to_device(batch, run.data.transform, run.dist.device, run.data.label_map)
    with autocast(run.dist.device, config.precision):
        logits = run.train_model(inputs)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer_step(loss, state.optimizer, state.scaler, config.clip_grad,
                   [p for g in state.optimizer.param_groups for p in g["params"]])
    state.running.add(loss)
    state.step, state.cursor = state.step + 1, batch.cursor


def _validation_due(state: FinetuneState, run: Run) -> bool:
    step = state.step
    return step > 0 and (step % run.eval_every == 0 or step == run.steps) and \
        (not state.validated or state.validated[-1] != step)


def validate(state: FinetuneState, run: Run, bar) -> None:
    """Validation figures at ``state.step`` (gathered over ranks), a train_log.csv row, the best model and
    early stopping (the same decisions on every rank)."""
    config, step = run.config, state.step
    val_loss, val_acc = _val_figures(*predict_over_ranks(
        run.eval_model, run.data.val_set, run.data.transform, run.dist, config.batch_size, run.data.label_map,
        config.val_batches, config.precision))
    train_loss = mean_over_ranks(state.running.mean(), run.dist)
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):  # never report an untrained head
        raise JJepaError(f"finetuning diverged (a NaN or inf loss) by step {step}; nothing is reported "
                         f"from it. Try a lower --lr (now {config.lr:g}) or --encoder-lr-scale")
    lr = lr_at(step - 1, run.steps, config.lr, config.final_lr, run.warmup)
    if run.dist.is_main:
        RunLog.append(run.out / "train_log.csv", LOG_COLUMNS, {
            "step": step, "epoch": f"{step / run.steps_per_epoch:.3f}", "train_loss": train_loss,
            "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr})
    bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", acc=f"{val_acc:.3f}")
    if bar.disable and run.dist.is_main:  # no bar (a batch log): one line per validation
        log.info("step %d/%d: train loss %.4f, val loss %.4f, val accuracy %.3f", step, run.steps, train_loss,
                 val_loss, val_acc)
    state.running.reset()
    state.validated.append(step)
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.best_step = val_loss, step
        state.best_model = copy.deepcopy(state.model.state_dict())
        state.bad_evals = 0
    else:
        state.bad_evals += 1
        if state.bad_evals >= config.patience and step >= config.min_steps:
            log.info("early stop at step %d: no better validation loss for %d validations", step, state.bad_evals)
            state.done = True


def _save(state: FinetuneState, run: Run, coordinated: bool) -> None:
    """Write ``last.pt`` (rank 0). ``coordinated``: every rank is here, so each rank's loss sum is gathered;
    otherwise (Ctrl-C under DDP) rank 0's stands for all."""
    running = [float(r) for r in gather_objects(state.running.total(), run.dist)] if coordinated \
        else [state.running.total()]
    if run.dist.is_main:
        save_checkpoint(run.last, run_checkpoint(state, run.data, run.dist, running))


def final_evaluation(state: FinetuneState, run: Run) -> dict:
    """The best-validation classifier: best.pt, predictions on the whole validation and test sets (gathered
    over ranks), metrics with intervals, ROC; written by rank 0, which returns the metrics ({} elsewhere)."""
    config, data, out = run.config, run.data, run.out
    model = state.model
    model.load_state_dict(state.best_model)
    if run.dist.is_main:
        save_checkpoint(out / "checkpoints" / "best.pt", FinetuneCheckpoint(
            classifier=model.state_dict(), config=data.resolved, classes=list(data.classes),
            cluster=config_dict(data.train_set.manifest.cluster), step=state.best_step,
            val_loss=state.best_val_loss))
    val_probs, val_labels = predict_over_ranks(run.eval_model, data.val_set, data.transform, run.dist,
                                               config.batch_size, data.label_map, precision=config.precision)
    probs, labels = predict_over_ranks(run.eval_model, data.test_set, data.transform, run.dist, config.batch_size,
                                       data.label_map, precision=config.precision)
    if not run.dist.is_main:
        return {}
    classes = data.classes
    for name, (p, y) in {"val": (val_probs, val_labels), "test": (probs, labels)}.items():
        with atomic_path(out / f"{name}_predictions.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, labels=y, probs=p, classes=np.array(classes))
    metrics = metrics_with_intervals(labels, probs, classes, config.bootstrap_resamples)
    edge = best_at_edge(state.best_step, state.validated)
    if edge:
        log.warning("the best validation loss is at the %s validation (step %d of %d): the kept model may be "
                    "%s-trained; validate more often (eval_every) or train %s", edge, state.best_step, state.step,
                    "under" if edge == "last" else "over", "longer" if edge == "last" else "with a lower lr")
    metrics.update({"n_train_labels": int(data.train_set.n_jets), "mode": config.mode, "seed": config.seed,
                    "label_fraction": data.train_set.n_jets / data.n_available,
                    "aggregation": config.aggregation, "best_step": state.best_step,
                    "best_val_loss": state.best_val_loss, "steps_run": state.step,
                    "n_validations": len(state.validated), "best_at_edge": edge,
                    "train_seconds": round(state.train_seconds, 1), "n_test": int(len(labels)),
                    "test_shards_sha256": data.fingerprints["test"]["shards_sha256"],
                    "val": metrics_with_intervals(val_labels, val_probs, classes, config.bootstrap_resamples)})
    metrics.update(data.kept)
    metrics = json_safe(metrics)
    write_json_atomic(out / "metrics.json", metrics)
    curves = tagging_curves(labels, probs, classes)
    write_roc_curves_csv(out / "roc.csv", curves)
    plot_roc({f"{config.mode}, {name}": curve for name, curve in curves.items()}, out / "roc.png")
    log.info("test: accuracy %.4f, AUC %.4f", metrics["accuracy"], metrics["auc"])
    return metrics
