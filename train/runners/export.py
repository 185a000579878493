"""Export a finetuned tagger as ONNX, for an experiment's inference code (ONNX Runtime, in C++ or Python).

``jjepa-train export --checkpoint runs/ft/checkpoints/best.pt --out tagger.onnx [--data shards/test]``
writes

    tagger.onnx    inputs: the shard arrays ``particles`` (B, S, N, 4) float32, ``particle_mask`` (B, S, N)
                   bool, ``subjets`` (B, S, 4) float32, ``subjet_mask`` (B, S) bool; the batch size B is
                   dynamic. The input transform (log pT, log E, scaled angles) is inside the graph, so
                   the inputs are exactly what ``jjepa-preprocess cluster`` writes into a shard.
                   Output: ``probs`` (B, C) float32, the class probabilities (softmax).
                   A Particle Transformer tagger (mode ``part``) takes one more input, the shard's ``jets``
                   (B, 6) float32 (its pT, η and E are read), and builds ParT's per-particle features and
                   four-vectors inside the graph (``jjepa.train.data.part_inputs``); ``subjets`` and
                   ``subjet_mask`` are inputs it does not read, so every tagger takes the shard arrays.
    tagger.json    what inference code needs: inputs (names, shapes, dtypes, feature order, units),
                   the output and its classes, the clustering that makes the inputs, the transform's
                   parameters, and the check against PyTorch.

The graph is traced with the TorchScript-based exporter (``dynamo=False``: it needs no extra
package) and checked with ``onnx.checker``. Before anything is written, ONNX Runtime (CPU) runs it
on jets of ``--data`` (or on synthetic jets) and its outputs must match PyTorch's within
``tolerance`` (1e-4). Both files are written under temporary names and renamed.

ParT is traced in weaver's ``for_inference`` build (no sequence trimmer, a dense pair embedding, the
softmax inside), with the same weights. The exporter's ``atan2`` returns NaN at the origin, where the
zero four-vectors of padded particles sit (torch gives 0), which made most jets' probabilities NaN;
during the export ``atan2`` is traced as a version that is 0 there and unchanged elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from jjepa.common.atomic import atomic_path, write_json_atomic
from jjepa.common.errors import JJepaError
from jjepa.common.schema import FEATURE_NAMES, JET_FEATURE_NAMES, SHARD_ARRAYS
from jjepa.common.version import jjepa_version
from jjepa.train.data.loader import PRETRAIN_FIELDS, ShardSet, evaluation_batches
from jjepa.train.data.part_inputs import CLIP, STANDARDISATION, part_inputs
from jjepa.train.data.part_inputs import FEATURE_NAMES as PART_FEATURE_NAMES
from jjepa.train.model.part import PAIR_FEATURES
from jjepa.train.runners.predict import Tagger, label_map_for, load_tagger, require
from torch import nn

log = logging.getLogger(__name__)

#: The graph's inputs, in order: the shard datasets, named as in the shard schema.
INPUT_NAMES: tuple[str, ...] = PRETRAIN_FIELDS
#: The inputs of a ParT (mode ``part``) graph: the same, plus the jets (pT, η and E are inputs of ParT).
PART_INPUT_NAMES: tuple[str, ...] = (*PRETRAIN_FIELDS, "jets")
#: The jet columns the ParT graph reads.
PART_JET_COLUMNS: tuple[str, ...] = ("pt", "eta", "energy")
#: ParT's pair features from every two constituents' four-vectors, in the order of weaver's ``pairwise_lv_fts_pp``.
PART_PAIR_FEATURES: tuple[str, ...] = ("ln_kt", "ln_z", "ln_delta", "ln_m2")[:PAIR_FEATURES]
OUTPUT_NAME = "probs"
#: ONNX opset (17: LayerNormalization is one operator; ONNX Runtime ≥ 1.11 runs it).
OPSET = 17
#: Largest |ONNX − PyTorch| allowed on the check batch.
TOLERANCE = 1e-4
_SPECS = {spec.name: spec for spec in SHARD_ARRAYS}
#: Input dtypes of the graph: the schema's, with float32 particles (float16 shards are cast on reading).
INPUT_DTYPES: dict[str, np.dtype] = {name: np.dtype("float32") if name == "particles" else _SPECS[name].dtype
                                     for name in PART_INPUT_NAMES}
_DIM_NAMES = {"J": "batch", "F": len(FEATURE_NAMES), "JF": len(JET_FEATURE_NAMES)}


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


class PartShardTagger(nn.Module):
    """Raw shard arrays and jets → class probabilities (B, C) of a ParT tagger: its inputs built in the graph."""

    def __init__(self, tagger: Tagger):
        super().__init__()
        self.model = tagger.model.for_export()
        self.max_particles = tagger.transform.max_particles

    def forward(self, particles: torch.Tensor, particle_mask: torch.Tensor, subjets: torch.Tensor,
                subjet_mask: torch.Tensor, jets: torch.Tensor) -> torch.Tensor:
        """The four shard arrays as in ``ShardTagger`` (``subjets``, ``subjet_mask`` unread) and jets (B, 6)
        float32 (pT [GeV], η, φ, E [GeV], mass, constituents) → (B, C) float32 probabilities."""
        inputs = part_inputs(particles, particle_mask, jets, self.max_particles)
        return self.model(inputs).float()  # the for_inference build ends in a softmax


def graph_module(tagger: Tagger) -> tuple[nn.Module, tuple[str, ...]]:
    """The module the graph is traced from, in eval mode, and the names of its inputs in order."""
    if tagger.part_config is not None:
        return PartShardTagger(tagger).eval(), PART_INPUT_NAMES
    return ShardTagger(tagger).eval(), INPUT_NAMES


def input_shapes(n_subjets: int, n_particles: int, names: tuple[str, ...] = INPUT_NAMES) -> dict[str, list]:
    """Per input, its shape with ``"batch"`` for the dynamic axis, e.g. particles: [batch, S, N, 4]."""
    sizes = {"S": n_subjets, "N": n_particles}
    return {name: [_DIM_NAMES.get(d, sizes.get(d)) for d in _SPECS[name].dims] for name in names}


def synthetic_batch(n_jets: int, n_subjets: int, n_particles: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random jets shaped like shard arrays (pT-ordered masks, zero padding), to trace and check the graph.

    Constituents are physical (E ≥ |p|: pT 0..50 GeV, Δη and sin(Δφ/2) within ±0.3 and ±0.2 of a jet axis at
    η in (−2, 2), a mass up to ~1% of E), as ParT's pair features (ln m², rapidities) need.
    """
    rng = np.random.default_rng(seed)
    n_sub = rng.integers(1, n_subjets + 1, n_jets)
    subjet_mask = np.arange(n_subjets)[None, :] < n_sub[:, None]
    n_part = rng.integers(1, n_particles + 1, (n_jets, n_subjets)) * subjet_mask
    particle_mask = np.arange(n_particles)[None, None, :] < n_part[..., None]
    shape = (n_jets, n_subjets, n_particles)
    jet_eta = rng.uniform(-2, 2, n_jets)
    pt, deta, sdphi = rng.uniform(0, 50, shape), rng.uniform(-0.3, 0.3, shape), rng.uniform(-0.2, 0.2, shape)
    energy = pt * np.cosh(jet_eta[:, None, None] + deta) * (1 + 0.01 * rng.random(shape))
    particles = (np.stack([pt, deta, sdphi, energy], axis=-1) * particle_mask[..., None]).astype(np.float32)
    subjets = particles.sum(axis=2)
    # Jets: pT and E above their constituents' sums [GeV], φ in (−π, π), mass 0..200 GeV.
    jets = np.stack([particles[..., 0].sum(axis=(1, 2)) * 1.1, jet_eta, rng.uniform(-np.pi, np.pi, n_jets),
                     particles[..., 3].sum(axis=(1, 2)) * 1.2, rng.uniform(0, 200, n_jets),
                     particle_mask.sum(axis=(1, 2))], axis=1)
    return {"particles": particles, "particle_mask": particle_mask, "subjets": subjets.astype(np.float32),
            "subjet_mask": subjet_mask, "jets": jets.astype(np.float32)}


