"""`jjepa-train predict` and `export` for Particle Transformer taggers (mode ``part``)."""

from __future__ import annotations

import io
import json
import warnings

import h5py
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from jjepa.common.errors import JJepaError, ShardError
from jjepa.common.shards import read_shard
from jjepa.common.testing import write_toy_shards
from jjepa.train.cli import main as cli
from jjepa.train.data.part_inputs import FEATURE_NAMES, part_inputs
from jjepa.train.mechanics.checkpoint import save_checkpoint
from jjepa.train.report.metrics import tagging_metrics
from jjepa.train.runners.export import PART_INPUT_NAMES, _exportable_atan2, export
from jjepa.train.runners.predict import load_tagger, predict

S, N = 10, 12  # as the toy fixtures of conftest.py
#: A CPU-sized ParT whose sequence (32) is shorter than the S·N = 120 slots, so the pT cut matters.
TINY = {"part.embed_dim": 16, "part.pair_embed_dim": 8, "part.num_heads": 2, "part.num_layers": 1,
        "part.num_cls_layers": 1, "part.max_particles": 32}
BATCH = 64  # finetuning's batch size in make_toy_tagger


@pytest.fixture(scope="module")
def part_tagger(tmp_path_factory, make_toy_tagger, toy_train, toy_val, toy_test):
    """Run folder of a tiny ParT tagger trained for a few steps on the toy shards, tested on ``toy_test``."""
    out = tmp_path_factory.mktemp("part-tagger") / "run"
    return make_toy_tagger(out, toy_train, toy_val, toy_test, mode="part", preset=None, epochs=0.25, min_steps=10, eval_every=5,
                           **TINY)


