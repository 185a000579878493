"""Cost of the trainer's data checks (issue 16), side by side with what they guard, in one run.

On toy shards (``write_toy_shards``; S=20, N=30, 4 × 10,000 jets ≈ 106 MB each, written once under
``--cache``, default ``~/.cache/jjepa-bench``), read from the page cache:

* the per-batch non-finite check: ``ShardLoader.batches()`` with ``check_finite`` off and on, same
  order, batch 256 (the check is one ``np.isfinite(...).all()`` per float field and batch);
* the shard checks of ``ShardSet``: the sha256 of every shard (first run; ``integrity.verify_shards``
  with an empty cache), the same verification remembered (second run: one ``stat`` per shard), and
  opening the set without hashing (schema check + memory maps);
* a training step of the ``tiny`` preset on this device, for scale (``pretrain``, steps after the first).

Prints one JSON line. Example: ``python bench/integrity.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from jjepa.common.shards import MANIFEST_NAME
from jjepa.common.testing import write_toy_shards
from jjepa.train.config import resolve_pretrain_config
from jjepa.train.data import integrity
from jjepa.train.data.loader import PRETRAIN_FIELDS, ShardLoader, ShardSet
from jjepa.train.runners.pretrain import pretrain


def shards(cache: Path, n_shards: int, jets: int) -> Path:
    folder = cache / f"integrity-toy-S20-N30-{n_shards}x{jets}"
    if not (folder / MANIFEST_NAME).exists():
        write_toy_shards(folder, n_shards, jets, 20, 30, seed=0)
    return folder


def best_of(repeats: int, func) -> float:
    """The fastest of ``repeats`` timings of ``func()`` in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--jets-per-shard", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "jjepa-bench")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = shards(args.cache, args.shards, args.jets_per_shard)
    paths = sorted(folder.glob("shard-*.h5"))
    n_bytes = sum(p.stat().st_size for p in paths)
    for path in paths:  # into the page cache
        integrity.sha256_file(path)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ[integrity.CACHE_ENV] = tmp
        t_hash = best_of(1, lambda: ShardSet(folder, verify=True))
        t_remembered = best_of(args.repeats, lambda: ShardSet(folder, verify=True))
    t_open = best_of(args.repeats, lambda: ShardSet(folder, verify=False))

    shard_set = ShardSet(folder, verify=False)

    def one_epoch(check: bool) -> None:
        loader = ShardLoader(shard_set, args.batch_size, 64, seed=0, shuffle=True, rank=0, world_size=1, epochs=1,
                             fields=PRETRAIN_FIELDS, pin_memory=False, check_finite=check)
        for _ in loader.batches():
            pass

    n_batches = -(-shard_set.n_jets // args.batch_size)
    t_plain = best_of(args.repeats, lambda: one_epoch(False)) / n_batches
    t_checked = best_of(args.repeats, lambda: one_epoch(True)) / n_batches

    with tempfile.TemporaryDirectory() as tmp:
        steps = 6
        config = resolve_pretrain_config({"data": str(folder), "out": tmp + "/run", "preset": "tiny", "steps": steps,
                                          "batch_size": args.batch_size, "log_every": 1, "device": args.device,
                                          "verify_shards": False, "checkpoint_every": 1000})
        start = time.perf_counter()
        pretrain(config, progress=False)
        lines = (Path(tmp) / "run" / "train_log.csv").read_text().splitlines()[2:]  # steps after the first
        rates = [float(line.split(",")[5]) for line in lines]
        t_step = args.batch_size / (sum(rates) / len(rates))
        total = time.perf_counter() - start

    print(json.dumps({
        "shards": len(paths), "mb_per_shard": round(n_bytes / len(paths) / 1e6, 1),
        "sha256_mb_per_s": round(n_bytes / t_hash / 1e6), "sha256_ms_per_shard": round(1e3 * t_hash / len(paths), 1),
        "remembered_ms_per_shard": round(1e3 * t_remembered / len(paths), 3),
        "open_ms_per_shard": round(1e3 * t_open / len(paths), 3),
        "batch_ms_unchecked": round(1e3 * t_plain, 3), "batch_ms_checked": round(1e3 * t_checked, 3),
        "check_ms_per_batch": round(1e3 * (t_checked - t_plain), 3),
        "tiny_step_ms": round(1e3 * t_step, 1), "check_share_of_tiny_step": round((t_checked - t_plain) / t_step, 4),
        "device": args.device, "batch_size": args.batch_size, "pretrain_seconds": round(total, 1),
        "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
