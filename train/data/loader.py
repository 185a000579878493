"""The shard loader: memory-mapped shards, a seeded shuffled order of contiguous blocks, prefetched batches.

Every shard listed in a folder's ``manifest.json`` is memory-mapped (``open_memmaps``), so reading
a batch is copying a few contiguous slices out of the page cache: no h5py call and no Python per jet.
The reading order of an epoch is the shards' jets cut into blocks of ``block_size`` contiguous jets,
shuffled with a generator seeded by (seed, epoch); a batch is the next ``batch_size`` jets of that
order, i.e. a handful of blocks from different shards. Shards written with float16 particles
(``jjepa-preprocess cluster --particle-dtype float16``) are memory-mapped as float16 and converted
to float32 by that same copy, so a batch is float32 whatever the shards store.

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
from jjepa.common.schema import SHARD_ARRAYS, config_dict, validate_shard
from jjepa.common.shards import MANIFEST_NAME, Manifest, open_memmaps, read_manifest
from jjepa.train.config import ModelConfig
from jjepa.train.data.integrity import verify_shards
from jjepa.train.data.provenance import check_same_clustering

#: What pretraining reads of a shard.
PRETRAIN_FIELDS: tuple[str, ...] = ("particles", "particle_mask", "subjets", "subjet_mask")
#: What finetuning reads: ``labels``, and ``jets`` (pT, η, E of the jet), inputs of the ``part`` mode.
FINETUNE_FIELDS: tuple[str, ...] = PRETRAIN_FIELDS + ("labels", "jets")
#: Jets per block of the fixed shuffled order of a partial validation (``evaluation_batches``'s ``max_batches``).
VAL_BLOCK = 64
#: Batch dtypes: the schema's, float32 ``particles`` also for float16 shards (converted while copying).
_TORCH_DTYPES = {spec.name: torch.from_numpy(np.zeros(0, spec.dtype)).dtype for spec in SHARD_ARRAYS}


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
        verify: check every shard's sha256 against the manifest first (``integrity.verify_shards``:
            files already verified, unchanged, are not hashed again).

    Every shard is checked against the schema (``validate_shard``: version, dtypes, shapes) and
    against the manifest (S, N and jet counts) before anything is read, so a damaged, truncated or
    foreign shard is an error naming its file, never a traceback in the middle of training.

    ``index`` is None (every jet) or, per shard, the sorted positions of the selected jets (see
    ``select``); ``lengths`` counts the selected jets, and the loader's positions run over them.
    """

    def __init__(self, folder: str | os.PathLike, verify: bool = True):
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(folder)
        if not self.manifest.shards:
            raise ShardError(f"{folder}: the manifest lists no shards")
        paths = [self.folder / record.file for record in self.manifest.shards]
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise ShardError(f"{missing[0]}: listed in {self.folder / 'manifest.json'} but missing"
                             f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; copy it back or "
                             "rebuild it (`jjepa-preprocess cluster ... --resume`)")
        if verify:
            verify_shards(paths, [record.sha256 for record in self.manifest.shards])
        self.maps = [self._open(path) for path in paths]
        self.lengths = np.array([m["labels"].shape[0] for m in self.maps], dtype=np.int64)
        self.index: list[np.ndarray] | None = None
        for record, length in zip(self.manifest.shards, self.lengths, strict=True):
            if record.n_jets != length:
                raise ShardError(f"{self.folder / record.file}: {length} jets, the manifest says {record.n_jets}")

    def _open(self, path: Path) -> dict[str, np.ndarray]:
        """Memory-map one shard after checking it against the schema and the manifest's S and N."""
        problems = validate_shard(path)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise ShardError(f"{path}: {problems[0]}{more}; the shard is damaged or not a jjepa shard: rebuild it "
                             "(`jjepa-preprocess cluster ... --resume`) or remove it from the folder and manifest")
        maps = open_memmaps(path)
        s, n = maps["particles"].shape[1:3]
        if (s, n) != (self.n_subjets, self.n_particles):
            raise ShardError(f"{path}: S={s} subjets of N={n} constituents, but {self.folder / 'manifest.json'} "
                             f"says S={self.n_subjets}, N={self.n_particles}; a folder holds shards of one "
                             "clustering: move this shard to a folder of its own (with its own manifest)")
        return maps

    def check_like(self, other: ShardSet, role: str) -> None:
        """Refuse ``other`` (e.g. ``--val``) unless it has the same schema, S, N, dtypes and clustering
        (algorithm, radius) as these shards.

        Called before any step, so a validation or test set of another clustering fails at once, not
        after training. ``role`` names ``other`` in the message (``--val``, ``--test``). Particles
        stored as float16 in one set and float32 in the other agree: batches are float32 either way.
        """
        def layout(maps: dict[str, np.ndarray]) -> dict:
            return {k: (v.dtype.kind if k == "particles" else v.dtype, v.shape[1:]) for k, v in maps.items()}

        mine, theirs = layout(self.maps[0]), layout(other.maps[0])
        if (other.n_subjets, other.n_particles) != (self.n_subjets, self.n_particles) or mine != theirs:
            differ = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise ShardError(f"{role} {other.folder}: shards of S={other.n_subjets}, N={other.n_particles} "
                             f"(datasets {differ} differ), but {self.folder} has S={self.n_subjets}, "
                             f"N={self.n_particles}; cluster every set with the same --n-subjets and --n-particles")
        check_same_clustering(config_dict(self.manifest.cluster), other.folder, other.manifest,
                              f"{role}: the shards in {self.folder} have")

    def refuse_as_output(self, out: str | os.PathLike) -> None:
        """Refuse ``out`` when it is one of these shards or their manifest: writing it would destroy the input."""
        ours = {(self.folder / name).resolve() for name in [MANIFEST_NAME, *(r.file for r in self.manifest.shards)]}
        if Path(out).resolve() in ours:
            raise ShardError(f"{out}: a file of the input folder {self.folder}; writing it would destroy the shards "
                             "it is computed from: choose another output path")

    def bind(self, model: ModelConfig) -> ModelConfig:
        """``model`` with S and N taken from these shards; an encoder built for other S or N is an error."""
        for name, value in (("n_subjets", self.n_subjets), ("n_particles", self.n_particles)):
            if getattr(model, name) not in (None, value):
                raise ShardError(f"model.{name} is {getattr(model, name)} but the shards in {self.folder} have {value}; "
                                 "an encoder only reads shards clustered with the S and N it was built for")
        return replace(model, n_subjets=self.n_subjets, n_particles=self.n_particles)

    def select(self, index: list[np.ndarray]) -> ShardSet:
        """A view of these shards holding only the jets at ``index`` (per shard, sorted int64 positions).

        Positions count the jets of *this* view, so selections compose: on a view that already
        selects jets (e.g. ``with_min_subjets``), ``index`` picks among those.
        """
        if len(index) != len(self.maps):
            raise ValueError(f"need one index array per shard ({len(self.maps)}), got {len(index)}")
        view = copy.copy(self)
        view.index = [np.asarray(i, dtype=np.int64) for i in index]
        if self.index is not None:
            view.index = [rows[i] for rows, i in zip(self.index, view.index, strict=True)]
        view.lengths = np.array([len(i) for i in view.index], dtype=np.int64)
        return view

    def with_min_subjets(self, min_subjets: int) -> ShardSet:
        """A view without the jets that have fewer than ``min_subjets`` real subjets; 0 returns ``self``.

        Reads only ``subjet_mask`` (J, S) of each shard, one vectorised count per shard; the jets are
        left out, not re-clustered. Raises ``ShardError`` when no jet is left.
        """
        if min_subjets <= 0:
            return self
        if min_subjets > self.n_subjets:
            raise ShardError(f"min_subjets is {min_subjets} but the shards in {self.folder} hold at most "
                             f"{self.n_subjets} subjets per jet; lower min_subjets or re-cluster with more slots")
        keep = []
        for k, m in enumerate(self.maps):
            rows = np.arange(len(m["subjet_mask"])) if self.index is None else self.index[k]
            n_real = np.asarray(m["subjet_mask"]).sum(axis=1)[rows]
            keep.append(np.flatnonzero(n_real >= min_subjets))
        view = self.select(keep)
        if view.n_jets == 0:
            raise ShardError(f"{self.folder}: no jet has {min_subjets} or more real subjets; lower min_subjets "
                             "(0 keeps every jet)")
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
        check_finite: refuse a batch whose float fields (``particles``, ``subjets``) hold NaN or inf,
            with a ``ShardError`` naming the shard and the rows of the offending jets, so bad values
            never become a loss. One ``np.isfinite(...).all()`` per field and batch, in the loader
            thread (about the cost of the copy itself; docs/performance.md).
    """

    def __init__(self, shards: ShardSet, batch_size: int, block_size: int, seed: int, shuffle: bool,
                 rank: int, world_size: int, epochs: int | None, fields: tuple[str, ...],
                 pin_memory: bool, check_finite: bool = True):
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
        self.check_finite = check_finite

    def jets_per_epoch(self) -> int:
        """Jets in this rank's share of an epoch (shares differ by at most one jet)."""
        total = self.shards.n_jets
        return (self.rank + 1) * total // self.world_size - self.rank * total // self.world_size

    def largest_share(self) -> int:
        """Jets in the largest rank's share of an epoch, ceil(J / W): the same on every rank, so step counts
        derived from it agree across ranks."""
        return -(-self.shards.n_jets // self.world_size)

    def cursor_after(self, steps: int) -> Cursor:
        """Where this rank's stream stands after ``steps`` batches from the start.

        Batches are always full and run on across epochs, so the position follows from the step alone,
        on every rank (whose shares may differ by a jet: their positions then differ after an epoch).
        """
        delivered = steps * self.batch_size
        per_epoch = self.jets_per_epoch()
        return Cursor(epoch=delivered // per_epoch, offset=delivered % per_epoch)

    def resumed_cursor(self, steps: int, saved: Cursor) -> Cursor:
        """This rank's position in a run resumed at ``steps``; ``saved``, the checkpoint's (rank 0's), must agree.

        Raises:
            ShardError: on rank 0 the saved position is not where ``steps`` batches lead: the checkpoint
                was written over other shards or another batch size.
        """
        cursor = self.cursor_after(steps)
        if self.rank == 0 and cursor != saved:
            raise ShardError(f"the checkpoint's data position ({saved}) is not where {steps} steps of "
                             f"{self.batch_size} jets over {self.shards.folder} lead ({cursor}); resume with the "
                             "shards and batch size the run started with")
        return cursor

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
            if self.check_finite and target.dtype.kind == "f" and not np.isfinite(target).all():
                raise self._non_finite(name, target, segments)
            out[name] = tensor
        return out

    def _non_finite(self, name: str, target: np.ndarray, segments: list[np.ndarray]) -> ShardError:
        """The error for a batch whose ``name`` array (B, ...) holds NaN or inf: the first shard and its rows."""
        bad = np.flatnonzero(~np.isfinite(target.reshape(len(target), -1)).all(axis=1))
        sizes = np.array([int(stop - start) for _, start, stop in segments])
        ends = np.cumsum(sizes)
        which = int(np.searchsorted(ends, bad[0], side="right"))
        shard, start, stop = (int(v) for v in segments[which])
        positions = bad[(bad >= ends[which] - sizes[which]) & (bad < ends[which])] - (ends[which] - sizes[which])
        rows = positions + start if self.shards.index is None else self.shards.index[shard][start:stop][positions]
        shown = ", ".join(str(r) for r in rows[:10]) + (", …" if len(rows) > 10 else "")
        path = self.shards.folder / self.shards.manifest.shards[shard].file
        return ShardError(f"{path}: non-finite values (NaN or inf) in {name!r} of the jet(s) at row(s) {shown}; "
                          "the shard was written from bad input or is damaged: fix the input and rebuild it "
                          "(`jjepa-preprocess cluster`), or remove the shard from the folder and manifest")

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


def training_loader(shards: ShardSet, batch_size: int, block_size: int, seed: int, rank: int, world_size: int,
                    fields: tuple[str, ...], device: torch.device) -> ShardLoader:
    """The endless shuffled stream of full batches a training loop reads (this rank's share under DDP)."""
    return ShardLoader(shards, batch_size, block_size, seed, shuffle=True, rank=rank, world_size=world_size,
                       epochs=None, fields=fields, pin_memory=device.type == "cuda")


def evaluation_batches(shards: ShardSet, batch_size: int, fields: tuple[str, ...], device: torch.device,
                       max_batches: int | None = None, block_size: int = VAL_BLOCK,
                       seed: int = 0) -> Iterator[JetBatch]:
    """One pass over ``shards`` in one process: every jet in file order, or (``max_batches``) the first
    ``max_batches`` batches of a fixed shuffled order of ``block_size``-jet blocks seeded by ``seed``, so a
    partial validation mixes every shard and sees the same jets every time."""
    partial = max_batches is not None
    loader = ShardLoader(shards, batch_size, block_size if partial else batch_size, seed, shuffle=partial, rank=0,
                         world_size=1, epochs=1, fields=fields, pin_memory=device.type == "cuda")
    for index, batch in enumerate(loader.batches()):
        if partial and index >= max_batches:
            return
        yield batch


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
