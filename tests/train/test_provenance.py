"""Which jets a run reads: disjoint splits, one clustering, the same jets on resume, every class present."""

from __future__ import annotations

import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from jjepa.common.atomic import sha256_file
from jjepa.common.errors import JJepaError, ShardError
from jjepa.common.schema import ClusterConfig
from jjepa.common.shards import Manifest, ShardRecord, read_manifest, shard_name, write_manifest
from jjepa.common.testing import write_toy_shards
from jjepa.train.config import resolve_finetune_config, resolve_pretrain_config
from jjepa.train.data.loader import ShardSet
from jjepa.train.data.provenance import check_disjoint
from jjepa.train.runners.finetune import finetune
from jjepa.train.runners.finetune_setup import tagging_classes
from jjepa.train.runners.pretrain import pretrain

FINETUNE = {"mode": "scratch", "preset": "tiny", "batch_size": 64, "n_labels": 640, "epochs": 2, "min_steps": 10,
            "eval_every": 5, "val_batches": 2, "device": "cpu", "prefetch": 2, "bootstrap_resamples": 20}
PRETRAIN = {"preset": "tiny", "batch_size": 64, "log_every": 5, "checkpoint_every": 1000, "device": "cpu",
            "prefetch": 2, "steps": 20}


def ft_config(train, val, test, out, **kw):
    return resolve_finetune_config({"train": str(train), "val": str(val), "test": str(test), "out": str(out),
                                    **FINETUNE, **kw})


