"""Jet-level representations from a pretrained encoder, written to HDF5 for any downstream study.

Output file (written under a temporary name, then renamed)::

    embeddings  float32 (J, D)   mean over the real subjets of the encoder's subjet representations
    labels      int64   (J,)     the shards' labels (−1 unlabelled)
    attrs       checkpoint, encoder, classes, source folder, jjepa_version

Jets are in the shards' order (manifest order, then file order), so row j of the output is jet j
of the input folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import torch
from jjepa.common.atomic import atomic_path
from jjepa.common.version import jjepa_version
from jjepa.train.config import config_from_dict
from jjepa.train.data.loader import FINETUNE_FIELDS, ShardSet, evaluation_batches
from jjepa.train.data.provenance import check_encoder_clustering
from jjepa.train.mechanics.checkpoint import load_checkpoint
from jjepa.train.mechanics.distributed import resolve_device
from jjepa.train.model.classifier import encoder_state
from jjepa.train.model.subjet_transformer import SubjetTransformer, jet_representation
from jjepa.train.runners.inference import to_device
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@torch.no_grad()
def embed(data: str | os.PathLike, checkpoint: str | os.PathLike, out: str | os.PathLike, encoder: str = "target",
          batch_size: int = 1024, device: str = "auto", progress: bool = True) -> int:
    """Write the jet representations of every jet in ``data``; returns the number of jets.

    Args:
        data: shard folder.
        checkpoint: a pretraining checkpoint (``runs/…/checkpoints/last.pt``).
        out: the HDF5 file to write.
        encoder: ``target`` (EMA, default) or ``context``.
        batch_size: jets per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show a progress bar.
    """
    torch_device = resolve_device(device)
    state = load_checkpoint(checkpoint, kind="pretrain")
    saved = config_from_dict(state["config"])
    shards = ShardSet(data)
    check_encoder_clustering(state, checkpoint, shards.folder, shards.manifest)
    model = SubjetTransformer(shards.bind(saved.model))
    model.load_state_dict(encoder_state(state, encoder))
    model.to(torch_device).eval()
    n_jets = shards.n_jets
    out = Path(out)
    shards.refuse_as_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        embeddings = f.create_dataset("embeddings", (n_jets, saved.model.embed_dim), dtype="float32")
        labels = f.create_dataset("labels", (n_jets,), dtype="int64")
        at = 0
        batches = evaluation_batches(shards, batch_size, FINETUNE_FIELDS, torch_device)
        for batch in tqdm(batches, total=-(-n_jets // batch_size), disable=not progress, unit="batch"):
            inputs, y = to_device(batch, saved.transform, torch_device)
            reps = jet_representation(model(inputs).float(), inputs.subjet_mask)
            embeddings[at:at + len(y)] = reps.cpu().numpy()
            labels[at:at + len(y)] = y.cpu().numpy()
            at += len(y)
        f.attrs.update({"checkpoint": str(checkpoint), "encoder": encoder, "source": str(data),
                        "classes": list(shards.manifest.classes), "jjepa_version": jjepa_version()})
    log.info("wrote %d jet representations of dimension %d to %s", n_jets, saved.model.embed_dim, out)
    return n_jets
