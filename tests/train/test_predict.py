"""`jjepa-train predict`: a finetuned tagger scores any shard folder into .h5, .parquet or .root."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import uproot
from click.testing import CliRunner
from jjepa.common.errors import JJepaError, ShardError
from jjepa.common.schema import ShardAttrs
from jjepa.common.shards import (
    Manifest,
    read_manifest,
    read_shard,
    record_for,
    shard_name,
    write_manifest,
    write_shard,
)
from jjepa.common.testing import write_toy_shards
from jjepa.train.cli import main as cli
from jjepa.train.mechanics.checkpoint import save_checkpoint
from jjepa.train.report.metrics import tagging_metrics
from jjepa.train.runners.predict import output_columns, predict

S, N = 10, 12  # as the toy fixtures of conftest.py


def read_back(path) -> tuple[pd.DataFrame, dict]:
    """The rows and the metadata of a predict output, read with the field's usual readers."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pd.read_parquet(path), json.loads(pq.read_schema(path).metadata[b"jjepa"])
    if path.suffix == ".root":
        with uproot.open(path) as f:
            assert f["jets"].classname == "TTree"
            return f["jets"].arrays(library="pd"), json.loads(str(f["jjepa_metadata"]))
    with h5py.File(path, "r") as f:
        meta = {k: json.loads(v) if k in ("classes", "score_columns", "columns", "shards") else v
                for k, v in f.attrs.items()}
        return pd.DataFrame({name: f[name][...] for name in meta["columns"]}), meta


