"""Pretraining configuration: model presets and the run's knobs, each one dataclass.

Configuration flows one way: the dataclass defaults below, then the ``pretrain:`` section of a
YAML file (``--config params.yaml``), then command-line overrides. ``resolve_pretrain_config``
merges them, rejects unknown keys (listing the valid ones) and converts values to the field's
type; the resolved config is written into the run folder and the checkpoint, so nothing later
depends on defaults hidden in a function.

Nested sections use a dotted key on the command line (``--set model.depth=4``) and a nested
mapping in YAML (``model: {depth: 4}``). The ``model`` section starts from ``preset``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, replace

from jjepa.common.errors import JJepaError
from jjepa.train.data.transform import InputTransform

EMBEDDINGS: tuple[str, ...] = ("mlp", "attention")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


class ConfigError(JJepaError):
    """A configuration key or value that the dataclasses do not accept."""


@dataclass(frozen=True)
class ModelConfig:
    """The encoder and predictor hyperparameters; checkpoints store it so finetuning can rebuild them.

    Attributes:
        embedding: subjet embedding, ``mlp`` (flattened constituents through GELU residual blocks) or
            ``attention`` (per-constituent MLP, transformer blocks over constituents, class-attention pooling).
        embed_dim: D, the width of subjet tokens in the encoder.
        depth: transformer blocks of the subjet transformer (encoder).
        n_heads: attention heads of the encoder; must divide ``embed_dim``.
        mlp_ratio: hidden width of every transformer MLP, as a multiple of the block's width.
        embedding_dim: width inside the subjet embedding (per constituent for ``attention``).
        embedding_depth: residual blocks (``mlp``) or transformer blocks over constituents (``attention``).
        embedding_heads: attention heads over constituents (``attention`` only); must divide ``embedding_dim``.
        predictor_dim: width of the predictor (narrower than ``embed_dim``).
        predictor_depth: transformer blocks of the predictor (shallower than ``depth``).
        predictor_heads: attention heads of the predictor; must divide ``predictor_dim``.
        predictor_fourvec: also embed each target subjet's four-vector (pT, Δη, sin(Δφ/2), E) in its query.
        n_subjets: S, subjet slots per jet; taken from the data's manifest.
        n_particles: N, constituent slots per subjet; taken from the data's manifest.
    """

    embedding: str
    embed_dim: int
    depth: int
    n_heads: int
    mlp_ratio: float
    embedding_dim: int
    embedding_depth: int
    embedding_heads: int
    predictor_dim: int
    predictor_depth: int
    predictor_heads: int
    predictor_fourvec: bool = False
    n_subjets: int | None = None
    n_particles: int | None = None

    def __post_init__(self):
        if self.embedding not in EMBEDDINGS:
            raise ConfigError(f"model.embedding must be one of {EMBEDDINGS}, not {self.embedding!r}")
        for width, heads, name in ((self.embed_dim, self.n_heads, ""), (self.predictor_dim, self.predictor_heads,
                                   "predictor_"), (self.embedding_dim, self.embedding_heads, "embedding_")):
            if width < 1 or heads < 1 or width % heads:
                raise ConfigError(f"model.{name}heads ({heads}) must divide model.{name or 'embed_'}dim ({width})")
        for name in ("depth", "embedding_depth", "predictor_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1")


#: The model sizes. ``tiny`` trains in seconds on a laptop CPU (tests, debugging); ``paper`` is the
#: scale of the reference's ViT-L option.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(embedding="mlp", embed_dim=32, depth=2, n_heads=2, mlp_ratio=2.0, embedding_dim=64,
                        embedding_depth=1, embedding_heads=2, predictor_dim=16, predictor_depth=1, predictor_heads=2),
    "small": ModelConfig(embedding="mlp", embed_dim=256, depth=6, n_heads=8, mlp_ratio=4.0, embedding_dim=256,
                         embedding_depth=2, embedding_heads=4, predictor_dim=128, predictor_depth=3,
                         predictor_heads=4),
    "base": ModelConfig(embedding="mlp", embed_dim=512, depth=12, n_heads=8, mlp_ratio=4.0, embedding_dim=512,
                        embedding_depth=3, embedding_heads=8, predictor_dim=256, predictor_depth=6, predictor_heads=8),
    "paper": ModelConfig(embedding="mlp", embed_dim=1024, depth=24, n_heads=16, mlp_ratio=4.0, embedding_dim=1024,
                         embedding_depth=3, embedding_heads=16, predictor_dim=512, predictor_depth=12,
                         predictor_heads=16),
}


@dataclass(frozen=True)
class PretrainConfig:
    """Everything one pretraining run needs; the resolved instance is saved with the run.

    Attributes:
        data: shard folder (with ``manifest.json``) to pretrain on.
        val: shard folder for the validation loss, or None.
        out: run folder: ``config.yaml``, ``train_log.csv``, ``metrics.json``, ``checkpoints/last.pt``.
        preset: the ``model`` section starts from ``PRESETS[preset]``.
        model: the resolved model hyperparameters.
        transform: the input transform (log pT, log E, scaled angles), applied on the device.
        steps: optimizer steps; exactly one of ``steps`` and ``epochs`` is set.
        epochs: passes over ``data`` (per rank, a rank's share), converted to steps.
        stop_after: stop (with a checkpoint) after this step although the schedules run to ``steps``:
            for jobs with a wall-time limit, continued with ``--resume``.
        batch_size: jets per step and per rank.
        lr: peak learning rate (AdamW), reached after the warmup.
        final_lr: learning rate at the last step, the end of the cosine.
        warmup_fraction: fraction of the steps with linear warmup from 0.
        weight_decay: AdamW weight decay, not applied to biases, norms and learned tokens.
        clip_grad: gradient-norm clipping threshold; 0 disables it.
        ema_start: momentum of the target encoder (EMA) at step 0.
        ema_end: momentum at the last step (cosine from ``ema_start``).
        mask_fraction: fraction of each jet's real subjets that are targets.
        context_sees_targets: False (default, I-JEPA style): the context encoder attends to the context
            subjets only. True: the paper's masking, both encoders see the whole jet and the outputs
            are masked afterwards; in our label-efficiency benchmark it pretrained no useful
            representation (docs/performance.md), so it is kept for reproducing the paper only.
        block_size: jets per contiguous block of the shuffled reading order.
        prefetch: batches the background thread keeps ready.
        log_every: steps between rows of ``train_log.csv``.
        val_every: steps between validation losses (0: only at the end).
        val_batches: batches per validation (None: the whole of ``val``).
        checkpoint_every: steps between checkpoints (always one at the end).
        collapse_std: warn when the target representation's batch std falls below this.
        collapse_rank: warn when its effective rank falls below this.
        seed: seeds the initialisation, the reading order and the masks.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        compile: wrap the encoders and the predictor in ``torch.compile``.
    """

    data: str | None = None
    val: str | None = None
    out: str | None = None
    preset: str = "small"
    model: ModelConfig = PRESETS["small"]
    transform: InputTransform = field(default_factory=InputTransform)
    steps: int | None = None
    epochs: float | None = None
    stop_after: int | None = None
    batch_size: int = 256
    lr: float = 5e-4
    final_lr: float = 1e-6
    warmup_fraction: float = 0.05
    weight_decay: float = 0.05
    clip_grad: float = 1.0
    ema_start: float = 0.996
    ema_end: float = 1.0
    mask_fraction: float = 0.3
    context_sees_targets: bool = False
    block_size: int = 64
    prefetch: int = 4
    log_every: int = 50
    val_every: int = 1000
    val_batches: int | None = 50
    checkpoint_every: int = 1000
    collapse_std: float = 1e-2
    collapse_rank: float = 2.0
    seed: int = 0
    device: str = "auto"
    compile: bool = False

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, not {self.device!r}")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("set exactly one of steps and epochs")
        positive = ("batch_size", "block_size", "prefetch", "log_every", "checkpoint_every")
        for name in positive + (("steps",) if self.steps is not None else ("epochs",)):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        if not 0 < self.mask_fraction < 1:
            raise ConfigError(f"mask_fraction must be in (0, 1), not {self.mask_fraction}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), not {self.warmup_fraction}")
        if not 0 <= self.ema_start <= self.ema_end <= 1:
            raise ConfigError(f"need 0 <= ema_start <= ema_end <= 1, not {self.ema_start}, {self.ema_end}")

    def to_dict(self) -> dict:
        """The config as plain YAML/JSON-able values (nested sections as mappings)."""
        return dataclasses.asdict(self)


def _type_of(cls, name: str):
    return typing.get_type_hints(cls)[name]


def _coerce(value, annotation, key: str):
    """``value`` (from YAML or the command line) as the field type ``annotation``."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        (annotation,) = [a for a in args if a is not type(None)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, not {value!r}")
    if annotation in (int, float, str):
        try:
            converted = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {annotation.__name__}, not {value!r}") from None
        if annotation is int and isinstance(value, float) and converted != value:
            raise ConfigError(f"{key}: expected an integer, not {value!r}")
        return converted
    raise ConfigError(f"{key}: cannot set a field of type {annotation} from {value!r}")


