"""The shard loader: memory-mapped shards, a seeded shuffled order of contiguous blocks, prefetched batches.

Every shard listed in a folder's ``manifest.json`` is memory-mapped (``open_memmaps``), so reading
a batch is copying a few contiguous slices out of the page cache: no h5py call and no Python per jet.
The reading order of an epoch is the shards' jets cut into blocks of ``block_size`` contiguous jets,
shuffled with a generator seeded by (seed, epoch); a batch is the next ``batch_size`` jets of that
order, i.e. a handful of blocks from different shards.

Under DDP, each rank reads its own contiguous share of every epoch's order, so the ranks' shares
are disjoint and together hold every jet exactly once. Training streams run on across epoch
boundaries (every batch is full and every rank takes the same number of steps); a ``Cursor``
(epoch, jets of the rank's share already delivered) marks the position, for checkpoints.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from jjepa.common.errors import ShardError
from jjepa.common.schema import DATASETS
from jjepa.common.shards import Manifest, open_memmaps, read_manifest
from jjepa.train.config import ModelConfig

#: What pretraining reads of a shard; finetuning adds ``labels``.
PRETRAIN_FIELDS: tuple[str, ...] = ("particles", "particle_mask", "subjets", "subjet_mask")
_TORCH_DTYPES = {spec.name: torch.from_numpy(np.zeros(0, spec.dtype)).dtype for spec in DATASETS}


@dataclass(frozen=True)
class Cursor:
    """A position in a rank's stream: ``offset`` jets of epoch ``epoch``'s share already delivered."""

    epoch: int = 0
    offset: int = 0


@dataclass
class JetBatch:
    """Raw arrays of a batch of jets as torch tensors (names and dtypes as in the shard schema).

    ``fields`` maps a dataset name to its tensor, e.g. ``particles`` (B, S, N, 4) float32,
    ``particle_mask`` (B, S, N) bool, ``subjets`` (B, S, 4), ``subjet_mask`` (B, S).
    ``cursor`` is the stream position just after this batch.
    """

    fields: dict[str, torch.Tensor]
    cursor: Cursor

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.fields[name]

    def __len__(self) -> int:
        return next(iter(self.fields.values())).shape[0]

    def to(self, device: torch.device) -> JetBatch:
        """The batch on ``device``; copies from pinned memory are asynchronous (``non_blocking``)."""
        return JetBatch({k: v.to(device, non_blocking=True) for k, v in self.fields.items()}, self.cursor)


class ShardSet:
    """Every shard of a folder's manifest, memory-mapped; optionally only selected jets of each.

    Args:
        folder: a shard folder with ``manifest.json`` (the output of ``jjepa-preprocess cluster``).

    ``index`` is None (every jet) or, per shard, the sorted positions of the selected jets (see
    ``select``); ``lengths`` counts the selected jets, and the loader's positions run over them.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(folder)
        if not self.manifest.shards:
            raise ShardError(f"{folder}: the manifest lists no shards")
        self.maps = [open_memmaps(self.folder / record.file) for record in self.manifest.shards]
        self.lengths = np.array([m["labels"].shape[0] for m in self.maps], dtype=np.int64)
        self.index: list[np.ndarray] | None = None
        for record, length in zip(self.manifest.shards, self.lengths, strict=True):
            if record.n_jets != length:
                raise ShardError(f"{self.folder / record.file}: {length} jets, the manifest says {record.n_jets}")

    def bind(self, model: ModelConfig) -> ModelConfig:
        """``model`` with S and N taken from these shards; an encoder built for other S or N is an error."""
        for name, value in (("n_subjets", self.n_subjets), ("n_particles", self.n_particles)):
            if getattr(model, name) not in (None, value):
                raise ShardError(f"model.{name} is {getattr(model, name)} but the shards in {self.folder} have {value}; "
                                 "an encoder only reads shards clustered with the S and N it was built for")
        return replace(model, n_subjets=self.n_subjets, n_particles=self.n_particles)

    def select(self, index: list[np.ndarray]) -> ShardSet:
        """A view of these shards holding only the jets at ``index`` (per shard, sorted int64 positions)."""
        if len(index) != len(self.maps):
            raise ValueError(f"need one index array per shard ({len(self.maps)}), got {len(index)}")
        view = copy.copy(self)
        view.index = [np.asarray(i, dtype=np.int64) for i in index]
        view.lengths = np.array([len(i) for i in view.index], dtype=np.int64)
        return view

    def labels(self) -> list[np.ndarray]:
        """Per shard, the labels (int64) of the selected jets."""
        if self.index is None:
            return [np.asarray(m["labels"]) for m in self.maps]
        return [np.asarray(m["labels"])[i] for m, i in zip(self.maps, self.index, strict=True)]

    @property
    def n_jets(self) -> int:
        return int(self.lengths.sum())

    @property
    def n_subjets(self) -> int:
        return self.manifest.cluster.n_subjets

    @property
    def n_particles(self) -> int:
        return self.manifest.cluster.n_particles


