"""The pieces of a training step shared by both runners: the running-loss meter and the optimizer step."""

from __future__ import annotations

import math

import pytest
import torch
from jjepa.train.mechanics.meter import RunningLoss
from jjepa.train.mechanics.optim import optimizer_step
from torch import nn


def test_running_loss_mean_and_reset():
    meter = RunningLoss(torch.device("cpu"))
    assert math.isnan(meter.mean())
    for value in (0.5, 0.25, 1.0):
        meter.add(torch.tensor(value, requires_grad=True) * 1)
    assert meter.steps == 3 and meter.mean() == pytest.approx(1.75 / 3)
    meter.reset()
    assert meter.steps == 0 and meter.total() == 0.0


def test_running_loss_restored_from_a_checkpoint_continues_bit_for_bit():
    """A resumed run must log exactly the averages of an uninterrupted one: the float64 sum read at a
    checkpoint and restored continues the same accumulation."""
    losses = torch.rand(50, dtype=torch.float32, generator=torch.Generator().manual_seed(0)) * 10
    straight = RunningLoss(torch.device("cpu"))
    for loss in losses:
        straight.add(loss)
    first = RunningLoss(torch.device("cpu"))
    for loss in losses[:17]:
        first.add(loss)
    resumed = RunningLoss(torch.device("cpu"))
    resumed.restore(first.total(), first.steps)
    for loss in losses[17:]:
        resumed.add(loss)
    assert resumed.steps == straight.steps and resumed.mean() == straight.mean()


def _model_and_loss(scale: float):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    loss = scale * model(torch.ones(8, 4)).pow(2).mean()
    return model, loss


def test_optimizer_step_clips_the_gradient_norm():
    model, loss = _model_and_loss(1000.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer_step(loss, optimizer, torch.amp.GradScaler("cpu", enabled=False), 1.0, model.parameters())
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert norm == pytest.approx(1.0, rel=1e-5)


def test_optimizer_step_without_clipping_takes_the_plain_gradient_step():
    model, loss = _model_and_loss(1000.0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer_step(loss, optimizer, torch.amp.GradScaler("cpu", enabled=False), 0.0, model.parameters())
    grads = [p.grad for p in model.parameters()]
    assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])) > 1.0
    for b, p, g in zip(before, model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.1 * g)
