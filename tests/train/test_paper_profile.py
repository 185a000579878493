"""The paper profile's switches: hardest-subjet targets, encoder positions, the subjet-count filter,
and ``configs/paper.yaml`` resolving to the values of the reference code it cites."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from jjepa.common.errors import ShardError
from jjepa.common.shards import read_shard
from jjepa.train.cli import _yaml_section
from jjepa.train.config import (
    PRESETS,
    ConfigError,
    config_from_dict,
    resolve_finetune_config,
    resolve_pretrain_config,
)
from jjepa.train.data.loader import ShardSet
from jjepa.train.data.transform import InputTransform
from jjepa.train.mechanics.ema import make_target_encoder
from jjepa.train.mechanics.masking import mask_generator, sample_targets, target_pool
from jjepa.train.model.subjet_transformer import SubjetTransformer
from jjepa.train.runners.finetune import finetune
from jjepa.train.runners.pretrain import pretrain

PAPER_YAML = Path(__file__).resolve().parents[2] / "configs" / "paper.yaml"


# --- target selection ------------------------------------------------------------------------------

def _masks(n_jets: int, n_slots: int, seed: int) -> torch.Tensor:
    """(B, S) subjet masks with 0..S real subjets, mostly contiguous from slot 0, some with holes."""
    rng = np.random.default_rng(seed)
    n_real = rng.integers(0, n_slots + 1, n_jets)
    mask = np.arange(n_slots)[None, :] < n_real[:, None]
    holes = rng.random((n_jets, n_slots)) < 0.1
    mask[: n_jets // 4] &= ~holes[: n_jets // 4]
    return torch.from_numpy(mask)


def _old_sample_targets(subjet_mask, fraction, generator):
    """The draw of ``random`` before ``selection`` existed, to pin it bit for bit."""
    n_real = subjet_mask.sum(dim=1)
    n_target = torch.minimum(torch.floor(fraction * n_real + 0.5).long().clamp(min=1), n_real - 1).clamp(min=0)
    scores = torch.where(subjet_mask, torch.rand(subjet_mask.shape, generator=generator), 2.0)
    return scores.argsort(dim=1).argsort(dim=1) < n_target.unsqueeze(1)


def test_hardest_targets_stay_in_the_pool_of_real_subjets_and_the_context_is_the_rest():
    mask = _masks(4000, 20, seed=1)
    pool = target_pool(mask, 10)
    targets = sample_targets(mask, 0.3, mask_generator(0, 0, 0), "hardest", 10)
    context = mask & ~targets
    n_real, n_target = mask.sum(1), targets.sum(1)
    assert not (targets & ~mask).any(), "a padded slot became a target"
    assert not (targets & ~pool).any(), "a target outside the 10 hardest real subjets"
    assert torch.equal(context | targets, mask) and not (context & targets).any()
    # The pool is the first 10 real slots (slots are pT-ordered), holes skipped.
    assert torch.equal(pool.sum(1), n_real.clamp(max=10))
    first_ten = mask.cumsum(1) <= 10
    assert torch.equal(pool, mask & first_ten)
    # As many targets as ``random`` draws (0.3 of the real subjets), capped by the pool; a context is left.
    expected = torch.minimum(torch.floor(0.3 * n_real + 0.5).long().clamp(min=1), n_real - 1).clamp(min=0)
    assert torch.equal(n_target, torch.minimum(expected, pool.sum(1)))
    assert ((context.sum(1) >= 1) | (n_real == 0)).all()
    # Soft subjets beyond the pool are context whenever they are real.
    beyond = mask & ~pool
    assert beyond.any() and torch.equal(context & beyond, beyond)
    # Every pool slot is drawn sometimes: the draw is random within the pool, not the hardest few.
    full = mask.sum(1) == 20
    assert (targets[full][:, :10].sum(0) > 0).all() and not targets[full][:, 10:].any()


def test_random_selection_is_unchanged():
    mask = _masks(500, 20, seed=2)
    new = sample_targets(mask, 0.3, mask_generator(3, 1, 7))
    assert torch.equal(new, _old_sample_targets(mask, 0.3, mask_generator(3, 1, 7)))
    # With a pool at least as large as the jets, hardest draws from the same candidates as random.
    assert torch.equal(sample_targets(mask, 0.3, mask_generator(3, 1, 7), "hardest", 20), new)
    with pytest.raises(ValueError, match="selection"):
        sample_targets(mask, 0.3, mask_generator(0, 0, 0), "softest")


def test_target_selection_is_checked():
    with pytest.raises(ConfigError, match="target_selection"):
        resolve_pretrain_config({"steps": 1, "target_selection": "softest"})
    with pytest.raises(ConfigError, match="min_subjets"):
        resolve_pretrain_config({"steps": 1, "min_subjets": -1})


# --- encoder positions -----------------------------------------------------------------------------

def _encoder(positions: bool) -> SubjetTransformer:
    torch.manual_seed(0)
    config = replace(PRESETS["tiny"], encoder_positions=positions, n_subjets=6, n_particles=5)
    return SubjetTransformer(config).eval()


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, s, n = 8, 6, 5
    subjet_mask = torch.arange(s)[None, :] < torch.tensor([6, 5, 4, 3, 6, 2, 5, 4])[:, None]
    particle_mask = (torch.arange(n)[None, None, :] < 3) & subjet_mask[..., None]
    pt = torch.rand(b, s, n, generator=g) * 50 + 1
    particles = torch.stack([pt, torch.randn(b, s, n, generator=g) * 0.3, torch.randn(b, s, n, generator=g) * 0.2,
                             pt * 1.5], -1)
    sub_pt = torch.rand(b, s, generator=g) * 300 + 20
    subjets = torch.stack([sub_pt, torch.randn(b, s, generator=g) * 0.3, torch.randn(b, s, generator=g) * 0.2,
                           sub_pt * 1.5], -1)
    return particles, particle_mask, subjets, subjet_mask


def _encode(encoder, particles, particle_mask, subjets, subjet_mask):
    with torch.no_grad():
        return encoder(InputTransform()(particles, particle_mask, subjets, subjet_mask))


def test_encoder_positions_move_the_output_with_the_subjet_positions_only():
    on, off = _encoder(True), _encoder(False)
    particles, particle_mask, subjets, subjet_mask = _inputs()
    moved = subjets.clone()
    moved[..., 1:3] += 0.1                            # the subjets' (Δη, sin(Δφ/2)) change
    rescaled = subjets.clone()
    rescaled[..., 0] *= 2.0                           # their pT and E change, positions do not
    rescaled[..., 3] *= 3.0
    base = _encode(on, particles, particle_mask, subjets, subjet_mask)
    real = subjet_mask.unsqueeze(-1).expand_as(base)
    assert not torch.allclose(_encode(on, particles, particle_mask, moved, subjet_mask)[real], base[real], atol=1e-4)
    assert torch.equal(_encode(on, particles, particle_mask, rescaled, subjet_mask), base)
    assert torch.equal(_encode(on, particles, particle_mask, subjets.clone(), subjet_mask), base)
    # Off (the default): the encoder does not read the subjet positions at all.
    plain = _encode(off, particles, particle_mask, subjets, subjet_mask)
    assert torch.equal(_encode(off, particles, particle_mask, moved, subjet_mask), plain)
    # The target encoder is a copy of the context encoder: the same position module, the same output.
    target = make_target_encoder(on)
    assert target.position_embed is not None
    assert torch.equal(_encode(target, particles, particle_mask, moved, subjet_mask),
                       _encode(on, particles, particle_mask, moved, subjet_mask))


def test_checkpoints_from_before_the_switches_still_load():
    on, off = _encoder(True), _encoder(False)
    assert any(k.startswith("position_embed.") for k in on.state_dict())
    assert not any(k.startswith("position_embed.") for k in off.state_dict())
    saved = resolve_pretrain_config({"steps": 5, "preset": "tiny"}).to_dict()
    for key in ("target_selection", "target_pool", "min_subjets"):
        del saved[key]
    del saved["model"]["encoder_positions"]
    config = config_from_dict(saved)
    assert not config.model.encoder_positions and config.target_selection == "random" and config.min_subjets == 0
    _encoder(False).load_state_dict(off.state_dict())


# --- the subjet-count filter -----------------------------------------------------------------------

def _labels(folder) -> list[np.ndarray]:
    shards = ShardSet(folder)
    return [read_shard(shards.folder / r.file).labels for r in shards.manifest.shards]


def _real_subjets(folder) -> list[np.ndarray]:
    shards = ShardSet(folder)
    return [read_shard(shards.folder / r.file).subjet_mask.sum(1) for r in shards.manifest.shards]


def test_min_subjets_drops_exactly_the_jets_below_the_threshold(toy_train):
    counts = _real_subjets(toy_train)
    threshold = 6
    shards = ShardSet(toy_train)
    kept = shards.with_min_subjets(threshold)
    assert kept.n_jets == sum(int((c >= threshold).sum()) for c in counts)
    assert 0 < kept.n_jets < shards.n_jets
    for rows, c in zip(kept.index, counts, strict=True):
        assert np.array_equal(rows, np.flatnonzero(c >= threshold))
    assert shards.with_min_subjets(0) is shards
    # A label subset of the filtered jets picks among them, never a dropped jet.
    sub = kept.select([rows[::3] for rows in [np.arange(n) for n in kept.lengths]])
    for rows, c in zip(sub.index, counts, strict=True):
        assert (c[rows] >= threshold).all()
    with pytest.raises(ShardError, match="min_subjets"):
        shards.with_min_subjets(shards.n_subjets + 1)


def test_paper_switches_pretrain_and_finetune_and_count_the_jets_kept(toy_train, toy_val, toy_test, tmp_path):
    threshold = 6
    n_train = sum(int((c >= threshold).sum()) for c in _real_subjets(toy_train))
    n_val = sum(int((c >= threshold).sum()) for c in _real_subjets(toy_val))
    n_test = sum(int((c >= threshold).sum()) for c in _real_subjets(toy_test))
    config = resolve_pretrain_config({
        "data": str(toy_train), "val": str(toy_val), "out": str(tmp_path / "pre"), "preset": "tiny", "steps": 4,
        "batch_size": 32, "log_every": 2, "val_every": 2, "val_batches": 2, "device": "cpu", "prefetch": 2,
        "model.encoder_positions": True, "target_selection": "hardest", "target_pool": 4,
        "min_subjets": threshold, "context_sees_targets": True})
    metrics = pretrain(config, progress=False)
    saved = json.loads((tmp_path / "pre" / "metrics.json").read_text())
    assert saved["n_train_jets"] == metrics["n_train_jets"] == n_train
    assert saved["n_val_jets"] == n_val and np.isfinite(saved["loss"])

    checkpoint = tmp_path / "pre" / "checkpoints" / "last.pt"
    ft = resolve_finetune_config({
        "train": str(toy_train), "val": str(toy_val), "test": str(toy_test), "out": str(tmp_path / "ft"),
        "checkpoint": str(checkpoint), "batch_size": 64, "epochs": 1, "min_steps": 4, "eval_every": 2,
        "device": "cpu", "prefetch": 2, "min_subjets": threshold, "label_fraction": 0.5})
    metrics = finetune(ft, progress=False)
    saved = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert saved["n_train_jets"] == n_train and saved["n_val_jets"] == n_val and saved["n_test_jets"] == n_test
    assert saved["n_test"] == n_test
    per_class = np.bincount(np.concatenate([labels[count >= threshold] for labels, count in
                                            zip(_labels(toy_train), _real_subjets(toy_train), strict=True)]))
    assert metrics["n_train_labels"] == sum(max(1, int(np.floor(0.5 * c + 0.5))) for c in per_class)


# --- configs/paper.yaml ----------------------------------------------------------------------------

#: The reference's values (ucsd-hep-ex/J-JEPA), as configs/paper.yaml cites them.
REFERENCE_PRETRAIN = {
    # options/ViT_L.json
    "model.embed_dim": 1024, "model.depth": 24, "model.n_heads": 16, "model.mlp_ratio": 1.0,
    "model.predictor_dim": 512, "model.predictor_depth": 12, "model.predictor_heads": 16,
    "epochs": 300.0, "lr": 1e-4, "weight_decay": 0.01, "ema_start": 0.99,
    # src/models/jjepa.py, src/util/positional_embedding.py
    "model.encoder_positions": True, "context_sees_targets": True,
    # src/models/train_model.py
    "mask_fraction": 0.3, "batch_size": 256, "ema_end": 1.0, "warmup_fraction": 0.0, "final_lr": 0.0,
    "clip_grad": 0.0, "target_selection": "random",
    # src/dataset/JetDataset.py filter_good_jets: the >= 10-subjet jet filter
    "min_subjets": 10,
}
#: src/evaluation/finetune.py
REFERENCE_FINETUNE = {
    "mode": "finetune", "encoder": "context", "aggregation": "flatten", "epochs": 300.0, "batch_size": 32,
    "lr": 1e-4, "encoder_lr_scale": 0.01, "final_lr": 1e-4, "warmup_fraction": 0.0, "weight_decay": 0.0,
    "min_subjets": 10,
}


def _value(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def test_paper_yaml_resolves_to_the_reference_values():
    pretrain_config = resolve_pretrain_config(_yaml_section(str(PAPER_YAML), "pretrain"), {"data": "d", "out": "o"})
    for key, value in REFERENCE_PRETRAIN.items():
        assert _value(pretrain_config, key) == value, key
    assert pretrain_config.preset == "paper" and pretrain_config.model.embedding == "mlp"
    finetune_config = resolve_finetune_config(_yaml_section(str(PAPER_YAML), "finetune"), {"checkpoint": "c.pt"})
    for key, value in REFERENCE_FINETUNE.items():
        assert _value(finetune_config, key) == value, key
    # Every value is cited: each key line of the file carries a comment or follows one.
    text = PAPER_YAML.read_text()
    for key in list(REFERENCE_PRETRAIN) + list(REFERENCE_FINETUNE):
        assert f"{key.split('.')[-1]}:" in text, key
    assert text.count("ViT_L.json") >= 8 and "train_model.py" in text and "finetune.py" in text


# --- the ablation's variants (bench/label_efficiency.py --ablation) --------------------------------

def test_every_ablation_variant_flips_exactly_one_switch_of_its_reference(monkeypatch):
    monkeypatch.syspath_prepend(str(PAPER_YAML.parents[1] / "bench"))
    label_efficiency = pytest.importorskip("label_efficiency")
    ours = {"encoder_positions": "false", "target_selection": "random", "context_sees_targets": "false",
            "mlp_ratio": "2.0", "min_subjets": "0"}
    variants = label_efficiency.ablation_variants(ours)
    assert variants["ours"] == ({}, {}, None)
    paper_pre, paper_ft, _ = variants["paper"]
    assert paper_pre == {"model.encoder_positions": "true", "context_sees_targets": "true", "model.mlp_ratio": "1.0",
                         "min_subjets": "10"}, "the paper's code draws targets at random: not a departure"
    assert paper_ft == {"min_subjets": "10"}
    # each departure flipped from ours and from the paper, and each option (hardest targets) from ours
    assert set(variants) == {"ours", "paper", "ours+target_selection"} | {
        f"{side}{name}" for side in ("ours+", "paper-") for name in ours if name != "target_selection"}
    assert variants["ours+target_selection"] == ({"target_selection": "hardest"}, {}, "ours")
    for name, (pre, ft, reference) in variants.items():
        if reference is None:
            continue
        ref_pre = variants[reference][0]
        differing = {k for k in set(pre) | set(ref_pre) if pre.get(k) != ref_pre.get(k)}
        assert len(differing) == 1, (name, differing)
        assert name.split("+")[-1].split("-")[-1] in next(iter(differing))
        assert ("min_subjets" in ft) == (pre.get("min_subjets") == "10")
