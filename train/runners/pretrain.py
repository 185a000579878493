"""The J-JEPA pretraining loop: shards → batches → masks → loss → AdamW step → EMA, with checkpoints.

One call of ``pretrain`` runs (or resumes) a run folder::

    out/config.yaml            the resolved configuration
    out/train_log.csv          step, epoch, loss, lr, momentum, jets_per_s, target_std, target_rank, val_loss
    out/metrics.json           the final figures (for ``dvc metrics``)
    out/checkpoints/last.pt    written every ``checkpoint_every`` steps, at the end and on Ctrl-C
    out/checkpoints/step-<step>.pt  the last ``keep_checkpoints`` of those, kept beside it (0: none)

A resumed run continues exactly: the weights, the optimizer, the loader position, the schedules
(functions of the step) and the masks (seeded by the step) are all restored, so N steps, stop,
resume, N more steps equals 2N steps straight (bit for bit on the CPU). A run resumes with the number of
processes that wrote the checkpoint; another number is refused with a message saying how to proceed
(``check_world_size``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from jjepa.common.atomic import atomic_path, write_json_atomic
from jjepa.common.errors import JJepaError
from jjepa.train.config import PretrainConfig, config_from_dict
from jjepa.train.data.loader import PRETRAIN_FIELDS, ShardSet, evaluation_batches, training_loader
from jjepa.train.data.provenance import check_disjoint, check_same_jets, fingerprint
from jjepa.train.data.transform import batch_inputs
from jjepa.train.mechanics.checkpoint import keep_step_copy, load_checkpoint, save_checkpoint
from jjepa.train.mechanics.diagnostics import effective_rank, representation_std
from jjepa.train.mechanics.distributed import (
    DistInfo,
    autocast,
    check_world_size,
    init_distributed,
    mean_over_ranks,
    shutdown_distributed,
)
from jjepa.train.mechanics.ema import ema_update, momentum_at
from jjepa.train.mechanics.masking import mask_generator, sample_targets
from jjepa.train.mechanics.optim import lr_at, optimizer_step, set_lr
from jjepa.train.mechanics.runlog import RunLog
from jjepa.train.mechanics.signals import any_rank, stop_requests
from jjepa.train.model.jepa import JEPAOutput, jepa_forward
from jjepa.train.model.packing import plan_jepa
from jjepa.train.model.subjet_transformer import jet_representation
from jjepa.train.runners.pretrain_state import (
    RunState,
    build_state,
    check_resumable,
    checkpoint_dict,
    restore_state,
)
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LOG_COLUMNS: tuple[str, ...] = ("step", "epoch", "loss", "lr", "momentum", "jets_per_s", "target_std",
                                "target_rank", "val_loss")
#: Validation masks use a rank of their own, so they never coincide with a training step's.
_VAL_RANK = 1 << 20


def total_steps(config: PretrainConfig, jets_per_epoch: int) -> int:
    """``config.steps``, or ``config.epochs`` passes over the largest rank share (``jets_per_epoch``, the same
    on every rank) converted to steps."""
    if config.steps is not None:
        return config.steps
    return max(1, math.ceil(config.epochs * jets_per_epoch / config.batch_size))


def draw_targets(config: PretrainConfig, subjet_mask: torch.Tensor, rank: int, step: int) -> torch.Tensor:
    """(B, S) bool target mask of ``step`` on ``rank`` as configured (fraction, selection, pool), on the CPU."""
    return sample_targets(subjet_mask, config.mask_fraction, mask_generator(config.seed, rank, step),
                          config.target_selection, config.target_pool)


def load_shards(folder: str, min_subjets: int, what: str, verify: bool = True) -> ShardSet:
    """The shards of ``folder`` without the jets below ``min_subjets`` real subjets; logs the count kept.

    ``verify``: check the shards' sha256 against the manifest first (``ShardSet``).
    """
    shards = ShardSet(folder, verify=verify)
    kept = shards.with_min_subjets(min_subjets)
    if min_subjets > 0:
        log.info("%s: %d of %d jets have at least %d real subjets and are kept", what, kept.n_jets, shards.n_jets,
                 min_subjets)
    return kept


@torch.no_grad()
def validation_loss(state: RunState, config: PretrainConfig, shards: ShardSet, device: torch.device) -> float:
    """Mean J-JEPA loss over ``val_batches`` batches of the validation shards with fixed masks, read in
    one fixed shuffled order (so a partial validation mixes every shard and sees the same jets every time)."""
    state.model.eval()
    total, count = 0.0, 0
    for index, batch in enumerate(evaluation_batches(shards, config.batch_size, PRETRAIN_FIELDS, device,
                                                     config.val_batches, config.block_size, config.seed)):
        target_mask = draw_targets(config, batch["subjet_mask"], _VAL_RANK, index)
        inputs = batch_inputs(batch, config.transform, device)
        with autocast(device, config.precision):
            out = jepa_forward(state.model, state.target_encoder, inputs, target_mask.to(device),
                               config.context_sees_targets)
        total += float(out.loss) * len(batch)
        count += len(batch)
    state.model.train()
    return total / max(count, 1)


def pretrain(config: PretrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Pretrain J-JEPA as configured (see the module docstring for what the run folder gets).

    Args:
        config: the resolved configuration; ``data`` and ``out`` must be set.
        resume: continue from ``out/checkpoints/last.pt``.
        progress: show a progress bar (rank 0).

    Returns:
        The final metrics written to ``metrics.json``.
    """
    if config.data is None or config.out is None:
        raise JJepaError("pretraining needs --data (a shard folder) and --out (the run folder)")
    dist_info = init_distributed(config.device)
    try:
        return _pretrain(config, dist_info, resume, progress)
    finally:
        shutdown_distributed()


