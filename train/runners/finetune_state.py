"""The state of a finetuning run (classifier, optimizer, position, best model, early stopping) and its
``checkpoints/last.pt``, from which ``--resume`` continues exactly."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from jjepa.common.errors import JJepaError
from jjepa.train.config import (
    FINETUNE_RESUMABLE_CHANGES,
    FINETUNE_UNREAD_BY_MODE,
    FinetuneConfig,
    config_differences,
    describe_differences,
)
from jjepa.train.data.loader import Cursor
from jjepa.train.mechanics.checkpoint import FinetuneRunCheckpoint, load_checkpoint
from jjepa.train.mechanics.distributed import DistInfo, grad_scaler
from jjepa.train.mechanics.meter import RunningLoss
from jjepa.train.model.classifier import JetClassifier
from jjepa.train.model.part import PartTagger
from jjepa.train.runners.finetune_setup import Prepared, build_classifier, tagger_optimizer
from torch import nn


@dataclass
class FinetuneState:
    """The mutable state of a finetuning run: what ``checkpoints/last.pt`` holds (``FinetuneRunCheckpoint``)."""

    model: JetClassifier | PartTagger
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16's loss scaler; disabled (a no-op) for bf16 and fp32
    running: RunningLoss  # this rank's training losses since the last validation
    best_model: dict
    step: int = 0
    cursor: Cursor = field(default_factory=Cursor)
    bad_evals: int = 0
    validated: list[int] = field(default_factory=list)
    best_step: int = 0
    best_val_loss: float = math.inf
    done: bool = False
    train_seconds: float = 0.0


def build_state(config: FinetuneConfig, data: Prepared, device: torch.device) -> FinetuneState:
    """The seeded classifier (pretrained encoder loaded), its optimizer and gradient scaler, at step 0."""
    model = build_classifier(config, data.model_config, len(data.classes), data.pretrained).to(device)
    return FinetuneState(model=model, optimizer=tagger_optimizer(model, config),
                         scaler=grad_scaler(device, config.precision),  # fp16 only; a no-op for bf16 and fp32
                         running=RunningLoss(device),
                         best_model=copy.deepcopy(model.state_dict()))


def run_checkpoint(state: FinetuneState, data: Prepared, dist: DistInfo, running: list[float]) -> FinetuneRunCheckpoint:
    """What ``last.pt`` holds for ``state`` of the run set up as ``data``; ``running`` is every rank's loss
    sum since the last validation (or rank 0's alone)."""
    return FinetuneRunCheckpoint(
        config=data.resolved, data=data.fingerprints, model=state.model.state_dict(), buffers=_unsaved_buffers(state.model),
        optimizer=state.optimizer.state_dict(),
        scaler=state.scaler.state_dict() if state.scaler.is_enabled() else {}, step=state.step,
        cursor={"epoch": state.cursor.epoch, "offset": state.cursor.offset}, world_size=dist.world_size,
        running_loss=running, running_steps=state.running.steps, bad_evals=state.bad_evals,
        validated=list(state.validated), best_model=state.best_model, best_step=state.best_step,
        best_val_loss=state.best_val_loss, done=state.done, train_seconds=state.train_seconds,
        torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(dist.device) if dist.device.type == "cuda" else None)


def _unsaved_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers a state dict leaves out (``persistent=False``), which still steer training: e.g. weaver's
    ``SequenceTrimmer`` counts forward passes before it starts trimming sequences at random."""
    persistent = set(model.state_dict())
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers() if name not in persistent}


def restore_state(state: FinetuneState, saved: dict, rank: int, device: torch.device) -> None:
    """Load a ``FinetuneRunCheckpoint`` into ``state`` (weights, optimizer, scaler, position, RNG)."""
    state.model.load_state_dict(saved["model"])
    for name, value in saved["buffers"].items():
        state.model.get_buffer(name).copy_(value)
    state.optimizer.load_state_dict(saved["optimizer"])
    if saved["scaler"] and state.scaler.is_enabled():
        state.scaler.load_state_dict(saved["scaler"])
    running = saved["running_loss"]
    state.running.restore(running[rank] if len(running) > rank else running[0], int(saved["running_steps"]))
    state.step, state.cursor = int(saved["step"]), Cursor(**saved["cursor"])
    state.bad_evals = int(saved["bad_evals"])
    state.validated = [int(s) for s in saved["validated"]]
    state.best_model, state.best_step = saved["best_model"], int(saved["best_step"])
    state.best_val_loss, state.done = float(saved["best_val_loss"]), bool(saved["done"])
    state.train_seconds = float(saved["train_seconds"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda_rng"], device)


def check_resumable(resolved: dict, saved: dict, path: Path) -> None:
    """Every resolved field (the model and transform included) must match the checkpoint's, except those of
    ``FINETUNE_RESUMABLE_CHANGES``."""
    differences = config_differences(saved, resolved, FINETUNE_RESUMABLE_CHANGES)
    if differences:
        raise JJepaError(f"cannot resume {path}: its run was made with other settings "
                         f"({describe_differences(differences, there='in the checkpoint')}); start a new run "
                         "(--out) to change them")


def finished_run_differences(folder: Path, config: FinetuneConfig) -> dict[str, tuple]:
    """How ``config`` differs from the run whose ``config.yaml`` is in ``folder`` ({} if there is none), in
    what changes its results (``config_differences``).

    Not compared: what a run may change on resuming (``FINETUNE_RESUMABLE_CHANGES``: device, precision, …),
    what its mode does not read (``FINETUNE_UNREAD_BY_MODE``), and the model and transform where the run takes
    them from its checkpoint (a ``scratch`` run sized by a preset is compared on its own). Files are compared
    by path, not content: a checkpoint or shard folder rewritten in place is not noticed here.
    """
    path = folder / "config.yaml"
    if not path.exists():
        return {}
    stored = yaml.safe_load(path.read_text()) or {}
    wanted = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    ignored = FINETUNE_RESUMABLE_CHANGES | FINETUNE_UNREAD_BY_MODE[config.mode]
    if config.mode == "scratch" and config.preset is not None:
        ignored |= {"checkpoint"}  # the preset, not the checkpoint, gives the architecture
    elif config.mode != "part":
        ignored |= {"transform"}  # taken from the checkpoint (and the model: unset here, so not compared)
    return config_differences(stored, wanted, ignored, new_fields_ok=True)


def open_run(config: FinetuneConfig, out: Path, resume: bool) -> dict | None:
    """The checkpoint to resume (None for a new run); refuses to start over an unfinished run."""
    last = out / "checkpoints" / "last.pt"
    if resume:
        return load_checkpoint(last, kind="finetune_run")
    if last.exists():
        raise JJepaError(f"{out} holds an unfinished finetuning run ({last}); pass --resume to continue it, or "
                         "choose another --out")
    return None
