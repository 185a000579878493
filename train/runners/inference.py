"""Class probabilities of a tagger over a shard set, in one process or split over the DDP ranks.

Validation and test figures come from here: every jet in file order, or a partial validation's fixed
shuffled batches. Under DDP the ranks share the single-process batches and the results are gathered
back in that order, so every rank sees exactly what one process computes.
"""

from __future__ import annotations

import numpy as np
import torch
from jjepa.train.data.loader import FINETUNE_FIELDS, VAL_BLOCK, ShardSet, epoch_order, evaluation_batches
from jjepa.train.data.part_inputs import PartFeatures
from jjepa.train.data.transform import InputTransform, batch_inputs
from jjepa.train.mechanics.distributed import DistInfo, autocast, gather_objects
from torch import nn


def to_device(batch, transform: InputTransform, device: torch.device, label_map: torch.Tensor | None = None):
    """(inputs, labels) of a raw batch, on ``device``; ``label_map`` turns shard labels into tagger labels
    (an unlabelled jet, −1, stays −1: never the last class by negative indexing).

    ``transform`` is the subjet encoder's ``InputTransform``, or ``PartFeatures`` in ``part`` mode.
    """
    batch = batch.to(device)
    labels = batch["labels"]
    if label_map is not None:
        labels = torch.where(labels >= 0, label_map[labels.clamp_min(0)], -1)
    if isinstance(transform, PartFeatures):
        return transform.from_batch(batch), labels
    return batch_inputs(batch, transform, device), labels


@torch.no_grad()
def predict(model: nn.Module, shards: ShardSet, transform: InputTransform, device: torch.device,
            batch_size: int, label_map: torch.Tensor, max_batches: int | None = None,
            precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (J, C) float64 and tagger labels (J,) of the jets of ``shards``.

    The encoder runs in ``precision`` (autocast); the probabilities come from float32 or wider logits.

    All jets in file order; or, with ``max_batches``, that many batches of a fixed shuffled order
    (blocks of 64 jets), so a partial validation mixes every shard and is the same jets every time.
    """
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for batch in evaluation_batches(shards, batch_size, FINETUNE_FIELDS, device, max_batches):
        inputs, y = to_device(batch, transform, device, label_map)
        with autocast(device, precision):
            logits = model(inputs)
        probs.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())  # float64: no ties near p = 1
        labels.append(y.cpu().numpy())
    model.train(was_training)
    return np.concatenate(probs), np.concatenate(labels)


def reading_order(shards: ShardSet, batch_size: int, max_batches: int | None) -> np.ndarray:
    """Positions (in ``shards``' concatenated jets) of the jets ``predict`` reads, in its order, in one process."""
    if max_batches is None:
        return np.arange(shards.n_jets)
    blocks = epoch_order(shards.lengths, VAL_BLOCK, seed=0, epoch=0, shuffle=True)
    sizes = blocks[:, 2] - blocks[:, 1]
    offsets = np.concatenate([[0], np.cumsum(shards.lengths)[:-1]])
    firsts = offsets[blocks[:, 0]] + blocks[:, 1]
    order = np.repeat(firsts - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()))
    return order[:max_batches * batch_size]


def rank_view(shards: ShardSet, order: np.ndarray, batch_size: int, rank: int,
              world_size: int) -> tuple[ShardSet | None, np.ndarray]:
    """This rank's jets of a single-process evaluation: the batches ``i ≡ rank (mod world_size)`` of ``order``.

    Returns the view of those jets (None when there are none) and, for each jet of the view in its
    reading order, its slot in ``order``. In file order (a whole pass) the view's batches are exactly
    the single-process batches, so each jet is evaluated in the same company.
    """
    owner = (np.arange(len(order)) // batch_size) % world_size
    slots = np.flatnonzero(owner == rank)
    positions = order[slots]
    sort = np.argsort(positions, kind="stable")
    slots, positions = slots[sort], positions[sort]
    if len(slots) == 0:
        return None, slots
    offsets = np.concatenate([[0], np.cumsum(shards.lengths)])
    shard = np.searchsorted(offsets, positions, side="right") - 1
    index = [positions[shard == k] - offsets[k] for k in range(len(shards.lengths))]
    return shards.select(index), slots


def predict_over_ranks(model: nn.Module, shards: ShardSet, transform: InputTransform, info: DistInfo,
                       batch_size: int, label_map: torch.Tensor, max_batches: int | None = None,
                       precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """``predict`` split over the DDP ranks and gathered on every rank, in the single-process order.

    Each rank evaluates its batches of the single-process reading order (``rank_view``); the
    probabilities and labels are gathered (``all_gather_object``) and put back in that order, so
    every rank gets what one process would compute, and takes the same decisions (best model,
    early stopping). One process: ``predict`` itself.
    """
    if info.world_size == 1:
        return predict(model, shards, transform, info.device, batch_size, label_map, max_batches, precision)
    order = reading_order(shards, batch_size, max_batches)
    view, slots = rank_view(shards, order, batch_size, info.rank, info.world_size)
    mine = (slots, *predict(model, view, transform, info.device, batch_size, label_map, None, precision)) \
        if view is not None else None
    parts = [part for part in gather_objects(mine, info) if part is not None]
    probs = np.empty((len(order), parts[0][1].shape[1]), dtype=parts[0][1].dtype)
    labels = np.empty(len(order), dtype=parts[0][2].dtype)
    for slot, p, y in parts:
        probs[slot], labels[slot] = p, y
    return probs, labels
