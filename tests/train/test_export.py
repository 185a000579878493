"""`jjepa-train export`: the tagger as ONNX taking raw shard arrays, checked with ONNX Runtime against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from jjepa.common.errors import JJepaError
from jjepa.common.shards import read_shard
from jjepa.train.cli import main as cli
from jjepa.train.runners.export import INPUT_NAMES, export
from jjepa.train.runners.predict import predict

S, N = 10, 12  # as the toy fixtures of conftest.py


def run_onnx(path, arrays) -> np.ndarray:
    """Class probabilities of ``arrays`` (a ShardArrays slice) by ONNX Runtime on the CPU."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probs"], {name: getattr(arrays, name) for name in INPUT_NAMES})[0]


@pytest.fixture(scope="module")
def attention_tagger(tmp_path_factory, make_toy_tagger, toy_train, toy_val, toy_test):
    """A tagger with the other embedding and aggregation: constituent attention, class-attention head."""
    out = tmp_path_factory.mktemp("attention-tagger") / "run"
    return make_toy_tagger(out, toy_train, toy_val, toy_test, aggregation="cls_attn", min_steps=5, epochs=0.1,
                               eval_every=5, **{"model.embedding": "attention"})


@pytest.mark.parametrize("which", ["toy_tagger", "attention_tagger"])
def test_onnx_matches_pytorch_on_shard_batches_of_any_size(which, request, toy_test, tmp_path):
    run = request.getfixturevalue(which)
    out = tmp_path / "tagger.onnx"
    description = export(run / "checkpoints" / "best.pt", out, data=toy_test, n_check=64)
    assert description["check"]["max_abs_diff"] <= 1e-4 and description["check"]["n_jets"] == 64
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in model.graph.input)
    # Reference: PyTorch's scores of the same jets, via predict (which equals finetune's test predictions).
    predict(run / "checkpoints" / "best.pt", toy_test, tmp_path / "scores.h5", progress=False)
    import h5py

    with h5py.File(tmp_path / "scores.h5") as f:
        reference = np.stack([f["score_qcd"][...], f["score_top"][...]], axis=1)
    shard = read_shard(toy_test / "shard-00001.h5")
    for lo, hi in ((0, 1), (1, 38), (38, 200)):  # batch sizes 1, 37 and 162 through one graph
        probs = run_onnx(out, shard.take(slice(lo, hi)))
        assert probs.shape == (hi - lo, 2) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, reference[200 + lo:200 + hi], rtol=0, atol=1e-4)


def test_json_describes_what_inference_code_needs(toy_tagger, tmp_path):
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(toy_tagger / "checkpoints" / "best.pt"),
                                      "--out", str(tmp_path / "t.onnx")])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "t.json").read_text())
    assert info["onnx"] == "t.onnx" and info["classes"] == ["qcd", "top"]
    assert [(i["name"], i["dtype"], i["shape"]) for i in info["inputs"]] == [
        ("particles", "float32", ["batch", S, N, 4]), ("particle_mask", "bool", ["batch", S, N]),
        ("subjets", "float32", ["batch", S, 4]), ("subjet_mask", "bool", ["batch", S])]
    assert info["inputs"][0]["features"] == ["pt", "deta", "sin_dphi_half", "energy"]
    assert info["outputs"] == [{"name": "probs", "dtype": "float32", "shape": ["batch", 2],
                                "meaning": "class probabilities (softmax), column k = classes[k]"}]
    assert info["transform"]["inside_graph"] and info["transform"]["log_scale"] == pytest.approx(0.7)
    assert info["cluster"]["algorithm"] == "ca" and info["cluster"]["n_subjets"] == S
    assert info["check"]["jets"] == "synthetic" and info["check"]["max_abs_diff"] <= 1e-4


def test_export_refuses_another_suffix_and_shards_it_cannot_read(toy_tagger, tmp_path):
    with pytest.raises(JJepaError, match=r"name it \*\.onnx"):
        export(toy_tagger / "checkpoints" / "best.pt", tmp_path / "t.pt")
    from jjepa.common.errors import ShardError
    from jjepa.common.testing import write_toy_shards

    write_toy_shards(tmp_path / "big", n_shards=1, jets_per_shard=10, n_subjets=S, n_particles=N + 1, seed=1)
    with pytest.raises(ShardError, match="recluster"):
        export(toy_tagger / "checkpoints" / "best.pt", tmp_path / "t.onnx", data=tmp_path / "big")
    assert not list(tmp_path.glob("t.*"))