def _trace(module: torch.nn.Module, args: tuple, names: list[str]) -> onnxruntime.InferenceSession:
    """``module`` exported as export does (TorchScript tracer, dynamic batch), in an ONNX Runtime session."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _exportable_atan2():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, input_names=names, opset_version=17,
                          dynamic_axes={name: {0: "batch"} for name in names})
    return onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])


def test_part_scores_equal_finetunes_test_predictions(part_tagger, toy_test, tmp_path):
    checkpoint = part_tagger / "checkpoints" / "best.pt"
    tagger = load_tagger(checkpoint)
    assert tagger.mode == "part" and tagger.model_config is None and (tagger.n_subjets, tagger.n_particles) == (S, N)
    assert tagger.transform.max_particles == 32 and tagger.part_config.embed_dim == 16
    saved = np.load(part_tagger / "test_predictions.npz")
    classes = [str(c) for c in saved["classes"]]
    summary = predict(checkpoint, toy_test, tmp_path / "s.parquet", batch_size=BATCH, progress=False)
    frame = pd.read_parquet(tmp_path / "s.parquet")
    assert summary["n_jets"] == len(frame) == 400 and summary["classes"] == classes
    probs = frame[[f"score_{c}" for c in classes]].to_numpy()
    # The same batches as finetuning's test predictions: the same numbers.
    np.testing.assert_allclose(probs, saved["probs"], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(frame["label"].to_numpy(), saved["labels"])
    metrics = json.loads((part_tagger / "metrics.json").read_text())
    assert tagging_metrics(frame["label"].to_numpy(), probs, tuple(classes))["auc"] == pytest.approx(metrics["auc"],
                                                                                                    abs=1e-12)
    # Another batch size cuts the sequences to other lengths: equal within float32 rounding.
    predict(checkpoint, toy_test, tmp_path / "s.h5", batch_size=100, progress=False)
    with h5py.File(tmp_path / "s.h5") as f:
        other = np.stack([f[f"score_{c}"][...] for c in classes], axis=1)
    np.testing.assert_allclose(other, saved["probs"], rtol=0, atol=1e-5)


def test_part_tagger_refuses_shards_of_another_size(part_tagger, tmp_path):
    write_toy_shards(tmp_path / "other", n_shards=1, jets_per_shard=20, n_subjets=S, n_particles=N + 3, seed=5)
    with pytest.raises(ShardError, match=rf"N={N + 3} .*--n-subjets {S} --n-particles {N}"):
        predict(part_tagger / "checkpoints" / "best.pt", tmp_path / "other", tmp_path / "s.h5", progress=False)
    with pytest.raises(ShardError, match="recluster"):
        export(part_tagger / "checkpoints" / "best.pt", tmp_path / "t.onnx", data=tmp_path / "other")
    assert not list(tmp_path.glob("s.*")) and not list(tmp_path.glob("t.*"))


def test_onnx_of_a_part_tagger_matches_its_scores_on_batches_of_any_size(part_tagger, toy_test, tmp_path):
    checkpoint = part_tagger / "checkpoints" / "best.pt"
    out = tmp_path / "part.onnx"
    description = export(checkpoint, out, data=toy_test, n_check=64)
    assert description["check"]["max_abs_diff"] <= 1e-4 and description["check"]["n_jets"] == 64
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == list(PART_INPUT_NAMES)
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in model.graph.input)
    predict(checkpoint, toy_test, tmp_path / "scores.h5", batch_size=BATCH, progress=False)
    with h5py.File(tmp_path / "scores.h5") as f:
        reference = np.stack([f["score_qcd"][...], f["score_top"][...]], axis=1)
    shard = read_shard(toy_test / "shard-00001.h5")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for lo, hi in ((0, 1), (1, 38), (38, 200)):  # batch sizes 1, 37 and 162 through one graph
        part = shard.take(slice(lo, hi))
        (probs,) = session.run(["probs"], {name: getattr(part, name) for name in PART_INPUT_NAMES})
        assert probs.shape == (hi - lo, 2) and probs.dtype == np.float32 and np.isfinite(probs).all()
        np.testing.assert_allclose(probs, reference[200 + lo:200 + hi], rtol=0, atol=1e-4)


def test_cli_export_of_a_part_tagger_describes_part(part_tagger, tmp_path):
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(part_tagger / "checkpoints" / "best.pt"),
                                      "--out", str(tmp_path / "t.onnx"), "--check-jets", "32"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "t.json").read_text())
    assert info["model"]["name"] == "ParT" and info["model"]["mode"] == "part"
    assert info["model"]["size"]["embed_dim"] == 16 and info["classes"] == ["qcd", "top"]
    assert [(i["name"], i["shape"]) for i in info["inputs"]] == [
        ("particles", ["batch", S, N, 4]), ("particle_mask", ["batch", S, N]), ("subjets", ["batch", S, 4]),
        ("subjet_mask", ["batch", S]), ("jets", ["batch", 6])]
    assert info["inputs"][4]["read"] == ["pt", "eta", "energy"] and info["inputs"][2]["unused"]
    transform = info["transform"]
    assert transform["features"] == list(FEATURE_NAMES) and transform["max_particles"] == 32
    assert transform["standardisation"]["log_pt"] == {"shift": 1.7, "scale": 0.7}
    assert transform["standardisation"]["delta_eta"] is None
    assert transform["pair_features"] == ["ln_kt", "ln_z", "ln_delta", "ln_m2"] and transform["inside_graph"]
    assert info["check"]["jets"] == "synthetic" and info["check"]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("length", [32, 150])  # shorter than the S·N = 120 slots (a cut), and longer (padding)
def test_part_inputs_in_onnx_runtime_equal_pytorchs_including_ties(toy_test, length):
    """The graph builds ParT's inputs as PyTorch does: the same constituents in the same order, the same
    four-vectors bit for bit; and the order is a stable descending argsort's, even between equal pT."""
    shard = read_shard(toy_test / "shard-00000.h5").take(slice(0, 50))
    particles = shard.particles.copy()
    # Equal pT in other slots (the hardest of subjet 0 repeated in subjet 1, ...), across the cut at 32.
    mask = shard.particle_mask
    for (s, n), (s_from, n_from) in {(1, 0): (0, 0), (2, 3): (3, 0)}.items():
        both = mask[:, s, n] & mask[:, s_from, n_from]
        particles[both, s, n, 0] = particles[both, s_from, n_from, 0]
    n_real = mask.sum(axis=(1, 2))
    assert (n_real > 32).any() and (n_real < 32).any()  # some jets are cut, some padded
    arrays = {"particles": particles, "particle_mask": mask, "jets": shard.jets}

    class Inputs(torch.nn.Module):
        def forward(self, particles, particle_mask, jets):
            built = part_inputs(particles, particle_mask, jets, length)
            return built.features, built.vectors, built.mask

    names = list(arrays)
    session = _trace(Inputs(), tuple(torch.from_numpy(arrays[n][:2]) for n in names), names)
    features, vectors, onnx_mask = session.run(None, arrays)
    expected = part_inputs(*(torch.from_numpy(arrays[n]) for n in names), length)
    assert features.shape == (50, len(FEATURE_NAMES), length)
    np.testing.assert_array_equal(onnx_mask, expected.mask.numpy())
    np.testing.assert_array_equal(vectors, expected.vectors.numpy())
    np.testing.assert_allclose(features, expected.features.numpy(), rtol=0, atol=2e-6)
    # The order: a stable argsort of pT (padding last), cut to the length, gives the same constituents in order.
    keep = min(length, S * N)
    flat = torch.from_numpy(particles.reshape(50, -1, 4))
    key = torch.where(torch.from_numpy(mask.reshape(50, -1)), flat[..., 0], -1.0)
    stable = flat.gather(1, key.argsort(dim=1, descending=True, stable=True)[:, :keep, None].expand(-1, -1, 4))
    real = expected.mask[:, 0, :keep].numpy()
    assert not expected.mask[:, 0, keep:].any()
    np.testing.assert_array_equal(expected.features[:, 5, :keep].numpy(), np.where(real, stable[..., 1], 0))  # Δη
    np.testing.assert_array_equal(expected.vectors[:, 3, :keep].numpy(), np.where(real, stable[..., 3], 0))  # E