def shard_batch(data: str | os.PathLike, tagger: Tagger, n_jets: int,
                names: tuple[str, ...] = INPUT_NAMES) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the first ``n_jets`` jets of the shard folder ``data`` (checked against ``tagger``)."""
    shards = ShardSet(data)
    label_map_for(tagger, shards)
    batch = next(evaluation_batches(shards, n_jets, names, torch.device("cpu")))
    return {name: batch[name].numpy() for name in names}


def _atan2_symbolic(g, y, x):
    """ONNX ``atan2(y, x)`` for the TorchScript exporter: its own formula (Atan of y/x, turned by ±π where
    x < 0), but 0 at x = y = 0 as in torch, where the built-in one divides 0 by 0 (NaN)."""
    zero = g.op("Constant", value_t=torch.tensor(0.0))
    origin = g.op("And", g.op("Equal", y, zero), g.op("Equal", x, zero))
    x = g.op("Where", origin, g.op("Constant", value_t=torch.tensor(1.0)), x)
    atan = g.op("Atan", g.op("Div", y, x))
    pi = g.op("Constant", value_t=torch.tensor(math.pi))
    turned = g.op("Where", g.op("Greater", y, zero), g.op("Add", atan, pi), g.op("Sub", atan, pi))
    return g.op("Where", g.op("Less", x, zero), turned, atan)


@contextlib.contextmanager
def _exportable_atan2():
    """``_atan2_symbolic`` in place of the exporter's ``aten::atan2`` for the duration of one export."""
    torch.onnx.register_custom_op_symbolic("aten::atan2", _atan2_symbolic, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::atan2", OPSET)


def to_onnx(module: nn.Module, example: dict[str, np.ndarray], names: tuple[str, ...] = INPUT_NAMES) -> bytes:
    """Trace ``module`` on ``example`` into a checked ONNX model (dynamic batch) with inputs ``names``; its bytes.

    The tracer drops inputs the network does not read (the classifier reads ``subjets`` only
    through the transform when the architecture uses them; ParT never reads them); they are put
    back as graph inputs, so every exported tagger takes the same shard arrays.
    """
    import onnx

    args = tuple(torch.from_numpy(example[name]) for name in names)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _exportable_atan2():
        # The TorchScript exporter warns that it is legacy and that tracing unpacks fixed-size
        # tensors; neither matters for this static graph (checked against PyTorch below).
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, input_names=list(names),
                          output_names=[OUTPUT_NAME], opset_version=OPSET,
                          dynamic_axes={name: {0: "batch"} for name in (*names, OUTPUT_NAME)})
    model = onnx.load_from_string(buffer.getvalue())
    present = {i.name for i in model.graph.input}
    shapes = input_shapes(*example["particle_mask"].shape[1:], names=names)
    element = {np.dtype("float32"): onnx.TensorProto.FLOAT, np.dtype("bool"): onnx.TensorProto.BOOL}
    inputs = []
    for name in names:
        if name in present:
            inputs.append(next(i for i in model.graph.input if i.name == name))
        else:
            inputs.append(onnx.helper.make_tensor_value_info(name, element[example[name].dtype], shapes[name]))
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.doc_string = "jjepa tagger: shard arrays -> class probabilities (see the JSON file beside it)"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def compare(model_bytes: bytes, module: nn.Module, batch: dict[str, np.ndarray],
            names: tuple[str, ...] = INPUT_NAMES) -> float:
    """Largest |ONNX Runtime − PyTorch| over the probabilities of ``batch`` (CPU execution provider)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feed = {name: np.ascontiguousarray(batch[name], dtype=INPUT_DTYPES[name]) for name in names}
    (onnx_probs,) = session.run([OUTPUT_NAME], feed)
    with torch.no_grad():
        torch_probs = module(*(torch.from_numpy(feed[name]) for name in names)).numpy()
    return float(np.max(np.abs(onnx_probs - torch_probs)))


def describe(tagger: Tagger, onnx_name: str, check: dict) -> dict:
    """The JSON description written beside the ONNX file."""
    part = tagger.part_config is not None
    names = PART_INPUT_NAMES if part else INPUT_NAMES
    shapes = input_shapes(tagger.n_subjets, tagger.n_particles, names)
    columns = {"F": {"features": list(FEATURE_NAMES)},
               "JF": {"features": list(JET_FEATURE_NAMES), "read": list(PART_JET_COLUMNS)}}
    inputs = [{"name": name, "dtype": str(INPUT_DTYPES[name]),
               "shape": shapes[name], "meaning": _SPECS[name].meaning, **columns.get(_SPECS[name].dims[-1], {}),
               **({"unused": True} if part and name in ("subjets", "subjet_mask") else {})}
              for name in names]
    return {
        "onnx": onnx_name,
        "opset": OPSET,
        "model": _model_description(tagger),
        "inputs": inputs,
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(tagger.classes)],
                     "meaning": "class probabilities (softmax), column k = classes[k]"}],
        "classes": list(tagger.classes),
        "feature_names": list(FEATURE_NAMES),
        "feature_units": {"pt": "GeV", "deta": "relative to the jet axis", "sin_dphi_half":
                          "sin(dphi/2), dphi relative to the jet axis wrapped to (-pi, pi]", "energy": "GeV"},
        "cluster": tagger.cluster,
        "transform": _part_transform(tagger) if part else _subjet_transform(tagger),
        "notes": ["inputs are the arrays of a jjepa shard (schema v1); float16 shards: cast particles to float32",
                  "jets are made with the clustering in 'cluster' (subjets pT-ordered, constituents pT-ordered)"],
        "checkpoint": tagger.checkpoint,
        "check": check,
        "jjepa_version": jjepa_version(),
    }


def _model_description(tagger: Tagger) -> dict:
    """What network the graph holds: its name, the finetuning mode and its size."""
    if tagger.part_config is not None:
        return {"name": "ParT", "mode": tagger.mode, "size": asdict(tagger.part_config),
                "description": "Particle Transformer (Qu, Li, Qian, arXiv:2202.03772), weaver-core's "
                               "ParticleTransformer trained from scratch on the tagger's labels"}
    return {"name": "J-JEPA subjet transformer", "mode": tagger.mode, "size": asdict(tagger.model_config),
            "description": "subjet-transformer encoder (J-JEPA, arXiv:2412.05333) with a classification head"}


def _subjet_transform(tagger: Tagger) -> dict:
    """The subjet encoder's input transform, computed inside the graph."""
    return {**asdict(tagger.transform), "inside_graph": True, "formula":
            "per constituent and subjet: (log(max(pT, 1e-6)) - *_log_pt_shift) * log_scale, deta * angle_scale, "
            "sin_dphi_half * angle_scale, (log(max(E, 1e-6)) - *_log_energy_shift) * log_scale; 0 where masked"}


