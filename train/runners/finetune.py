"""Finetuning for jet tagging, and honest evaluation on the held-out test set.

One call of ``finetune`` fills a run folder::

    out/config.yaml             the resolved configuration
    out/train_log.csv           step, epoch, train_loss, val_loss, val_accuracy, lr
    out/checkpoints/best.pt     the classifier with the best validation loss
    out/metrics.json            test-set metrics of that classifier (accuracy, auc, rej_at_50, rej_at_30, …)
                                with 68 % bootstrap intervals (``<figure>_ci``) and the counts behind them,
                                and the same figures on the whole validation set under ``val``
    out/roc.csv, out/roc.png    the test-set ROC (for ``dvc plots``) and its figure; one curve per signal class
    out/test_predictions.npz    labels (J,), class probabilities (J, C) and class names, test set
    out/val_predictions.npz     the same on the validation set (choices between variants are made on it)
    out/checkpoints/last.pt     while the run is unfinished: written every ``checkpoint_every`` steps, at
                                ``stop_after``, on Ctrl-C and SIGTERM; ``--resume`` continues from it exactly
                                (bit for bit on the CPU) and it is removed when the run finishes

The model kept is the one with the lowest *validation* loss; validation runs once per epoch or
more often at small label counts (about 40 validations per run), so the best step is bracketed,
and early stopping (``patience`` validations without improvement) starts only after ``min_steps``.
A best step at the first or the last validation is flagged (``best_at_edge``): the kept model may
be under- or over-trained. The reported numbers come from the kept model, once, on the *test* set.
Only the training shards are reduced to the label fraction.

Under ``torchrun`` (DDP) each rank trains on its share of the labelled jets (``batch_size`` per
process); validation and test predictions are split over the ranks by single-process batch and
gathered back in one process's order, so every figure (and every early-stopping decision) is the one a
single process computes for the same model.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from jjepa.common.atomic import atomic_path, write_json_atomic
from jjepa.common.errors import JJepaError
from jjepa.common.schema import config_dict
from jjepa.train.config import (
    FINETUNE_RESUMABLE_CHANGES,
    PRESETS,
    FinetuneConfig,
    ModelConfig,
    config_from_dict,
)
from jjepa.train.data.loader import PRETRAIN_FIELDS, Cursor, ShardLoader, ShardSet, epoch_order
from jjepa.train.data.part_inputs import PartFeatures
from jjepa.train.data.subsets import stratified_subset
from jjepa.train.data.transform import InputTransform, batch_inputs
from jjepa.train.mechanics.checkpoint import (
    FinetuneCheckpoint,
    FinetuneRunCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from jjepa.train.mechanics.distributed import (
    DistInfo,
    autocast,
    check_world_size,
    gather_objects,
    grad_scaler,
    init_distributed,
    mean_over_ranks,
    shutdown_distributed,
)
from jjepa.train.mechanics.optim import lr_at, param_groups, set_lr
from jjepa.train.mechanics.runlog import RunLog
from jjepa.train.mechanics.signals import any_rank, stop_requests
from jjepa.train.model.classifier import JetClassifier, encoder_state, load_encoder
from jjepa.train.model.part import PartTagger
from jjepa.train.report.intervals import metrics_with_intervals
from jjepa.train.report.metrics import json_safe, tagging_curves, write_roc_curves_csv
from jjepa.train.report.plots import plot_roc
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

#: What finetuning reads of a shard; ``jets`` (pT, η, E of the jet) are inputs of the ``part`` mode.
FINETUNE_FIELDS: tuple[str, ...] = PRETRAIN_FIELDS + ("labels", "jets")
LOG_COLUMNS: tuple[str, ...] = ("step", "epoch", "train_loss", "val_loss", "val_accuracy", "lr")

#: Validations per run aimed at when the label count is small (an epoch is then only a few steps).
VALIDATIONS_PER_RUN = 40
#: Jets per block of the fixed shuffled order of a partial validation (``val_batches``).
_VAL_BLOCK = 64


def architecture(config: FinetuneConfig, checkpoint: dict | None,
                 shards: ShardSet) -> tuple[ModelConfig | None, InputTransform | PartFeatures]:
    """The encoder hyperparameters and input transform: the checkpoint's, or the preset's for ``scratch``.

    In ``part`` mode there is no encoder: (None, the ParT input builder with its sequence length).
    """
    if config.mode == "part":
        return None, PartFeatures(config.part.max_particles or shards.n_subjets * shards.n_particles)
    if config.preset is not None:
        model = config.model or PRESETS[config.preset]
        transform = config.transform
    else:
        saved = config_from_dict(checkpoint["config"])
        model, transform = saved.model, saved.transform
    return shards.bind(model), transform


def tagging_classes(train: ShardSet, val: ShardSet, test: ShardSet) -> tuple[tuple[str, ...], np.ndarray]:
    """The classes the tagger learns: those of the shards' class names that have training jets.

    Shards in the JetClass layout name all ten JetClass classes even when a file set holds two of
    them (e.g. top and QCD): classes without a single training jet are dropped, so that sample
    becomes a binary tagger. Returns the kept names and an int64 map from shard label to tagger
    label (−1 for dropped classes).

    Raises:
        JJepaError: the folders name different classes, fewer than two classes have training jets,
            validation/test jets belong to a class with no training jets, or a kept class has no test
            jets.
    """
    names = tuple(train.manifest.classes)
    others = (val, test)
    for other in others:
        if tuple(other.manifest.classes) != names:
            raise JJepaError(f"{other.folder}: classes {list(other.manifest.classes)} differ from the training "
                             f"shards' {list(names)}")
    counts = np.sum([r.class_counts for r in train.manifest.shards], axis=0) if names else np.zeros(0)
    present = np.flatnonzero(counts > 0)
    if len(present) < 2:
        raise JJepaError(f"{train.folder}: {len(present)} class(es) have training jets; tagging needs at least 2")
    for other in others:
        other_counts = np.sum([r.class_counts for r in other.manifest.shards], axis=0)
        stray = [names[i] for i in np.flatnonzero((other_counts > 0) & (counts == 0))]
        if stray:
            raise JJepaError(f"{other.folder}: holds jets of {stray}, which the training shards never show")
    test_counts = np.sum([r.class_counts for r in test.manifest.shards], axis=0)
    absent = [names[i] for i in present if test_counts[i] == 0]
    if absent:
        raise JJepaError(f"{test.folder}: no test jets of {absent}; every class the tagger learns needs test "
                         "jets for the ROC (use test shards with all the training classes)")
    mapping = np.full(len(names), -1, dtype=np.int64)
    mapping[present] = np.arange(len(present))
    if len(present) < len(names):
        log.info("classes with training jets: %s (the others named by the shards are dropped)",
                 [names[i] for i in present])
    return tuple(names[i] for i in present), mapping


def to_device(batch, transform: InputTransform, device: torch.device, label_map: torch.Tensor | None = None):
    """(inputs, labels) of a raw batch, on ``device``; ``label_map`` turns shard labels into tagger labels.

    ``transform`` is the subjet encoder's ``InputTransform``, or ``PartFeatures`` in ``part`` mode.
    """
    batch = batch.to(device)
    labels = batch["labels"] if label_map is None else label_map[batch["labels"]]
    if isinstance(transform, PartFeatures):
        return transform.from_batch(batch), labels
    return batch_inputs(batch, transform, device), labels


@torch.no_grad()
def predict(model: nn.Module, shards: ShardSet, transform: InputTransform, device: torch.device,
            batch_size: int, label_map: torch.Tensor, max_batches: int | None = None,
            precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (J, C) float64 and tagger labels (J,) of the jets of ``shards``.

    The encoder runs in ``precision`` (autocast); the probabilities come from float32 or wider logits.

    All jets in file order; or, with ``max_batches``, that many batches of a fixed shuffled order
    (blocks of 64 jets), so a partial validation mixes every shard and is the same jets every time.
    """
    partial = max_batches is not None
    loader = ShardLoader(shards, batch_size, block_size=_VAL_BLOCK if partial else batch_size, seed=0, shuffle=partial,
                         rank=0, world_size=1,
                         epochs=1, fields=FINETUNE_FIELDS, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for index, batch in enumerate(loader.batches()):
        if max_batches is not None and index >= max_batches:
            break
        inputs, y = to_device(batch, transform, device, label_map)
        with autocast(device, precision):
            logits = model(inputs)
        probs.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())  # float64: no ties near p = 1
        labels.append(y.cpu().numpy())
    model.train(was_training)
    return np.concatenate(probs), np.concatenate(labels)


