"""Export a finetuned tagger as ONNX, for an experiment's inference code (ONNX Runtime, in C++ or Python).

``jjepa-train export --checkpoint runs/ft/checkpoints/best.pt --out tagger.onnx [--data shards/test]``
writes

    tagger.onnx    inputs: the shard arrays ``particles`` (B, S, N, 4) float32, ``particle_mask`` (B, S, N)
                   bool, ``subjets`` (B, S, 4) float32, ``subjet_mask`` (B, S) bool; the batch size B is
                   dynamic. The input transform (log pT, log E, scaled angles) is inside the graph, so
                   the inputs are exactly what ``jjepa-preprocess cluster`` writes into a shard.
                   Output: ``probs`` (B, C) float32, the class probabilities (softmax).
    tagger.json    what inference code needs: inputs (names, shapes, dtypes, feature order, units),
                   the output and its classes, the clustering that makes the inputs, the transform's
                   parameters, and the check against PyTorch.

The graph is traced with the TorchScript-based exporter (``dynamo=False``: it needs no extra
package) and checked with ``onnx.checker``. Before anything is written, ONNX Runtime (CPU) runs it
on jets of ``--data`` (or on synthetic jets) and its outputs must match PyTorch's within
``tolerance`` (1e-4). Both files are written under temporary names and renamed.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from jjepa.common.atomic import atomic_path, write_json_atomic
from jjepa.common.errors import JJepaError
from jjepa.common.schema import FEATURE_NAMES, SHARD_ARRAYS
from jjepa.common.version import jjepa_version
from jjepa.train.data.loader import PRETRAIN_FIELDS, ShardLoader, ShardSet
from jjepa.train.runners.predict import Tagger, label_map_for, load_tagger, require
from torch import nn

log = logging.getLogger(__name__)

#: The graph's inputs, in order: the shard datasets, named as in the shard schema.
INPUT_NAMES: tuple[str, ...] = PRETRAIN_FIELDS
OUTPUT_NAME = "probs"
#: ONNX opset (17: LayerNormalization is one operator; ONNX Runtime ≥ 1.11 runs it).
OPSET = 17
#: Largest |ONNX − PyTorch| allowed on the check batch.
TOLERANCE = 1e-4
_SPECS = {spec.name: spec for spec in SHARD_ARRAYS}
#: Input dtypes of the graph: the schema's, with float32 particles (float16 shards are cast on reading).
INPUT_DTYPES: dict[str, np.dtype] = {name: np.dtype("float32") if name == "particles" else _SPECS[name].dtype
                                     for name in INPUT_NAMES}
_DIM_NAMES = {"J": "batch", "F": len(FEATURE_NAMES)}


class ShardTagger(nn.Module):
    """Raw shard arrays → class probabilities (B, C): the input transform and the classifier in one module."""

    def __init__(self, tagger: Tagger):
        super().__init__()
        self.model = tagger.model
        self.transform = tagger.transform

    def forward(self, particles: torch.Tensor, particle_mask: torch.Tensor, subjets: torch.Tensor,
                subjet_mask: torch.Tensor) -> torch.Tensor:
        """particles (B, S, N, 4) float32, particle_mask (B, S, N) bool, subjets (B, S, 4) float32,
        subjet_mask (B, S) bool, as stored in a shard → (B, C) float32 probabilities."""
        inputs = self.transform(particles, particle_mask, subjets, subjet_mask)
        return torch.softmax(self.model(inputs).float(), dim=-1)


def input_shapes(n_subjets: int, n_particles: int) -> dict[str, list]:
    """Per input, its shape with ``"batch"`` for the dynamic axis, e.g. particles: [batch, S, N, 4]."""
    sizes = {"S": n_subjets, "N": n_particles}
    return {name: [_DIM_NAMES.get(d, sizes.get(d)) for d in _SPECS[name].dims] for name in INPUT_NAMES}


def synthetic_batch(n_jets: int, n_subjets: int, n_particles: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random jets shaped like shard arrays (pT-ordered masks, zero padding), to trace and check the graph."""
    rng = np.random.default_rng(seed)
    n_sub = rng.integers(1, n_subjets + 1, n_jets)
    subjet_mask = np.arange(n_subjets)[None, :] < n_sub[:, None]
    n_part = rng.integers(1, n_particles + 1, (n_jets, n_subjets)) * subjet_mask
    particle_mask = np.arange(n_particles)[None, None, :] < n_part[..., None]
    scale = np.array([50.0, 0.3, 0.2, 80.0], dtype=np.float32)
    particles = (rng.random((n_jets, n_subjets, n_particles, 4), dtype=np.float32) * scale) * particle_mask[..., None]
    subjets = particles.sum(axis=2)
    return {"particles": particles, "particle_mask": particle_mask, "subjets": subjets.astype(np.float32),
            "subjet_mask": subjet_mask}


def shard_batch(data: str | os.PathLike, tagger: Tagger, n_jets: int) -> dict[str, np.ndarray]:
    """The first ``n_jets`` jets of the shard folder ``data`` (checked against ``tagger``), as float32/bool arrays."""
    shards = ShardSet(data)
    label_map_for(tagger, shards)
    loader = ShardLoader(shards, n_jets, block_size=n_jets, seed=0, shuffle=False, rank=0, world_size=1, epochs=1,
                         fields=INPUT_NAMES, pin_memory=False)
    batch = next(loader.batches())
    return {name: batch[name].numpy() for name in INPUT_NAMES}


