"""Checkpoints: everything needed to continue a run exactly, or to rebuild its encoder alone.

A checkpoint is one ``torch.save`` file written atomically (temporary name, then rename), holding
plain tensors and Python values only, so ``torch.load(weights_only=True)`` reads it. Its contents
are defined once, by :class:`PretrainCheckpoint` (``last.pt`` of a pretraining run),
:class:`FinetuneCheckpoint` (``best.pt`` of a finetuning run) and :class:`FinetuneRunCheckpoint`
(``last.pt`` of a finetuning run in progress, for ``--resume``); the runners build their checkpoints
with these types and :func:`load_checkpoint` checks a file against them, so one given where the other
belongs is a one-line error rather than a ``TypeError`` deep in the config code.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, TypedDict

import torch
from jjepa.common.atomic import atomic_path
from jjepa.common.errors import JJepaError

CHECKPOINT_FORMAT = 1


class PretrainCheckpoint(TypedDict):
    """``last.pt`` of a pretraining run: enough to continue it bit-exactly, or to rebuild its encoders."""

    config: dict[str, Any]  # the resolved PretrainConfig (model and input transform included)
    model: dict[str, Any]  # state dict of the context encoder + predictor
    target_encoder: dict[str, Any]  # state dict of the EMA target encoder
    optimizer: dict[str, Any]
    step: int  # optimizer steps done
    cursor: dict[str, int]  # the loader's position: epoch, offset
    world_size: int  # processes of the run (the loader's split depends on it)
    interval_loss: float  # the running loss of the current logging interval
    interval_steps: int
    torch_rng: Any  # the CPU generator state (masks use their own seeded generators)
    scaler: dict[str, Any]  # the fp16 gradient scaler's state; empty without one
    data: dict[str, Any]  # the training shards' fingerprint (``data.provenance``): clustering, shard digests


class FinetuneCheckpoint(TypedDict):
    """``best.pt`` of a finetuning run: the tagger with the best validation loss, rebuildable alone."""

    classifier: dict[str, Any]  # state dict of the JetClassifier (or the ParT tagger)
    config: dict[str, Any]  # the resolved FinetuneConfig, with the model and transform used
    classes: list[str]  # the tagger's classes, index = output
    cluster: dict[str, Any]  # the clustering of its training shards (algorithm, radius, S, N)
    step: int  # the step of the kept model
    val_loss: float


class FinetuneRunCheckpoint(TypedDict):
    """``last.pt`` of a finetuning run in progress: enough to continue it bit-exactly (``--resume``).

    Holds the current weights and the best-validation ones, so the run's ``best.pt`` and figures come
    out as an uninterrupted run's. Deleted when the run finishes.
    """

    config: dict[str, Any]  # the resolved FinetuneConfig, with the model and transform used
    data: dict[str, Any]  # training, validation, test → the fingerprint of its shards (``data.provenance``)
    model: dict[str, Any]  # state dict of the classifier now
    buffers: dict[str, Any]  # its non-persistent buffers, absent from the state dict (ParT's trimming warm-up count)
    optimizer: dict[str, Any]
    scaler: dict[str, Any]  # the fp16 gradient scaler's state; empty without one
    step: int  # optimizer steps done
    cursor: dict[str, int]  # the loader's position: epoch, offset
    world_size: int  # processes of the run (the loader's split depends on it)
    running_loss: list[float]  # per rank, the sum of its training losses since the last validation
    running_steps: int
    bad_evals: int  # validations since the best one (early stopping)
    validated: list[int]  # the steps validated so far
    best_model: dict[str, Any]  # state dict of the classifier with the best validation loss
    best_step: int
    best_val_loss: float
    done: bool  # training is over (steps reached or early stop); only the final evaluation is left
    train_seconds: float  # training time so far
    torch_rng: Any  # the CPU generator state (dropout, ParT's random trimming on the CPU)
    cuda_rng: Any  # the generator state of the run's CUDA device (rank 0's); None on the CPU


#: Each kind of checkpoint: its type, the key that marks it, and where such a checkpoint comes from.
KINDS: dict[str, tuple[type, str, str]] = {
    "pretrain": (PretrainCheckpoint, "target_encoder", "a pretraining checkpoint (runs/<pretrain>/checkpoints/last.pt)"),
    "finetune": (FinetuneCheckpoint, "classifier", "a finetuning checkpoint (runs/<finetune>/checkpoints/best.pt)"),
    "finetune_run": (FinetuneRunCheckpoint, "best_model",
                     "the resume checkpoint of an unfinished finetuning run (runs/<finetune>/checkpoints/last.pt)"),
}
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space(err: BaseException) -> bool:
    """Whether ``err`` or an error it was raised from is "no space left" (ENOSPC, or a quota: EDQUOT).

    ``torch.save`` reports a failed write as a ``RuntimeError`` ("unexpected pos ..."); the
    ``OSError`` of the Python file it wrote through is kept as its ``__context__``.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return True
        err = err.__cause__ or err.__context__
    return False


