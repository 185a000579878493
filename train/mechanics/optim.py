"""AdamW with the usual exemptions from weight decay, the warmup + cosine learning-rate schedule, and the
optimizer step both runners take."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def param_groups(module: nn.Module, weight_decay: float, lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups of ``module``'s trainable parameters: decayed weights, and biases, LayerNorm weights
    and learned tokens (every parameter with < 2 dims or a leading dim of 1) without decay."""
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and param.shape[0] > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``model`` with the exemptions of ``param_groups``."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)


def lr_at(step: int, total_steps: int, peak: float, final: float, warmup_steps: int) -> float:
    """Learning rate of ``step`` (0-based): linear warmup to ``peak``, then cosine down to ``final``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return final + (peak - final) * (math.cos(math.pi * progress) + 1) / 2


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (scaled by a group's ``lr_scale``, if any)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   clip_grad: float, params: Iterable[torch.Tensor]) -> None:
    """Backward and step: gradients cleared, ``loss`` backpropagated (scaled by ``scaler`` under fp16, a no-op
    otherwise), the unscaled gradients of ``params`` clipped to norm ``clip_grad`` (0: no clipping), then the
    optimizer step (skipped by the scaler if fp16 gradients overflowed) and the scaler's update."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(optimizer)
    scaler.update()