def to_onnx(module: ShardTagger, example: dict[str, np.ndarray]) -> bytes:
    """Trace ``module`` on ``example`` into a checked ONNX model (dynamic batch); return its bytes.

    The tracer drops inputs the network does not read (the classifier reads ``subjets`` only
    through the transform when the architecture uses them); they are put back as graph inputs, so
    every exported tagger takes the same four shard arrays.
    """
    import onnx

    args = tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is legacy and that tracing unpacks fixed-size
        # tensors; neither matters for this static graph (checked against PyTorch below).
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], opset_version=OPSET,
                          dynamic_axes={name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)})
    model = onnx.load_from_string(buffer.getvalue())
    present = {i.name for i in model.graph.input}
    shapes = input_shapes(*example["particle_mask"].shape[1:])
    element = {np.dtype("float32"): onnx.TensorProto.FLOAT, np.dtype("bool"): onnx.TensorProto.BOOL}
    inputs = []
    for name in INPUT_NAMES:
        if name in present:
            inputs.append(next(i for i in model.graph.input if i.name == name))
        else:
            inputs.append(onnx.helper.make_tensor_value_info(name, element[example[name].dtype], shapes[name]))
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.doc_string = "jjepa tagger: shard arrays -> class probabilities (see the JSON file beside it)"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def compare(model_bytes: bytes, module: ShardTagger, batch: dict[str, np.ndarray]) -> float:
    """Largest |ONNX Runtime − PyTorch| over the probabilities of ``batch`` (CPU execution provider)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feed = {name: np.ascontiguousarray(batch[name], dtype=INPUT_DTYPES[name]) for name in INPUT_NAMES}
    (onnx_probs,) = session.run([OUTPUT_NAME], feed)
    with torch.no_grad():
        torch_probs = module(*(torch.from_numpy(feed[name]) for name in INPUT_NAMES)).numpy()
    return float(np.max(np.abs(onnx_probs - torch_probs)))


def describe(tagger: Tagger, onnx_name: str, check: dict) -> dict:
    """The JSON description written beside the ONNX file."""
    cfg = tagger.model_config
    shapes = input_shapes(cfg.n_subjets, cfg.n_particles)
    inputs = [{"name": name, "dtype": str(INPUT_DTYPES[name]),
               "shape": shapes[name], "meaning": _SPECS[name].meaning,
               **({"features": list(FEATURE_NAMES)} if _SPECS[name].dims[-1] == "F" else {})}
              for name in INPUT_NAMES]
    transform = asdict(tagger.transform)
    return {
        "onnx": onnx_name,
        "opset": OPSET,
        "inputs": inputs,
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(tagger.classes)],
                     "meaning": "class probabilities (softmax), column k = classes[k]"}],
        "classes": list(tagger.classes),
        "feature_names": list(FEATURE_NAMES),
        "feature_units": {"pt": "GeV", "deta": "relative to the jet axis", "sin_dphi_half":
                          "sin(dphi/2), dphi relative to the jet axis wrapped to (-pi, pi]", "energy": "GeV"},
        "cluster": tagger.cluster,
        "transform": {**transform, "inside_graph": True, "formula":
                      "per constituent and subjet: (log(max(pT, 1e-6)) - *_log_pt_shift) * log_scale, deta * angle_scale, "
                      "sin_dphi_half * angle_scale, (log(max(E, 1e-6)) - *_log_energy_shift) * log_scale; 0 where masked"},
        "notes": ["inputs are the arrays of a jjepa shard (schema v1); float16 shards: cast particles to float32",
                  "jets are made with the clustering in 'cluster' (subjets pT-ordered, constituents pT-ordered)"],
        "checkpoint": tagger.checkpoint,
        "check": check,
        "jjepa_version": jjepa_version(),
    }


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, data: str | os.PathLike | None = None,
           n_check: int = 256, tolerance: float = TOLERANCE) -> dict:
    """Export the tagger of ``checkpoint`` to ``out`` (ONNX) and ``out`` with suffix ``.json``; return the description.

    Args:
        checkpoint: a finetuning checkpoint (``runs/…/checkpoints/best.pt``).
        out: the ONNX file to write (``.onnx``).
        data: a shard folder whose first ``n_check`` jets check the export; None: synthetic jets.
        n_check: jets in the check batch.
        tolerance: largest |ONNX Runtime − PyTorch| probability allowed.

    Raises:
        JJepaError: not a finetuned checkpoint, shards it cannot read, or outputs that differ by
            more than ``tolerance`` (nothing is written then).
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise JJepaError(f"{out}: the export is an ONNX file; name it *.onnx")
    for module_name in ("onnx", "onnxruntime"):
        require(module_name, "export")
    tagger = load_tagger(checkpoint)
    module = ShardTagger(tagger).eval()
    cfg = tagger.model_config
    check_batch = (shard_batch(data, tagger, n_check) if data is not None
                   else synthetic_batch(n_check, cfg.n_subjets, cfg.n_particles, seed=1))
    model_bytes = to_onnx(module, synthetic_batch(2, cfg.n_subjets, cfg.n_particles))
    diff = compare(model_bytes, module, check_batch)
    check = {"max_abs_diff": diff, "tolerance": tolerance, "n_jets": int(len(check_batch["subjet_mask"])),
             "jets": str(data) if data is not None else "synthetic", "runtime": "onnxruntime CPU"}
    if not diff <= tolerance:
        raise JJepaError(f"{out}: the ONNX graph's probabilities differ from PyTorch's by {diff:.3g} "
                         f"(> {tolerance:g}) on {check['jets']}; nothing written")
    log.info("ONNX Runtime matches PyTorch on %d jets of %s: max |diff| %.2g", check["n_jets"], check["jets"], diff)
    out.parent.mkdir(parents=True, exist_ok=True)
    description = describe(tagger, out.name, check)
    with atomic_path(out) as tmp:
        tmp.write_bytes(model_bytes)
    write_json_atomic(out.with_suffix(".json"), description)
    return description
