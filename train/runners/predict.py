"""Score any shard folder with a finetuned tagger: one row per jet, in HDF5, Parquet or ROOT.

``jjepa-train predict --checkpoint runs/ft/checkpoints/best.pt --data shards/mine --out scores.parquet``
writes, for every jet of the folder in manifest then file order, the columns

    score_<class>       float64  the tagger's probability of each class (softmax; they sum to 1)
    label               int64    the jet's class as an index into the tagger's classes, −1 if unknown
    jet_pt, jet_eta, jet_phi, jet_mass   float32   from the shards' ``jets`` dataset [GeV, rad]
    jet_nconstituents   int32    constituents of the jet (before truncation to S×N)
    jet_nsubjets        int32    real subjets among the S slots (what ``min_subjets`` cuts on)
    shard               int32    index of the shard file in the metadata's ``shards`` list
    row                 int64    the jet's row in that shard

plus metadata (tagger classes, shard file names, checkpoint, source folder, jjepa version): HDF5
file attributes, the Parquet schema's ``jjepa`` key, or a ``jjepa_metadata`` string (JSON) next to the
``jets`` TTree. The format follows the suffix (``.h5``/``.hdf5``, ``.parquet``, ``.root``). The file
is written under a temporary name and renamed, so a crash never leaves a partial file.

The scores are computed exactly as ``finetune`` computes its test predictions (same model in eval
mode, same input transform, softmax in float64, kept in float64 so that no ties appear near p = 1),
so scoring the test folder reproduces ``test_predictions.npz`` and the AUC of ``metrics.json``. Taggers of
every finetuning mode are scored: the subjet-transformer classifiers (``finetune``, ``freeze``,
``scratch``) and the Particle Transformer of ``part`` (its per-particle inputs built from the shards'
``particles``, ``particle_mask`` and ``jets`` by ``PartFeatures``, as finetuning built them). ParT cuts
each batch to its longest jet, so its probabilities equal the saved ones exactly at finetuning's batch
size and within float32 rounding (~1e-6) at another.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from jjepa.common.atomic import atomic_path
from jjepa.common.errors import JJepaError, ShardError
from jjepa.common.schema import JET_FEATURE_NAMES
from jjepa.common.version import jjepa_version
from jjepa.train.config import ModelConfig, PartConfig
from jjepa.train.data.loader import FINETUNE_FIELDS, ShardSet, evaluation_batches
from jjepa.train.data.part_inputs import PartFeatures, PartInputs
from jjepa.train.data.provenance import check_same_clustering
from jjepa.train.data.transform import InputTransform
from jjepa.train.mechanics.checkpoint import load_checkpoint
from jjepa.train.mechanics.distributed import autocast, resolve_device
from jjepa.train.model.classifier import JetClassifier
from jjepa.train.model.part import PartTagger
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

#: Output suffix → format.
FORMATS: dict[str, str] = {".h5": "h5", ".hdf5": "h5", ".parquet": "parquet", ".root": "root"}
#: Jet columns written next to the scores, and their column in the shards' ``jets`` dataset.
JET_COLUMNS: dict[str, int] = {"jet_pt": JET_FEATURE_NAMES.index("pt"), "jet_eta": JET_FEATURE_NAMES.index("eta"),
                               "jet_phi": JET_FEATURE_NAMES.index("phi"), "jet_mass": JET_FEATURE_NAMES.index("mass")}
#: Modes whose checkpoint holds a ``JetClassifier`` (``jjepa-train finetune``).
CLASSIFIER_MODES: tuple[str, ...] = ("finetune", "freeze", "scratch")
#: The mode whose checkpoint holds a ``PartTagger`` (the Particle Transformer baseline).
PART_MODE = "part"
#: Name of the TTree in ``.root`` output.
ROOT_TREE = "jets"
#: Rows buffered before a Parquet row group or a ROOT basket is written (few, large ones read fast).
FLUSH_ROWS = 65_536


@dataclass
class Tagger:
    """A finetuned tagger rebuilt from its checkpoint alone.

    Attributes:
        model: the classifier (``JetClassifier``, or ``PartTagger`` in mode ``part``), on the CPU, in eval mode.
        transform: how it reads a raw shard batch: the ``InputTransform`` it was trained with, or in mode
            ``part`` the ``PartFeatures`` (sequence length P) that build ParT's per-particle inputs.
        classes: the C class names, index = output column.
        model_config: its encoder hyperparameters (``n_subjets`` = S and ``n_particles`` = N set); None for ParT.
        cluster: the clustering config of its training shards (``algorithm``, ``radius``, …), if recorded.
        checkpoint: where it was read from.
        mode: the finetuning mode (``finetune``, ``freeze``, ``scratch`` or ``part``).
        n_subjets: S of the shards it reads.
        n_particles: N of the shards it reads.
        part_config: ParT's size in mode ``part``, else None.
        precision: the autocast precision it was finetuned with; ``predict`` scores with the same, so on
            the same kind of device the scores equal finetuning's test predictions.
        min_subjets: the cut on real subjets of its training, validation and test jets (0: none); ``predict``
            scores every jet and records it, so ``jet_nsubjets >= min_subjets`` selects the jets it was tested on.
    """

    model: JetClassifier | PartTagger
    transform: InputTransform | PartFeatures
    classes: tuple[str, ...]
    model_config: ModelConfig | None
    cluster: dict | None
    checkpoint: str
    mode: str
    n_subjets: int
    n_particles: int
    part_config: PartConfig | None = None
    precision: str = "auto"
    min_subjets: int = 0

    def inputs(self, batch) -> dict[str, torch.Tensor] | PartInputs:
        """The network inputs of a raw ``JetBatch`` on the model's device (it holds ``jets`` for ParT)."""
        if isinstance(self.transform, PartFeatures):
            return self.transform.from_batch(batch)
        return self.transform(batch["particles"], batch["particle_mask"], batch["subjets"], batch["subjet_mask"])


