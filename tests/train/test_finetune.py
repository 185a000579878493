"""Finetuning, label subsets, the scan and embeddings: honest metrics on held-out jets."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from jjepa.common.errors import JJepaError
from jjepa.common.shards import read_shard
from jjepa.train.cli import main as cli
from jjepa.train.config import ConfigError, config_from_dict, resolve_finetune_config
from jjepa.train.data.loader import ShardSet
from jjepa.train.data.subsets import stratified_subset
from jjepa.train.mechanics.checkpoint import load_checkpoint, save_checkpoint
from jjepa.train.model.classifier import JetClassifier
from jjepa.train.model.subjet_transformer import SubjetTransformer, jet_representation
from jjepa.train.runners import scan as scan_module
from jjepa.train.runners.finetune import finetune
from jjepa.train.runners.scan import scan
from sklearn.metrics import roc_auc_score


def config_for(splits, out, checkpoint=None, **kw):
    base = {"train": str(splits["train"]), "val": str(splits["val"]), "test": str(splits["test"]),
            "out": str(out), "checkpoint": None if checkpoint is None else str(checkpoint), "batch_size": 64,
            "epochs": 1, "min_steps": 10, "eval_every": 5, "device": "cpu", "prefetch": 2}
    return resolve_finetune_config({**base, **kw})


# --- label subsets ---------------------------------------------------------------------------------

def test_stratified_subset_is_seeded_and_keeps_class_shares():
    labels = [np.array([0] * 700 + [1] * 300), np.array([1] * 500 + [2] * 10)]
    chosen = stratified_subset(labels, seed=3, fraction=0.1)
    again = stratified_subset(labels, seed=3, fraction=0.1)
    other = stratified_subset(labels, seed=4, fraction=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(chosen, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(chosen, other, strict=True))
    picked = np.concatenate([lab[idx] for lab, idx in zip(labels, chosen, strict=True)])
    assert np.bincount(picked).tolist() == [70, 80, 1]  # round(0.1 n) per class, at least one
    assert all(np.all(np.diff(idx) > 0) for idx in chosen)
    by_count = stratified_subset(labels, seed=0, n_labels=151)
    assert np.bincount(np.concatenate([lab[idx] for lab, idx in zip(labels, by_count, strict=True)])).tolist() == \
        [70, 80, 1]


def test_a_label_fraction_rounds_each_class_half_up():
    labels = [np.repeat([0, 1], [7, 5])]
    chosen = stratified_subset(labels, seed=2, fraction=0.5)
    assert np.bincount(labels[0][chosen[0]]).tolist() == [4, 3]  # 3.5 → 4, 2.5 → 3


@pytest.mark.parametrize(("counts", "n_labels", "per_class"), [
    ([300, 300], 3, [2, 1]), ([300, 300], 5, [3, 2]), ([300, 300], 599, [300, 299]), ([300, 300], 600, [300, 300]),
    ([1000, 1, 1], 3, [1, 1, 1]), ([1000, 1, 1], 10, [8, 1, 1]), ([5, 3, 2], 7, [4, 2, 1]),
])
def test_n_labels_keeps_exactly_that_many_jets(counts, n_labels, per_class):
    labels = [np.repeat(np.arange(len(counts)), counts)]
    chosen = stratified_subset(labels, seed=1, n_labels=n_labels)
    assert np.bincount(labels[0][chosen[0]], minlength=len(counts)).tolist() == per_class


def test_n_labels_below_the_number_of_classes_is_refused():
    with pytest.raises(JJepaError, match="n_labels is 1 but the training jets hold 2 classes"):
        stratified_subset([np.array([0, 1, 0, 1])], seed=0, n_labels=1)


def test_unlabelled_training_jets_are_refused():
    with pytest.raises(JJepaError, match="unlabelled"):
        stratified_subset([np.array([0, 1, -1])], seed=0, fraction=0.5)


# --- finetuning ------------------------------------------------------------------------------------

def test_short_finetune_on_simulated_jets_separates_top_from_qcd(simulated_splits, pretrained, tmp_path,
                                                                    check_figure):
    config = config_for(simulated_splits, tmp_path / "ft", pretrained, epochs=8, eval_every=10, lr=2e-3,
                        encoder_lr_scale=1.0)
    metrics = finetune(config, progress=False)
    assert metrics["auc"] > 0.8, metrics
    assert metrics["n_test"] == 400 and metrics["n_train_labels"] == 1200
    assert {"accuracy", "rej_at_50", "rej_at_30", "mode", "seed", "label_fraction"} <= set(metrics)
    saved = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert saved["auc"] == metrics["auc"]
    with open(tmp_path / "ft" / "roc.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) > 10
    check_figure(tmp_path / "ft" / "roc.png")


def test_label_fraction_reduces_training_only(simulated_splits, pretrained, tmp_path):
    metrics = finetune(config_for(simulated_splits, tmp_path / "ft", pretrained, label_fraction=0.05,
                                  mode="freeze"), progress=False)
    assert metrics["n_train_labels"] == 60 and metrics["label_fraction"] == pytest.approx(0.05)
    assert metrics["n_test"] == 400


def test_freeze_leaves_the_encoder_bit_for_bit_unchanged(simulated_splits, pretrained, tmp_path):
    finetune(config_for(simulated_splits, tmp_path / "probe", pretrained, mode="freeze", lr=0.05), progress=False)
    classifier = load_checkpoint(tmp_path / "probe" / "checkpoints" / "best.pt")["classifier"]
    encoder = load_checkpoint(pretrained)["target_encoder"]
    for name, value in encoder.items():
        assert torch.equal(classifier[f"encoder.{name}"], value), name


def test_finetune_mode_moves_the_encoder_and_can_start_from_the_context_encoder(simulated_splits, pretrained,
                                                                               tmp_path):
    finetune(config_for(simulated_splits, tmp_path / "ft", pretrained, encoder="context", encoder_lr_scale=1.0),
             progress=False)
    classifier = load_checkpoint(tmp_path / "ft" / "checkpoints" / "best.pt")["classifier"]
    context = load_checkpoint(pretrained)["model"]
    changed = [n for n, v in context.items() if n.startswith("context_encoder.")
               and not torch.equal(classifier[n.replace("context_encoder.", "encoder.")], v)]
    assert changed, "finetune mode must train the encoder"


def test_scratch_loads_nothing(simulated_splits, pretrained, tmp_path, monkeypatch):
    from jjepa.train.runners import finetune_setup

    def refuse(*args, **kwargs):
        raise AssertionError("scratch mode loaded weights")

    monkeypatch.setattr(finetune_setup, "load_encoder", refuse)
    config = config_for(simulated_splits, tmp_path / "scratch", pretrained, mode="scratch")
    metrics = finetune(config, progress=False)
    assert metrics["mode"] == "scratch"
    # Its initial encoder is a fresh seeded one, nothing of the checkpoint's.
    state = load_checkpoint(pretrained)
    model_config = config_from_dict(state["config"]).model
    built = finetune_setup.build_classifier(config, model_config, 2, state).state_dict()
    torch.manual_seed(config.seed)
    fresh = JetClassifier(model_config, 2, config.aggregation).state_dict()
    assert all(torch.equal(built[k], fresh[k]) for k in fresh)
    assert not any(torch.equal(built[f"encoder.{k}"], v) for k, v in state["target_encoder"].items()
                   if v.dtype.is_floating_point and v.std() > 0)
    stored = load_checkpoint(tmp_path / "scratch" / "checkpoints" / "best.pt")["config"]["model"]
    assert stored == load_checkpoint(pretrained)["config"]["model"]
    with_preset = finetune(config_for(simulated_splits, tmp_path / "preset", mode="scratch", preset="tiny",
                                      **{"model.depth": 1}), progress=False)
    assert with_preset["mode"] == "scratch"


def test_finetune_configuration_errors(simulated_splits, pretrained, tmp_path):
    with pytest.raises(ConfigError, match="needs --checkpoint"):
        config_for(simulated_splits, tmp_path, mode="finetune")
    with pytest.raises(ConfigError, match="drop --preset"):
        config_for(simulated_splits, tmp_path, pretrained, mode="freeze", preset="tiny")
    with pytest.raises(ConfigError, match="at most one"):
        config_for(simulated_splits, tmp_path, pretrained, label_fraction=0.1, n_labels=10)
    broken = load_checkpoint(pretrained)
    broken["target_encoder"] = {k: v for k, v in broken["target_encoder"].items() if "blocks.0." not in k}
    save_checkpoint(tmp_path / "broken.pt", {k: v for k, v in broken.items() if k != "format"})
    with pytest.raises(JJepaError, match="missing from the checkpoint"):
        finetune(config_for(simulated_splits, tmp_path / "x", tmp_path / "broken.pt"), progress=False)


# --- scan and embed --------------------------------------------------------------------------------

def test_scan_writes_the_grid_and_skips_finished_cells(simulated_splits, pretrained, tmp_path, monkeypatch,
                                                       check_figure):
    base = config_for(simulated_splits, tmp_path / "unused", pretrained)
    rows = scan(base, [0.05, 1.0], ["freeze", "scratch"], [0, 1], tmp_path / "scan", progress=False)
    assert len(rows) == 8
    with open(tmp_path / "scan" / "scan.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert {(r["mode"], r["label_fraction"], r["seed"]) for r in table} == {
        (m, f, s) for m in ("freeze", "scratch") for f in ("0.05", "1.0") for s in ("0", "1")}
    assert "± " in (tmp_path / "scan" / "summary.md").read_text()
    check_figure(tmp_path / "scan" / "rejection_vs_labels.png")

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(scan_module, "finetune", refuse)
    again = scan(base, [0.05, 1.0], ["freeze", "scratch"], [0, 1], tmp_path / "scan", progress=False)
    assert again == rows
    # another device is no other result, nor a setting the mode does not read; another learning rate
    # is, and is not mixed in
    assert scan(replace(base, device="auto", compile=True, encoder_lr_scale=0.5), [0.05], ["freeze"], [0],
                tmp_path / "scan", progress=False) == rows[:1]
    # refused before anything trains: the new 0.2 cell would come first (and fail the test by running)
    with pytest.raises(JJepaError, match=r"freeze-f0\.05-s0 is a finished cell made with other settings "
                                         r"\(lr: 0\.001 there, 0\.002 now\)"):
        scan(replace(base, lr=2e-3), [0.2, 0.05], ["freeze"], [0], tmp_path / "scan", progress=False)


def test_embed_rows_follow_the_input_jets(simulated_splits, pretrained, tmp_path):
    out = tmp_path / "emb.h5"
    result = CliRunner().invoke(cli, ["embed", "--data", str(simulated_splits["test"]), "--checkpoint",
                                      str(pretrained), "--out", str(out), "--batch-size", "64", "--device", "cpu",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    state = load_checkpoint(pretrained)
    config = config_from_dict(state["config"])
    shards = ShardSet(simulated_splits["test"])
    arrays = [read_shard(shards.folder / r.file) for r in shards.manifest.shards]
    encoder = SubjetTransformer(config.model).eval()
    encoder.load_state_dict(state["target_encoder"])
    with h5py.File(out) as f:
        embeddings, labels = f["embeddings"][...], f["labels"][...]
    assert embeddings.shape == (400, config.model.embed_dim)
    assert labels.tolist() == np.concatenate([a.labels for a in arrays]).tolist()
    first = arrays[0].take(slice(0, 5))
    inputs = config.transform(*(torch.from_numpy(np.ascontiguousarray(getattr(first, k)))
                                for k in ("particles", "particle_mask", "subjets", "subjet_mask")))
    with torch.no_grad():
        expected = jet_representation(encoder(inputs), inputs.subjet_mask)
    np.testing.assert_allclose(embeddings[:5], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_embed_refuses_its_own_inputs_another_clustering_and_an_empty_batch(simulated_splits, pretrained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(simulated_splits["test"], data)

    def embed(*extra):
        return CliRunner().invoke(cli, ["embed", "--data", str(data), "--checkpoint", str(pretrained), "--device",
                                        "cpu", "--no-progress", *extra])

    manifest = (data / "manifest.json").read_text()
    result = embed("--out", str(data / "manifest.json"))
    assert result.exit_code == 1 and "a file of the input folder" in result.output
    assert (data / "manifest.json").read_text() == manifest
    result = embed("--out", str(tmp_path / "e.h5"), "--batch-size", "0")
    assert result.exit_code == 2 and "--batch-size" in result.output
    (data / "manifest.json").write_text(manifest.replace('"radius": 0.2', '"radius": 0.3'))
    result = embed("--out", str(tmp_path / "e.h5"))
    assert result.exit_code == 1 and "radius=0.3, but the encoder" in result.output, result.output
    assert not (tmp_path / "e.h5").exists()


def test_cli_finetune_reports_metrics(simulated_splits, pretrained, tmp_path):
    args = ["finetune", "--train", str(simulated_splits["train"]), "--val", str(simulated_splits["val"]),
            "--test", str(simulated_splits["test"]), "--checkpoint", str(pretrained), "--mode", "freeze",
            "--n-labels", "100", "--out", str(tmp_path / "ft"), "--device", "cpu", "--batch-size", "50",
            "--set", "min_steps=5", "--set", "epochs=1", "--aggregation", "cls_attn", "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["n_train_labels"] == 100 and metrics["aggregation"] == "cls_attn"


def write_jetclass_like(folder, n_per_class: int, seed: int, kinds=((1, 8), (0, 0))):
    """Toy jets in shards naming all ten JetClass classes: per (toy label, class) pair of ``kinds``,
    ``n_per_class`` jets; by default top (toy 1 as Tbqq, label 8) and QCD (toy 0, label 0)."""
    from jjepa.common.schema import ClusterConfig, ShardAttrs
    from jjepa.common.shards import Manifest, record_for, shard_name, write_manifest, write_shard
    from jjepa.common.testing import toy_jets

    names = ("QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl")
    config = ClusterConfig(n_subjets=10, n_particles=12)
    manifest = Manifest(cluster=config, classes=names)
    folder.mkdir()
    for k, (toy_label, label) in enumerate(kinds):
        arrays = toy_jets(n_per_class, toy_label, 10, 12, seed + k)
        arrays.labels[:] = label
        path = folder / shard_name(k)
        write_shard(path, arrays, ShardAttrs(cluster=config, classes=names, source={"toy": k}))
        manifest.shards.append(record_for(path, arrays.labels, names, {"toy": k}))
    write_manifest(folder, manifest)
    return folder


def test_classes_without_training_jets_are_dropped(tmp_path):
    """JetClass-layout files of two processes give a binary top-vs-QCD tagger, not a ten-class one."""
    splits = {name: write_jetclass_like(tmp_path / name, n, seed)
              for name, n, seed in (("train", 200, 0), ("val", 50, 10), ("test", 50, 20))}
    metrics = finetune(config_for(splits, tmp_path / "ft", mode="scratch", preset="tiny"), progress=False)
    saved = np.load(tmp_path / "ft" / "test_predictions.npz")
    assert metrics["n_test"] == 100 and saved["probs"].shape == (100, 2)
    assert metrics["auc"] == pytest.approx(roc_auc_score(saved["labels"], saved["probs"][:, 1]), abs=1e-12)
    stored = load_checkpoint(tmp_path / "ft" / "checkpoints" / "best.pt")
    assert stored["classes"] == ["QCD", "Tbqq"]
    assert stored["classifier"]["head.linear.weight"].shape[0] == 2


def test_multiclass_tagger_writes_one_roc_per_signal_class(tmp_path, check_figure):
    """Three classes (QCD, Wqq, Tbqq), through scan and evaluate: per-class rejections against QCD,
    roc.csv in long format, and the comparison report."""
    kinds = ((1, 8), (1, 7), (0, 0))
    splits = {name: write_jetclass_like(tmp_path / name, n, seed, kinds)
              for name, n, seed in (("train", 120, 0), ("val", 40, 10), ("test", 40, 20))}
    metrics = scan(config_for(splits, tmp_path / "unused", mode="scratch", preset="tiny"), [1.0], ["scratch"], [0],
                   tmp_path / "scan",
                   progress=False)[0]
    assert {"accuracy", "auc"} <= set(metrics)
    metrics = json.loads((tmp_path / "scan" / "scratch-f1-s0" / "metrics.json").read_text())
    assert {"rej_at_50_Wqq", "rej_at_50_Tbqq", "rej_at_30_Wqq", "rej_at_30_Tbqq", "rej_at_50"} <= set(metrics)
    assert "rej_at_50_QCD" not in metrics and metrics["n_test"] == 120
    with open(tmp_path / "scan" / "scratch-f1-s0" / "roc.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"signal", "signal_efficiency", "background_efficiency", "background_rejection"}
    assert {row["signal"] for row in rows} == {"Wqq vs QCD", "Tbqq vs QCD"}
    for row in rows:
        assert float(row["background_rejection"]) == pytest.approx(1 / float(row["background_efficiency"]))
    # The pipeline's comparison draws one ROC per signal class and reports accuracy and macro AUC.
    from jjepa.train.runners.evaluate import evaluate

    compared = evaluate([tmp_path / "scan"], tmp_path / "report")
    assert compared["scratch"][f"labels_{metrics['n_train_labels']}"]["auc"] == pytest.approx(metrics["auc"])
    check_figure(tmp_path / "report" / "roc.png")


def test_a_class_without_test_jets_fails_before_training(tmp_path):
    """Training and validation hold QCD, Wqq and Tbqq, the test set no Wqq: a clear error, no run folder."""
    kinds = ((1, 8), (1, 7), (0, 0))
    splits = {name: write_jetclass_like(tmp_path / name, 40, seed, kinds) for name, seed in (("train", 0), ("val", 10))}
    splits["test"] = write_jetclass_like(tmp_path / "test", 40, 20, ((1, 8), (0, 0)))
    with pytest.raises(JJepaError, match=r"no test jets of \['Wqq'\]"):
        finetune(config_for(splits, tmp_path / "ft", mode="scratch", preset="tiny"), progress=False)
    assert not (tmp_path / "ft" / "metrics.json").exists()


def test_scan_refuses_a_grid_it_would_run_wrongly(tmp_path):
    base = resolve_finetune_config({"train": "t", "val": "v", "test": "x", "out": str(tmp_path / "unused"),
                                    "mode": "scratch", "preset": "tiny"})
    with pytest.raises(JJepaError, match=r"--fractions \[100\.0, 1000\.0\] are not label fractions in \(0, 1\]"):
        scan(base, [100.0, 1000.0, 0.5], ["scratch"], [0], tmp_path / "scan", progress=False)
    with pytest.raises(JJepaError, match="--fractions is empty"):
        scan(base, [], ["scratch"], [0], tmp_path / "scan", progress=False)
    with pytest.raises(JJepaError, match="drop label_fraction / n_labels"):
        scan(replace(base, n_labels=50), [0.5], ["scratch"], [0], tmp_path / "scan", progress=False)
    assert not (tmp_path / "scan").exists()


def test_scan_compares_a_scratch_cells_own_architecture(tmp_path):
    """A scratch cell sized by a preset is refused when the architecture asked for differs from its own
    (S and N, bound from the shards when it ran, are not asked for and do not count)."""
    def scratch(depth):
        return resolve_finetune_config({"train": "t", "val": "v", "test": "x", "out": str(tmp_path / "cell"),
                                        "mode": "scratch", "preset": "tiny", "model.depth": depth})

    cell = tmp_path / "cell"
    cell.mkdir()
    ran = scratch(2).to_dict()
    ran["model"].update(n_subjets=20, n_particles=30)
    (cell / "config.yaml").write_text(yaml.safe_dump(ran))
    scan_module.refuse_other_settings(cell, scratch(2))
    with pytest.raises(JJepaError, match=r"model\.depth: 2 there, 3 now"):
        scan_module.refuse_other_settings(cell, scratch(3))
    with pytest.raises(JJepaError, match=r"transform\.log_scale: 0\.7 there, 0\.5 now"):  # the preset's, not a checkpoint's
        scan_module.refuse_other_settings(cell, replace(scratch(2), transform=replace(scratch(2).transform,
                                                                                       log_scale=0.5)))


def test_scan_ignores_what_a_mode_does_not_read(tmp_path):
    def cell_config(mode, **kw):
        return resolve_finetune_config({"train": "t", "val": "v", "test": "x", "out": str(tmp_path / "cell"),
                                        "mode": mode, "checkpoint": "a.pt", **kw})

    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "config.yaml").write_text(yaml.safe_dump(cell_config("part").to_dict()))
    scan_module.refuse_other_settings(cell, cell_config("part", checkpoint="b.pt", aggregation="cls_attn",
                                                        encoder_lr_scale=0.5))
    with pytest.raises(JJepaError, match=r"part\.num_layers: 8 there, 2 now"):
        scan_module.refuse_other_settings(cell, cell_config("part", **{"part.num_layers": 2}))
    (cell / "config.yaml").write_text(yaml.safe_dump(cell_config("finetune").to_dict()))
    scan_module.refuse_other_settings(cell, cell_config("finetune", **{"part.num_layers": 2}))
    with pytest.raises(JJepaError, match=r"checkpoint: 'a\.pt' there, 'b\.pt' now"):
        scan_module.refuse_other_settings(cell, cell_config("finetune", checkpoint="b.pt"))
