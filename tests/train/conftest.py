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