@dataclass
class Run:
    """The fixed facts of a pretraining run that the step, log and checkpoint functions share."""

    config: PretrainConfig
    dist: DistInfo
    out: Path
    shards: ShardSet
    val_shards: ShardSet | None
    steps: int  # the run's length: the schedules run over it
    stop: int  # where this call stops (``stop_after``)
    warmup: int
    jets: dict  # the training shards' fingerprint (``provenance.fingerprint``), stored in every checkpoint
    train_model: nn.Module  # the JEPA as trained: DDP- and/or compile-wrapped
    target_encoder: nn.Module  # the target encoder as run forward: compiled or plain
    train_log: RunLog | None  # rank 0 only

    @property
    def last(self) -> Path:
        return self.out / "checkpoints" / "last.pt"


def _pretrain(config: PretrainConfig, dist_info: DistInfo, resume: bool, progress: bool) -> dict:
    out = Path(config.out)
    last = out / "checkpoints" / "last.pt"
    shards = load_shards(config.data, config.min_subjets, "training set", verify=config.verify_shards)
    config = replace(config, model=shards.bind(config.model))
    val_shards = (load_shards(config.val, config.min_subjets, "validation set", verify=config.verify_shards)
                  if config.val else None)
    if val_shards is not None:
        shards.check_like(val_shards, "--val")
        check_disjoint({"--data": (shards.folder, shards.manifest), "--val": (val_shards.folder, val_shards.manifest)})
    jets = fingerprint(shards.folder, shards.manifest)

    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(last, kind="pretrain")
        check_resumable(config, config_from_dict(checkpoint["config"]))
        check_same_jets(checkpoint.get("data"), jets, "training", last)
        check_world_size(int(checkpoint["world_size"]), dist_info, last)
    elif last.exists():
        raise JJepaError(f"{out} already holds a run ({last}); pass --resume to continue it, or choose another --out")

    state = build_state(config, dist_info.device)
    if checkpoint is not None:
        restore_state(state, checkpoint)
        log.info("resuming %s at step %d", out, state.step)

    loader = training_loader(shards, config.batch_size, config.block_size, config.seed, dist_info.rank,
                             dist_info.world_size, PRETRAIN_FIELDS, dist_info.device)
    steps = total_steps(config, loader.largest_share())
    if checkpoint is not None:  # each rank's own position (the checkpoint holds rank 0's)
        state.cursor = loader.resumed_cursor(state.step, state.cursor)
    if checkpoint is not None and state.step >= steps:
        return _finished(out, state.step, steps)
    run = _make_run(config, dist_info, out, shards, val_shards, jets, steps, state,
                    resumed_at=state.step if checkpoint is not None else None)
    try:
        row = _train(state, run, loader, progress)
    except KeyboardInterrupt:
        _save(state, run)
        log.warning("interrupted at step %d; checkpoint saved, continue with --resume", state.step)
        raise
    _save(state, run)
    if state.step < steps:
        log.info("stopped at step %d of %d (--stop-after); continue with --resume", state.step, steps)
        return {"step": state.step, "total_steps": steps, "stopped": True}
    metrics = {"step": state.step, "total_steps": steps, **{k: row.get(k) for k in LOG_COLUMNS[2:]},
               "n_train_jets": shards.n_jets, "n_val_jets": val_shards.n_jets if val_shards is not None else None}
    if dist_info.is_main:
        write_json_atomic(out / "metrics.json", metrics)
        log.info("pretraining done: %d steps, loss %.4g", state.step, metrics["loss"])
    return metrics


