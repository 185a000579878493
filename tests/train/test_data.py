"""The shard loader: every jet once per epoch, disjoint DDP shares, seeded orders, resumable streams,
the prefetch thread, and clear errors for a manifest that disagrees with its shards."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import numpy as np
import pytest
from jjepa.common.errors import ShardError
from jjepa.common.schema import ClusterConfig, ShardAttrs
from jjepa.common.shards import Manifest, read_shard, record_for, shard_name, write_manifest, write_shard
from jjepa.common.testing import CLASSES, toy_jets
from jjepa.train.data.loader import (
    PRETRAIN_FIELDS,
    Cursor,
    Prefetcher,
    ShardLoader,
    ShardSet,
    epoch_order,
    evaluation_batches,
    rank_share,
    training_loader,
)

#: Uneven shard lengths (one empty, one of two jets) so that no block or batch size divides them all.
LENGTHS = (37, 120, 0, 64, 2)
TOTAL = sum(LENGTHS)  # 223: not a multiple of 2 or 3, so DDP shares differ by one jet
FIELDS = (*PRETRAIN_FIELDS, "jets", "labels")
S, N = 10, 12  # small jets, as the toy fixtures of conftest.py


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """Toy shards of ``LENGTHS`` jets whose ``jets[:, 0]`` holds the jet's global index (file order)."""
    folder = tmp_path_factory.mktemp("indexed")
    cluster = ClusterConfig(n_subjets=S, n_particles=N)
    manifest = Manifest(cluster=cluster, classes=CLASSES)
    first = 0
    for k, length in enumerate(LENGTHS):
        arrays = toy_jets(length, k % 2, S, N, seed=10 + k)
        jets = arrays.jets.copy()
        jets[:, 0] = np.arange(first, first + length)
        arrays = dataclasses.replace(arrays, jets=jets)
        path = folder / shard_name(k)
        write_shard(path, arrays, ShardAttrs(cluster=cluster, classes=CLASSES, source={"k": k}))
        manifest.shards.append(record_for(path, arrays.labels, CLASSES, {"k": k}))
        first += length
    write_manifest(folder, manifest)
    return folder


@pytest.fixture(scope="module")
def reference(indexed):
    """Every field of every jet, concatenated in file order, read with h5py (not memory-mapped)."""
    shards = [read_shard(indexed / shard_name(k)) for k in range(len(LENGTHS))]
    return {name: np.concatenate([getattr(a, name) for a in shards]) for name in FIELDS}


def make_loader(folder, batch_size=16, block_size=8, seed=0, shuffle=True, rank=0, world_size=1, epochs=1,
                fields=FIELDS) -> ShardLoader:
    return ShardLoader(ShardSet(folder), batch_size=batch_size, block_size=block_size, seed=seed,
                       shuffle=shuffle, rank=rank, world_size=world_size, epochs=epochs, fields=fields,
                       pin_memory=False)


def ids(batch) -> np.ndarray:
    """Global indices of a batch's jets."""
    return batch["jets"][:, 0].numpy().astype(np.int64)


def take(iterator, n: int) -> list:
    out = []
    for batch in iterator:
        out.append(batch)
        if len(out) == n:
            break
    return out


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.cursor == b.cursor
        np.testing.assert_array_equal(ids(a), ids(b))


def test_shard_set_maps_every_shard(indexed):
    shards = ShardSet(indexed)
    assert shards.lengths.tolist() == list(LENGTHS)
    assert shards.n_jets == TOTAL
    assert (shards.n_subjets, shards.n_particles) == (S, N)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(("batch_size", "block_size"), [(16, 8), (33, 7), (50, 64), (1, 5), (300, 1), (223, 223)])
