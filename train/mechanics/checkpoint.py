"""Checkpoints: everything needed to continue a run exactly, or to rebuild its encoder alone.

A checkpoint is one ``torch.save`` file written atomically (temporary name, then rename), holding
plain tensors and Python values only, so ``torch.load(weights_only=True)`` reads it:

- ``config``: the resolved ``PretrainConfig`` as a dict (model hyperparameters and the input
  transform included), so finetuning rebuilds the encoder with no flags to repeat;
- ``model`` (context encoder + predictor), ``target_encoder`` (the EMA), ``optimizer``;
- ``step`` (optimizer steps done), ``cursor`` (the loader's position), ``world_size``;
- ``torch_rng``: the CPU generator state (masks use their own seeded generators).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from jjepa.common.atomic import atomic_path
from jjepa.common.errors import JJepaError

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (see the module docstring) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint onto the CPU; a missing, foreign or damaged file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise JJepaError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        raise JJepaError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise JJepaError(f"{path}: not a jjepa checkpoint of format {CHECKPOINT_FORMAT}")
    return state