def copy_with_radius(source, folder, radius: float):
    """A copy of a shard folder whose manifest says the subjets were clustered with ``radius``."""
    shutil.copytree(source, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["cluster"]["radius"] = radius
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def manifest_of(sources: list[tuple[str, int, int]], plan: dict | None = None) -> Manifest:
    records = [ShardRecord(file=shard_name(k), n_jets=stop - start, class_counts=[stop - start, 0],
                           sha256=hashlib.sha256(repr((file, start, plan)).encode()).hexdigest(), source={"file": file, "start": start, "stop": stop})
               for k, (file, start, stop) in enumerate(sources)]
    return Manifest(cluster=ClusterConfig(n_subjets=10, n_particles=12), classes=("qcd", "top"), shards=records,
                    plan=plan or {})


# --- disjoint splits -------------------------------------------------------------------------------

def test_sets_sharing_a_shard_are_refused_before_training(toy_train, toy_val, tmp_path):
    with pytest.raises(JJepaError, match=r"--train .*toy-train.*shard-00000\.h5 and --test .*shard-00000\.h5 are the "
                                         r"same shard"):
        finetune(ft_config(toy_train, toy_val, toy_train, tmp_path / "ft"), progress=False)
    assert not (tmp_path / "ft").exists()


def test_pretraining_validated_on_its_own_training_jets_is_refused(toy_train, tmp_path):
    config = resolve_pretrain_config({**PRETRAIN, "data": str(toy_train), "val": str(toy_train),
                                      "out": str(tmp_path / "pre")})
    with pytest.raises(JJepaError, match=r"--data .*shard-00000\.h5 and --val .*shard-00000\.h5 are the same shard"):
        pretrain(config, progress=False)
    assert not (tmp_path / "pre").exists()


def test_overlapping_entries_of_one_input_are_refused_and_disjoint_ones_pass():
    train = manifest_of([("a.root", 0, 100), ("a.root", 100, 200)])
    check_disjoint({"--train": ("t", train), "--val": ("v", manifest_of([("a.root", 200, 300)])),
                    "--test": ("x", manifest_of([("b.root", 0, 150)]))})
    with pytest.raises(JJepaError, match=r"--train t/shard-00001\.h5 \(entries 100–200\) and --test x/shard-00000\.h5 "
                                         r"\(entries 150–250\) hold the same jets of one input file"):
        check_disjoint({"--train": ("t", train), "--test": ("x", manifest_of([("a.root", 150, 250)]))})


def test_inputs_are_known_by_content_where_the_plan_fingerprinted_them():
    """The same file given by two paths is one input; two files with one name in two folders are two."""
    def fingerprinted(path: str, sha256: str, start: int, stop: int) -> Manifest:
        plan = {"version": 2, "inputs": [{"path": "/resolved/" + path, "sha256": sha256}], "chunks": [[0, start, stop]]}
        return manifest_of([(path, start, stop)], plan)

    with pytest.raises(JJepaError, match="hold the same jets"):
        check_disjoint({"--train": ("t", fingerprinted("data/train.h5", "aa", 0, 100)),
                        "--test": ("x", fingerprinted("../link/train.h5", "aa", 50, 60))})
    check_disjoint({"--train": ("t", fingerprinted("train.h5", "aa", 0, 100)),
                    "--test": ("x", fingerprinted("train.h5", "bb", 0, 100))})


# --- one clustering --------------------------------------------------------------------------------

def test_a_split_of_another_radius_is_refused_even_with_the_same_s_and_n(toy_train, toy_val, toy_test, tmp_path):
    test = copy_with_radius(toy_test, tmp_path / "test-r04", 0.4)
    with pytest.raises(ShardError, match=r"test-r04: subjets clustered with radius=0\.4, but --test: the shards in "
                                         r".*toy-train.* have radius=0\.2"):
        finetune(ft_config(toy_train, toy_val, test, tmp_path / "ft"), progress=False)


def test_an_encoder_pretrained_on_another_clustering_is_refused(toy_train, toy_val, toy_test, tmp_path):
    pretrain(resolve_pretrain_config({**PRETRAIN, "data": str(toy_train), "out": str(tmp_path / "pre"), "steps": 2}),
             progress=False)
    sets = [copy_with_radius(s, tmp_path / f"{s.name}-r04", 0.4) for s in (toy_train, toy_val, toy_test)]
    config = ft_config(*sets, tmp_path / "ft", mode="finetune", preset=None,
                       checkpoint=str(tmp_path / "pre" / "checkpoints" / "last.pt"))
    with pytest.raises(ShardError, match=r"radius=0\.4, but the encoder .*last\.pt was pretrained on radius=0\.2"):
        finetune(config, progress=False)


# --- the same jets on resume -----------------------------------------------------------------------

def test_pretraining_resumed_on_other_jets_behind_the_same_path_is_refused(toy_train, toy_val, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(toy_train, data)
    config = resolve_pretrain_config({**PRETRAIN, "data": str(data), "out": str(tmp_path / "run"), "stop_after": 5})
    pretrain(config, progress=False)
    shutil.rmtree(data)
    shutil.copytree(toy_val, data)
    with pytest.raises(JJepaError, match=r"cannot resume .*last\.pt: the training shards in .*data \(400 jets\) are "
                                         r"not those the run started on \(2000 jets"):
        pretrain(config, resume=True, progress=False)
    shutil.rmtree(data)
    shutil.copytree(toy_train, data)  # the jets it started on: it goes on
    assert pretrain(resolve_pretrain_config({**PRETRAIN, "data": str(data), "out": str(tmp_path / "run")}),
                    resume=True, progress=False)["step"] == 20


def test_finetuning_resumed_on_other_jets_is_refused(toy_train, toy_val, toy_test, tmp_path):
    val = tmp_path / "val"
    shutil.copytree(toy_val, val)
    finetune(ft_config(toy_train, val, toy_test, tmp_path / "ft", stop_after=3), progress=False)
    shutil.rmtree(val)
    write_toy_shards(val, n_shards=2, jets_per_shard=100, n_subjets=10, n_particles=12, seed=500)
    with pytest.raises(JJepaError, match=r"the validation shards in .*val \(200 jets\) are not those the run started "
                                         r"on \(400 jets"):
        finetune(ft_config(toy_train, val, toy_test, tmp_path / "ft"), progress=False, resume=True)


def test_resuming_a_finished_run_with_other_settings_is_refused(toy_train, toy_val, toy_test, tmp_path):
    finetune(ft_config(toy_train, toy_val, toy_test, tmp_path / "ft", epochs=1), progress=False)
    again = finetune(ft_config(toy_train, toy_val, toy_test, tmp_path / "ft", epochs=1, device="cpu"),
                     progress=False, resume=True)
    assert again["auc"] == json.loads((tmp_path / "ft" / "metrics.json").read_text())["auc"]
    with pytest.raises(JJepaError, match=r"finished run made with other settings \(lr: 0\.001 there, 0\.01 now\)"):
        finetune(ft_config(toy_train, toy_val, toy_test, tmp_path / "ft", epochs=1, lr=0.01), progress=False,
                 resume=True)


# --- every class the tagger learns is in every split -----------------------------------------------

def only_class(shards: ShardSet, label: int) -> ShardSet:
    return shards.select([np.flatnonzero(labels == label) for labels in shards.labels()])


def test_a_class_missing_from_validation_or_training_after_a_cut_is_refused(toy_train, toy_val, toy_test):
    train, val, test = ShardSet(toy_train), ShardSet(toy_val), ShardSet(toy_test)
    assert tagging_classes(train, val, test)[0] == ("qcd", "top")
    with pytest.raises(JJepaError, match=r"no validation jets with at least 7 real subjets of \['qcd'\]"):
        tagging_classes(train, only_class(val, 1), test, min_subjets=7)
    with pytest.raises(JJepaError, match=r"no test jets of \['top'\]"):
        tagging_classes(train, val, only_class(test, 0))
    with pytest.raises(JJepaError, match=r"1 class\(es\) have training jets with at least 7 real subjets; tagging "
                                         r"needs at least 2 \(lower min_subjets\)"):
        tagging_classes(only_class(train, 1), val, test, min_subjets=7)


def relabelled(source, folder, shard: int, rows, label: int) -> ShardSet:
    """A copy of ``source`` with ``label`` written at ``rows`` of one shard (the manifest agreeing)."""
    shutil.copytree(source, folder)
    path = folder / shard_name(shard)
    with h5py.File(path, "r+") as f:
        f["labels"][rows] = label
    manifest = read_manifest(folder)
    manifest.shards[shard].sha256 = sha256_file(path)
    write_manifest(folder, manifest)
    return ShardSet(folder)


def test_a_label_outside_the_classes_is_named(toy_val, tmp_path):
    shards = relabelled(toy_val, tmp_path / "val", 1, [17], 5)
    with pytest.raises(ShardError, match=r"shard-00001\.h5: jet 17 has label 5, outside the 2 classes"):
        tagging_classes(shards, shards, shards)


def test_unlabelled_jets_are_refused_in_every_split(toy_train, toy_val, toy_test, tmp_path):
    """Before, a −1 label indexed the label map from the end: the jets were trained and scored as 'top'."""
    train, val = ShardSet(toy_train), ShardSet(toy_val)
    test = relabelled(toy_test, tmp_path / "test", 0, slice(0, 100), -1)
    with pytest.raises(JJepaError, match=r"test: 100 test jet\(s\) without a label \(−1\)"):
        tagging_classes(train, val, test)
    with pytest.raises(JJepaError, match=r"100 training jet\(s\) without a label"):
        tagging_classes(test, val, train)


def test_the_label_map_keeps_unlabelled_jets_unlabelled():
    from jjepa.train.data.loader import Cursor, JetBatch
    from jjepa.train.data.transform import InputTransform
    from jjepa.train.runners.inference import to_device

    labels = torch.tensor([-1, 0, 1, -1])
    label_map = torch.tensor([1, 0])  # before, label_map[-1] made the unlabelled jets class 0
    batch = JetBatch({"particles": torch.zeros(4, 2, 3, 4), "particle_mask": torch.zeros(4, 2, 3, dtype=torch.bool),
                      "subjets": torch.zeros(4, 2, 4), "subjet_mask": torch.zeros(4, 2, dtype=torch.bool),
                      "labels": labels}, Cursor())
    assert to_device(batch, InputTransform(), torch.device("cpu"), label_map)[1].tolist() == [-1, 1, 0, -1]
