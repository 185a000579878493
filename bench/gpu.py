"""The device benchmark: one command, one GPU, at most ~8 minutes, one JSON line.

What it measures, on toy shards (``write_toy_shards``: S=20, N=30, written once under ``--cache``):

* ``input``: the input pipeline alone, as the trainer runs it (memory-mapped shards, the prefetch
  thread, pinned host memory, copy to the device, transform, mask sampling and packing plans), in
  jets/s; next to it the same without pinning or prefetching, to show what those buy;
* ``pretrain``, per preset (``small``, ``base``, ``paper``): a short search for the batch size with the
  best jets/s (doubling until out of memory or until the gain is < 5 %), then at that batch size:
  jets/s and peak memory in eager mode and with ``torch.compile``, the FLOPs of a step counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (packed context encoding, as trained; the masked
  all-slot count next to it), and the model FLOP utilisation MFU = FLOPs per step ÷ seconds per step
  ÷ the GPU's dense bf16 peak (``PEAK_TFLOPS``, by device name); the loader's jets/s ÷ the step's
  (target ≥ 10);
* ``finetune``, per preset: jets/s of a finetuning step (all weights train, flatten head) at the
  pretraining batch size.

The training step is the trainer's (``jjepa.train.runners.pretrain``): masks drawn on the CPU, packing
plans built there, autocast (bf16 by default on CUDA), gradient scaler, clipping, AdamW, EMA. Each
measurement runs warm-up steps first and synchronises the device around the timed ones. A time
budget (``--budget-s``) skips what would not fit and says so in the output.

On the CPU, ``--device cpu --quick`` runs the whole script on tiny sizes in seconds (a smoke test;
its figures mean nothing). Examples::

    python bench/gpu.py                                  # one GPU, small/base/paper, ≤ 8 min
    python bench/gpu.py --presets small --no-compile     # quicker look
    python bench/gpu.py --device cpu --quick             # smoke test
    python bench/gpu.py --device cpu --flops-only --presets tiny,small   # FLOPs per jet-step, packed vs masked
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from jjepa.common.shards import MANIFEST_NAME
from jjepa.common.testing import write_toy_shards
from jjepa.train.config import PRESETS
from jjepa.train.data.loader import PRETRAIN_FIELDS, ShardLoader, ShardSet
from jjepa.train.data.transform import InputTransform, batch_inputs
from jjepa.train.mechanics.distributed import autocast, grad_scaler, resolve_device, resolve_precision
from jjepa.train.mechanics.ema import ema_update, make_target_encoder
from jjepa.train.mechanics.masking import mask_generator, sample_targets
from jjepa.train.mechanics.optim import make_optimizer, param_groups
from jjepa.train.model.classifier import JetClassifier
from jjepa.train.model.jepa import JEPA, jepa_forward
from jjepa.train.model.packing import plan_jepa
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger("bench.gpu")

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a pattern of ``torch.cuda.get_device_name``;
#: the first match wins (so "H100 PCIe" before "H100", "A100" is not "A10"). Vendor datasheets.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"B200", 2250.0), (r"H200", 989.0), (r"H100.*PCIe", 756.0), (r"H100.*NVL", 835.0), (r"H100|H800", 989.0),
    (r"A100|A800", 312.0), (r"L40S", 362.0), (r"L40\b", 181.0), (r"\bL4\b", 121.0), (r"\bA10\b", 125.0),
    (r"RTX 4090", 165.0), (r"RTX A6000", 155.0),
)
#: Batch sizes tried per preset, in order (the search stops at out-of-memory or < 5 % gain).
BATCH_LADDER = {"tiny": (256, 512, 1024, 2048, 4096), "small": (256, 512, 1024, 2048, 4096),
                "base": (128, 256, 512, 1024, 2048), "paper": (64, 128, 256, 512, 1024)}
QUICK_LADDER = (16, 32)
TARGET_LOADER_RATIO = 10.0
TARGET_MFU_PAPER = 0.35


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of ``device_name`` from ``PEAK_TFLOPS``, or None for an unknown device."""
    for pattern, tflops in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


@dataclass
class Setup:
    """What every measurement shares."""

    shards: ShardSet
    device: torch.device
    precision: str
    transform: InputTransform
    warmup: int
    timed: int
    prefetch: int
    deadline: float

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_for(setup: Setup, batch_size: int, fields=PRETRAIN_FIELDS, pin: bool | None = None) -> ShardLoader:
    pin = setup.device.type == "cuda" if pin is None else pin
    return ShardLoader(setup.shards, batch_size, 64, seed=0, shuffle=True, rank=0, world_size=1, epochs=None,
                       fields=fields, pin_memory=pin)