def load_tagger(checkpoint: str | os.PathLike) -> Tagger:
    """Rebuild the tagger of a finetuning checkpoint (``runs/…/checkpoints/best.pt``), of any mode.

    Raises:
        JJepaError: the file is not a jjepa checkpoint, or not a finetuned one (e.g. a pretraining
            checkpoint), or of a mode this command cannot rebuild, or its weights do not fit the
            architecture it records.
    """
    state = load_checkpoint(checkpoint, kind="finetune")
    config = state["config"]
    mode = config.get("mode", "finetune")
    classes = tuple(str(c) for c in state["classes"])
    cluster = state.get("cluster")
    if mode == PART_MODE:
        return replace(_part_tagger(checkpoint, state, classes), precision=config.get("precision", "auto"),
                       min_subjets=int(config.get("min_subjets", 0)))
    if mode not in CLASSIFIER_MODES:
        raise JJepaError(f"{checkpoint}: a tagger of mode {mode!r}; predict and export handle "
                         f"{[*CLASSIFIER_MODES, PART_MODE]}")
    model_config = ModelConfig(**config["model"])
    model = JetClassifier(model_config, len(classes), config["aggregation"])
    _load_weights(model, state, checkpoint)
    return Tagger(model=model, transform=InputTransform(**config["transform"]), classes=classes,
                  model_config=model_config, cluster=cluster, checkpoint=str(checkpoint), mode=mode,
                  n_subjets=model_config.n_subjets, n_particles=model_config.n_particles,
                  precision=config.get("precision", "auto"), min_subjets=int(config.get("min_subjets", 0)))


def _part_tagger(checkpoint: str | os.PathLike, state: dict, classes: tuple[str, ...]) -> Tagger:
    """The ParT tagger of a ``part`` checkpoint: its size from ``config["part"]``, S and N from ``cluster``."""
    config, cluster = state["config"], state.get("cluster") or {}
    if not {"n_subjets", "n_particles"} <= cluster.keys() or not config.get("part"):
        raise JJepaError(f"{checkpoint}: a part tagger that does not record its ParT size and the S, N of its "
                         "training shards; retrain it with this jjepa version")
    part_config = PartConfig(**config["part"])
    n_subjets, n_particles = int(cluster["n_subjets"]), int(cluster["n_particles"])
    # finetune records the input builder it used as the transform; its sequence length P is the one trained.
    recorded = (config.get("transform") or {}).get("max_particles")
    features = PartFeatures(int(recorded or part_config.max_particles or n_subjets * n_particles))
    model = PartTagger(part_config, len(classes))
    _load_weights(model, state, checkpoint)
    return Tagger(model=model.settle(), transform=features, classes=classes, model_config=None, cluster=cluster,
                  checkpoint=str(checkpoint), mode=PART_MODE, n_subjets=n_subjets, n_particles=n_particles,
                  part_config=part_config)


def _load_weights(model: JetClassifier | PartTagger, state: dict, checkpoint: str | os.PathLike) -> None:
    """Load ``state["classifier"]`` into ``model`` and put it in eval mode; a one-line error if it does not fit."""
    try:
        model.load_state_dict(state["classifier"])
    except RuntimeError as err:
        raise JJepaError(f"{checkpoint}: the classifier weights do not fit the architecture it records ({err})") from None
    model.eval()