def save_checkpoint(path: str | os.PathLike,
                    state: PretrainCheckpoint | FinetuneCheckpoint | FinetuneRunCheckpoint) -> None:
    """Write ``state`` (see the module docstring) to ``path`` atomically.

    The file is written through a Python file object (so a failed write keeps its ``errno``), then
    flushed and synced before the rename: a full disk leaves the previous checkpoint untouched and
    raises ``JJepaError("no space left on device: <path> ...")``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:
        if _no_space(err):
            raise JJepaError(f"no space left on device: {path} (the previous checkpoint, if any, is intact; "
                             "free some space, then continue with --resume)") from None
        raise JJepaError(f"{path}: cannot write the checkpoint ({type(err).__name__}: {err})") from None


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Read a checkpoint onto the CPU; a missing, foreign or damaged file is a clear error.

    Args:
        path: the checkpoint file.
        kind: ``pretrain``, ``finetune`` or ``finetune_run`` to insist on that kind (see ``KINDS``); None
            accepts any.
    """
    path = Path(path)
    if not path.is_file():
        raise JJepaError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        raise JJepaError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}); damaged, or not a "
                         "checkpoint: give a jjepa checkpoint (runs/<run>/checkpoints/last.pt or best.pt)") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise JJepaError(f"{path}: not a jjepa checkpoint of format {CHECKPOINT_FORMAT}")
    if kind is not None:
        typed, key, wanted = KINDS[kind]
        if key not in state:
            found = next((what for _, k, what in KINDS.values() if k in state), "an unknown kind of checkpoint")
            raise JJepaError(f"{path}: this is {found}, but {wanted} is needed here")
        missing = sorted(set(typed.__required_keys__) - set(state) - _OPTIONAL.get(kind, set()))
        if missing:
            raise JJepaError(f"{path}: {wanted} without {missing}: damaged, or written by another version")
    return state


#: Keys that checkpoints written by earlier versions may lack (their readers fall back).
_OPTIONAL: dict[str, set[str]] = {"pretrain": {"scaler", "interval_loss", "interval_steps", "data"},
                                   "finetune": {"cluster"}, "finetune_run": {"data"}}


def keep_step_copy(last: str | os.PathLike, step: int, keep: int) -> Path | None:
    """Keep ``last`` (just written at ``step``) also as ``step-<step>.pt`` beside it, and only the newest
    ``keep`` of those.

    The copy is a hard link where the file system allows it (no extra space; ``last.pt`` is later
    replaced by rename, which leaves the link's contents alone), else a byte copy, written atomically.
    Older ``step-*.pt`` files beyond ``keep`` are deleted. Returns the copy's path (None if ``keep`` is 0).
    """
    last = Path(last)
    if keep <= 0:
        return None
    copy = last.with_name(f"step-{step:09d}.pt")  # zero-padded: the name order is the step order
    with atomic_path(copy) as tmp:
        try:
            os.link(last, tmp)
        except OSError:
            shutil.copyfile(last, tmp)
    for old in sorted(last.parent.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return copy