def _part_transform(tagger: Tagger) -> dict:
    """ParT's per-particle inputs, built inside the graph from particles, particle_mask and jets."""
    standardisation = {name: None if norm is None else {"shift": norm[0], "scale": norm[1]}
                       for name, norm in zip(PART_FEATURE_NAMES, STANDARDISATION, strict=True)}
    return {
        "inside_graph": True,
        "max_particles": tagger.transform.max_particles,
        "features": list(PART_FEATURE_NAMES),
        "standardisation": standardisation,
        "clip": CLIP,
        "pair_features": list(PART_PAIR_FEATURES),
        "formula": ("the S*N constituent slots flattened, real constituents ordered by falling pT (ties in slot "
                    "order), cut or zero-padded to max_particles; per constituent, with dphi = 2*asin(sin_dphi_half): "
                    "log pT, log E, log pT/jet pT, log E/jet E, dR = sqrt(deta^2 + dphi^2), deta, dphi "
                    "(log of max(x, 1e-6) [GeV]); standardised as (x - shift) * scale clipped to +-clip where "
                    "standardisation is given; four-vectors px = pT cos(dphi), py = pT sin(dphi), "
                    "pz = pT sinh(jet eta + deta), E [GeV] give the pair features; 0 where padded"),
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
    module, names = graph_module(tagger)
    sizes = (tagger.n_subjets, tagger.n_particles)
    check_batch = (shard_batch(data, tagger, n_check, names) if data is not None
                   else synthetic_batch(n_check, *sizes, seed=1))
    model_bytes = to_onnx(module, synthetic_batch(2, *sizes), names)
    diff = compare(model_bytes, module, check_batch, names)
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
