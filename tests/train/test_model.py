"""The J-JEPA model: masks, padding invariance, the EMA formula, the loss, diagnostics and schedules."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from jjepa.common.shards import read_shard
from jjepa.train.config import PRESETS
from jjepa.train.data.transform import InputTransform
from jjepa.train.mechanics.diagnostics import effective_rank, representation_std
from jjepa.train.mechanics.ema import ema_update, make_target_encoder, momentum_at
from jjepa.train.mechanics.masking import mask_generator, sample_targets
from jjepa.train.mechanics.optim import lr_at, make_optimizer
from jjepa.train.model.jepa import JEPA, jepa_forward, jepa_loss

#: Subjet and constituent slots of the toy shards (``conftest.toy_train``).
S, N = 10, 12


def tiny(embedding: str = "mlp", **kw):
    return replace(PRESETS["tiny"], embedding=embedding, n_subjets=S, n_particles=N, **kw)


def raw_batch(folder, n: int = 64) -> dict[str, torch.Tensor]:
    arrays = read_shard(folder / "shard-00001.h5")
    return {name: torch.from_numpy(np.ascontiguousarray(getattr(arrays, name)[:n]))
            for name in ("particles", "particle_mask", "subjets", "subjet_mask")}


def inputs_of(raw):
    return InputTransform()(raw["particles"], raw["particle_mask"], raw["subjets"], raw["subjet_mask"])


# --- masking ---------------------------------------------------------------------------------------

def test_targets_are_a_seeded_fraction_of_the_real_subjets():
    n_real = torch.tensor([1, 2, 3, 5, 7, 10, 0])
    mask = torch.arange(S)[None, :] < n_real[:, None]
    targets = sample_targets(mask, 0.3, mask_generator(0, 0, 5))
    assert not (targets & ~mask).any(), "a padded slot was drawn as a target"
    expected = [0, 1, 1, 2, 2, 3, 0]  # round(0.3 n), at least 1, at most n - 1
    assert targets.sum(1).tolist() == expected
    assert (mask & ~targets).sum(1).tolist() == [1, 1, 2, 3, 5, 7, 0]  # the context keeps the rest
    again = sample_targets(mask, 0.3, mask_generator(0, 0, 5))
    assert torch.equal(targets, again)
    draws = {tuple(sample_targets(mask, 0.3, mask_generator(0, 0, step)).flatten().tolist()) for step in range(20)}
    assert len(draws) > 1, "masks must differ from step to step"
    many = torch.ones(2000, S, dtype=torch.bool)  # 2,000 jets: equal draws on two ranks cannot happen by chance
    rank0, rank1 = (sample_targets(many, 0.3, mask_generator(0, rank, 5)) for rank in (0, 1))
    assert not torch.equal(rank0, rank1), "two DDP ranks drew the same targets"


def test_every_real_subjet_is_drawn_uniformly():
    mask = torch.zeros(4000, S, dtype=torch.bool)
    mask[:, :5] = True
    targets = sample_targets(mask, 0.4, mask_generator(1, 0, 0))
    assert targets[:, 5:].sum() == 0
    freq = targets[:, :5].float().mean(0)
    assert torch.allclose(freq, torch.full((5,), 0.4), atol=0.03)


# --- padding invariance -----------------------------------------------------------------------------

@pytest.mark.parametrize("embedding", ["mlp", "attention"])
@pytest.mark.parametrize("context_sees_targets", [True, False])
def test_padding_never_changes_any_output(toy_train, embedding, context_sees_targets):
    torch.manual_seed(0)
    config = tiny(embedding, predictor_fourvec=True)
    model = JEPA(config).eval()
    target = make_target_encoder(model.context_encoder)
    raw = raw_batch(toy_train)
    assert (~raw["particle_mask"][raw["subjet_mask"]]).any() and (~raw["subjet_mask"]).any()
    garbage = {k: v.clone() for k, v in raw.items()}
    noise = torch.randn(garbage["particles"].shape) * 100
    garbage["particles"] = torch.where(raw["particle_mask"].unsqueeze(-1), raw["particles"], noise)
    sub_noise = torch.randn(garbage["subjets"].shape) * 100
    garbage["subjets"] = torch.where(raw["subjet_mask"].unsqueeze(-1), raw["subjets"], sub_noise)
    targets = sample_targets(raw["subjet_mask"], 0.3, mask_generator(0, 0, 0))
    with torch.no_grad():
        clean = jepa_forward(model, target, inputs_of(raw), targets, context_sees_targets)
        dirty = jepa_forward(model, target, inputs_of(garbage), targets, context_sees_targets)
    torch.testing.assert_close(dirty.target_reps, clean.target_reps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dirty.predictions, clean.predictions, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dirty.loss, clean.loss)
    assert (clean.target_reps[~raw["subjet_mask"]] == 0).all()
    assert (clean.predictions[~targets] == 0).all()


def test_input_masking_hides_the_targets_from_the_context_encoder(toy_train):
    """With context_sees_targets=False, changing a target subjet's constituents changes no prediction."""
    torch.manual_seed(0)
    model = JEPA(tiny()).eval()
    raw = raw_batch(toy_train)
    targets = sample_targets(raw["subjet_mask"], 0.3, mask_generator(0, 0, 0))
    changed = {k: v.clone() for k, v in raw.items()}
    changed["particles"][targets] *= 1.7
    with torch.no_grad():
        hidden = [model(inputs_of(r), targets, False) for r in (raw, changed)]
        seen = [model(inputs_of(r), targets, True) for r in (raw, changed)]
    torch.testing.assert_close(hidden[0], hidden[1])
    assert not torch.allclose(seen[0], seen[1]), "the paper's default must let the encoder see the targets"