def test_an_epoch_delivers_every_jet_exactly_once(indexed, reference, shuffle, batch_size, block_size):
    loader = make_loader(indexed, batch_size=batch_size, block_size=block_size, shuffle=shuffle)
    batches = list(loader.batches())
    order = np.concatenate([ids(b) for b in batches])
    np.testing.assert_array_equal(np.sort(order), np.arange(TOTAL))
    if not shuffle:
        np.testing.assert_array_equal(order, np.arange(TOTAL))
    elif block_size < 64:
        assert not np.array_equal(order, np.arange(TOTAL))
    # Every batch full but the last; the last one's cursor points at the next epoch.
    assert len(batches) == -(-TOTAL // batch_size)
    assert all(len(b) == batch_size for b in batches[:-1])
    assert len(batches[-1]) == TOTAL - (len(batches) - 1) * batch_size
    assert batches[-1].cursor == Cursor(1, 0)
    # Every field of every jet is the jet's own, with the schema's dtype and shape.
    for batch in batches:
        index = ids(batch)
        for name in FIELDS:
            array = batch[name].numpy()
            assert array.dtype == reference[name].dtype
            np.testing.assert_array_equal(array, reference[name][index])


def test_a_shuffled_epoch_reads_contiguous_blocks(indexed):
    """Jets come in runs of consecutive jets of one shard; runs start on block boundaries."""
    order = np.concatenate([ids(b) for b in make_loader(indexed, batch_size=30, block_size=10).batches()])
    shard_start = np.concatenate([[0], np.cumsum(LENGTHS)])
    breaks = np.flatnonzero(np.diff(order) != 1) + 1
    for run in np.split(order, breaks):
        shard = np.searchsorted(shard_start, run[0], side="right") - 1
        assert (run[0] - shard_start[shard]) % 10 == 0
        assert run[-1] < shard_start[shard + 1]


def test_two_epochs_deliver_every_jet_twice_in_different_orders(indexed):
    loader = make_loader(indexed, batch_size=40, block_size=4, epochs=2)
    batches = list(loader.batches())
    order = np.concatenate([ids(b) for b in batches])
    assert len(order) == 2 * TOTAL
    first, second = order[:TOTAL], order[TOTAL:]
    np.testing.assert_array_equal(np.sort(first), np.arange(TOTAL))
    np.testing.assert_array_equal(np.sort(second), np.arange(TOTAL))
    assert not np.array_equal(first, second)
    # A finite pass does not carry jets across epochs: each epoch ends in its own (short) batch.
    assert [len(b) for b in batches].count(TOTAL % 40) == 2
    assert batches[-1].cursor == Cursor(2, 0)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_share_an_epoch_disjointly(indexed, world_size, shuffle):
    shares = []
    for rank in range(world_size):
        loader = make_loader(indexed, batch_size=13, block_size=6, shuffle=shuffle, rank=rank, world_size=world_size)
        share = np.concatenate([ids(b) for b in loader.batches()])
        assert len(share) == loader.jets_per_epoch()
        shares.append(share)
    sizes = [len(s) for s in shares]
    assert sum(sizes) == TOTAL
    assert max(sizes) - min(sizes) == 1  # 223 jets do not split evenly in 2 or 3
    union = np.concatenate(shares)
    np.testing.assert_array_equal(np.sort(union), np.arange(TOTAL))  # disjoint and complete
    # The shares are consecutive pieces of the one epoch order that a single process would read.
    single = np.concatenate([ids(b) for b in make_loader(indexed, batch_size=13, block_size=6,
                                                         shuffle=shuffle).batches()])
    np.testing.assert_array_equal(union, single)


def test_rank_share_cuts_blocks_at_the_split():
    blocks = epoch_order(np.array([5, 3, 4]), block_size=2, seed=0, epoch=0, shuffle=False)
    assert blocks.tolist() == [[0, 0, 2], [0, 2, 4], [0, 4, 5], [1, 0, 2], [1, 2, 3], [2, 0, 2], [2, 2, 4]]
    assert rank_share(blocks, 0, 2).tolist() == [[0, 0, 2], [0, 2, 4], [0, 4, 5], [1, 0, 1]]
    assert rank_share(blocks, 1, 2).tolist() == [[1, 1, 2], [1, 2, 3], [2, 0, 2], [2, 2, 4]]
    assert rank_share(blocks, 2, 12).tolist() == [[0, 2, 3]]


def test_a_rank_without_jets_is_a_clear_error(indexed):
    loader = make_loader(indexed, rank=0, world_size=TOTAL + 1)
    assert loader.jets_per_epoch() == 0
    with pytest.raises(ShardError, match="rank 0 of 224 gets no jets"):
        next(loader.batches())


def test_the_order_is_seeded(indexed):
    def order(seed, epoch):
        loader = make_loader(indexed, batch_size=25, block_size=4, seed=seed, epochs=epoch + 1)
        return np.concatenate([ids(b) for b in loader.batches(Cursor(epoch, 0))])

    np.testing.assert_array_equal(order(7, 0), order(7, 0))
    np.testing.assert_array_equal(order(7, 3), order(7, 3))
    assert not np.array_equal(order(7, 0), order(7, 1))
    assert not np.array_equal(order(7, 0), order(8, 0))
    lengths = np.array(LENGTHS)
    np.testing.assert_array_equal(epoch_order(lengths, 4, 7, 2, True), epoch_order(lengths, 4, 7, 2, True))
    assert not np.array_equal(epoch_order(lengths, 4, 7, 2, True), epoch_order(lengths, 4, 7, 3, True))


@pytest.mark.parametrize(("rank", "world_size", "batch_size"), [(0, 1, 40), (1, 2, 40), (1, 2, 16)])
def test_streaming_gives_full_batches_across_epochs(indexed, rank, world_size, batch_size):
    """Batches straddle epoch boundaries (40) or end exactly on them (16 divides rank 1's 112 jets)."""
    loader = make_loader(indexed, batch_size=batch_size, block_size=9, epochs=None, rank=rank, world_size=world_size)
    per_epoch = loader.jets_per_epoch()
    batches = take(loader.batches(), 3 * per_epoch // batch_size + 1)
    assert all(len(b) == batch_size for b in batches)
    stream = np.concatenate([ids(b) for b in batches])
    # The stream is the share of epoch 0, then of epoch 1, …, each read whole and in its own order.
    epochs = [stream[e * per_epoch:(e + 1) * per_epoch] for e in range(3)]
    for e, jets in enumerate(epochs):
        finite = make_loader(indexed, batch_size=per_epoch, block_size=9, epochs=e + 1, rank=rank,
                             world_size=world_size)
        np.testing.assert_array_equal(jets, ids(next(finite.batches(Cursor(e, 0)))))
    assert len(set(map(tuple, epochs))) == 3
    # Cursors count the jets of the current epoch's share already delivered.
    for i, batch in enumerate(batches):
        delivered = (i + 1) * batch_size
        assert batch.cursor == Cursor(delivered // per_epoch, delivered % per_epoch)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_rank_finds_its_own_position_from_the_step(indexed, world_size):
    """A checkpoint holds rank 0's cursor; ranks whose shares differ by a jet are elsewhere after an epoch."""
    positions = []
    for rank in range(world_size):
        loader = make_loader(indexed, batch_size=24, block_size=5, seed=3, epochs=None, rank=rank,
                             world_size=world_size)
        stream = take(loader.batches(), 30)
        assert [loader.cursor_after(k + 1) for k in range(30)] == [b.cursor for b in stream]
        assert loader.resumed_cursor(30, stream[0].cursor if rank else stream[-1].cursor) == stream[-1].cursor
        assert loader.largest_share() == -(-loader.shards.n_jets // world_size)
        positions.append(stream[-1].cursor)
    if world_size > 1:
        assert len(set(positions)) > 1, "unequal shares: the ranks' positions differ"
        with pytest.raises(ShardError, match=r"data position .* is not where 30 steps of 24 jets"):
            make_loader(indexed, batch_size=24, block_size=5, seed=3, epochs=None, rank=0,
                        world_size=world_size).resumed_cursor(30, next(p for p in positions if p != positions[0]))


@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (2, 3)])
def test_resuming_from_a_cursor_continues_the_stream(indexed, rank, world_size):
    def loader():
        return make_loader(indexed, batch_size=24, block_size=5, seed=3, epochs=None, rank=rank,
                           world_size=world_size)

    reference = take(loader().batches(), 20)  # several epoch boundaries, some inside a batch
    assert reference[-1].cursor.epoch >= 2
    for i, batch in enumerate(reference[:-1]):
        resumed = take(loader().batches(batch.cursor), len(reference) - i - 1)
        assert_same_batches(resumed, reference[i + 1:])


def test_resuming_a_finite_pass(indexed):
    full = list(make_loader(indexed, batch_size=30, block_size=7, epochs=2).batches())
    for i, batch in enumerate(full[:-1]):
        resumed = list(make_loader(indexed, batch_size=30, block_size=7, epochs=2).batches(batch.cursor))
        assert_same_batches(resumed, full[i + 1:])


def test_prefetcher_yields_the_same_batches(indexed):
    loader = make_loader(indexed, batch_size=17, block_size=6, epochs=2)
    expected = list(loader.batches())
    with loader.prefetch(depth=2) as prefetched:
        got = list(prefetched)
    assert_same_batches(got, expected)
    for a, b in zip(got, expected, strict=True):
        for name in FIELDS:
            np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())
    # From a cursor, too.
    with loader.prefetch(expected[4].cursor, depth=3) as prefetched:
        assert_same_batches(list(prefetched), expected[5:])


def test_prefetcher_reraises_the_producers_error():
    def produce():
        yield 1
        yield 2
        raise ValueError("broken shard")

    prefetcher = Prefetcher(produce(), depth=1)
    got = []
    with pytest.raises(ValueError, match="broken shard"):
        for item in prefetcher:
            got.append(item)
    assert got == [1, 2]
    assert not prefetcher._thread.is_alive()


def _closes_in_time(prefetcher: Prefetcher) -> bool:
    """Close from another thread; False if it hangs (a generous guard, not a timing assertion)."""
    closer = threading.Thread(target=prefetcher.close, daemon=True)
    closer.start()
    closer.join(timeout=30)
    return not closer.is_alive()


def test_prefetcher_close_stops_an_endless_stream(indexed):
    loader = make_loader(indexed, batch_size=8, block_size=4, epochs=None)
    prefetcher = loader.prefetch(depth=2)
    first = next(prefetcher)
    assert len(first) == 8
    assert _closes_in_time(prefetcher)
    assert not prefetcher._thread.is_alive()
    with pytest.raises(StopIteration):
        next(prefetcher)
    prefetcher.close()  # twice is harmless


def test_prefetcher_close_before_anything_is_read():
    produced = []

    def produce():
        for i in range(1000):
            produced.append(i)
            yield i

    prefetcher = Prefetcher(produce(), depth=2)
    assert _closes_in_time(prefetcher)
    assert not prefetcher._thread.is_alive()
    assert len(produced) < 1000


def test_a_manifest_that_disagrees_with_a_shard_names_the_file(toy_train, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(toy_train, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][1]["n_jets"] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"shard-00001\.h5: 500 jets, the manifest says 501"):
        ShardSet(folder)


def test_an_empty_manifest_is_a_clear_error(tmp_path):
    write_manifest(tmp_path, Manifest(cluster=ClusterConfig(), classes=CLASSES))
    with pytest.raises(ShardError, match="lists no shards"):
        ShardSet(tmp_path)


# --- the loaders the runners use ----------------------------------------------------------------------

def test_evaluation_batches_read_every_jet_in_file_order(indexed):
    import torch

    batches = list(evaluation_batches(ShardSet(indexed), 50, FIELDS, torch.device("cpu")))
    assert [len(b) for b in batches] == [50, 50, 50, 50, 23]
    np.testing.assert_array_equal(np.concatenate([ids(b) for b in batches]), np.arange(TOTAL))


def test_partial_evaluation_is_the_same_mixed_jets_every_time(indexed):
    """``max_batches``: that many batches of a fixed shuffled block order, so a partial validation mixes the
    shards (not the first shard's jets) and scores the same jets at every validation."""
    import torch

    def read():
        return np.concatenate([ids(b) for b in evaluation_batches(ShardSet(indexed), 20, FIELDS, torch.device("cpu"),
                                                                   max_batches=3, block_size=8, seed=5)])

    first = read()
    assert len(first) == 60 and len(set(first)) == 60
    np.testing.assert_array_equal(first, read())
    assert not np.array_equal(first, np.arange(60)), "a partial validation must not read the files in order"


def test_training_loader_streams_full_shuffled_batches_of_a_rank_share(indexed):
    import torch

    loaders = [training_loader(ShardSet(indexed), 16, 8, 0, rank, 2, FIELDS, torch.device("cpu")) for rank in (0, 1)]
    firsts = []
    for loader in loaders:
        batches = loader.batches()
        epoch = [next(batches) for _ in range(-(-loader.jets_per_epoch() // 16) + 2)]  # past an epoch's end
        assert all(len(b) == 16 for b in epoch), "a training stream runs on across epochs with full batches"
        firsts.append(set(np.concatenate([ids(b) for b in epoch[:loader.jets_per_epoch() // 16]])))
    assert not firsts[0] & firsts[1], "the two ranks' shares overlap"
