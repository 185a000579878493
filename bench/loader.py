"""Benchmark of the shard loader (``jjepa.train.data.loader``) against a per-item h5py Dataset, side by side in one run.

Measures, on toy shards (``write_toy_shards``; S=20, N=30 by default) already in the page cache, in one
process pinned to one core with torch at one thread, the pretraining fields (``PRETRAIN_FIELDS``):

* ours: ``ShardLoader.batches()`` (memory-mapped shards, shuffled blocks of contiguous jets), batch 256,
  over a first epoch (fresh memory mappings) and then ``--epochs`` further epochs (steady state);
* ours through the ``Prefetcher`` thread (what the training loop iterates);
* the reference design: a ``torch.utils.data.Dataset`` whose ``__getitem__`` reads each field of one
  jet with h5py (file handles opened once, as the reference J-JEPA code does), fed through
  ``torch.utils.data.DataLoader(batch_size=256, shuffle=True, num_workers=0)``, over ``--naive-jets`` jets.

Prints one JSON line. Shards are written once and cached outside the repository (``--cache``,
default ``~/.cache/jjepa-bench``; 8 shards × 25,000 jets ≈ 2.1 GB, about a minute the first time).
Example: ``python bench/loader.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from jjepa.common.shards import MANIFEST_NAME
from jjepa.common.testing import write_toy_shards
from jjepa.train.data.loader import PRETRAIN_FIELDS, Cursor, ShardLoader, ShardSet
from torch.utils.data import DataLoader, Dataset

TARGET_JETS_PER_S = 300_000
TARGET_RATIO = 300


def shards(cache: Path, n_shards: int, jets_per_shard: int, n_subjets: int, n_particles: int) -> Path:
    """A folder of toy shards under ``cache``, written if missing (the manifest is written last)."""
    folder = cache / f"loader-toy-S{n_subjets}-N{n_particles}-{n_shards}x{jets_per_shard}"
    if not (folder / MANIFEST_NAME).exists():
        write_toy_shards(folder, n_shards, jets_per_shard, n_subjets, n_particles, seed=0)
    return folder


def warm_page_cache(folder: Path) -> int:
    """Read every shard once so that the timed runs read from memory, not the disk; returns bytes."""
    total = 0
    for path in sorted(folder.glob("shard-*.h5")):
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total


class PerItemH5Dataset(Dataset):
    """The reference design: one h5py read per field per jet; file handles opened once per worker."""

    def __init__(self, folder: Path, fields: tuple[str, ...]):
        self.paths = sorted(folder.glob("shard-*.h5"))
        self.fields = fields
        sizes = []
        for path in self.paths:
            with h5py.File(path, "r") as f:
                sizes.append(f["labels"].shape[0])
        self.ends = np.cumsum(sizes)
        self.files: list[h5py.File] | None = None

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if self.files is None:
            self.files = [h5py.File(path, "r") for path in self.paths]
        shard = int(np.searchsorted(self.ends, index, side="right"))
        local = index - (int(self.ends[shard - 1]) if shard else 0)
        f = self.files[shard]
        return {name: f[name][local] for name in self.fields}


def time_batches(iterator, n_jets: int) -> tuple[float, int]:
    """Seconds to draw batches from ``iterator`` until ``n_jets`` jets came (or it ends), and the jets drawn."""
    seen = 0
    start = time.perf_counter()
    for batch in iterator:
        seen += len(batch) if not isinstance(batch, dict) else len(next(iter(batch.values())))
        if seen >= n_jets:
            break
    return time.perf_counter() - start, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8, help="toy shards")
    parser.add_argument("--jets-per-shard", type=int, default=25_000)
    parser.add_argument("--n-subjets", type=int, default=20, help="S")
    parser.add_argument("--n-particles", type=int, default=30, help="N")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=64, help="jets per contiguous block (the config default)")
    parser.add_argument("--epochs", type=int, default=2, help="steady-state epochs timed after the first")
    parser.add_argument("--naive-jets", type=int, default=5_000, help="jets for the per-item h5py Dataset")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "jjepa-bench")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one core")
    args = parser.parse_args()

    torch.set_num_threads(1)
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    folder = shards(args.cache, args.shards, args.jets_per_shard, args.n_subjets, args.n_particles)
    cached_bytes = warm_page_cache(folder)

    shard_set = ShardSet(folder)
    n = shard_set.n_jets

    def loader(epochs: int | None) -> ShardLoader:
        return ShardLoader(shard_set, args.batch_size, args.block_size, seed=0, shuffle=True, rank=0,
                           world_size=1, epochs=epochs, fields=PRETRAIN_FIELDS, pin_memory=False)

    # Ours: the first epoch maps the pages into this process; later epochs are the steady state.
    t_first, seen_first = time_batches(loader(1).batches(), n)
    steady = args.epochs * n
    t_ours, seen_ours = time_batches(loader(None).batches(Cursor(1, 0)), steady)
    with loader(None).prefetch(Cursor(1 + args.epochs, 0), depth=4) as prefetched:
        t_prefetch, seen_prefetch = time_batches(prefetched, steady)

    # The reference design on the same shards and fields.
    dataset = PerItemH5Dataset(folder, PRETRAIN_FIELDS)
    naive = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0,
                       generator=torch.Generator().manual_seed(0))
    time_batches(naive, args.batch_size)  # opens the files
    t_naive, seen_naive = time_batches(naive, args.naive_jets)

    # Same data: a file-order batch of ours equals the per-item reads.
    check = next(ShardLoader(shard_set, 64, args.block_size, seed=0, shuffle=False, rank=0, world_size=1, epochs=1,
                             fields=PRETRAIN_FIELDS, pin_memory=False).batches())
    for j in (0, 17, 63):
        item = dataset[j]
        for name in PRETRAIN_FIELDS:
            np.testing.assert_array_equal(check[name][j].numpy(), item[name])

    rates = {
        "ours_jets_per_s": seen_ours / t_ours,
        "ours_first_epoch_jets_per_s": seen_first / t_first,
        "ours_prefetch_jets_per_s": seen_prefetch / t_prefetch,
        "naive_h5py_dataset_jets_per_s": seen_naive / t_naive,
    }
    bytes_per_jet = sum(shard_set.maps[0][name][0].nbytes for name in PRETRAIN_FIELDS)
    ratio = rates["ours_jets_per_s"] / rates["naive_h5py_dataset_jets_per_s"]
    result = {
        "benchmark": "loader",
        "n_jets": n,
        "n_subjets": args.n_subjets,
        "n_particles": args.n_particles,
        "batch_size": args.batch_size,
        "block_size": args.block_size,
        "fields": list(PRETRAIN_FIELDS),
        "bytes_per_jet": int(bytes_per_jet),
        "steady_epochs": args.epochs,
        "naive_jets": seen_naive,
        **{k: round(v) for k, v in rates.items()},
        "ours_gb_per_s": round(rates["ours_jets_per_s"] * bytes_per_jet / 1e9, 2),
        "ratio_ours_vs_naive": round(ratio, 1),
        "ratio_prefetch_vs_naive": round(rates["ours_prefetch_jets_per_s"] / rates["naive_h5py_dataset_jets_per_s"], 1),
        "ratio_first_epoch_vs_naive": round(rates["ours_first_epoch_jets_per_s"]
                                            / rates["naive_h5py_dataset_jets_per_s"], 1),
        "meets_targets": bool(rates["ours_jets_per_s"] >= TARGET_JETS_PER_S and ratio >= TARGET_RATIO),
        "page_cache_bytes": cached_bytes,
        "pinned_cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
