"""Fixtures of the trainer's tests: small toy shards (written once per session) and few threads."""

from __future__ import annotations

import pytest
import torch
from jjepa.train.synthetic import write_toy_shards

#: Small jets keep every test fast: S subjets of N constituents.
S, N = 10, 12


@pytest.fixture(autouse=True)
def _few_threads():
    """Two cores are shared with other work: keep torch to one thread per test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_train(tmp_path_factory):
    """4 toy shards (2 QCD-like, 2 top-like) of 500 jets each, S=10, N=12."""
    folder = tmp_path_factory.mktemp("toy-train")
    write_toy_shards(folder, n_shards=4, jets_per_shard=500, n_subjets=S, n_particles=N, seed=0)
    return folder


@pytest.fixture(scope="session")
def toy_val(tmp_path_factory):
    """2 toy shards of 200 jets each, S=10, N=12, seeded apart from ``toy_train``."""
    folder = tmp_path_factory.mktemp("toy-val")
    write_toy_shards(folder, n_shards=2, jets_per_shard=200, n_subjets=S, n_particles=N, seed=100)
    return folder


@pytest.fixture(scope="session")
def simulated_shards(tmp_path_factory, simulated_jets):
    """The session's 2,000 Pythia jets reclustered (CA R=0.2, S=10, N=12) into 2 shards: top, then QCD."""
    from jjepa.common.schema import ClusterConfig, ShardAttrs
    from jjepa.common.shards import Manifest, record_for, shard_name, write_manifest, write_shard
    from jjepa.preprocess.cluster import cluster
    from jjepa.preprocess.features import build_features

    folder = tmp_path_factory.mktemp("simulated-shards")
    config = ClusterConfig(n_subjets=S, n_particles=N)
    classes = ("QCD", "top")
    jets = simulated_jets
    assign, n_subjets = cluster(jets.px, jets.py, jets.pz, jets.energy, jets.offsets)
    arrays = build_features(jets.px, jets.py, jets.pz, jets.energy, jets.offsets, assign, n_subjets,
                            jets.labels, config)
    manifest = Manifest(cluster=config, classes=classes)
    for k, label in enumerate((1, 0)):
        part = arrays.take(arrays.labels == label)
        path = folder / shard_name(k)
        source = {"generator": "pythia8", "label": label}
        write_shard(path, part, ShardAttrs(cluster=config, classes=classes, source=source))
        manifest.shards.append(record_for(path, part.labels, classes, source))
    write_manifest(folder, manifest)
    return folder