def input_rate(setup: Setup, batch_size: int, n_batches: int, pin: bool, prefetch: int) -> float:
    """Jets/s of the input pipeline alone: read, (pin,) prefetch, masks, plans, copy and transform."""
    loader = loader_for(setup, batch_size, pin=pin)

    def consume(batches) -> float:
        start = 0.0
        for step in range(n_batches + 2):
            if step == 2:  # two warm-up batches: memory maps, allocator, CUDA context
                sync(setup.device)
                start = time.perf_counter()
            batch = next(batches)
            target_mask = sample_targets(batch["subjet_mask"], 0.3, mask_generator(0, 0, step))
            plan_jepa(batch["subjet_mask"], target_mask).to(setup.device)
            batch_inputs(batch, setup.transform, setup.device)
            target_mask.to(setup.device, non_blocking=True)
        sync(setup.device)
        return n_batches * batch_size / (time.perf_counter() - start)

    if prefetch > 0:
        with loader.prefetch(depth=prefetch) as batches:
            return consume(batches)
    return consume(iter(loader.batches()))


class PretrainStep:
    """The trainer's step (``runners.pretrain``) on one preset: models, optimizer, scaler; callable per batch."""

    def __init__(self, preset: str, setup: Setup):
        config = setup.shards.bind(PRESETS[preset])
        torch.manual_seed(0)
        self.setup = setup
        with setup.device:  # initialised on the device: seconds saved for the 300M-parameter preset
            self.model = JEPA(config)
        self.target = make_target_encoder(self.model.context_encoder)
        self.optimizer = make_optimizer(self.model, 1e-4, 0.05)
        self.scaler = grad_scaler(setup.device, setup.precision)
        self.run_model: nn.Module = self.model
        self.run_target: nn.Module = self.target
        self.step = 0

    def compile(self) -> None:
        """Run the steps through ``torch.compile`` wrappers of the same modules (as ``--compile`` does)."""
        self.run_model = torch.compile(self.model, dynamic=True)
        self.run_target = torch.compile(self.target, dynamic=True)

    def prepare(self, batch):
        """Host side of a step: masks and packing plans from the CPU masks, copies and transform."""
        target_mask = sample_targets(batch["subjet_mask"], 0.3, mask_generator(0, 0, self.step))
        plans = plan_jepa(batch["subjet_mask"], target_mask).to(self.setup.device)
        inputs = batch_inputs(batch, self.setup.transform, self.setup.device)
        return inputs, target_mask.to(self.setup.device, non_blocking=True), plans

    def forward(self, prepared, pack: bool = True, model: nn.Module | None = None, target: nn.Module | None = None):
        inputs, target_mask, plans = prepared
        with autocast(self.setup.device, self.setup.precision):
            return jepa_forward(model or self.run_model, target or self.run_target, inputs, target_mask, False,
                                plans=plans if pack else None, pack=pack)

    def __call__(self, batch) -> None:
        with record_function("host: masks, plans, copies"):
            prepared = self.prepare(batch)
        result = self.forward(prepared)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(result.loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self.target, self.model.context_encoder, 0.996)
        self.step += 1

    def flops(self, batch, pack: bool) -> int:
        """FLOPs of one forward + backward on ``batch`` (eager modules; the counter sees aten ops)."""
        with FlopCounterMode(display=False) as counter:
            self.forward(self.prepare(batch), pack, self.model, self.target).loss.backward()
        self.model.zero_grad(set_to_none=True)
        return counter.get_total_flops()


class FinetuneStep:
    """A finetuning step (``runners.finetune``, mode finetune, flatten head) on one preset."""

    def __init__(self, preset: str, setup: Setup):
        config = setup.shards.bind(PRESETS[preset])
        torch.manual_seed(0)
        self.setup = setup
        with setup.device:
            self.model = JetClassifier(config, n_classes=2, aggregation="flatten")
        groups = param_groups(self.model.head, 0.01) + param_groups(self.model.encoder, 0.01, lr_scale=0.1)
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-4)
        self.scaler = grad_scaler(setup.device, setup.precision)

    def __call__(self, batch) -> None:
        batch = batch.to(self.setup.device)
        inputs = batch_inputs(batch, self.setup.transform, self.setup.device)
        with autocast(self.setup.device, self.setup.precision):
            logits = self.model(inputs)
        loss = F.cross_entropy(logits.float(), batch["labels"].clamp_min(0))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()


