"""Pretraining never reads labels: the same jets with other labels (or none) give the same weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from jjepa.common.schema import ClusterConfig, ShardAttrs
from jjepa.common.shards import Manifest, record_for, shard_name, write_manifest, write_shard
from jjepa.common.testing import CLASSES, toy_jets
from jjepa.train.config import resolve_pretrain_config
from jjepa.train.mechanics.checkpoint import load_checkpoint
from jjepa.train.runners.pretrain import pretrain


def _write(folder, labels_of):
    """Two shards of the same toy jets (seeds 0, 1), labelled by ``labels_of(true_labels)``."""
    folder.mkdir(parents=True)
    cluster = ClusterConfig(n_subjets=10, n_particles=12)
    manifest = Manifest(cluster=cluster, classes=CLASSES)
    for k in range(2):
        arrays = toy_jets(300, k % 2, 10, 12, seed=k)
        arrays = replace(arrays, labels=labels_of(arrays.labels))
        path = folder / shard_name(k)
        write_shard(path, arrays, ShardAttrs(cluster=cluster, classes=CLASSES, source={"seed": k}))
        manifest.shards.append(record_for(path, arrays.labels, CLASSES, {"seed": k}))
    write_manifest(folder, manifest)
    return folder


def test_pretraining_weights_do_not_depend_on_the_labels(tmp_path):
    folders = {"true": _write(tmp_path / "true", lambda y: y),
               "flipped": _write(tmp_path / "flipped", lambda y: 1 - y),
               "unlabelled": _write(tmp_path / "unlabelled", lambda y: np.full_like(y, -1))}
    states = {}
    for name, folder in folders.items():
        config = resolve_pretrain_config({"data": str(folder), "out": str(tmp_path / f"run-{name}"), "preset": "tiny",
                                          "steps": 6, "batch_size": 64, "log_every": 3, "device": "cpu",
                                          "prefetch": 2})
        pretrain(config, progress=False)
        states[name] = load_checkpoint(tmp_path / f"run-{name}" / "checkpoints" / "last.pt")["target_encoder"]
    reference = states.pop("true")
    for name, state in states.items():
        assert state.keys() == reference.keys()
        for key, value in state.items():
            assert torch.equal(value, reference[key]), f"{name}: {key} differs: labels changed the pretraining"