def test_exported_atan2_is_zero_at_the_origin_like_torch():
    """Padded particles' four-vectors are 0; the exporter's own atan2 gave NaN there (and NaN probabilities)."""

    class Atan2(torch.nn.Module):
        def forward(self, y, x):
            return torch.atan2(y, x)

    y = np.array([[0.0, 0.0, 1.0, -1.0, 1.0, -2.0, 0.0]], dtype=np.float32)
    x = np.array([[0.0, 1.0, 0.0, -1.0, -1.0, 3.0, -1.0]], dtype=np.float32)
    (onnx_angle,) = _trace(Atan2(), (torch.from_numpy(y), torch.from_numpy(x)), ["y", "x"]).run(None, {"y": y, "x": x})
    torch_angle = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    # Equal up to rounding; (0, -1) is ±π (the same angle), the only point where the formula turns the other way.
    np.testing.assert_allclose(np.abs(onnx_angle), np.abs(torch_angle), rtol=0, atol=1e-6)
    np.testing.assert_allclose(onnx_angle[:, :-1], torch_angle[:, :-1], rtol=0, atol=1e-6)
    assert onnx_angle[0, 0] == 0.0


def test_a_part_checkpoint_without_its_shard_sizes_is_one_clear_error(part_tagger, toy_test, tmp_path):
    state = torch.load(part_tagger / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    state["cluster"] = {"algorithm": "ca", "radius": 0.2}
    save_checkpoint(tmp_path / "old.pt", state)
    with pytest.raises(JJepaError, match=r"old\.pt: a part tagger that does not record .* S, N"):
        predict(tmp_path / "old.pt", toy_test, tmp_path / "s.h5", progress=False)
    assert not (tmp_path / "s.h5").exists()
