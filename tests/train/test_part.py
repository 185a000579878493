"""The ``part`` mode: the Particle Transformer (weaver-core) trained in the finetuning harness on the same jets."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from jjepa.common.errors import JJepaError
from jjepa.common.testing import write_toy_shards
from jjepa.train.cli import main as cli
from jjepa.train.config import ConfigError, PartConfig, resolve_finetune_config
from jjepa.train.data.part_inputs import FEATURE_NAMES, part_inputs

#: ParT's published input standardisation (the ParT repository's data configs, e.g. ``JetClass_kin.yaml``),
#: written out here rather than imported, so a wrong constant in the module fails the test:
#: (shift, scale) per feature in FEATURE_NAMES order, None for raw; every feature clipped to ±5.
STANDARDISATION = ((1.7, 0.7), (2.0, 0.7), (-4.7, 0.7), (-4.7, 0.7), (0.2, 4.0), None, None)
CLIP = 5.0

S, N = 10, 12  # small jets, as the toy fixtures of conftest.py
#: A CPU-sized ParT: trains in seconds.
TINY = ["part.embed_dim=16", "part.pair_embed_dim=8", "part.num_heads=2", "part.num_layers=1",
        "part.num_cls_layers=1", "part.max_particles=48"]


@pytest.fixture(scope="module")
def toy_test(tmp_path_factory):
    """2 toy shards of 150 jets each, seeded apart from the training and validation toys."""
    folder = tmp_path_factory.mktemp("toy-test")
    write_toy_shards(folder, n_shards=2, jets_per_shard=150, n_subjets=S, n_particles=N, seed=200)
    return folder


# --- inputs ----------------------------------------------------------------------------------------

def _wrap(phi):
    return np.pi - np.mod(np.pi - phi, 2 * np.pi)


def _hand_built_jet(scale: float, eta_shift: float):
    """One jet of 5 massive constituents near φ = ±π, stored in (S=3, N=3) slots out of global pT order.

    Returns the lab-frame constituents (pT, η, φ, E) in falling pT, the shard arrays
    (particles (3, 3, 4), particle_mask (3, 3), jets (6,)) and the jet's (pT, η, φ, E).
    """
    pt = np.array([100.0, 50.0, 10.0, 5.0, 2.0]) * scale
    eta = np.array([0.50, 0.40, 0.70, 0.30, 0.55]) + eta_shift
    phi = np.array([3.10, -3.12, 2.95, 3.05, -3.00])
    mass = np.array([0.14, 0.0, 0.5, 0.0, 0.14])
    energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    jx, jy, jz, je = px.sum(), py.sum(), pz.sum(), energy.sum()
    jet_pt, jet_phi = np.hypot(jx, jy), np.arctan2(jy, jx)
    jet_eta = np.arcsinh(jz / jet_pt)
    rows = np.stack([pt, eta - jet_eta, np.sin(_wrap(phi - jet_phi) / 2), energy], -1)
    particles = np.zeros((3, 3, 4))
    mask = np.zeros((3, 3), bool)
    for (s, n), k in {(0, 0): 1, (0, 1): 3, (1, 0): 0, (1, 1): 4, (2, 0): 2}.items():
        particles[s, n], mask[s, n] = rows[k], True
    jets = np.array([jet_pt, jet_eta, jet_phi, je, np.sqrt(je**2 - jx**2 - jy**2 - jz**2), 5])
    return (pt, eta, phi, energy), (particles, mask, jets), (jet_pt, jet_eta, jet_phi, je)


def _expected_features(lab, jet) -> np.ndarray:
    """(7, 5) the ParT kinematic features by hand, in ``FEATURE_NAMES`` order, standardised as weaver does."""
    pt, eta, phi, energy = lab
    jet_pt, jet_eta, jet_phi, jet_e = jet
    deta, dphi = eta - jet_eta, _wrap(phi - jet_phi)
    raw = {"log_pt": np.log(pt), "log_e": np.log(energy), "log_pt_rel": np.log(pt / jet_pt),
           "log_e_rel": np.log(energy / jet_e), "delta_r": np.hypot(deta, dphi), "delta_eta": deta,
           "delta_phi": dphi}
    return np.stack([raw[name] if norm is None else np.clip((raw[name] - norm[0]) * norm[1], -CLIP, CLIP)
                     for name, norm in zip(FEATURE_NAMES, STANDARDISATION, strict=True)])


def _pair_masses(vectors: np.ndarray) -> np.ndarray:
    """(P, P) invariant masses squared [GeV²] of every two four-vectors (4, P) of (px, py, pz, E)."""
    total = vectors[:, :, None] + vectors[:, None, :]
    return total[3] ** 2 - (total[:3] ** 2).sum(0)


def test_inputs_of_a_hand_built_jet_match_the_features_computed_by_hand():
    jets = [_hand_built_jet(1.0, 0.0), _hand_built_jet(3.0, -1.2)]
    batch = [torch.from_numpy(np.stack([j[1][i] for j in jets])) for i in range(3)]
    inputs = part_inputs(batch[0].float(), batch[1], batch[2].float(), max_particles=8)
    assert inputs.features.shape == (2, 7, 8) and inputs.vectors.shape == (2, 4, 8) and inputs.mask.shape == (2, 1, 8)
    assert inputs.mask[:, 0].tolist() == [[True] * 5 + [False] * 3] * 2
    for b, (lab, _, jet) in enumerate(jets):
        got = inputs.features[b, :, :5].double().numpy()
        np.testing.assert_allclose(got, _expected_features(lab, jet), rtol=1e-4, atol=1e-4)
        pt, eta, phi, energy = lab
        lab_vectors = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), energy])
        vectors = inputs.vectors[b, :, :5].double().numpy()
        # The frame is rotated to the jet axis (φ_jet = 0): pT, pz, E and every pair mass are the lab's.
        np.testing.assert_allclose(np.hypot(vectors[0], vectors[1]), pt, rtol=1e-5)
        np.testing.assert_allclose(vectors[2:], lab_vectors[2:], rtol=1e-4)
        pairs = ~np.eye(5, dtype=bool)  # one constituent's own mass (≤ 0.5 GeV) is below float32's resolution
        np.testing.assert_allclose(_pair_masses(vectors)[pairs], _pair_masses(lab_vectors)[pairs], rtol=1e-3)
        np.testing.assert_allclose(np.arctan2(vectors[1], vectors[0]), _wrap(phi - jet[2]), atol=1e-5)
    assert not inputs.features[:, :, 5:].any() and not inputs.vectors[:, :, 5:].any()


def test_a_short_sequence_keeps_the_hardest_constituents():
    lab, (particles, mask, jets), _ = _hand_built_jet(1.0, 0.0)
    inputs = part_inputs(torch.from_numpy(particles[None]).float(), torch.from_numpy(mask[None]),
                         torch.from_numpy(jets[None]).float(), max_particles=3)
    assert inputs.mask.shape == (1, 1, 3) and inputs.mask.all()
    np.testing.assert_allclose(inputs.vectors[0, 3].numpy(), lab[3][:3], rtol=1e-6)  # E of the 3 hardest


# --- configuration ---------------------------------------------------------------------------------

def test_part_mode_needs_no_checkpoint_and_refuses_a_preset(tmp_path):
    config = resolve_finetune_config({"mode": "part"}, {"part.num_layers": "2", "part.max_particles": "none"})
    assert config.part == PartConfig(num_layers=2, max_particles=None)
    assert PartConfig().embed_dim == 128 and PartConfig().num_layers == 8  # the paper's size by default
    with pytest.raises(ConfigError, match="drop --preset"):
        resolve_finetune_config({"mode": "part", "preset": "tiny"})
    with pytest.raises(ConfigError, match="must divide"):
        resolve_finetune_config({"mode": "part", "part.embed_dim": 30})
    with pytest.raises(ConfigError, match="valid keys in part"):
        resolve_finetune_config({"mode": "part", "part.depth": 2})


def test_missing_weaver_is_one_clear_error(monkeypatch):
    from jjepa.train.model.part import PartTagger

    monkeypatch.setitem(sys.modules, "weaver.nn.model.ParticleTransformer", None)  # import fails
    with pytest.raises(JJepaError, match=r'pip install -e "\.\[baselines\]"'):
        PartTagger(PartConfig(), 2)


# --- training --------------------------------------------------------------------------------------

def _args(toy_train, toy_val, toy_test):
    sets = [f"--set={pair}" for pair in TINY + ["min_steps=40", "eval_every=10", "prefetch=2"]]
    return ["--train", str(toy_train), "--val", str(toy_val), "--test", str(toy_test), "--batch-size", "64",
            "--epochs", "1", "--device", "cpu", "--no-progress", *sets]


def test_cli_part_mode_trains_and_beats_chance(toy_train, toy_val, toy_test, tmp_path):
    out = tmp_path / "part"
    result = CliRunner().invoke(cli, ["finetune", *_args(toy_train, toy_val, toy_test), "--mode", "part",
                                      "--n-labels", "400", "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "part" and metrics["n_train_labels"] == 400
    assert metrics["auc"] > 0.85, metrics  # toy top vs QCD; chance is 0.5
    saved = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert saved["config"]["part"]["embed_dim"] == 16 and saved["config"]["model"] is None
    assert any(k.startswith("net.") for k in saved["classifier"])


def test_scan_and_evaluate_treat_part_as_one_more_mode(toy_train, toy_val, toy_test, tmp_path):
    scan_dir, report = tmp_path / "scan", tmp_path / "report"
    result = CliRunner().invoke(cli, ["scan", *_args(toy_train, toy_val, toy_test), "--modes", "part",
                                      "--fractions", "0.1", "--seeds", "0", "--out", str(scan_dir)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((scan_dir / "part-f0.1-s0" / "metrics.json").read_text())
    assert metrics["mode"] == "part" and metrics["label_fraction"] == pytest.approx(0.1)
    assert metrics["n_train_labels"] == 200  # 10 % of each class of the 2,000 toy training jets
    result = CliRunner().invoke(cli, ["evaluate", str(scan_dir), "--out", str(report)])
    assert result.exit_code == 0, result.output
    assert "part" in json.loads((report / "metrics.json").read_text())
    assert "| part |" in (report / "comparison.md").read_text()


def test_the_classification_layer_gives_fp32_logits_under_bf16_autocast():
    """bf16 logits tie in the high-purity tail where 1/εB at εS = 0.3 is read; the head must run in fp32."""
    from jjepa.train.model.part import PartTagger

    torch.manual_seed(0)
    jets = [_hand_built_jet(1.0, 0.0), _hand_built_jet(3.0, -1.2)]
    batch = [torch.from_numpy(np.stack([j[1][i] for j in jets])) for i in range(3)]
    inputs = part_inputs(batch[0].float(), batch[1], batch[2].float(), max_particles=8)
    model = PartTagger(PartConfig(embed_dim=16, pair_embed_dim=8, num_heads=2, num_layers=1, num_cls_layers=1), 2)
    seen = {}
    model.net.fc.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.eval()(inputs)
    assert logits.dtype == torch.float32
    with torch.autocast("cpu", enabled=False):  # the same layers on the same features, in fp32 throughout
        expected = torch.nn.Sequential.forward(model.net.fc, seen["x"].float())
    assert torch.equal(logits, expected)