def label_map_for(tagger: Tagger, shards: ShardSet) -> np.ndarray:
    """Check that ``shards`` can be scored by ``tagger``; return the int64 map shard label → tagger label.

    Compatible means: the same S and N; the same subjet algorithm and radius (when the checkpoint
    records them); and every class that has jets in the folder is one of the tagger's classes
    (matched by name). Unlabelled folders (all labels −1) are always fine.

    Raises:
        ShardError: S, N or the clustering differ.
        JJepaError: the folder holds jets of a class the tagger does not know.
    """
    folder = shards.folder
    want = (tagger.n_subjets, tagger.n_particles)
    have = (shards.n_subjets, shards.n_particles)
    if want != have:
        raise ShardError(f"{folder}: shards hold S={have[0]} subjets of N={have[1]} constituents, the tagger "
                         f"{tagger.checkpoint} reads S={want[0]}, N={want[1]}; recluster with "
                         f"`jjepa-preprocess cluster --n-subjets {want[0]} --n-particles {want[1]}`")
    if tagger.cluster is not None:
        check_same_clustering(tagger.cluster, folder, shards.manifest, f"the tagger {tagger.checkpoint} was trained on")
    names = tuple(shards.manifest.classes)
    counts = (np.sum([r.class_counts for r in shards.manifest.shards], axis=0) if names
              else np.zeros(0, dtype=np.int64))
    unknown = [names[i] for i in np.flatnonzero(counts > 0) if names[i] not in tagger.classes]
    if unknown:
        raise JJepaError(f"{folder}: holds jets of classes {unknown}, which the tagger {tagger.checkpoint} does not "
                         f"know (its classes: {list(tagger.classes)}); score a folder of those classes only, or "
                         "unlabelled shards")
    return np.array([tagger.classes.index(n) if n in tagger.classes else -1 for n in names], dtype=np.int64)


def score_columns(classes: tuple[str, ...]) -> list[str]:
    """``score_<class>`` column names, the class names reduced to letters, digits and ``_`` (ROOT branch names)."""
    columns = [f"score_{re.sub(r'[^0-9A-Za-z_]', '_', c)}" for c in classes]
    if len(set(columns)) != len(columns):
        raise JJepaError(f"class names {list(classes)} give clashing column names {columns}")
    return columns


def output_columns(classes: tuple[str, ...]) -> dict[str, np.dtype]:
    """Every output column and its dtype, in file order."""
    columns = {name: np.dtype("float64") for name in score_columns(classes)}
    columns["label"] = np.dtype("int64")
    columns.update({name: np.dtype("float32") for name in JET_COLUMNS})
    columns.update({"jet_nconstituents": np.dtype("int32"), "jet_nsubjets": np.dtype("int32"),
                    "shard": np.dtype("int32"), "row": np.dtype("int64")})
    return columns


def output_format(path: str | os.PathLike) -> str:
    """``h5``, ``parquet`` or ``root``, from the suffix of ``path``; a clear error otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise JJepaError(f"{path}: unknown output format {suffix or '(no suffix)'!r}; use one of {sorted(FORMATS)}")
    return FORMATS[suffix]


def require(module: str, purpose: str):
    """Import ``module``, or a clear error naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise JJepaError(f"{purpose} needs {module}: pip install -e '.[deploy]'") from None


