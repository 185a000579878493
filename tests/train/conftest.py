"""Fixtures of the trainer's tests: small toy shards (written once per session) and few threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jjepa.common.testing import write_toy_shards

#: Small jets keep every test fast: S subjets of N constituents.
S, N = 10, 12


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    """One torch thread for the whole session: two cores are shared with other work, and module- or
    session-scoped fixtures (runs that tests compare with bit for bit) must run with the same thread
    count as the tests themselves (a float sum splits differently over 1 and 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _shard_cache(tmp_path_factory):
    """Verified-shard records (``jjepa.train.data.integrity``) go to a temporary folder, not the user's cache."""
    import os

    from jjepa.train.data.integrity import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("jjepa-cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


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
def simulated_splits(tmp_path_factory, simulated_jets):
    """The session's 2,000 Pythia jets reclustered (CA R=0.2, S=10, N=12) into train/val/test shard folders.

    Train holds 600 top and 600 QCD jets (one shard per class, as real inputs come one file per
    process), val and test 200 of each.
    """
    from jjepa.common.schema import ClusterConfig, ShardAttrs
    from jjepa.common.shards import Manifest, record_for, shard_name, write_manifest, write_shard
    from jjepa.preprocess.cluster import cluster
    from jjepa.preprocess.features import build_features

    config = ClusterConfig(n_subjets=S, n_particles=N)
    classes = ("QCD", "top")
    jets = simulated_jets
    assign, n_subjets = cluster(jets.px, jets.py, jets.pz, jets.energy, jets.offsets)
    arrays = build_features(jets.px, jets.py, jets.pz, jets.energy, jets.offsets, assign, n_subjets,
                            jets.labels, config)
    folders = {}
    for split, (lo, hi) in {"train": (0, 600), "val": (600, 800), "test": (800, 1000)}.items():
        folder = folders[split] = tmp_path_factory.mktemp(f"simulated-{split}")
        manifest = Manifest(cluster=config, classes=classes)
        for k, label in enumerate((1, 0)):
            part = arrays.take(np.flatnonzero(arrays.labels == label)[lo:hi])
            path = folder / shard_name(k)
            source = {"generator": "pythia8", "label": label, "jets": [lo, hi]}
            write_shard(path, part, ShardAttrs(cluster=config, classes=classes, source=source))
            manifest.shards.append(record_for(path, part.labels, classes, source))
        write_manifest(folder, manifest)
    return folders


@pytest.fixture(scope="session")
def simulated_shards(simulated_splits):
    """The training split of ``simulated_splits``."""
    return simulated_splits["train"]


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, simulated_splits):
    """A pretraining checkpoint of the tiny preset, 30 steps on the simulated training jets."""
    from jjepa.train.config import resolve_pretrain_config
    from jjepa.train.runners.pretrain import pretrain

    out = tmp_path_factory.mktemp("pretrained") / "run"
    pretrain(resolve_pretrain_config({"data": str(simulated_splits["train"]), "out": str(out), "preset": "tiny",
                                      "steps": 30, "batch_size": 64, "log_every": 10, "device": "cpu",
                                      "prefetch": 2}), progress=False)
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="session")
def toy_test(tmp_path_factory):
    """2 toy shards of 200 jets each, S=10, N=12, seeded apart from ``toy_train`` and ``toy_val``."""
    folder = tmp_path_factory.mktemp("toy-test")
    write_toy_shards(folder, n_shards=2, jets_per_shard=200, n_subjets=S, n_particles=N, seed=300)
    return folder


def finetune_toy_tagger(out, train, val, test, **overrides):
    """A tiny tagger trained from scratch for ~30 steps on toy shards; returns its run folder."""
    from dataclasses import fields

    from jjepa.train.config import FinetuneConfig, resolve_finetune_config
    from jjepa.train.runners.finetune import finetune

    config = {"train": str(train), "val": str(val), "test": str(test), "out": str(out), "mode": "scratch",
              "preset": "tiny", "batch_size": 64, "epochs": 1, "min_steps": 10, "eval_every": 10,
              "device": "cpu", "prefetch": 2, **overrides}
    if "bootstrap_resamples" in {f.name for f in fields(FinetuneConfig)}:
        config.setdefault("bootstrap_resamples", 20)
    finetune(resolve_finetune_config(config), progress=False)
    return out


@pytest.fixture(scope="session")
def make_toy_tagger():
    """``finetune_toy_tagger``, for tests that train a tagger of another architecture."""
    return finetune_toy_tagger


@pytest.fixture(scope="session")
def toy_tagger(tmp_path_factory, toy_train, toy_val, toy_test):
    """Run folder of a tiny tagger finetuned (from scratch) on the toy shards, tested on ``toy_test``."""
    return finetune_toy_tagger(tmp_path_factory.mktemp("toy-tagger") / "run", toy_train, toy_val, toy_test)
