"""Packed encoding (context subjets gathered to a shorter sequence) equals the slot-aligned masked one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from jjepa.common.testing import toy_jets
from jjepa.train.config import PRESETS
from jjepa.train.data.transform import InputTransform
from jjepa.train.mechanics.ema import make_target_encoder
from jjepa.train.mechanics.masking import mask_generator, sample_targets
from jjepa.train.model.jepa import JEPA, jepa_forward
from jjepa.train.model.packing import gather_slots, pack_plan, plan_jepa, scatter_slots
from torch.utils.flop_counter import FlopCounterMode

S, N = 10, 12


def shuffled_batch(n_jets: int = 48, seed: int = 0):
    """Toy jets of both classes with their subjet slots permuted per jet (real subjets not in front),
    one jet with a single real subjet (no target) and one with none."""
    rng = np.random.default_rng(seed)
    parts = [toy_jets(n_jets // 2, label, S, N, seed=seed + label) for label in (0, 1)]
    raw = {k: torch.from_numpy(np.concatenate([getattr(p, k) for p in parts]))
           for k in ("particles", "particle_mask", "subjets", "subjet_mask")}
    raw["subjet_mask"][0, 1:] = False
    raw["particle_mask"][0, 1:] = False
    raw["subjet_mask"][1] = False
    raw["particle_mask"][1] = False
    order = torch.from_numpy(np.argsort(rng.random((len(raw["subjet_mask"]), S)), axis=1))
    for key, value in raw.items():
        index = order.view(*order.shape, *([1] * (value.dim() - 2))).expand_as(value)
        raw[key] = torch.gather(value, 1, index)
    return InputTransform()(raw["particles"], raw["particle_mask"], raw["subjets"], raw["subjet_mask"])


def test_pack_plan_gathers_selected_slots_in_order_and_scatters_back():
    selected = torch.tensor([[False, True, False, True], [True, False, False, False], [False] * 4])
    plan = pack_plan(selected)
    assert plan.index.shape == (3, 2)
    assert plan.index[0].tolist() == [1, 3] and plan.index[1, 0] == 0
    assert plan.valid.tolist() == [[True, True], [True, False], [False, False]]
    x = torch.arange(12.0).view(3, 4, 1)
    packed = gather_slots(x, plan)
    assert packed[0, :, 0].tolist() == [1.0, 3.0]
    back = scatter_slots(packed, plan, 4)
    assert torch.equal(back, torch.where(selected.unsqueeze(-1), x, 0.0))


@pytest.mark.parametrize("context_sees_targets", [False, True])
@pytest.mark.parametrize("embedding, fourvec", [("mlp", False), ("attention", True)])
def test_packed_loss_and_gradients_equal_the_masked_computation(context_sees_targets, embedding, fourvec):
    torch.manual_seed(0)
    config = replace(PRESETS["tiny"], embedding=embedding, predictor_fourvec=fourvec, n_subjets=S, n_particles=N)
    model = JEPA(config)
    target = make_target_encoder(model.context_encoder)
    inputs = shuffled_batch()
    target_mask = sample_targets(inputs.subjet_mask, 0.3, mask_generator(0, 0, 0))
    plans = plan_jepa(inputs.subjet_mask, target_mask)
    assert plans.context.index.shape[1] < S

    results, grads = [], []
    for pack in (False, True):
        model.zero_grad()
        out = jepa_forward(model, target, inputs, target_mask, context_sees_targets,
                           plans=plans if pack else None, pack=pack)
        out.loss.backward()
        results.append(out)
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})

    masked, packed = results
    assert abs(masked.loss.item() - packed.loss.item()) < 1e-5
    assert torch.allclose(masked.target_reps, packed.target_reps, atol=1e-5)
    assert torch.allclose(masked.predictions, packed.predictions, atol=1e-5)
    assert torch.equal(packed.predictions.abs().sum(-1) > 0, target_mask)
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-4, atol=1e-6), name


def test_jepa_forward_builds_the_plans_itself_when_not_given(monkeypatch):
    from jjepa.train.model import jepa as jepa_module

    built_plans = []
    monkeypatch.setattr(jepa_module, "plan_jepa", lambda *a, **k: built_plans.append(1) or plan_jepa(*a, **k))
    torch.manual_seed(1)
    model = JEPA(replace(PRESETS["tiny"], n_subjets=S, n_particles=N))
    target = make_target_encoder(model.context_encoder)
    inputs = shuffled_batch(seed=3)
    target_mask = sample_targets(inputs.subjet_mask, 0.3, mask_generator(0, 0, 5))
    given = jepa_forward(model, target, inputs, target_mask, False, plans=plan_jepa(inputs.subjet_mask, target_mask))
    assert not built_plans
    built = jepa_forward(model, target, inputs, target_mask, False)
    assert torch.equal(given.loss, built.loss) and built_plans == [1]  # packed, not the masked fallback


def step_flops(model, target, inputs, target_mask, pack: bool) -> int:
    """FLOPs of one forward + backward (FlopCounterMode counts matmuls and attention)."""
    with FlopCounterMode(display=False) as counter:
        jepa_forward(model, target, inputs, target_mask, False, pack=pack).loss.backward()
    return counter.get_total_flops()


def test_packing_cuts_the_flops_of_a_step():
    torch.manual_seed(0)
    model = JEPA(replace(PRESETS["tiny"], n_subjets=S, n_particles=N))
    target = make_target_encoder(model.context_encoder)
    inputs = shuffled_batch()
    target_mask = sample_targets(inputs.subjet_mask, 0.3, mask_generator(0, 0, 0))
    masked, packed = step_flops(model, target, inputs, target_mask, False), step_flops(model, target, inputs,
                                                                                        target_mask, True)
    # The context encoder's share scales with the longest context (< S) instead of S.
    longest = int((inputs.subjet_mask & ~target_mask).sum(1).max())
    assert packed < masked * (longest + 1) / S
