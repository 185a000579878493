"""The state of a pretraining run: the models, optimizer, position and running loss, and its checkpoint.

``checkpoints/last.pt`` holds exactly this state (``PretrainCheckpoint``), so a resumed run continues
the uninterrupted one bit for bit on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jjepa.common.errors import JJepaError
from jjepa.train.config import RESUMABLE_CHANGES, PretrainConfig, config_differences, describe_differences
from jjepa.train.data.loader import Cursor
from jjepa.train.mechanics.checkpoint import PretrainCheckpoint
from jjepa.train.mechanics.distributed import grad_scaler
from jjepa.train.mechanics.ema import make_target_encoder
from jjepa.train.mechanics.meter import RunningLoss
from jjepa.train.mechanics.optim import make_optimizer
from jjepa.train.model.jepa import JEPA
from torch import nn


@dataclass
class RunState:
    """The mutable state of a run: the models, the optimizer and the position."""

    model: JEPA
    target_encoder: nn.Module
    optimizer: torch.optim.Optimizer
    step: int
    cursor: Cursor
    #: the losses since the last log row (checkpointed, so a resumed run logs the same averages)
    interval: RunningLoss
    #: fp16's loss scaler (``grad_scaler``; disabled, a no-op, for bf16 and fp32); checkpointed.
    scaler: torch.amp.GradScaler


def check_resumable(config: PretrainConfig, saved: PretrainConfig) -> None:
    """A resumed run must train the same model on the same data with the same schedules.

    Every field must match the checkpoint's except those of ``RESUMABLE_CHANGES`` (output, device,
    logging, validation, ``stop_after``…), so a field added later is protected by default.
    """
    differences = config_differences(saved.to_dict(), config.to_dict(), RESUMABLE_CHANGES)
    if differences:
        raise JJepaError(f"cannot resume: the run was made with other settings "
                         f"({describe_differences(differences, there='in the checkpoint')}); start a new run "
                         "(--out) to change them")


def build_state(config: PretrainConfig, device: torch.device) -> RunState:
    """Fresh models (seeded by ``config.seed``) and optimizer on ``device``."""
    torch.manual_seed(config.seed)
    model = JEPA(config.model).to(device)
    target = make_target_encoder(model.context_encoder)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    return RunState(model, target, optimizer, step=0, cursor=Cursor(), interval=RunningLoss(device),
                    scaler=grad_scaler(device, config.precision))


def restore_state(state: RunState, checkpoint: dict) -> None:
    """Load a checkpoint's weights, optimizer, position and RNG into ``state``."""
    state.model.load_state_dict(checkpoint["model"])
    state.target_encoder.load_state_dict(checkpoint["target_encoder"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.step = int(checkpoint["step"])
    state.cursor = Cursor(**checkpoint["cursor"])
    state.interval.restore(float(checkpoint.get("interval_loss", 0.0)), int(checkpoint.get("interval_steps", 0)))
    torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint.get("scaler") and state.scaler.is_enabled():
        state.scaler.load_state_dict(checkpoint["scaler"])


def checkpoint_dict(state: RunState, config: PretrainConfig, world_size: int, data: dict) -> PretrainCheckpoint:
    """What ``save_checkpoint`` writes for ``state``."""
    return PretrainCheckpoint(
        config=config.to_dict(),
        model=state.model.state_dict(),
        target_encoder=state.target_encoder.state_dict(),
        optimizer=state.optimizer.state_dict(),
        step=state.step,
        cursor={"epoch": state.cursor.epoch, "offset": state.cursor.offset},
        world_size=world_size,
        interval_loss=state.interval.total(),
        interval_steps=state.interval.steps,
        torch_rng=torch.get_rng_state(),
        scaler=state.scaler.state_dict(),
        data=data,
    )
