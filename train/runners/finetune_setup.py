"""What a finetuning run sets up before its first step: the jet sets and classes, the label subset, the
architecture and the classifier with its optimizer."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from jjepa.common.errors import JJepaError, ShardError
from jjepa.train.config import PRESETS, FinetuneConfig, ModelConfig, config_from_dict
from jjepa.train.data.loader import ShardSet
from jjepa.train.data.part_inputs import PartFeatures
from jjepa.train.data.provenance import check_disjoint, check_encoder_clustering, fingerprint
from jjepa.train.data.subsets import stratified_subset
from jjepa.train.data.transform import InputTransform
from jjepa.train.mechanics.checkpoint import load_checkpoint
from jjepa.train.mechanics.optim import param_groups
from jjepa.train.model.classifier import JetClassifier, encoder_state, load_encoder
from jjepa.train.model.part import PartTagger

log = logging.getLogger(__name__)


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
    fingerprints: dict  # training, validation, test → their fingerprint (``provenance.fingerprint``)


def prepare(config: FinetuneConfig, device: torch.device) -> Prepared:
    """Open the shard sets, check them against each other (and the checkpoint), draw the label subset,
    resolve the architecture. Everything here fails before the first step, never after training."""
    train_set, val_set, test_set = (ShardSet(f, verify=config.verify_shards) for f in (config.train, config.val,
                                                                                      config.test))
    for role, other in (("--val", val_set), ("--test", test_set)):
        train_set.check_like(other, role)
    check_disjoint({"--train": (train_set.folder, train_set.manifest), "--val": (val_set.folder, val_set.manifest),
                    "--test": (test_set.folder, test_set.manifest)})
    fingerprints = {role: fingerprint(s.folder, s.manifest)
                    for role, s in (("training", train_set), ("validation", val_set), ("test", test_set))}
    if config.mode == "part" and config.checkpoint:
        log.info("mode part trains the Particle Transformer from scratch; %s is not used", config.checkpoint)
    pretrained = (load_checkpoint(config.checkpoint, kind="pretrain") if config.checkpoint and config.mode != "part"
                  else None)
    if pretrained is not None:
        check_encoder_clustering(pretrained, config.checkpoint, train_set.folder, train_set.manifest)
    model_config, transform = architecture(config, pretrained, train_set)
    train_set, val_set, test_set = (s.with_min_subjets(config.min_subjets) for s in (train_set, val_set, test_set))
    kept = {"n_train_jets": train_set.n_jets, "n_val_jets": val_set.n_jets, "n_test_jets": test_set.n_jets}
    if config.min_subjets > 0:
        log.info("jets with at least %d real subjets: %s", config.min_subjets, kept)
    classes, mapping = tagging_classes(train_set, val_set, test_set, config.min_subjets)
    n_available = train_set.n_jets
    if config.label_fraction is not None or config.n_labels is not None:
        train_set = train_set.select(stratified_subset(train_set.labels(), config.seed, config.label_fraction,
                                                       config.n_labels))
    class_counts = np.bincount(mapping[np.concatenate(train_set.labels())], minlength=len(classes))
    log.info("training on %d labelled jets (%s)", train_set.n_jets,
             ", ".join(f"{c}: {n}" for c, n in zip(classes, class_counts, strict=True)))
    resolved = {**config.to_dict(), "model": model_config and asdict(model_config), "transform": asdict(transform)}
    return Prepared(train_set, val_set, test_set, classes, torch.from_numpy(mapping).to(device), model_config,
                    transform, pretrained, kept, n_available, resolved, fingerprints)


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


def tagging_classes(train: ShardSet, val: ShardSet, test: ShardSet,
                    min_subjets: int = 0) -> tuple[tuple[str, ...], np.ndarray]:
    """The classes the tagger learns: those of the shards' class names that have training jets.

    Shards in the JetClass layout name all ten JetClass classes even when a file set holds two of
    them (e.g. top and QCD): classes without a single training jet are dropped, so that sample
    becomes a binary tagger. Jets are counted from their labels, after ``min_subjets`` (which may
    empty a class). Returns the kept names and an int64 map from shard label to tagger label (−1 for
    dropped classes).

    Raises:
        JJepaError: the folders name different classes, fewer than two classes have training jets,
            validation/test jets belong to a class with no training jets, a kept class has no
            validation or test jets, or a set holds unlabelled jets (−1).
    """
    names = tuple(train.manifest.classes)
    for other in (val, test):
        if tuple(other.manifest.classes) != names:
            raise JJepaError(f"{other.folder}: classes {list(other.manifest.classes)} differ from the training "
                             f"shards' {list(names)}")
    cut = f" with at least {min_subjets} real subjets" if min_subjets > 0 else ""
    sets = {"training": train, "validation": val, "test": test}
    counts = {}
    for role, shards in sets.items():
        counts[role], unlabelled = class_counts(shards, len(names))
        if unlabelled:
            raise JJepaError(f"{shards.folder}: {unlabelled} {role} jet(s){cut} without a label (−1); finetuning "
                             "trains and scores labelled jets only: use labelled shards (unlabelled ones are for "
                             "pretraining)")
    present = np.flatnonzero(counts["training"] > 0)
    if len(present) < 2:
        raise JJepaError(f"{train.folder}: {len(present)} class(es) have training jets{cut}; tagging needs at least 2"
                         f"{' (lower min_subjets)' if cut else ''}")
    for role in ("validation", "test"):
        stray = [names[i] for i in np.flatnonzero((counts[role] > 0) & (counts["training"] == 0))]
        if stray:
            raise JJepaError(f"{sets[role].folder}: holds jets of {stray}, which the training shards never "
                             f"show{cut}")
        absent = [names[i] for i in present if counts[role][i] == 0]
        if absent:
            raise JJepaError(f"{sets[role].folder}: no {role} jets{cut} of {absent}; every class the tagger learns "
                             f"needs {role} jets (for early stopping and the ROC): use {role} shards with all the "
                             "training classes")
    mapping = np.full(len(names), -1, dtype=np.int64)
    mapping[present] = np.arange(len(present))
    if len(present) < len(names):
        log.info("classes with training jets: %s (the others named by the shards are dropped)",
                 [names[i] for i in present])
    return tuple(names[i] for i in present), mapping


def class_counts(shards: ShardSet, n_classes: int) -> tuple[np.ndarray, int]:
    """Jets per class among the selected jets of ``shards``, (n_classes,) int64, read from their labels,
    and the number of jets without a label (−1).

    Raises:
        ShardError: a label outside −1 (unlabelled) … n_classes − 1, naming the shard and the jet.
    """
    counts, n_unlabelled = np.zeros(n_classes, dtype=np.int64), 0
    for k, labels in enumerate(shards.labels()):
        bad = np.flatnonzero((labels < -1) | (labels >= n_classes))
        if len(bad):
            rows = bad if shards.index is None else shards.index[k][bad]
            raise ShardError(f"{shards.folder / shards.manifest.shards[k].file}: jet {int(rows[0])} has label "
                             f"{int(labels[bad[0]])}, outside the {n_classes} classes of its manifest; the shard is "
                             "damaged: rebuild it (`jjepa-preprocess cluster ... --resume`)")
        counts += np.bincount(labels[labels >= 0], minlength=n_classes)
        n_unlabelled += int((labels == -1).sum())
    return counts, n_unlabelled


def tagger_optimizer(model: JetClassifier | PartTagger, config: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW over what the mode trains: the head alone (``freeze``), the head and the encoder at
    ``encoder_lr_scale`` times its learning rate (``finetune``), or everything (``scratch``, ``part``)."""
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
