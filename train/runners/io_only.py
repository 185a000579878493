"""The pretraining input pipeline alone (``jjepa-train pretrain --io-only``): read, copy to the device,
transform and draw masks as training would, without the model, and measure jets/s, so an input stall
shows against the training step rate."""

from __future__ import annotations

import logging
import time

import torch
from jjepa.train.config import PretrainConfig
from jjepa.train.data.loader import PRETRAIN_FIELDS, training_loader
from jjepa.train.data.transform import batch_inputs
from jjepa.train.mechanics.distributed import init_distributed, shutdown_distributed
from jjepa.train.runners.pretrain import draw_targets, load_shards, total_steps
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def io_only(config: PretrainConfig, n_steps: int | None = None, progress: bool = True) -> dict:
    """Run the input pipeline alone (read, copy to the device, transform, masks) and measure jets/s.

    For diagnosing input stalls: compare with the training step rate. Returns ``{"jets_per_s", ...}``.
    """
    dist_info = init_distributed(config.device)
    try:
        shards = load_shards(config.data, config.min_subjets, "training set", verify=config.verify_shards)
        loader = training_loader(shards, config.batch_size, config.block_size, config.seed, dist_info.rank,
                                 dist_info.world_size, PRETRAIN_FIELDS, dist_info.device)
        steps = n_steps or total_steps(config, loader.largest_share())
        with loader.prefetch(depth=config.prefetch) as batches:
            start = time.perf_counter()
            for step, batch in enumerate(tqdm(batches, total=steps, disable=not progress, unit="batch")):
                target_mask = draw_targets(config, batch["subjet_mask"], dist_info.rank, step)
                batch_inputs(batch, config.transform, dist_info.device)
                target_mask.to(dist_info.device, non_blocking=True)
                if step + 1 == steps:
                    break
            if dist_info.device.type == "cuda":
                torch.cuda.synchronize(dist_info.device)
            elapsed = time.perf_counter() - start
        rate = steps * config.batch_size * dist_info.world_size / elapsed
        log.info("io-only: %d batches of %d jets in %.2f s: %.0f jets/s", steps, config.batch_size, elapsed, rate)
        return {"jets_per_s": rate, "steps": steps, "batch_size": config.batch_size, "device": str(dist_info.device)}
    finally:
        shutdown_distributed()