# --- EMA, loss, schedules, diagnostics --------------------------------------------------------------

def test_ema_update_is_the_formula():
    torch.manual_seed(0)
    online = JEPA(tiny()).context_encoder
    target = make_target_encoder(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update(target, online, 0.9)
    for name, value in target.state_dict().items():
        torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * online.state_dict()[name])
    assert not any(p.requires_grad for p in target.parameters())


def test_momentum_and_learning_rate_schedules():
    assert momentum_at(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert momentum_at(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert lr_at(0, 100, 1e-3, 0.0, 10) == pytest.approx(1e-4)
    assert lr_at(9, 100, 1e-3, 0.0, 10) == pytest.approx(1e-3)
    assert lr_at(55, 100, 1e-3, 0.0, 10) == pytest.approx(5e-4)
    assert lr_at(100, 100, 1e-3, 1e-6, 10) == pytest.approx(1e-6)


def test_loss_is_the_mean_squared_error_over_real_targets():
    pred = torch.zeros(2, 3, 4)
    target = torch.zeros(2, 3, 4)
    target[0, 1] = 2.0   # a target: counts, error 4 per dimension
    target[1, 2] = 10.0  # not a target: ignored
    mask = torch.tensor([[False, True, False], [True, False, False]])
    assert float(jepa_loss(pred, target, mask)) == pytest.approx((4.0 + 0.0) / 2)


def test_no_weight_decay_on_biases_norms_and_tokens():
    model = JEPA(tiny("attention"))
    decayed, free = make_optimizer(model, 1e-3, 0.05).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.05 and free["weight_decay"] == 0.0
    free_names = {names[id(p)] for p in free["params"]}
    assert "predictor.mask_token" in free_names and "context_encoder.embedding.cls_token" in free_names
    assert all(n.endswith(("bias", "token")) or ".norm" in n for n in free_names)
    assert all(p.ndim == 2 for p in decayed["params"])


def test_collapse_diagnostics():
    torch.manual_seed(0)
    spread = torch.randn(512, 16)
    assert effective_rank(spread) == pytest.approx(16, rel=0.1)
    assert representation_std(spread) == pytest.approx(1.0, rel=0.1)
    line = torch.randn(512, 1) * torch.ones(1, 16)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    constant = torch.ones(512, 16)
    assert effective_rank(constant) == 0.0 and representation_std(constant) == 0.0


def test_one_target_per_slot_is_predicted_in_a_single_pass(toy_train):
    """All targets of a jet come out of one call, and a jet's predictions do not depend on the others in the batch."""
    torch.manual_seed(0)
    model = JEPA(tiny())
    raw = raw_batch(toy_train, 8)
    targets = sample_targets(raw["subjet_mask"], 0.5, mask_generator(0, 0, 0))
    out = model(inputs_of(raw), targets, True)
    assert out.shape == (8, S, PRESETS["tiny"].embed_dim)
    assert (out[targets].abs().sum(-1) > 0).all()
    alone = model(inputs_of({k: v[:1] for k, v in raw.items()}), targets[:1], True)
    torch.testing.assert_close(alone, out[:1], rtol=1e-5, atol=1e-6)