def reading_order(shards: ShardSet, batch_size: int, max_batches: int | None) -> np.ndarray:
    """Positions (in ``shards``' concatenated jets) of the jets ``predict`` reads, in its order, in one process."""
    if max_batches is None:
        return np.arange(shards.n_jets)
    blocks = epoch_order(shards.lengths, _VAL_BLOCK, seed=0, epoch=0, shuffle=True)
    sizes = blocks[:, 2] - blocks[:, 1]
    offsets = np.concatenate([[0], np.cumsum(shards.lengths)[:-1]])
    firsts = offsets[blocks[:, 0]] + blocks[:, 1]
    order = np.repeat(firsts - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()))
    return order[:max_batches * batch_size]


def rank_view(shards: ShardSet, order: np.ndarray, batch_size: int, rank: int,
              world_size: int) -> tuple[ShardSet | None, np.ndarray]:
    """This rank's jets of a single-process evaluation: the batches ``i ≡ rank (mod world_size)`` of ``order``.

    Returns the view of those jets (None when there are none) and, for each jet of the view in its
    reading order, its slot in ``order``. In file order (a whole pass) the view's batches are exactly
    the single-process batches, so each jet is evaluated in the same company.
    """
    owner = (np.arange(len(order)) // batch_size) % world_size
    slots = np.flatnonzero(owner == rank)
    positions = order[slots]
    sort = np.argsort(positions, kind="stable")
    slots, positions = slots[sort], positions[sort]
    if len(slots) == 0:
        return None, slots
    offsets = np.concatenate([[0], np.cumsum(shards.lengths)])
    shard = np.searchsorted(offsets, positions, side="right") - 1
    index = [positions[shard == k] - offsets[k] for k in range(len(shards.lengths))]
    return shards.select(index), slots


def predict_over_ranks(model: nn.Module, shards: ShardSet, transform: InputTransform, info: DistInfo,
                       batch_size: int, label_map: torch.Tensor, max_batches: int | None = None,
                       precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """``predict`` split over the DDP ranks and gathered on every rank, in the single-process order.

    Each rank evaluates its batches of the single-process reading order (``rank_view``); the
    probabilities and labels are gathered (``all_gather_object``) and put back in that order, so
    every rank gets what one process would compute, and takes the same decisions (best model,
    early stopping). One process: ``predict`` itself.
    """
    if info.world_size == 1:
        return predict(model, shards, transform, info.device, batch_size, label_map, max_batches, precision)
    order = reading_order(shards, batch_size, max_batches)
    view, slots = rank_view(shards, order, batch_size, info.rank, info.world_size)
    mine = (slots, *predict(model, view, transform, info.device, batch_size, label_map, None, precision)) \
        if view is not None else None
    parts = [part for part in gather_objects(mine, info) if part is not None]
    probs = np.empty((len(order), parts[0][1].shape[1]), dtype=parts[0][1].dtype)
    labels = np.empty(len(order), dtype=parts[0][2].dtype)
    for slot, p, y in parts:
        probs[slot], labels[slot] = p, y
    return probs, labels


def validation_interval(steps_per_epoch: int, steps: int) -> int:
    """Steps between validations: an epoch, or less when that gives fewer than ~40 validations per run.

    With a few hundred labels an epoch is one or two steps while the run takes ``min_steps``; one
    validation per 25 steps then missed the best model (it came before the first validation).
    """
    return max(1, min(steps_per_epoch, steps // VALIDATIONS_PER_RUN))


def best_at_edge(best_step: int, validated: list[int]) -> str | None:
    """``"first"`` or ``"last"`` when the best validation is the run's first or last one, else None."""
    if len(validated) < 2:
        return "first" if validated else None
    if best_step == validated[0]:
        return "first"
    return "last" if best_step == validated[-1] else None


def _val_figures(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Cross-entropy and accuracy of predicted probabilities."""
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(p).mean()), float((probs.argmax(1) == labels).mean())


def _make_optimizer(model: JetClassifier | PartTagger, config: FinetuneConfig) -> torch.optim.AdamW:
    if config.mode == "part":
        return torch.optim.AdamW([g for g in param_groups(model, config.weight_decay) if g["params"]], lr=config.lr)
    groups = param_groups(model.head, config.weight_decay)
    if config.mode != "freeze":
        scale = config.encoder_lr_scale if config.mode == "finetune" else 1.0
        groups += param_groups(model.encoder, config.weight_decay, lr_scale=scale)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def build_classifier(config: FinetuneConfig, model_config: ModelConfig | None, n_classes: int,
                     checkpoint: dict | None) -> JetClassifier | PartTagger:
    """The classifier, seeded; in ``finetune``/``freeze`` mode with the checkpoint's encoder loaded; in
    ``part`` mode the Particle Transformer (weaver-core), sized by ``config.part``."""
    torch.manual_seed(config.seed)
    if config.mode == "part":
        return PartTagger(config.part, n_classes)
    model = JetClassifier(model_config, n_classes, config.aggregation, freeze_encoder=config.mode == "freeze")
    if config.mode != "scratch":
        load_encoder(model, encoder_state(checkpoint, config.encoder), f"{config.checkpoint} ({config.encoder} encoder)")
    return model


@dataclass
class Prepared:
    """What a finetuning run reads before its first step: the jet sets, classes and architecture."""

    train_set: ShardSet  # the labelled training jets (label subset drawn)
    val_set: ShardSet
    test_set: ShardSet
    classes: tuple[str, ...]
    label_map: torch.Tensor  # shard label -> tagger label, on the device
    model_config: ModelConfig | None  # None in ``part`` mode
    transform: InputTransform | PartFeatures
    pretrained: dict | None  # the pretraining checkpoint, when one is used
    kept: dict  # n_train_jets, n_val_jets, n_test_jets after ``min_subjets``
    n_available: int  # training jets before the label subset
    resolved: dict  # the resolved configuration written to config.yaml and the checkpoints


@dataclass
class FinetuneState:
    """The mutable state of a finetuning run: what ``checkpoints/last.pt`` holds (``FinetuneRunCheckpoint``)."""

    model: JetClassifier | PartTagger
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16's loss scaler; disabled (a no-op) for bf16 and fp32
    running_loss: torch.Tensor  # float64 scalar on the device: this rank's loss sum since the last validation
    best_model: dict
    step: int = 0
    cursor: Cursor = field(default_factory=Cursor)
    running_steps: int = 0
    bad_evals: int = 0
    validated: list[int] = field(default_factory=list)
    best_step: int = 0
    best_val_loss: float = math.inf
    done: bool = False
    train_seconds: float = 0.0


@dataclass
class Run:
    """The fixed facts of a run that the step, validation and evaluation functions share."""

    config: FinetuneConfig
    data: Prepared
    dist: DistInfo
    out: Path
    steps: int
    stop: int  # steps of this call (``stop_after``)
    steps_per_epoch: int  # per rank
    eval_every: int
    warmup: int
    train_model: nn.Module  # the classifier as trained: DDP- and/or compile-wrapped
    eval_model: nn.Module  # the classifier as evaluated: compile-wrapped or plain

    @property
    def last(self) -> Path:
        return self.out / "checkpoints" / "last.pt"


def finetune(config: FinetuneConfig, progress: bool = True, resume: bool = False) -> dict:
    """Train a tagger as configured and evaluate it on the test set; returns the metrics written.

    Under ``torchrun`` every rank trains on its share of the labelled jets (DDP); validation and test
    predictions are gathered over the ranks in the order one process reads them, so the figures are
    those of a single-process evaluation of the same model. Rank 0 writes the run folder and returns
    the metrics; the other ranks return ``{}``.

    Args:
        config: resolved configuration; ``train``, ``val``, ``test`` and ``out`` must be set.
        progress: show a progress bar (rank 0).
        resume: continue the unfinished run of ``out/checkpoints/last.pt`` exactly.
    """
    missing = [k for k in ("train", "val", "test", "out") if getattr(config, k) is None]
    if missing:
        raise JJepaError(f"finetuning needs {', '.join('--' + k for k in missing)}")
    info = init_distributed(config.device)
    try:
        return _finetune(config, info, progress, resume)
    finally:
        shutdown_distributed()


def prepare(config: FinetuneConfig, device: torch.device) -> Prepared:
    """Open the shard sets, check them against each other, draw the label subset, resolve the architecture."""
    train_set, val_set, test_set = (ShardSet(f, verify=config.verify_shards) for f in (config.train, config.val,
                                                                                      config.test))
    for role, other in (("--val", val_set), ("--test", test_set)):
        train_set.check_like(other, role)
    classes, mapping = tagging_classes(train_set, val_set, test_set)
    if config.mode == "part" and config.checkpoint:
        log.info("mode part trains the Particle Transformer from scratch; %s is not used", config.checkpoint)
    pretrained = (load_checkpoint(config.checkpoint, kind="pretrain") if config.checkpoint and config.mode != "part"
                  else None)
    model_config, transform = architecture(config, pretrained, train_set)
    train_set, val_set, test_set = (s.with_min_subjets(config.min_subjets) for s in (train_set, val_set, test_set))
    kept = {"n_train_jets": train_set.n_jets, "n_val_jets": val_set.n_jets, "n_test_jets": test_set.n_jets}
    if config.min_subjets > 0:
        log.info("jets with at least %d real subjets: %s", config.min_subjets, kept)
    n_available = train_set.n_jets
    if config.label_fraction is not None or config.n_labels is not None:
        train_set = train_set.select(stratified_subset(train_set.labels(), config.seed, config.label_fraction,
                                                       config.n_labels))
    class_counts = np.bincount(mapping[np.concatenate(train_set.labels())], minlength=len(classes))
    log.info("training on %d labelled jets (%s)", train_set.n_jets,
             ", ".join(f"{c}: {n}" for c, n in zip(classes, class_counts, strict=True)))
    resolved = {**config.to_dict(), "model": model_config and asdict(model_config), "transform": asdict(transform)}
    return Prepared(train_set, val_set, test_set, classes, torch.from_numpy(mapping).to(device), model_config,
                    transform, pretrained, kept, n_available, resolved)


def build_state(config: FinetuneConfig, data: Prepared, device: torch.device) -> FinetuneState:
    """The seeded classifier (pretrained encoder loaded), its optimizer and gradient scaler, at step 0."""
    model = build_classifier(config, data.model_config, len(data.classes), data.pretrained).to(device)
    return FinetuneState(model=model, optimizer=_make_optimizer(model, config),
                         scaler=grad_scaler(device, config.precision),  # fp16 only; a no-op for bf16 and fp32
                         running_loss=torch.zeros((), dtype=torch.float64, device=device),
                         best_model=copy.deepcopy(model.state_dict()))


def run_checkpoint(state: FinetuneState, run: Run, running: list[float]) -> FinetuneRunCheckpoint:
    """What ``last.pt`` holds for ``state``; ``running`` is every rank's loss sum (or rank 0's alone)."""
    return FinetuneRunCheckpoint(
        config=run.data.resolved, model=state.model.state_dict(), buffers=_unsaved_buffers(state.model),
        optimizer=state.optimizer.state_dict(),
        scaler=state.scaler.state_dict() if state.scaler.is_enabled() else {}, step=state.step,
        cursor={"epoch": state.cursor.epoch, "offset": state.cursor.offset}, world_size=run.dist.world_size,
        running_loss=running, running_steps=state.running_steps, bad_evals=state.bad_evals,
        validated=list(state.validated), best_model=state.best_model, best_step=state.best_step,
        best_val_loss=state.best_val_loss, done=state.done, train_seconds=state.train_seconds,
        torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(run.dist.device) if run.dist.device.type == "cuda" else None)


def _unsaved_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers a state dict leaves out (``persistent=False``), which still steer training: e.g. weaver's
    ``SequenceTrimmer`` counts forward passes before it starts trimming sequences at random."""
    persistent = set(model.state_dict())
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers() if name not in persistent}


def restore_state(state: FinetuneState, saved: dict, rank: int, device: torch.device) -> None:
    """Load a ``FinetuneRunCheckpoint`` into ``state`` (weights, optimizer, scaler, position, RNG)."""
    state.model.load_state_dict(saved["model"])
    for name, value in saved["buffers"].items():
        state.model.get_buffer(name).copy_(value)
    state.optimizer.load_state_dict(saved["optimizer"])
    if saved["scaler"] and state.scaler.is_enabled():
        state.scaler.load_state_dict(saved["scaler"])
    running = saved["running_loss"]
    state.running_loss.fill_(running[rank] if len(running) > rank else running[0])
    state.step, state.cursor = int(saved["step"]), Cursor(**saved["cursor"])
    state.running_steps, state.bad_evals = int(saved["running_steps"]), int(saved["bad_evals"])
    state.validated = [int(s) for s in saved["validated"]]
    state.best_model, state.best_step = saved["best_model"], int(saved["best_step"])
    state.best_val_loss, state.done = float(saved["best_val_loss"]), bool(saved["done"])
    state.train_seconds = float(saved["train_seconds"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda_rng"], device)


def _check_resumable(resolved: dict, saved: dict, path: Path) -> None:
    """Every resolved field (the model and transform included) must match the checkpoint's, except those of
    ``FINETUNE_RESUMABLE_CHANGES``."""
    changed = sorted(k for k in set(resolved) | set(saved)
                     if k not in FINETUNE_RESUMABLE_CHANGES and resolved.get(k) != saved.get(k))
    if changed:
        raise JJepaError(f"cannot resume {path}: {changed} differ from the checkpoint's configuration; start a new "
                         "run (--out) to change them")


def _open_run(config: FinetuneConfig, out: Path, resume: bool) -> dict | None:
    """The checkpoint to resume (None for a new run); refuses to start over an unfinished run."""
    last = out / "checkpoints" / "last.pt"
    if resume:
        return load_checkpoint(last, kind="finetune_run")
    if last.exists():
        raise JJepaError(f"{out} holds an unfinished finetuning run ({last}); pass --resume to continue it, or "
                         "choose another --out")
    return None


def _finetune(config: FinetuneConfig, info: DistInfo, progress: bool, resume: bool) -> dict:
    out = Path(config.out)
    if resume and not (out / "checkpoints" / "last.pt").exists() and (out / "metrics.json").exists():
        log.info("%s is finished; nothing to do (start a new run with another --out)", out)
        return json.loads((out / "metrics.json").read_text()) if info.is_main else {}
    saved = _open_run(config, out, resume)
    data = prepare(config, info.device)
    if saved is not None:
        _check_resumable(data.resolved, saved["config"], out / "checkpoints" / "last.pt")
        check_world_size(int(saved["world_size"]), info, out / "checkpoints" / "last.pt")
    state = build_state(config, data, info.device)
    data.pretrained = None  # its encoder is loaded: free the pretraining checkpoint for the run
    if saved is not None:
        restore_state(state, saved, info.rank, info.device)
        log.info("resuming %s at step %d", out, state.step)
    run = _make_run(config, data, info, out, state)
    if info.is_main:
        _start_outputs(run, state.validated if saved is not None else None)
    with stop_requests() as terminate:
        try:
            if not state.done:
                _train(state, run, terminate, progress)
            if not state.done:
                _save(state, run, coordinated=True)
                log.info("stopped at step %d of %d (stop_after); continue with --resume", state.step, run.steps)
                return {"step": state.step, "total_steps": run.steps, "stopped": True}
            metrics = final_evaluation(state, run)
        except KeyboardInterrupt as interrupt:
            _save(state, run, coordinated=getattr(interrupt, "coordinated", False))
            log.warning("interrupted at step %d; checkpoint saved, continue with --resume", state.step)
            raise
    if info.is_main:
        run.last.unlink(missing_ok=True)  # the run is finished: best.pt and the figures are its product
    return metrics


def _make_run(config: FinetuneConfig, data: Prepared, info: DistInfo, out: Path, state: FinetuneState) -> Run:
    """Step counts (equal on every rank) and the wrapped models of a run."""
    # A rank's share is at most ceil(J / W) jets; every rank takes the same number of steps.
    steps_per_epoch = math.ceil(math.ceil(data.train_set.n_jets / info.world_size) / config.batch_size)
    steps = max(config.min_steps, math.ceil(config.epochs * steps_per_epoch))
    train_model: nn.Module = state.model
    eval_model: nn.Module = state.model
    if info.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)
    if config.compile:
        train_model, eval_model = torch.compile(train_model), torch.compile(eval_model)
    return Run(config=config, data=data, dist=info, out=out, steps=steps,
               stop=min(steps, config.stop_after) if config.stop_after is not None else steps,
               steps_per_epoch=steps_per_epoch, eval_every=config.eval_every or validation_interval(steps_per_epoch,
                                                                                                      steps),
               warmup=int(config.warmup_fraction * steps), train_model=train_model, eval_model=eval_model)


def _start_outputs(run: Run, validated: list[int] | None) -> None:
    """Write config.yaml and start train_log.csv (on resume: keep the rows of the validations done)."""
    run.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(run.out / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({**run.data.resolved, "total_steps": run.steps,
                                       "n_train_labels": run.data.train_set.n_jets, "classes": list(run.data.classes),
                                       "world_size": run.dist.world_size}, sort_keys=False))
    done = set(validated or ())
    RunLog(run.out / "train_log.csv", LOG_COLUMNS,
           keep=None if validated is None else lambda row: int(row["step"]) in done)


#: Under DDP, the ranks agree on a SIGTERM every this many steps (a one-integer all-reduce, a device sync).
_AGREE_EVERY = 10


def _train(state: FinetuneState, run: Run, terminate, progress: bool) -> None:
    """Steps from ``state.step`` to the end, ``stop_after`` or an early stop; validations and checkpoints on the way.

    A validation due at the current step is run first, so a checkpoint written between a step and its
    validation resumes exactly. SIGTERM stops between steps with a coordinated checkpoint.
    """
    config, info = run.config, run.dist
    loader = ShardLoader(run.data.train_set, config.batch_size, config.block_size, config.seed, shuffle=True,
                         rank=info.rank, world_size=info.world_size, epochs=None, fields=FINETUNE_FIELDS,
                         pin_memory=info.device.type == "cuda")
    saved_at, start = state.step, time.perf_counter()
    base_seconds = state.train_seconds
    state.model.train()
    bar = tqdm(total=run.stop, initial=state.step, disable=not (progress and info.is_main), unit="step",
               dynamic_ncols=True)
    try:
        with loader.prefetch(state.cursor, depth=config.prefetch) as batches:
            while True:
                state.train_seconds = base_seconds + time.perf_counter() - start
                if _validation_due(state, run):
                    validate(state, run, bar)
                if state.done or state.step >= run.steps:
                    state.done = True
                    return
                if state.step >= run.stop:
                    return
                if state.step % config.checkpoint_every == 0 and state.step != saved_at:
                    _save(state, run, coordinated=True)
                    saved_at = state.step
                if (info.world_size == 1 or state.step % _AGREE_EVERY == 0) and \
                        any_rank(terminate.is_set(), info):
                    interrupt = KeyboardInterrupt()
                    interrupt.coordinated = True  # every rank stops here: the checkpoint may gather
                    raise interrupt
                train_step(state, run, next(batches))
                bar.update(1)
    finally:
        state.train_seconds = base_seconds + time.perf_counter() - start
        bar.close()


def train_step(state: FinetuneState, run: Run, batch) -> None:
    """One optimizer step on ``batch``: forward (autocast), cross-entropy on fp32 logits, scaled backward,
    clipping of the unscaled gradients, step; the loss is summed on the device (no sync)."""
    config = run.config
    set_lr(state.optimizer, lr_at(state.step, run.steps, config.lr, config.final_lr, run.warmup))
    inputs, labels = to_device(batch, run.data.transform, run.dist.device, run.data.label_map)
    with autocast(run.dist.device, config.precision):
        logits = run.train_model(inputs)
    loss = F.cross_entropy(logits.float(), labels)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if config.clip_grad > 0:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_([p for g in state.optimizer.param_groups for p in g["params"]], config.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.running_loss += loss.detach()
    state.running_steps += 1
    state.step, state.cursor = state.step + 1, batch.cursor


def _validation_due(state: FinetuneState, run: Run) -> bool:
    step = state.step
    return step > 0 and (step % run.eval_every == 0 or step == run.steps) and \
        (not state.validated or state.validated[-1] != step)


def validate(state: FinetuneState, run: Run, bar) -> None:
    """Validation figures at ``state.step`` (gathered over ranks), a train_log.csv row, the best model and
    early stopping (the same decisions on every rank)."""
    config, step = run.config, state.step
    val_loss, val_acc = _val_figures(*predict_over_ranks(
        run.eval_model, run.data.val_set, run.data.transform, run.dist, config.batch_size, run.data.label_map,
        config.val_batches, config.precision))
    train_loss = mean_over_ranks(float(state.running_loss) / state.running_steps, run.dist)
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):  # never report an untrained head
        raise JJepaError(f"finetuning diverged (a NaN or inf loss) by step {step}; nothing is reported "
                         f"from it. Try a lower --lr (now {config.lr:g}) or --encoder-lr-scale")
    lr = lr_at(step - 1, run.steps, config.lr, config.final_lr, run.warmup)
    if run.dist.is_main:
        RunLog.append(run.out / "train_log.csv", LOG_COLUMNS, {
            "step": step, "epoch": f"{step / run.steps_per_epoch:.3f}", "train_loss": train_loss,
            "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr})
    bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", acc=f"{val_acc:.3f}")
    state.running_loss.zero_()
    state.running_steps = 0
    state.validated.append(step)
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.best_step = val_loss, step
        state.best_model = copy.deepcopy(state.model.state_dict())
        state.bad_evals = 0
    else:
        state.bad_evals += 1
        if state.bad_evals >= config.patience and step >= config.min_steps:
            log.info("early stop at step %d: no better validation loss for %d validations", step, state.bad_evals)
            state.done = True


def _save(state: FinetuneState, run: Run, coordinated: bool) -> None:
    """Write ``last.pt`` (rank 0). ``coordinated``: every rank is here, so each rank's loss sum is gathered;
    otherwise (Ctrl-C under DDP) rank 0's stands for all."""
    running = [float(r) for r in gather_objects(float(state.running_loss), run.dist)] if coordinated \
        else [float(state.running_loss)]
    if run.dist.is_main:
        save_checkpoint(run.last, run_checkpoint(state, run, running))


def final_evaluation(state: FinetuneState, run: Run) -> dict:
    """The best-validation classifier: best.pt, predictions on the whole validation and test sets (gathered
    over ranks), metrics with intervals, ROC; written by rank 0, which returns the metrics ({} elsewhere)."""
    config, data, out = run.config, run.data, run.out
    model = state.model
    model.load_state_dict(state.best_model)
    if run.dist.is_main:
        save_checkpoint(out / "checkpoints" / "best.pt", FinetuneCheckpoint(
            classifier=model.state_dict(), config=data.resolved, classes=list(data.classes),
            cluster=config_dict(data.train_set.manifest.cluster), step=state.best_step,
            val_loss=state.best_val_loss))
    val_probs, val_labels = predict_over_ranks(run.eval_model, data.val_set, data.transform, run.dist,
                                               config.batch_size, data.label_map, precision=config.precision)
    probs, labels = predict_over_ranks(run.eval_model, data.test_set, data.transform, run.dist, config.batch_size,
                                       data.label_map, precision=config.precision)
    if not run.dist.is_main:
        return {}
    classes = data.classes
    for name, (p, y) in {"val": (val_probs, val_labels), "test": (probs, labels)}.items():
        with atomic_path(out / f"{name}_predictions.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, labels=y, probs=p, classes=np.array(classes))
    metrics = metrics_with_intervals(labels, probs, classes, config.bootstrap_resamples)
    edge = best_at_edge(state.best_step, state.validated)
    if edge:
        log.warning("the best validation loss is at the %s validation (step %d of %d): the kept model may be "
                    "%s-trained; validate more often (eval_every) or train %s", edge, state.best_step, state.step,
                    "under" if edge == "last" else "over", "longer" if edge == "last" else "with a lower lr")
    metrics.update({"n_train_labels": int(data.train_set.n_jets), "mode": config.mode, "seed": config.seed,
                    "label_fraction": data.train_set.n_jets / data.n_available,
                    "aggregation": config.aggregation, "best_step": state.best_step,
                    "best_val_loss": state.best_val_loss, "steps_run": state.step,
                    "n_validations": len(state.validated), "best_at_edge": edge,
                    "train_seconds": round(state.train_seconds, 1), "n_test": int(len(labels)),
                    "val": metrics_with_intervals(val_labels, val_probs, classes, config.bootstrap_resamples)})
    metrics.update(data.kept)
    metrics = json_safe(metrics)
    write_json_atomic(out / "metrics.json", metrics)
    curves = tagging_curves(labels, probs, classes)
    write_roc_curves_csv(out / "roc.csv", curves)
    plot_roc({f"{config.mode}, {name}": curve for name, curve in curves.items()}, out / "roc.png")
    log.info("test: accuracy %.4f, AUC %.4f", metrics["accuracy"], metrics["auc"])
    return metrics