class _Writer:
    """Column batches → one output file; subclasses write ``FLUSH_ROWS``-row blocks."""

    def __init__(self, path: Path, n_rows: int, columns: dict[str, np.dtype], metadata: dict):
        self.path, self.n_rows, self.columns, self.metadata = path, n_rows, columns, metadata
        self._pending: list[dict[str, np.ndarray]] = []
        self._n_pending = 0
        self._written = 0

    def append(self, batch: dict[str, np.ndarray]) -> None:
        self._pending.append(batch)
        self._n_pending += len(batch["row"])
        if self._n_pending >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._n_pending:
            return
        block = {name: np.concatenate([b[name] for b in self._pending]).astype(dtype, copy=False)
                 for name, dtype in self.columns.items()}
        self._write(self._written, block)
        self._written += self._n_pending
        self._pending, self._n_pending = [], 0

    def close(self) -> None:
        self.flush()
        self._close()

    def _write(self, start: int, block: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class _H5Writer(_Writer):
    """One 1-D dataset per column; metadata as file attributes (lists as JSON strings)."""

    def __init__(self, *args):
        super().__init__(*args)
        import h5py

        self.file = h5py.File(self.path, "w", track_order=True)
        self.datasets = {name: self.file.create_dataset(name, (self.n_rows,), dtype=dtype)
                         for name, dtype in self.columns.items()}
        for key, value in self.metadata.items():
            self.file.attrs[key] = json.dumps(value) if isinstance(value, list | dict) else value

    def _write(self, start, block):
        for name, values in block.items():
            self.datasets[name][start:start + len(values)] = values

    def _close(self):
        self.file.close()


class _ParquetWriter(_Writer):
    """Row groups of ``FLUSH_ROWS`` jets; metadata as JSON under the schema key ``jjepa``."""

    def __init__(self, *args):
        super().__init__(*args)
        pa = require("pyarrow", "writing .parquet")
        pq = require("pyarrow.parquet", "writing .parquet")
        self.pa = pa
        fields = [pa.field(name, pa.from_numpy_dtype(dtype)) for name, dtype in self.columns.items()]
        self.schema = pa.schema(fields, metadata={"jjepa": json.dumps(self.metadata)})
        self.writer = pq.ParquetWriter(self.path, self.schema)

    def _write(self, start, block):
        self.writer.write_table(self.pa.Table.from_pydict(block, schema=self.schema))

    def _close(self):
        self.writer.close()


class _RootWriter(_Writer):
    """A flat TTree ``jets`` (``mktree`` + ``extend``) and the metadata as a JSON ``TObjString``."""

    def __init__(self, *args):
        super().__init__(*args)
        import uproot

        self.file = uproot.recreate(self.path)
        self.file["jjepa_metadata"] = json.dumps(self.metadata)
        self.tree = self.file.mktree(ROOT_TREE, dict(self.columns))

    def _write(self, start, block):
        self.tree.extend(block)

    def _close(self):
        self.file.close()


_WRITERS = {"h5": _H5Writer, "parquet": _ParquetWriter, "root": _RootWriter}


def _tagger_labels(labels: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """Shard labels (J,) → tagger labels via ``label_map``; −1 stays −1 (unlabelled)."""
    mapped = np.full(labels.shape, -1, dtype=np.int64)
    known = (labels >= 0) & (labels < len(label_map))
    mapped[known] = label_map[labels[known]]
    return mapped


@torch.no_grad()
def predict(checkpoint: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, batch_size: int = 1024,
            device: str = "auto", progress: bool = True) -> dict:
    """Score every jet of the shard folder ``data`` with a finetuned tagger; write ``out``.

    Args:
        checkpoint: a finetuning checkpoint (``runs/…/checkpoints/best.pt``).
        data: a shard folder (``manifest.json`` + shards), float32 or float16 particles.
        out: the output file; its suffix picks the format (``.h5``, ``.parquet``, ``.root``).
        batch_size: jets per forward pass.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        progress: show a progress bar.

    Returns:
        A summary: ``n_jets``, ``out``, ``format``, ``classes``.
    """
    if batch_size < 1:
        raise JJepaError(f"batch size must be positive, not {batch_size}")
    fmt = output_format(out)
    tagger = load_tagger(checkpoint)
    shards = ShardSet(data)
    label_map = label_map_for(tagger, shards)
    torch_device = resolve_device(device)
    model = tagger.model.to(torch_device)
    columns = output_columns(tagger.classes)
    names = score_columns(tagger.classes)
    starts = np.concatenate([[0], np.cumsum(shards.lengths)])
    n_jets = shards.n_jets
    metadata = {"classes": list(tagger.classes), "score_columns": names, "columns": list(columns),
                "shards": [r.file for r in shards.manifest.shards], "source": str(data),
                "checkpoint": str(checkpoint), "tagger_min_subjets": tagger.min_subjets,
                "jjepa_version": jjepa_version()}
    out = Path(out)
    shards.refuse_as_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    at = 0
    with atomic_path(out) as tmp:
        writer = _WRITERS[fmt](tmp, n_jets, columns, metadata)
        try:
            batches = evaluation_batches(shards, batch_size, FINETUNE_FIELDS, torch_device)
            for batch in tqdm(batches, total=-(-n_jets // batch_size), disable=not progress, unit="batch",
                              desc="predict"):
                inputs = tagger.inputs(batch.to(torch_device))
                with autocast(torch_device, tagger.precision):
                    logits = model(inputs)
                probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()
                position = np.arange(at, at + len(batch))
                shard = np.searchsorted(starts, position, side="right") - 1
                jets = batch["jets"].numpy()
                labels = batch["labels"].numpy()
                rows = {name: probs[:, k] for k, name in enumerate(names)}
                rows["label"] = _tagger_labels(labels, label_map)
                rows.update({name: jets[:, k] for name, k in JET_COLUMNS.items()})
                rows["jet_nconstituents"] = np.rint(jets[:, JET_FEATURE_NAMES.index("n_constituents")])
                rows["jet_nsubjets"] = batch["subjet_mask"].numpy().sum(axis=1)
                rows["shard"] = shard
                rows["row"] = position - starts[shard]
                writer.append(rows)
                at += len(batch)
        finally:
            writer.close()
    log.info("scored %d jets of %s with %s into %s", n_jets, data, checkpoint, out)
    return {"n_jets": n_jets, "out": str(out), "format": fmt, "classes": list(tagger.classes)}
