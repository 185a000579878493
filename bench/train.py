"""Pretraining throughput per model preset, side by side in one run with the input pipeline alone.

On toy shards (``write_toy_shards``; S=20, N=30, 4 × 10,000 jets by default, written once and cached
under ``--cache``, default ``~/.cache/jjepa-bench``), for each preset of ``--presets``:

* ``pretrain`` (``jjepa.train.runners.pretrain``) runs ``warmup + timed`` steps in a fresh temporary run
  folder; ``log_every`` is the warm-up so that the rows of ``train_log.csv`` after the first cover
  exactly the timed steps, and ``checkpoint_every`` is out of reach, so the step rate excludes the
  warm-up (and the compilation, with ``torch.compile``), the log rows and the checkpoint writing.
  On CUDA, bf16 autocast is used (as ``pretrain`` always does there) and each preset runs a second
  time with ``compile=True``; on the CPU (fp32) only with ``--compile``;
* ``io_only`` (the input pipeline alone: read, copy to the device, transform, masks) runs with the
  same batch size on the same device, and the ratio loader jets/s ÷ step jets/s shows whether the
  loader could ever be the bottleneck (target: ≥ 10×).

Parameters are those trained by gradient: context encoder + predictor (``JEPA``). The CPU defaults
(tiny, small and base; base with batch 64) take about 2 minutes on 2 idle cores; ``paper`` is for GPUs.
On a shared CPU use ``--threads 1``: 2 OpenMP threads on 2 busy cores run 10–40× slower.
Prints one JSON line. Examples::

    python bench/train.py
    python bench/train.py --device cuda --presets small,base,paper
    python bench/train.py --presets tiny --set model.encoder_positions=true   # a switch's cost, as a ratio
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from jjepa.common.cli_utils import parse_pairs
from jjepa.train.config import PRESETS, resolve_pretrain_config
from jjepa.train.mechanics.distributed import resolve_device
from jjepa.train.model.jepa import JEPA
from jjepa.train.runners.io_only import io_only
from jjepa.train.runners.pretrain import pretrain
from loader import shards, warm_page_cache

TARGET_RATIO = 10
#: Timed steps and batch size per preset, sized for a 2-core CPU (CUDA: ``CUDA_STEPS``, the batch of ``--batch-size``).
CPU_STEPS = {"tiny": 50, "small": 20, "base": 5, "paper": 2}
CPU_BATCH = {"base": 64, "paper": 16}
CUDA_STEPS = {"tiny": 200, "small": 100, "base": 50, "paper": 20}


def parse_per_preset(text: str | None, cast) -> dict[str, int]:
    """``"small=20,base=5"`` → {"small": 20, "base": 5}; a bare value applies to every preset ("*")."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        out[name.strip() if sep else "*"] = cast(value if sep else name)
    return out


