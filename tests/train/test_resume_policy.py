"""What may change on ``pretrain --resume``: an allow-list, so every other field is protected."""

from __future__ import annotations

import dataclasses

import pytest
from jjepa.common.errors import JJepaError
from jjepa.train.config import RESUMABLE_CHANGES, PretrainConfig, resolve_pretrain_config
from jjepa.train.runners.pretrain import pretrain


def _config(data, out, **kw):
    base = {"data": str(data), "out": str(out), "preset": "tiny", "batch_size": 64, "log_every": 5,
            "checkpoint_every": 1000, "device": "cpu", "prefetch": 2, "val_batches": 2, "steps": 10,
            "stop_after": 5}
    return resolve_pretrain_config({**base, **kw})


def test_the_allow_list_names_real_fields_and_leaves_the_physics_protected():
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    assert RESUMABLE_CHANGES <= names
    for protected in ("model", "data", "lr", "weight_decay", "clip_grad", "mask_fraction", "seed", "batch_size"):
        assert protected not in RESUMABLE_CHANGES


def test_resume_refuses_a_changed_weight_decay_but_accepts_new_logging(toy_train, tmp_path):
    pretrain(_config(toy_train, tmp_path / "run"), progress=False)  # stops after 5 of 10 steps
    # weight_decay was missing from the old list of fixed fields: a resume silently changed the optimiser.
    with pytest.raises(JJepaError, match="weight_decay"):
        pretrain(_config(toy_train, tmp_path / "run", weight_decay=0.3, stop_after=None), resume=True,
                 progress=False)
    metrics = pretrain(_config(toy_train, tmp_path / "run", log_every=2, stop_after=None), resume=True,
                       progress=False)
    assert metrics["step"] == 10