def _make_run(config: PretrainConfig, dist_info: DistInfo, out: Path, shards: ShardSet, val_shards: ShardSet | None,
              jets: dict, steps: int, state: RunState, resumed_at: int | None) -> Run:
    """The run's step counts and wrapped models; rank 0 writes config.yaml and opens train_log.csv (on
    resume keeping the rows up to ``resumed_at``)."""
    train_log = None
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump({**config.to_dict(), "total_steps": steps,
                                           "world_size": dist_info.world_size}, sort_keys=False))
        train_log = RunLog(out / "train_log.csv", LOG_COLUMNS,
                           keep=None if resumed_at is None else lambda row: int(row["step"]) <= resumed_at)
    model: nn.Module = state.model
    target_encoder: nn.Module = state.target_encoder
    if dist_info.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    if config.compile:
        # dynamic: the packed sequence lengths change from batch to batch; one graph serves them all
        # (static graphs would recompile for every new length early in the run).
        model, target_encoder = torch.compile(model, dynamic=True), torch.compile(target_encoder, dynamic=True)
    return Run(config=config, dist=dist_info, out=out, shards=shards, val_shards=val_shards, jets=jets, steps=steps,
               stop=min(steps, config.stop_after) if config.stop_after is not None else steps,
               warmup=int(config.warmup_fraction * steps), train_model=model, target_encoder=target_encoder,
               train_log=train_log)


def _train(state: RunState, run: Run, loader, progress: bool) -> dict:
    """Steps from ``state.step`` to ``run.stop``, with log rows, validations and checkpoints on the way;
    returns the last log row. SIGTERM (a batch system's notice) stops between steps as Ctrl-C does."""
    config, dist_info = run.config, run.dist
    bar = tqdm(total=run.stop, initial=state.step, disable=not (progress and dist_info.is_main), unit="step",
               dynamic_ncols=True)
    interval_start, rate_steps = time.perf_counter(), 0  # the rate counts this process's steps only
    row: dict = {}
    try:
        with stop_requests() as terminate, loader.prefetch(state.cursor, depth=config.prefetch) as batches:
            while state.step < run.stop:
                result = train_step(state, run, next(batches))
                rate_steps += 1
                bar.update(1)
                if state.step % config.log_every == 0 or state.step == run.steps:
                    rate = rate_steps * config.batch_size * dist_info.world_size / (time.perf_counter() - interval_start)
                    row = log_interval(state, run, result, rate)
                    bar.set_postfix(loss=f"{row['loss']:.4g}", jets_s=f"{row['jets_per_s']:.0f}")
                    if bar.disable and dist_info.is_main:  # no bar (a batch log): one line per interval
                        log.info("step %d/%d: loss %.4g, %.0f jets/s", state.step, run.steps, row["loss"],
                                 row["jets_per_s"])
                    interval_start, rate_steps = time.perf_counter(), 0
                if state.step % config.checkpoint_every == 0 and state.step < run.stop:
                    _save(state, run)
                # under DDP all ranks agree on a SIGTERM at a log step
                if (dist_info.world_size == 1 or state.step % config.log_every == 0) and \
                        any_rank(terminate.is_set(), dist_info):
                    raise KeyboardInterrupt
    finally:
        bar.close()
    return row