def n_params(preset: str, n_subjets: int, n_particles: int) -> int:
    """Parameters trained by gradient (context encoder + predictor) of ``preset`` at S, N."""
    model = JEPA(replace(PRESETS[preset], n_subjets=n_subjets, n_particles=n_particles))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def step_rate(folder: Path, preset: str, batch_size: int, warmup: int, timed: int, device: str,
              compile_model: bool, overrides: dict[str, str] | None = None) -> dict:
    """Jets/s of ``pretrain`` over ``timed`` steps after ``warmup`` steps, from its ``train_log.csv``;
    ``overrides``: config keys set on top of the preset (``--set``)."""
    with tempfile.TemporaryDirectory(prefix="jjepa-bench-train-") as tmp:
        config = resolve_pretrain_config({
            "data": str(folder), "out": str(Path(tmp) / "run"), "preset": preset, "steps": warmup + timed,
            "batch_size": batch_size, "log_every": warmup, "checkpoint_every": 10**9, "device": device,
            "compile": compile_model, "val_every": 0, **(overrides or {}),
        })
        start = time.perf_counter()
        pretrain(config, progress=False)
        wall = time.perf_counter() - start
        with open(Path(tmp) / "run" / "train_log.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    # Each row covers the steps since the previous one: elapsed = steps × batch ÷ jets_per_s.
    seconds, steps, previous = 0.0, 0, 0
    for row in rows:
        step = int(row["step"])
        if previous >= warmup:
            seconds += (step - previous) * batch_size / float(row["jets_per_s"])
            steps += step - previous
        previous = step
    if steps != timed:
        raise RuntimeError(f"{preset}: train_log.csv rows cover {steps} timed steps, expected {timed}")
    return {"jets_per_s": steps * batch_size / seconds, "s_per_step": seconds / steps, "wall_s": wall}


def loader_rate(folder: Path, batch_size: int, n_steps: int, device: str) -> float:
    """Jets/s of ``io_only`` (the input pipeline alone) at ``batch_size`` on ``device``."""
    config = resolve_pretrain_config({"data": str(folder), "steps": n_steps, "batch_size": batch_size,
                                      "device": device})
    io_only(config, n_steps=min(n_steps, 5), progress=False)  # warm-up: memory maps, allocator, CUDA context
    return io_only(config, n_steps=n_steps, progress=False)["jets_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small,base", help="comma-separated presets (paper: GPU)")
    parser.add_argument("--steps", default=None,
                        help="timed steps: N for every preset, or per preset (small=20,base=5); "
                             f"default {CPU_STEPS} on the CPU, {CUDA_STEPS} on CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 CPU, 10 CUDA)")
    parser.add_argument("--batch-size", default=None,
                        help=f"jets per step: N, or per preset (base=64); default 256, on the CPU {CPU_BATCH}")
    parser.add_argument("--io-steps", type=int, default=200, help="batches timed by io_only")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--compile", action="store_true", help="also run with torch.compile on the CPU")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every usable core)")
    parser.add_argument("--shards", type=int, default=4, help="toy shards")
    parser.add_argument("--jets-per-shard", type=int, default=10_000)
    parser.add_argument("--n-subjets", type=int, default=20, help="S")
    parser.add_argument("--n-particles", type=int, default=30, help="N")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "jjepa-bench")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="also time each preset with these config overrides (e.g. model.encoder_positions=true), "
                             "alternating with the plain preset, and print the ratio (repeatable)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.ERROR)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; presets: {list(PRESETS)}")
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(args.threads or cores)

    steps_given = parse_per_preset(args.steps, int)
    batch_given = parse_per_preset(args.batch_size, int)
    default_steps = CUDA_STEPS if cuda else CPU_STEPS
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    compile_runs = [False] + ([True] if (cuda and not args.no_compile) or args.compile else [])

    folder = shards(args.cache, args.shards, args.jets_per_shard, args.n_subjets, args.n_particles)
    warm_page_cache(folder)

    results, loader_rates = [], {}
    for preset in presets:
        timed = steps_given.get(preset, steps_given.get("*", default_steps.get(preset, 10)))
        batch = batch_given.get(preset, batch_given.get("*", (256 if cuda else CPU_BATCH.get(preset, 256))))
        if batch not in loader_rates:
            loader_rates[batch] = loader_rate(folder, batch, args.io_steps, str(device))
        entry = {"preset": preset, "params_millions": round(n_params(preset, args.n_subjets, args.n_particles) / 1e6, 3),
                 "batch_size": batch, "warmup_steps": warmup, "timed_steps": timed}
        best = 0.0
        for compile_model in compile_runs:
            rate = step_rate(folder, preset, batch, warmup, timed, str(device), compile_model)
            suffix = "_compiled" if compile_model else ""
            entry[f"jets_per_s{suffix}"] = round(rate["jets_per_s"], 1)
            entry[f"s_per_step{suffix}"] = round(rate["s_per_step"], 4)
            entry[f"wall_s{suffix}"] = round(rate["wall_s"], 1)
            best = max(best, rate["jets_per_s"])
        if args.overrides:
            # alternate plain and overridden runs, best of each, so drifting load hits both alike
            overrides = parse_pairs(args.overrides)
            plain, changed = [entry["jets_per_s"]], []
            for repeat in range(2):
                changed.append(step_rate(folder, preset, batch, warmup, timed, str(device), False, overrides)["jets_per_s"])
                if repeat == 0:
                    plain.append(step_rate(folder, preset, batch, warmup, timed, str(device), False)["jets_per_s"])
            entry["with_set"] = {"overrides": overrides, "jets_per_s": round(max(changed), 1),
                                 "plain_jets_per_s": round(max(plain), 1),
                                 "ratio_set_vs_plain": round(max(changed) / max(plain), 3)}
        entry["loader_jets_per_s"] = round(loader_rates[batch])
        entry["ratio_loader_vs_step"] = round(loader_rates[batch] / best, 1)
        results.append(entry)

    result = {
        "benchmark": "train",
        "presets": results,
        "loader_jets_per_s": {str(b): round(r) for b, r in loader_rates.items()},
        "io_steps": args.io_steps,
        "meets_target": all(e["ratio_loader_vs_step"] >= TARGET_RATIO for e in results),
        "target_ratio": TARGET_RATIO,
        "n_jets": args.shards * args.jets_per_shard,
        "n_subjets": args.n_subjets,
        "n_particles": args.n_particles,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "precision": "bf16 autocast" if cuda else "fp32",
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
