"""Pretraining under torchrun (2 gloo processes on the CPU) with rank shares of unequal size (201 jets: 100 and
101), where each rank's data position differs from rank 0's once an epoch has ended."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from jjepa.common.testing import write_toy_shards
from jjepa.train.mechanics.checkpoint import load_checkpoint


def torchrun(data, out, *extra: str) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "jjepa.train", "pretrain", "--data", str(data), "--out", str(out), "--preset", "tiny",
               "--batch-size", "10", "--device", "cpu", "--no-progress", "--set", "prefetch=2", "--set", "log_every=4",
               *extra]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_two_process_run_resumed_after_an_epoch_equals_the_straight_run(tmp_path):
    data = tmp_path / "odd"
    write_toy_shards(data, n_shards=1, jets_per_shard=201, n_subjets=10, n_particles=12, seed=7)
    torchrun(data, tmp_path / "straight", "--steps", "24")
    assert torchrun(data, tmp_path / "split", "--steps", "24", "--stop-after", "12")["stopped"]  # past an epoch
    torchrun(data, tmp_path / "split", "--steps", "24", "--resume")
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("straight", "split"))
    assert a["step"] == b["step"] == 24
    for key in ("model", "target_encoder"):
        assert all(torch.equal(value, b[key][name]) for name, value in a[key].items()), key
    # By epochs: both ranks count ceil(101 / 10) = 11 steps (before, 10 and 11: the run broke down at the end).
    assert torchrun(data, tmp_path / "epochs", "--epochs", "1")["total_steps"] == 11