def train_step(state: RunState, run: Run, batch) -> JEPAOutput:
    """One J-JEPA step on ``batch``: targets, forward, L2 loss, optimizer step, EMA update of the target encoder."""
    config, device, step = run.config, run.dist.device, state.step
    set_lr(state.optimizer, lr_at(step, run.steps, config.lr, config.final_lr, run.warmup))
    target_mask = draw_targets(config, batch["subjet_mask"], run.dist.rank, step)
    # Packings from the CPU masks: the sequence lengths are known without a device sync.
    plans = plan_jepa(batch["subjet_mask"], target_mask).to(device)
    inputs = batch_inputs(batch, config.transform, device)
    target_mask = target_mask.to(device, non_blocking=True)

    # 1. forward target (no gradient)  2. forward context + predictor  3. L2 loss
    with autocast(device, config.precision):
        result = jepa_forward(run.train_model, run.target_encoder, inputs, target_mask, config.context_sees_targets,
                              plans=plans)
    # 4. backward (loss scaled for fp16), clip the unscaled gradients, step
    optimizer_step(result.loss, state.optimizer, state.scaler, config.clip_grad, state.model.parameters())
    # 5. momentum (EMA) update of the target encoder
    ema_update(state.target_encoder, state.model.context_encoder,
               momentum_at(step, run.steps, config.ema_start, config.ema_end))
    state.step, state.cursor = step + 1, batch.cursor
    state.interval.add(result.loss)
    return result


def log_interval(state: RunState, run: Run, result: JEPAOutput, jets_per_s: float) -> dict:
    """Close a log interval: a ``train_log.csv`` row (with the validation loss when one is due), and the
    running loss reset."""
    config = run.config
    row = _log_row(state, run, result, jets_per_s)
    if run.val_shards is not None and ((config.val_every and state.step % config.val_every == 0)
                                       or state.step == run.steps):
        row["val_loss"] = mean_over_ranks(validation_loss(state, config, run.val_shards, run.dist.device), run.dist)
    if run.train_log is not None:
        run.train_log.write(row)
    state.interval.reset()
    return row


def _save(state: RunState, run: Run) -> None:
    """Write ``last.pt`` (rank 0), never from a diverged state, and keep a step copy if configured."""
    if run.dist.is_main:
        if not (math.isfinite(state.interval.total()) and _finite_weights(state)):
            raise _diverged(run.config, state.step, run.last)
        save_checkpoint(run.last, checkpoint_dict(state, run.config, run.dist.world_size, run.jets))
        keep_step_copy(run.last, state.step, run.config.keep_checkpoints)


def _finished(out: Path, step: int, steps: int) -> dict:
    """``--resume`` of a run that is done: say so and return its metrics, touching nothing."""
    log.info("%s is finished (step %d of %d); nothing to do (start a new run with another --out)", out, step, steps)
    path = out / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is missing or unreadable; the checkpoint of the finished run is kept as it is", path)
        return {"step": step, "total_steps": steps, "finished": True}


def _finite_weights(state: RunState) -> bool:
    """Whether every weight of the networks is finite (checked before each checkpoint is written)."""
    tensors = [*state.model.parameters(), *state.target_encoder.parameters()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _diverged(config: PretrainConfig, step: int, last: Path) -> JJepaError:
    """The error for a non-finite loss or weights: what happened, what was kept, what to try."""
    kept = f"the last good checkpoint, {last}, is kept" if last.exists() else "no checkpoint was written"
    return JJepaError(f"the loss diverged (NaN or inf) by step {step}; nothing from it is saved or reported ({kept}). "
                      f"Try a lower --lr (now {config.lr:g}), gradient clipping (--set clip_grad=1.0, now "
                      f"{config.clip_grad:g}) or a longer warmup (--set warmup_fraction=0.1, now "
                      f"{config.warmup_fraction:g})")


def _log_row(state: RunState, run: Run, result: JEPAOutput, jets_per_s: float) -> dict:
    """One ``train_log.csv`` row (the mean loss since the last row), with the collapse diagnostics of the
    last batch; warns on collapse.

    A non-finite loss (averaged over ranks, so every rank stops alike) raises the divergence error.
    """
    config, step = run.config, state.step
    loss = mean_over_ranks(state.interval.mean(), run.dist)
    if not math.isfinite(loss):
        raise _diverged(config, step, run.last)
    reps = jet_representation(result.target_reps.float(), result.subjet_mask)
    std, rank = representation_std(reps), effective_rank(reps)
    if std < config.collapse_std or rank < config.collapse_rank:
        log.warning("step %d: the target representation may be collapsing (std %.3g, effective rank %.3g); "
                    "check the EMA schedule (ema_start) and the learning rate", step, std, rank)
    return {"step": step, "epoch": state.cursor.epoch, "loss": loss,
            "lr": lr_at(step - 1, run.steps, config.lr, config.final_lr, run.warmup),
            "momentum": momentum_at(step - 1, run.steps, config.ema_start, config.ema_end),
            "jets_per_s": jets_per_s, "target_std": std, "target_rank": rank}