def epoch_order(lengths: np.ndarray, block_size: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The reading order of one epoch as contiguous segments.

    Args:
        lengths: (n_shards,) jets per shard.
        block_size: jets per block; a shard's last block may be shorter.
        seed, epoch: seed the block permutation (``np.random.default_rng([seed, epoch])``).
        shuffle: permute the blocks; if false, shards and jets in file order.

    Returns:
        (n_blocks, 3) int64 rows (shard, start, stop), in reading order.
    """
    n_blocks = -(-lengths // block_size)
    shard = np.repeat(np.arange(len(lengths)), n_blocks)
    first_block = np.concatenate([[0], np.cumsum(n_blocks)[:-1]])
    start = (np.arange(len(shard)) - first_block[shard]) * block_size
    stop = np.minimum(start + block_size, lengths[shard])
    blocks = np.stack([shard, start, stop], axis=1).astype(np.int64)
    if shuffle:
        blocks = blocks[np.random.default_rng([seed, epoch]).permutation(len(blocks))]
    return blocks


def rank_share(blocks: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The segments of ``blocks`` (rows shard, start, stop) that make rank ``rank``'s contiguous share.

    The order's J jets are split at ``r * J // world_size``; a block that straddles a split is cut.
    """
    sizes = blocks[:, 2] - blocks[:, 1]
    ends = np.cumsum(sizes)
    total = int(ends[-1]) if len(ends) else 0
    lo, hi = rank * total // world_size, (rank + 1) * total // world_size
    return _slice_segments(blocks, ends, lo, hi)


def _slice_segments(segments: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The jets [lo, hi) of the concatenated ``segments`` (whose cumulative sizes are ``ends``)."""
    if hi <= lo:
        return segments[:0]
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(ends, hi, side="left"))
    out = segments[first:last + 1].copy()
    starts = ends[first:last + 1] - (out[:, 2] - out[:, 1])
    out[0, 1] += lo - starts[0]
    out[-1, 2] -= ends[last] - hi
    return out


class ShardLoader:
    """Batches of jets from a ``ShardSet``, in a seeded order, optionally split across DDP ranks.

    Args:
        shards: the memory-mapped shards.
        batch_size: jets per batch.
        block_size: jets per contiguous block of the shuffled order.
        seed: seeds the order of every epoch.
        shuffle: shuffle blocks (training) or read in file order (validation).
        rank, world_size: this process's share under DDP (0, 1 without).
        epochs: stop after this many epochs (the last batch may be short); None streams forever,
            every batch full, running on across epoch boundaries.
        fields: which datasets a batch holds.
        pin_memory: allocate batches in pinned memory (for asynchronous copies to CUDA).
    """

    def __init__(self, shards: ShardSet, batch_size: int, block_size: int, seed: int, shuffle: bool,
                 rank: int, world_size: int, epochs: int | None, fields: tuple[str, ...],
                 pin_memory: bool):
        self.shards = shards
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epochs = epochs
        self.fields = fields
        self.pin_memory = pin_memory

    def jets_per_epoch(self) -> int:
        """Jets in this rank's share of an epoch (shares differ by at most one jet)."""
        total = self.shards.n_jets
        return (self.rank + 1) * total // self.world_size - self.rank * total // self.world_size

    def share(self, epoch: int) -> np.ndarray:
        """(n, 3) segments (shard, start, stop) of this rank's share of ``epoch``, in reading order."""
        blocks = epoch_order(self.shards.lengths, self.block_size, self.seed, epoch, self.shuffle)
        return rank_share(blocks, self.rank, self.world_size)

    def _gather(self, segments: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Copy the jets of ``segments`` into new (pinned) tensors: one slice copy per segment and field
        (a gather of the selected rows for a ``ShardSet.select`` view)."""
        n = sum(int(s[2] - s[1]) for s in segments)
        maps = self.shards.maps
        out = {}
        for name in self.fields:
            tensor = torch.empty((n,) + maps[0][name].shape[1:], dtype=_TORCH_DTYPES[name],
                                 pin_memory=self.pin_memory)
            target = tensor.numpy()
            at = 0
            index = self.shards.index
            for shard, start, stop in segments:
                rows = slice(start, stop) if index is None else index[shard][start:stop]
                target[at:at + stop - start] = maps[shard][name][rows]
                at += stop - start
            out[name] = tensor
        return out

    def batches(self, cursor: Cursor = Cursor()) -> Iterator[JetBatch]:
        """Yield batches from ``cursor`` on, in this thread (see ``prefetch`` for the threaded version)."""
        epoch, offset = cursor.epoch, cursor.offset
        pending: list[np.ndarray] = []
        n_pending = 0
        while self.epochs is None or epoch < self.epochs:
            share = self.share(epoch)
            ends = np.cumsum(share[:, 2] - share[:, 1])
            size = int(ends[-1]) if len(ends) else 0
            if size == 0:
                raise ShardError(f"{self.shards.folder}: rank {self.rank} of {self.world_size} gets no jets")
            while offset < size:
                take = min(self.batch_size - n_pending, size - offset)
                pending.extend(_slice_segments(share, ends, offset, offset + take))
                n_pending += take
                offset += take
                if n_pending == self.batch_size:
                    # At an epoch's end the position is the next epoch's start: ``cursor.epoch`` counts
                    # the epochs completed whether or not the last batch happened to be full.
                    after = Cursor(epoch, offset) if offset < size else Cursor(epoch + 1, 0)
                    yield JetBatch(self._gather(pending), after)
                    pending, n_pending = [], 0
            epoch, offset = epoch + 1, 0
            if self.epochs is not None and n_pending:
                # A finite pass does not carry jets into an epoch it will not read: the last batch is short.
                yield JetBatch(self._gather(pending), Cursor(epoch, 0))
                pending, n_pending = [], 0

    def prefetch(self, cursor: Cursor = Cursor(), depth: int = 4) -> Prefetcher:
        """``batches(cursor)`` produced by a background thread, ``depth`` batches ahead."""
        return Prefetcher(self.batches(cursor), depth)


class Prefetcher:
    """Runs a batch iterator in a daemon thread, ``depth`` items ahead; use as a context manager.

    Copying from the page cache releases the GIL, so the thread overlaps with the training step.
    Errors in the thread are raised in the consumer. ``close()`` stops the thread.
    """

    _END = object()

    def __init__(self, iterator: Iterator, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True, name="jjepa-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put(err)
            return
        self._put(self._END)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop the thread and drop the batches it prepared."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