def timed_steps(step, setup: Setup, batch_size: int, fields=PRETRAIN_FIELDS, warmup: int | None = None) -> dict:
    """Jets/s and peak device memory of ``step`` over ``setup.timed`` steps after the warm-up."""
    warmup = setup.warmup if warmup is None else warmup
    cuda = setup.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(setup.device)
    with loader_for(setup, batch_size, fields).prefetch(depth=setup.prefetch) as batches:
        for _ in range(warmup):
            step(next(batches))
        sync(setup.device)
        start = time.perf_counter()
        for _ in range(setup.timed):
            step(next(batches))
        sync(setup.device)
        seconds = (time.perf_counter() - start) / setup.timed
    out = {"jets_per_s": round(batch_size / seconds, 1), "s_per_step": round(seconds, 5)}
    if cuda:
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(setup.device) / 2**30, 2)
    return out


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def free(device: torch.device) -> None:
    """Release the models of the last measurement (compiled ones hold reference cycles) and cached memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def search_batch(step: PretrainStep, setup: Setup, ladder: tuple[int, ...]) -> dict:
    """The batch size of ``ladder`` with the best eager jets/s: doubling until OOM or < 5 % gain."""
    tried, best = [], None
    for batch_size in ladder:
        if setup.left() < 30:
            tried.append({"batch_size": batch_size, "skipped": "time budget"})
            break
        rate = None
        try:
            rate = timed_steps(step, setup, batch_size)
        except RuntimeError as err:
            if not is_oom(err):
                raise
        free(setup.device)  # after the except block, whose traceback held the activations
        if rate is None:
            tried.append({"batch_size": batch_size, "error": "out of memory"})
            break
        tried.append({"batch_size": batch_size, **rate})
        if best is not None and rate["jets_per_s"] < 1.05 * best["jets_per_s"]:
            if rate["jets_per_s"] > best["jets_per_s"]:
                best = {"batch_size": batch_size, **rate}
            break
        if best is None or rate["jets_per_s"] > best["jets_per_s"]:
            best = {"batch_size": batch_size, **rate}
    return {"best": best, "tried": tried}


def flop_counts(step: PretrainStep, setup: Setup, batch_size: int, n_batches: int = 2) -> dict:
    """FLOPs per step and per jet-step, packed (as trained) and masked (all S slots), over ``n_batches``.

    The masked count runs all S slots, which may not fit in memory at the packed run's best batch:
    then it is None.
    """
    packed, masked, counted = 0, 0, 0
    for batch in loader_for(setup, batch_size).batches():
        packed += step.flops(batch, pack=True)
        if masked is not None:
            try:
                masked += step.flops(batch, pack=False)
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                masked = None
            free(setup.device)
        counted += 1
        if counted == n_batches:
            break
    per_jet = packed / counted / batch_size
    return {"flops_per_step": packed / counted, "flops_per_jet_step": round(per_jet),
            "flops_per_jet_step_masked": None if masked is None else round(masked / counted / batch_size),
            "packing_flop_ratio": None if masked is None else round(masked / max(packed, 1), 2)}


def busy_fraction(intervals: list[tuple[float, float]], span: float) -> float:
    """The fraction of ``span`` covered by the union of ``intervals`` (start, end), in the same unit.

    With the kernels' intervals and the wall time of the steps that launched them, this is how busy the
    GPU was: what is missing is time it waited on the host (masks, copies, launches, synchronisations).
    """
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered / span if span > 0 else 0.0


def profile_steps(step, setup: Setup, batch_size: int, path: Path) -> dict:
    """Profile ``setup.timed`` warm steps of ``step`` with ``torch.profiler``.

    Writes to ``path`` the operators with the most self time on the host (CPU) and, on a GPU, those with
    the most device time. Returns, on a GPU, the kernels launched per step and the device's busy
    fraction: the union of its kernel intervals ÷ the wall time of the profiled steps (the profiler's
    own host overhead makes it a lower bound). Labelled ranges (``record_function``, the optimizer's
    step, compiled regions) also have a device-side copy that spans their kernels and the gaps between
    them: those are not kernels, and are left out.
    """
    cuda = setup.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with loader_for(setup, batch_size).prefetch(depth=setup.prefetch) as batches:
        step(next(batches))
        sync(setup.device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(setup.timed):
                step(next(batches))
            sync(setup.device)
            wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)]
    averages = prof.key_averages()
    tables = ["Host (CPU) self time:", averages.table(sort_by="self_cpu_time_total", row_limit=30)]
    if cuda:
        tables += ["Device self time:", averages.table(sort_by="self_device_time_total", row_limit=30)]
    path.write_text("\n\n".join(tables) + "\n")
    out = {"steps": setup.timed, "s_per_step_profiled": round(wall / setup.timed, 5), "table": path.name}
    if cuda:
        out["kernels_per_step"] = round(len(kernels) / setup.timed)
        out["device_busy_fraction"] = round(busy_fraction(
            [(e.time_range.start, e.time_range.end) for e in kernels], wall * 1e6), 3) if kernels else None
        if not kernels:
            out["note"] = "the profiler recorded no kernels (is CUPTI available?)"
    return out


def bench_preset(preset: str, setup: Setup, ladder: tuple[int, ...], compile_runs: list[bool], peak: float | None,
                 finetune: bool, io_batches: int, profile_dir: Path | None = None) -> dict:
    """Everything measured for one preset (see the module docstring)."""
    entry: dict = {"preset": preset}
    step = PretrainStep(preset, setup)
    search = search_batch(step, setup, ladder)
    entry["batch_search"] = search["tried"]
    best = search["best"]
    if best is None:
        entry["skipped"] = "no batch size fitted (memory or time)"
        return entry
    batch_size = best["batch_size"]
    entry.update({"batch_size": batch_size, "eager": {k: v for k, v in best.items() if k != "batch_size"}})
    entry.update(flop_counts(step, setup, batch_size))
    free(setup.device)
    if True in compile_runs:
        if setup.left() < 90:
            entry["compiled"] = {"skipped": "time budget"}
        else:
            try:
                step.compile()
                entry["compiled"] = timed_steps(step, setup, batch_size, warmup=setup.warmup + 5)
            except Exception as err:  # a compiler failure is a finding, not the end of the benchmark
                entry["compiled"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    if profile_dir is not None:
        # the diagnosis must leave time for the figures after it (the loader and the finetuning rate)
        s_per_step = min(entry[k]["s_per_step"] for k in ("eager", "compiled") if "s_per_step" in entry.get(k, {}))
        entry["profile"] = {"skipped": "time budget"}
        if setup.left() >= 30 + 3 * (setup.warmup + setup.timed + 1) * s_per_step:
            compiled = "jets_per_s" in entry.get("compiled", {})
            if not compiled:
                step.run_model, step.run_target = step.model, step.target
            try:
                entry["profile"] = {"compiled": compiled, **profile_steps(
                    step, setup, batch_size, profile_dir / f"profile-{preset}.txt")}
            except Exception as err:  # the profile is a diagnosis: its failure must not lose the figures
                entry["profile"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    del step
    free(setup.device)
    rates = [entry[k]["jets_per_s"] for k in ("eager", "compiled") if "jets_per_s" in entry.get(k, {})]
    fastest = max(rates)
    for key in ("eager", "compiled"):
        run = entry.get(key, {})
        if "s_per_step" in run:
            run["tflops_per_s"] = round(entry["flops_per_step"] / run["s_per_step"] / 1e12, 3)
            if peak:
                run["mfu"] = round(run["tflops_per_s"] / peak, 4)
    entry["flops_per_step"] = round(entry["flops_per_step"])
    entry["loader_jets_per_s"] = round(input_rate(setup, batch_size, io_batches, pin=setup.device.type == "cuda",
                                                  prefetch=setup.prefetch), 1)
    entry["loader_vs_step"] = round(entry["loader_jets_per_s"] / fastest, 1)
    if finetune:
        if setup.left() < 20:
            entry["finetune"] = {"skipped": "time budget"}
        else:
            entry["finetune"] = {"batch_size": batch_size, "error": "out of memory"}
            try:
                entry["finetune"] = {"batch_size": batch_size, **timed_steps(
                    FinetuneStep(preset, setup), setup, batch_size, fields=PRETRAIN_FIELDS + ("labels",))}
            except RuntimeError as err:
                if not is_oom(err):
                    raise
            free(setup.device)
    return entry


def save(result: dict, path: Path | None) -> None:
    """Write ``result`` so far to ``path`` (temporary name, then rename), so a crash keeps what was measured."""
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result) + "\n")
        tmp.replace(path)


def toy_shards(cache: Path, n_shards: int, jets_per_shard: int, n_subjets: int, n_particles: int) -> Path:
    """A folder of toy shards under ``cache``, written if missing (the manifest is written last)."""
    folder = cache / f"gpu-toy-S{n_subjets}-N{n_particles}-{n_shards}x{jets_per_shard}"
    if not (folder / MANIFEST_NAME).exists():
        write_toy_shards(folder, n_shards, jets_per_shard, n_subjets, n_particles, seed=0)
    return folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (smoke test; figures mean nothing)")
    parser.add_argument("--presets", default=None, help="comma-separated (default small,base,paper; --quick: tiny)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                        help="autocast precision (auto: bf16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    parser.add_argument("--compile", action="store_true", help="also compile on the CPU")
    parser.add_argument("--no-finetune", action="store_true", help="skip the finetuning rates")
    parser.add_argument("--flops-only", action="store_true",
                        help="only count FLOPs per jet-step, packed and masked, at --batch-size (any device)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch of --flops-only")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip what would end after this many seconds")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; --quick 1)")
    parser.add_argument("--timed", type=int, default=None, help="timed steps (default 8; --quick 2)")
    parser.add_argument("--shards", type=int, default=None, help="toy shards (default 4; --quick 2)")
    parser.add_argument("--jets-per-shard", type=int, default=None, help="default 8192; --quick 256")
    parser.add_argument("--n-subjets", type=int, default=20, help="S")
    parser.add_argument("--n-particles", type=int, default=30, help="N")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "jjepa-bench")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also profile each preset's steps (compiled where it compiled): one operator table "
                             "per preset in DIR, and the device's busy fraction in the JSON")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the JSON to FILE after each section (\"finished\": false until the end), "
                             "so a crash keeps what was measured")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    default_presets = "tiny" if args.quick else "small,base,paper"
    presets = [p.strip() for p in (args.presets or default_presets).split(",") if p.strip()]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        sys.exit(f"bench/gpu.py: unknown preset(s) {unknown}; presets: {list(PRESETS)}")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    folder = toy_shards(args.cache, args.shards or (2 if args.quick else 4),
                        args.jets_per_shard or (256 if args.quick else 8192), args.n_subjets, args.n_particles)
    setup = Setup(shards=ShardSet(folder), device=device, precision=resolve_precision(args.precision, device),
                  transform=InputTransform(), warmup=args.warmup if args.warmup is not None else (1 if args.quick else 3),
                  timed=args.timed or (2 if args.quick else 8), prefetch=4, deadline=start + args.budget_s)
    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    peak = peak_tflops(device_name) if cuda else None
    result: dict = {
        "benchmark": "gpu", "device": str(device), "device_name": device_name, "peak_bf16_tflops": peak,
        "precision": setup.precision, "torch": torch.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads(), "n_subjets": args.n_subjets,
        "n_particles": args.n_particles, "n_jets": setup.shards.n_jets, "finished": False,
    }
    save(result, args.json)
    if args.flops_only:
        result["flops"] = [{"preset": p, "batch_size": args.batch_size,
                            **flop_counts(PretrainStep(p, setup), setup, args.batch_size)} for p in presets]
        for entry in result["flops"]:
            entry["flops_per_step"] = round(entry["flops_per_step"])
    else:
        io_batches = 4 if args.quick else 50
        io_batch = QUICK_LADDER[-1] if args.quick else 512
        result["input"] = {
            "batch_size": io_batch, "pin_memory": cuda, "prefetch": setup.prefetch,
            "jets_per_s": round(input_rate(setup, io_batch, io_batches, pin=cuda, prefetch=setup.prefetch), 1),
            "jets_per_s_unpinned_no_prefetch": round(input_rate(setup, io_batch, io_batches, pin=False, prefetch=0), 1),
        }
        save(result, args.json)
        compile_runs = [False] + ([True] if (cuda and not args.no_compile) or args.compile else [])
        result["presets"] = []
        for index, preset in enumerate(presets):
            # Each preset gets an equal share of the time left; what one leaves unused passes on.
            share = replace(setup, deadline=time.perf_counter() + setup.left() / (len(presets) - index))
            ladder = QUICK_LADDER if args.quick else BATCH_LADDER.get(preset, (256,))
            result["presets"].append(bench_preset(preset, share, ladder, compile_runs, peak,
                                                  not args.no_finetune, io_batches, args.profile))
            save(result, args.json)
        ratios = [e["loader_vs_step"] for e in result["presets"] if "loader_vs_step" in e]
        paper = next((e for e in result["presets"] if e["preset"] == "paper"), {})
        result["targets"] = {
            "loader_vs_step_at_least": TARGET_LOADER_RATIO,
            "loader_met": bool(ratios) and min(ratios) >= TARGET_LOADER_RATIO,
            "paper_compiled_mfu_at_least": TARGET_MFU_PAPER,
            "paper_mfu_met": paper.get("compiled", {}).get("mfu", 0.0) >= TARGET_MFU_PAPER if paper else None,
        }
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["finished"] = True
    save(result, args.json)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
