"""The EMA ("momentum") target encoder: its weights follow the context encoder's, never the gradient.

After each optimizer step, θ_target ← m·θ_target + (1 − m)·θ_context, with the momentum m rising on
a cosine from ``ema_start`` (e.g. 0.996) to ``ema_end`` (1.0) over the run. Without it the two
encoders can agree on a constant representation and the loss collapses to zero.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_at(step: int, total_steps: int, start: float, end: float) -> float:
    """The EMA momentum at ``step`` of ``total_steps``: cosine from ``start`` (step 0) to ``end`` (last step)."""
    progress = min(step / max(total_steps, 1), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def make_target_encoder(context_encoder: nn.Module) -> nn.Module:
    """A frozen copy of the context encoder, the starting point of the EMA."""
    target = copy.deepcopy(context_encoder)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """θ_target ← momentum·θ_target + (1 − momentum)·θ_online, for every parameter (in place)."""
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)