@pytest.mark.parametrize("suffix", [".h5", ".parquet", ".root"])
def test_scores_in_every_format_equal_finetunes_test_predictions(toy_tagger, toy_test, tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    summary = predict(toy_tagger / "checkpoints" / "best.pt", toy_test, out, batch_size=100, progress=False)
    frame, meta = read_back(out)
    saved = np.load(toy_tagger / "test_predictions.npz")
    classes = tuple(str(c) for c in saved["classes"])
    assert summary["n_jets"] == len(frame) == 400
    assert meta["classes"] == list(classes) and meta["shards"] == ["shard-00000.h5", "shard-00001.h5"]
    assert list(frame.columns) == list(output_columns(classes))
    probs = frame[[f"score_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probs, saved["probs"], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(frame["label"].to_numpy(), saved["labels"])
    metrics = json.loads((toy_tagger / "metrics.json").read_text())
    assert tagging_metrics(frame["label"].to_numpy(), probs, classes)["auc"] == pytest.approx(metrics["auc"], abs=1e-12)
    # Every row points at its jet: the jet columns are that jet's, read from the shard itself.
    shards = [read_shard(toy_test / name) for name in meta["shards"]]
    jets = np.stack([shards[s].jets[r] for s, r in zip(frame["shard"], frame["row"], strict=True)])
    np.testing.assert_array_equal(frame[["jet_pt", "jet_eta", "jet_phi", "jet_mass"]].to_numpy(), jets[:, [0, 1, 2, 4]])
    np.testing.assert_array_equal(frame["jet_nconstituents"].to_numpy(), jets[:, 5].astype(np.int32))
    nsub = np.array([shards[s].subjet_mask[r].sum() for s, r in zip(frame["shard"], frame["row"], strict=True)])
    np.testing.assert_array_equal(frame["jet_nsubjets"].to_numpy(), nsub)
    assert frame["row"].tolist() == list(range(200)) * 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_predict_writes_parquet_and_refuses_an_unknown_suffix(toy_tagger, toy_test, tmp_path):
    checkpoint = str(toy_tagger / "checkpoints" / "best.pt")
    result = CliRunner().invoke(cli, ["predict", "--checkpoint", checkpoint, "--data", str(toy_test),
                                      "--out", str(tmp_path / "s.parquet"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "400 jets scored" in result.output
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == 400
    result = CliRunner().invoke(cli, ["predict", "--checkpoint", checkpoint, "--data", str(toy_test),
                                      "--out", str(tmp_path / "s.csv"), "--no-progress"])
    assert result.exit_code == 1 and "unknown output format '.csv'" in result.output
    assert not (tmp_path / "s.csv").exists()


def test_unlabelled_shards_get_label_minus_one(toy_tagger, toy_test, tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    source = read_manifest(toy_test)
    manifest = Manifest(cluster=source.cluster, classes=())
    for k, record in enumerate(source.shards):
        arrays = read_shard(toy_test / record.file)
        arrays.labels[:] = -1
        path = folder / shard_name(k)
        write_shard(path, arrays, ShardAttrs(cluster=source.cluster, classes=()))
        manifest.shards.append(record_for(path, arrays.labels, (), {}))
    write_manifest(folder, manifest)
    predict(toy_tagger / "checkpoints" / "best.pt", folder, tmp_path / "u.h5", progress=False)
    predict(toy_tagger / "checkpoints" / "best.pt", toy_test, tmp_path / "l.h5", progress=False)
    frame, _ = read_back(tmp_path / "u.h5")
    labelled, _ = read_back(tmp_path / "l.h5")
    assert (frame["label"] == -1).all() and len(frame) == 400
    np.testing.assert_array_equal(frame["score_top"], labelled["score_top"])


def test_shards_of_other_size_are_refused(toy_tagger, tmp_path):
    write_toy_shards(tmp_path / "other", n_shards=1, jets_per_shard=20, n_subjets=S + 2, n_particles=N, seed=5)
    with pytest.raises(ShardError, match=rf"S={S + 2} .*S={S}, N={N}.*--n-subjets {S} --n-particles {N}"):
        predict(toy_tagger / "checkpoints" / "best.pt", tmp_path / "other", tmp_path / "s.h5", progress=False)
    assert not (tmp_path / "s.h5").exists()


def test_shards_of_other_classes_or_clustering_are_refused(toy_tagger, toy_test, tmp_path):
    renamed = tmp_path / "renamed"
    shutil.copytree(toy_test, renamed)
    manifest = json.loads((renamed / "manifest.json").read_text())
    manifest["classes"] = ["qcd", "W"]
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(JJepaError, match=r"classes \['W'\], which the tagger .* does not know"):
        predict(toy_tagger / "checkpoints" / "best.pt", renamed, tmp_path / "s.root", progress=False)
    manifest["classes"] = ["qcd", "top"]
    manifest["cluster"]["radius"] = 0.3
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"radius=0.3.*radius=0.2"):
        predict(toy_tagger / "checkpoints" / "best.pt", renamed, tmp_path / "s.root", progress=False)


def test_an_output_path_that_is_an_input_shard_is_refused(toy_tagger, toy_test, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(toy_test, data)
    before = (data / shard_name(0)).read_bytes()
    with pytest.raises(ShardError, match="a file of the input folder .*would destroy the shards"):
        predict(toy_tagger / "checkpoints" / "best.pt", data, data / shard_name(0), progress=False)
    assert (data / shard_name(0)).read_bytes() == before
    predict(toy_tagger / "checkpoints" / "best.pt", data, data / "scores.h5", progress=False)  # beside them: fine
    assert read_back(data / "scores.h5")[1]["tagger_min_subjets"] == 0


def test_a_file_that_is_no_checkpoint_is_one_clear_line(toy_test, tmp_path):
    result = CliRunner().invoke(cli, ["predict", "--checkpoint", str(toy_test / "manifest.json"), "--data",
                                      str(toy_test), "--out", str(tmp_path / "s.h5"), "--no-progress"])
    assert result.exit_code == 1
    assert "manifest.json: not a readable PyTorch checkpoint (" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_pretraining_checkpoint_is_refused(toy_test, tmp_path):
    save_checkpoint(tmp_path / "last.pt", {"target_encoder": {"w": torch.zeros(1)}, "config": {}})
    with pytest.raises(JJepaError, match="pretraining checkpoint"):
        predict(tmp_path / "last.pt", toy_test, tmp_path / "s.h5", progress=False)


def test_float16_shards_train_and_predict(toy_tagger, toy_test, make_toy_tagger, tmp_path):
    folders = {}
    for split, (n_shards, per_shard, seed) in {"train": (4, 500, 0), "val": (2, 200, 100),
                                               "test": (2, 200, 300)}.items():
        folders[split] = tmp_path / split
        write_toy_shards(folders[split], n_shards=n_shards, jets_per_shard=per_shard, n_subjets=S, n_particles=N,
                         seed=seed, particle_dtype="float16")
    run = make_toy_tagger(tmp_path / "run", folders["train"], folders["val"], folders["test"])
    predict(run / "checkpoints" / "best.pt", folders["test"], tmp_path / "s.parquet", progress=False)
    frame, _ = read_back(tmp_path / "s.parquet")
    saved = np.load(run / "test_predictions.npz")
    np.testing.assert_allclose(frame[["score_qcd", "score_top"]].to_numpy(), saved["probs"], rtol=0, atol=1e-7)
    assert json.loads((run / "metrics.json").read_text())["auc"] > 0.9
    # A tagger trained on float32 shards scores the float16 copies of its test jets almost as it scores them.
    predict(toy_tagger / "checkpoints" / "best.pt", folders["test"], tmp_path / "a.h5", progress=False)
    predict(toy_tagger / "checkpoints" / "best.pt", toy_test, tmp_path / "b.h5", progress=False)
    half, full = read_back(tmp_path / "a.h5")[0], read_back(tmp_path / "b.h5")[0]
    np.testing.assert_allclose(half["score_top"], full["score_top"], atol=1e-3)
    np.testing.assert_array_equal(half["label"], full["label"])