def _nest(overrides: dict) -> dict:
    """``{"model.depth": 4}`` → ``{"model": {"depth": 4}}``; nested mappings pass through."""
    nested: dict = {}
    for key, value in overrides.items():
        head, _, tail = key.partition(".")
        if tail:
            nested.setdefault(head, {})
            if not isinstance(nested[head], dict):
                raise ConfigError(f"{head} is not a section; cannot set {key}")
            nested[head].update(_nest({tail: value}))
        elif isinstance(value, dict):
            nested.setdefault(key, {}).update(_nest(value))
        else:
            nested[key] = value
    return nested


def _build(cls, base, values: dict, where: str):
    """``base`` (an instance of the dataclass ``cls``) with ``values`` set, checked and converted."""
    valid = [f.name for f in fields(cls)]
    unknown = sorted(where + k for k in set(values) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; valid keys in {where.rstrip('.')}: {valid}")
    try:
        return replace(base, **{k: _coerce(v, _type_of(cls, k), where + k) for k, v in values.items()})
    except TypeError as err:
        raise ConfigError(f"{where.rstrip('.')}: {err}") from None


def resolve_pretrain_config(*layers: dict) -> PretrainConfig:
    """Merge configuration layers, later ones winning, into a checked ``PretrainConfig``.

    Args:
        layers: mappings of keys to values, e.g. the ``pretrain:`` section of ``params.yaml`` then the
            command-line options. Keys are ``PretrainConfig`` fields; ``model`` and ``transform`` are
            sections, given as nested mappings or dotted keys (``model.depth``).

    Raises:
        ConfigError: an unknown key (the message lists the valid ones), a value of the wrong type, or
            values that the dataclasses reject.
    """
    return _resolve(PretrainConfig, layers)


def _resolve(cls, layers: tuple[dict, ...]):
    """Merge ``layers`` into ``cls`` (``PretrainConfig`` or ``FinetuneConfig``), sections included.

    The ``model`` section starts from ``PRESETS[preset]``; a config class whose ``preset`` may be None
    (finetuning, where the architecture usually comes from the checkpoint) then has no model section.
    """
    merged: dict = {}
    for layer in layers:
        for key, value in _nest(layer).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
    model = merged.pop("model", {}) or {}
    transform = merged.pop("transform", {}) or {}
    if not isinstance(model, dict) or not isinstance(transform, dict):
        raise ConfigError("model and transform are sections: give them as mappings or dotted keys")
    default_preset = next(f.default for f in fields(cls) if f.name == "preset")
    preset = merged.get("preset", default_preset)
    if preset is not None and str(preset) not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {list(PRESETS)}")
    if preset is None and model:
        raise ConfigError(f"model.{sorted(model)[0]} needs a preset to start from (--preset); "
                          "otherwise the architecture comes from the checkpoint")
    top_fields = [f.name for f in fields(cls)]
    unknown = sorted(set(merged) - set(top_fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; valid keys: {top_fields}")
    try:
        sections = {"transform": _build(InputTransform, InputTransform(), transform, "transform.")}
        if preset is not None:
            sections["model"] = _build(ModelConfig, PRESETS[str(preset)], model, "model.")
        values = {k: _coerce(v, _type_of(cls, k), k) for k, v in merged.items()}
        return cls(**values, **sections)
    except TypeError as err:
        raise ConfigError(str(err)) from None


def config_from_dict(obj: dict) -> PretrainConfig:
    """Rebuild a resolved ``PretrainConfig`` from ``to_dict()`` output (e.g. a checkpoint's)."""
    obj = dict(obj)
    model = ModelConfig(**obj.pop("model"))
    transform = InputTransform(**obj.pop("transform"))
    return PretrainConfig(**obj, model=model, transform=transform)


MODES: tuple[str, ...] = ("finetune", "freeze", "scratch")
AGGREGATIONS: tuple[str, ...] = ("flatten", "cls_attn")
ENCODERS: tuple[str, ...] = ("target", "context")


@dataclass(frozen=True)
class FinetuneConfig:
    """One finetuning run: a head on the (pretrained) subjet transformer, trained on labelled jets.

    Attributes:
        train, val, test: shard folders; only ``train`` is reduced by the label fraction.
        out: run folder: ``config.yaml``, ``train_log.csv``, ``metrics.json``, ``roc.csv``, ``roc.png``,
            ``checkpoints/best.pt``.
        checkpoint: a pretraining checkpoint; its stored model config and input transform are used.
        mode: ``finetune`` (all weights train), ``freeze`` (linear probe: the encoder is fixed and in
            eval mode) or ``scratch`` (same architecture, random initialisation, nothing loaded).
        preset: for ``scratch``, the architecture (else the checkpoint's); not allowed with weights.
        model: the preset's hyperparameters with overrides (``model.depth=…``), when ``preset`` is set.
        transform: input transform; the checkpoint's is used when one is given.
        encoder: which pretrained encoder to start from, ``target`` (the EMA, default) or ``context``.
        aggregation: subjet representations → jet: ``flatten`` (the paper's) or ``cls_attn`` (two
            class-attention blocks).
        label_fraction: share of the training jets used, class-stratified and seeded.
        n_labels: number of training jets used instead (stratified); at most one of the two.
        epochs: passes over the (reduced) training set; at least ``min_steps`` steps are taken.
        min_steps: lower bound on the steps, so tiny label sets still train.
        batch_size: jets per step.
        lr: peak learning rate of the head; the encoder's is ``lr × encoder_lr_scale``.
        encoder_lr_scale: encoder learning rate relative to the head's (``finetune`` mode).
        final_lr: learning rate at the last step (cosine).
        warmup_fraction: linear warmup share of the steps.
        weight_decay: AdamW weight decay (not on biases, norms, tokens).
        eval_every: steps between validations (None: once per epoch, at least every 25 steps).
        patience: stop after this many validations without a better validation loss.
        val_batches: batches per validation (None: the whole validation set).
        block_size: jets per contiguous block of the shuffled order.
        prefetch: batches the loader thread keeps ready.
        seed: seeds the label subset, the head's initialisation and the reading order.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    train: str | None = None
    val: str | None = None
    test: str | None = None
    out: str | None = None
    checkpoint: str | None = None
    mode: str = "finetune"
    preset: str | None = None
    model: ModelConfig | None = None
    transform: InputTransform = field(default_factory=InputTransform)
    encoder: str = "target"
    aggregation: str = "flatten"
    label_fraction: float | None = None
    n_labels: int | None = None
    epochs: float = 20.0
    min_steps: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    final_lr: float = 1e-6
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    eval_every: int | None = None
    patience: int = 5
    val_batches: int | None = None
    block_size: int = 64
    prefetch: int = 4
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        for name, value, allowed in (("mode", self.mode, MODES), ("aggregation", self.aggregation, AGGREGATIONS),
                                     ("encoder", self.encoder, ENCODERS), ("device", self.device, DEVICES)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, not {value!r}")
        if self.label_fraction is not None and self.n_labels is not None:
            raise ConfigError("set at most one of label_fraction and n_labels")
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            raise ConfigError(f"label_fraction must be in (0, 1], not {self.label_fraction}")
        if self.n_labels is not None and self.n_labels < 1:
            raise ConfigError(f"n_labels must be positive, not {self.n_labels}")
        for name in ("epochs", "batch_size", "block_size", "prefetch", "patience"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        if self.mode != "scratch" and self.checkpoint is None:
            raise ConfigError(f"mode {self.mode} needs --checkpoint (a pretraining checkpoint); "
                              "use --mode scratch --preset NAME to train without one")
        if self.mode == "scratch" and self.checkpoint is None and self.preset is None:
            raise ConfigError("mode scratch needs --preset, or --checkpoint to copy its architecture")
        if self.mode != "scratch" and self.preset is not None:
            raise ConfigError(f"mode {self.mode} takes its architecture from the checkpoint; drop --preset")

    def to_dict(self) -> dict:
        """The config as plain YAML/JSON-able values (nested sections as mappings)."""
        return dataclasses.asdict(self)


def resolve_finetune_config(*layers: dict) -> FinetuneConfig:
    """Merge layers (YAML ``finetune:`` section, CLI options, ``--set`` pairs) into a checked ``FinetuneConfig``."""
    return _resolve(FinetuneConfig, layers)
