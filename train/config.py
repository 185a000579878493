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
import difflib
import types
import typing
from dataclasses import dataclass, field, fields, replace

from jjepa.common.errors import JJepaError
from jjepa.train.data.transform import InputTransform

EMBEDDINGS: tuple[str, ...] = ("mlp", "attention")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: Autocast precisions; ``auto`` is bf16 on CUDA and fp32 on the CPU (``mechanics.distributed.resolve_precision``).
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
TARGET_SELECTIONS: tuple[str, ...] = ("random", "hardest")


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
        encoder_positions: add an embedding (a small MLP) of each subjet's position relative to the jet
            axis (scaled Δη, sin(Δφ/2)) to every token of the encoder, hence of both the context and the
            target encoder (the target is the context encoder's EMA copy). The paper's code adds a
            sin/cos encoding of the subjet's absolute (η + 3, sin(φ/2)) in both encoders; absolute η is
            not boost-invariant along the beam, so jjepa uses the jet-relative position. Default false
            (positions reach the predictor only), which is what older checkpoints were trained with.
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
    encoder_positions: bool = False
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


#: Pretraining fields that may differ from the checkpoint's on ``--resume``: where and how the run
#: is executed, logged and validated, never what it trains. Every other field must match.
RESUMABLE_CHANGES: frozenset[str] = frozenset({
    "out", "val", "stop_after", "prefetch", "log_every", "val_every", "val_batches", "checkpoint_every",
    "collapse_std", "collapse_rank", "device", "precision", "compile", "verify_shards", "preset", "keep_checkpoints",
})


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
        target_selection: ``random`` (default; the paper's code also draws at random, among all 20 slots):
            targets drawn uniformly among all real subjets. ``hardest`` (an option): targets drawn among
            the ``target_pool`` hardest (highest-pT) real subjets; the context is every other real subjet,
            soft ones included.
        target_pool: the subjets that ``hardest`` draws targets from.
        min_subjets: jets with fewer real subjets are left out of the training and validation sets
            at load time (no re-clustering); 0 keeps every jet (default). The paper uses 10.
        block_size: jets per contiguous block of the shuffled reading order.
        prefetch: batches the background thread keeps ready.
        log_every: steps between rows of ``train_log.csv``.
        val_every: steps between validation losses (0: only at the end).
        val_batches: batches per validation (None: the whole of ``val``).
        checkpoint_every: steps between checkpoints (always one at the end).
        keep_checkpoints: also keep the last N checkpoints as ``checkpoints/step-<step>.pt`` (older ones are
            deleted as new ones are written); 0 keeps ``last.pt`` only.
        collapse_std: warn when the target representation's batch std falls below this.
        collapse_rank: warn when its effective rank falls below this.
        seed: seeds the initialisation, the reading order and the masks.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        precision: autocast precision of the forward passes: ``bf16``, ``fp16`` (with a gradient
            scaler, for GPUs without bf16) or ``fp32``; ``auto``: bf16 on CUDA, fp32 on the CPU.
        compile: wrap the encoders and the predictor in ``torch.compile``.
        verify_shards: check every shard's sha256 against the manifest before training (remembered per
            file path, size and mtime, so only new or changed files are hashed; ``--no-verify-shards``).
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
    target_selection: str = "random"
    target_pool: int = 10
    min_subjets: int = 0
    block_size: int = 64
    prefetch: int = 4
    log_every: int = 50
    val_every: int = 1000
    val_batches: int | None = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 0
    collapse_std: float = 1e-2
    collapse_rank: float = 2.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    verify_shards: bool = True

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, not {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("set exactly one of steps and epochs (--steps N or --epochs E)")
        positive = ("batch_size", "block_size", "prefetch", "log_every", "checkpoint_every")
        for name in positive + (("steps",) if self.steps is not None else ("epochs",)):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        if self.keep_checkpoints < 0:
            raise ConfigError(f"keep_checkpoints must be 0 (last.pt only) or positive, not {self.keep_checkpoints}")
        _check_learning_rate(self.lr, self.final_lr)
        if not 0 < self.mask_fraction < 1:
            raise ConfigError(f"mask_fraction must be in (0, 1), not {self.mask_fraction}")
        if self.target_selection not in TARGET_SELECTIONS:
            raise ConfigError(f"target_selection must be one of {TARGET_SELECTIONS}, not {self.target_selection!r}")
        if self.target_pool < 1:
            raise ConfigError(f"target_pool must be positive, not {self.target_pool}")
        if self.min_subjets < 0:
            raise ConfigError(f"min_subjets must be 0 (keep every jet) or positive, not {self.min_subjets}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), not {self.warmup_fraction}")
        if not 0 <= self.ema_start <= self.ema_end <= 1:
            raise ConfigError(f"need 0 <= ema_start <= ema_end <= 1, not {self.ema_start}, {self.ema_end}")

    def to_dict(self) -> dict:
        """The config as plain YAML/JSON-able values (nested sections as mappings)."""
        return dataclasses.asdict(self)


#: Settings a request may leave unset (None) because the run binds them from its shards when it starts.
BOUND_AT_START: frozenset[str] = frozenset({"model.n_subjets", "model.n_particles"})


def config_differences(stored: dict, wanted: dict, ignore: frozenset[str] = frozenset(),
                       new_fields_ok: bool = False) -> dict[str, tuple]:
    """The settings in which ``wanted`` differs from ``stored`` (both as ``to_dict()`` gives them), as
    ``{key: (stored value, wanted value)}``, nested sections by ``"section.key"``. Only the keys of ``wanted``
    are settings: what else ``stored`` holds (a run's class names, its step count) is not compared.

    Skipped: keys in ``ignore`` (a section's name skips the whole section, ``"section.key"`` one key); a
    section ``wanted`` leaves unset (None: a finetuning run's model, taken from its checkpoint) and unset keys
    of ``BOUND_AT_START``; with ``new_fields_ok``, keys absent from ``stored`` (fields added since it was
    written).
    """
    differences = {}
    for key in sorted(wanted):
        if key in ignore or (new_fields_ok and key not in stored):
            continue
        old, new = stored.get(key), wanted.get(key)
        if isinstance(new, dict):
            old = old if isinstance(old, dict) else {}
            for k, value in sorted(new.items()):
                name = f"{key}.{k}"
                if name in ignore or (new_fields_ok and k not in old) or (value is None and name in BOUND_AT_START):
                    continue
                if old.get(k) != value:
                    differences[name] = (old.get(k), value)
        elif old != new and not (new is None and isinstance(old, dict)):
            differences[key] = (old, new)
    return differences


def describe_differences(differences: dict[str, tuple], there: str = "there", here: str = "now") -> str:
    """``config_differences`` as one line for an error message: ``"lr: 0.001 there, 0.0003 now, …"``."""
    return ", ".join(f"{k}: {old!r} {there}, {new!r} {here}" for k, (old, new) in differences.items())


def _check_learning_rate(lr: float, final_lr: float) -> None:
    """A peak learning rate must be positive and finite, a final one finite and not negative."""
    if not 0 < lr < float("inf"):
        raise ConfigError(f"lr must be positive and finite, not {lr} (e.g. --lr 5e-4)")
    if not 0 <= final_lr < float("inf"):
        raise ConfigError(f"final_lr must be finite and not negative, not {final_lr}")


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


def _suggestion(unknown: list[str], valid: list[str]) -> str:
    """`` (did you mean 'model.depth'?)`` for the first unknown key close to a valid one (a typo, or a section
    key given without its section), else ``""``."""
    by_name = {v.rsplit(".", 1)[-1]: v for v in valid}
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1) or [by_name[m] for m in difflib.get_close_matches(
            key.rsplit(".", 1)[-1], list(by_name), n=1)]
        if close:
            return f" (did you mean {close[0]!r}?)"
    return ""


def _build(cls, base, values: dict, where: str):
    """``base`` (an instance of the dataclass ``cls``) with ``values`` set, checked and converted."""
    valid = [f.name for f in fields(cls)]
    unknown = sorted(where + k for k in set(values) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}{_suggestion(unknown, [where + v for v in valid])}; valid keys in "
                          f"{where.rstrip('.')}: {valid}")
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
    part = (merged.pop("part", {}) or {}) if any(f.name == "part" for f in fields(cls)) else {}
    if not isinstance(model, dict) or not isinstance(transform, dict) or not isinstance(part, dict):
        raise ConfigError("model, transform and part are sections: give them as mappings or dotted keys")
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
        nested = [f"{name}.{f.name}" for name, section in (("model", ModelConfig), ("transform", InputTransform),
                                                            ("part", PartConfig)) for f in fields(section)]
        raise ConfigError(f"unknown key(s) {unknown}{_suggestion(unknown, top_fields + nested)}; valid keys: "
                          f"{top_fields}")
    try:
        sections = {"transform": _build(InputTransform, InputTransform(), transform, "transform.")}
        if any(f.name == "part" for f in fields(cls)):
            sections["part"] = _build(PartConfig, PartConfig(), part, "part.")
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


@dataclass(frozen=True)
class PartConfig:
    """Size of the Particle Transformer of the ``part`` mode (weaver-core's ``ParticleTransformer``).

    The defaults are the ParT paper's Top Tagging / JetClass model (2.1 M parameters): particle embedding
    MLP widths [embed_dim, 4·embed_dim, embed_dim] = [128, 512, 128], pair embedding widths
    [pair_embed_dim]·3 = [64, 64, 64], 8 heads, 8 particle-attention and 2 class-attention blocks. On a
    CPU use a smaller one, e.g. ``--set part.embed_dim=32 --set part.pair_embed_dim=16
    --set part.num_heads=4 --set part.num_layers=2 --set part.num_cls_layers=1``.

    Attributes:
        embed_dim: token width D; the particle embedding MLP is [D, 4·D, D].
        pair_embed_dim: width of the three pair-embedding layers (then one per head).
        num_heads: attention heads; must divide ``embed_dim``.
        num_layers: particle-attention blocks.
        num_cls_layers: class-attention blocks.
        max_particles: constituents per jet in the sequence (the hardest, pT-ordered); the paper's 128.
            None: every slot of the shards, S·N.
    """

    embed_dim: int = 128
    pair_embed_dim: int = 64
    num_heads: int = 8
    num_layers: int = 8
    num_cls_layers: int = 2
    max_particles: int | None = 128

    def __post_init__(self):
        for name in ("embed_dim", "pair_embed_dim", "num_heads", "num_layers", "num_cls_layers"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"part.{name} must be positive, not {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"part.num_heads ({self.num_heads}) must divide part.embed_dim ({self.embed_dim})")
        if self.max_particles is not None and self.max_particles < 1:
            raise ConfigError(f"part.max_particles must be positive or none, not {self.max_particles}")


MODES: tuple[str, ...] = ("finetune", "freeze", "scratch", "part")
AGGREGATIONS: tuple[str, ...] = ("flatten", "cls_attn")
ENCODERS: tuple[str, ...] = ("target", "context")
#: Finetuning fields that may differ from the checkpoint's on ``--resume`` (as ``RESUMABLE_CHANGES``):
#: where and how the run executes and how its final figures are resampled, never what it trains.
FINETUNE_RESUMABLE_CHANGES: frozenset[str] = frozenset({
    "out", "stop_after", "prefetch", "checkpoint_every", "device", "precision", "compile", "verify_shards",
    "bootstrap_resamples",
})
#: Finetuning fields a mode does not read (``scratch`` sized by a preset also ignores ``checkpoint``):
#: two runs of that mode differing only in them are the same run.
FINETUNE_UNREAD_BY_MODE: dict[str, frozenset[str]] = {
    "finetune": frozenset({"part"}),
    "freeze": frozenset({"part", "encoder_lr_scale"}),
    "scratch": frozenset({"part", "encoder_lr_scale", "encoder"}),
    "part": frozenset({"encoder_lr_scale", "encoder", "aggregation", "checkpoint", "transform"}),
}


@dataclass(frozen=True)
class FinetuneConfig:
    """One finetuning run: a head on the (pretrained) subjet transformer, trained on labelled jets.

    Attributes:
        train, val, test: shard folders; only ``train`` is reduced by the label fraction.
        out: run folder: ``config.yaml``, ``train_log.csv``, ``metrics.json``, ``roc.csv``, ``roc.png``,
            ``checkpoints/best.pt``.
        checkpoint: a pretraining checkpoint; its stored model config and input transform are used.
        mode: ``finetune`` (all weights train), ``freeze`` (linear probe: the encoder is fixed and in
            eval mode), ``scratch`` (same architecture, random initialisation, nothing loaded) or
            ``part`` (the Particle Transformer of weaver-core, from scratch on the same jets and labels:
            the supervised reference; sized by ``part``, any checkpoint ignored).
        preset: for ``scratch``, the architecture (else the checkpoint's); not allowed with weights.
        model: the preset's hyperparameters with overrides (``model.depth=…``), when ``preset`` is set.
        transform: input transform; the checkpoint's is used when one is given.
        part: the Particle Transformer's size (``part`` mode only; ``part.embed_dim=…``).
        encoder: which pretrained encoder to start from, ``target`` (the EMA, default) or ``context``.
        aggregation: subjet representations → jet: ``flatten`` (the paper's) or ``cls_attn`` (two
            class-attention blocks).
        label_fraction: share of the training jets used, class-stratified and seeded.
        min_subjets: jets with fewer real subjets are left out of the training, validation and test
            sets at load time, before the label subset is drawn; 0 keeps every jet (default). The
            paper evaluates on jets with at least 10 subjets.
        n_labels: number of training jets used instead (stratified); at most one of the two.
        epochs: passes over the (reduced) training set; at least ``min_steps`` steps are taken.
        min_steps: lower bound on the steps, so tiny label sets still train.
        batch_size: jets per step and per process (under ``torchrun`` each rank reads its share).
        lr: peak learning rate of the head; the encoder's is ``lr × encoder_lr_scale``.
        encoder_lr_scale: encoder learning rate relative to the head's (``finetune`` mode); 0.3 was chosen
            over 0.1 and 1 on validation jets (docs/performance.md).
        final_lr: learning rate at the last step (cosine).
        warmup_fraction: linear warmup share of the steps.
        weight_decay: AdamW weight decay (not on biases, norms, tokens).
        clip_grad: gradient-norm clipping threshold; 0 disables it (as in pretraining).
        eval_every: steps between validations (None: once per epoch, or more often so that a run has
            about 40 validations: with few labels an epoch is a step or two).
        patience: stop after this many validations without a better validation loss (not before
            ``min_steps``).
        bootstrap_resamples: class-stratified bootstrap resamples of the test and validation jets behind
            the 68 % intervals in ``metrics.json`` (seeded identically for every run, so runs are paired).
        val_batches: batches per validation (None: the whole validation set).
        block_size: jets per contiguous block of the shuffled order.
        prefetch: batches the loader thread keeps ready.
        seed: seeds the label subset, the head's initialisation and the reading order.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 on CUDA, fp32 on the CPU), ``bf16``, ``fp16`` (gradient scaler) or
            ``fp32``; evaluation metrics are always computed from fp32 logits.
        compile: wrap the classifier in ``torch.compile`` for the training and evaluation passes.
        stop_after: stop (with ``checkpoints/last.pt``) after this step although the schedules run to the
            full length: for jobs with a wall-time limit, continued with ``--resume``.
        checkpoint_every: steps between ``checkpoints/last.pt`` (also written on Ctrl-C, SIGTERM and
            ``stop_after``; removed when the run finishes, leaving ``best.pt``).
        verify_shards: check every shard's sha256 against its manifest first (see ``PretrainConfig``).
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
    part: PartConfig = field(default_factory=PartConfig)
    encoder: str = "target"
    aggregation: str = "flatten"
    label_fraction: float | None = None
    n_labels: int | None = None
    min_subjets: int = 0
    epochs: float = 20.0
    min_steps: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    encoder_lr_scale: float = 0.3
    final_lr: float = 1e-6
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    eval_every: int | None = None
    patience: int = 5
    bootstrap_resamples: int = 1000
    val_batches: int | None = None
    block_size: int = 64
    prefetch: int = 4
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    stop_after: int | None = None
    checkpoint_every: int = 1000
    verify_shards: bool = True

    def __post_init__(self):
        _check_learning_rate(self.lr, self.final_lr)
        for name, value, allowed in (("mode", self.mode, MODES), ("aggregation", self.aggregation, AGGREGATIONS),
                                     ("encoder", self.encoder, ENCODERS), ("device", self.device, DEVICES),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, not {value!r}")
        if self.label_fraction is not None and self.n_labels is not None:
            raise ConfigError("set at most one of label_fraction and n_labels (--label-fraction or --n-labels)")
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            raise ConfigError(f"label_fraction must be in (0, 1], not {self.label_fraction} (a share of the training jets; "
                              "for a number of jets use --n-labels)")
        if self.min_subjets < 0:
            raise ConfigError(f"min_subjets must be 0 (keep every jet) or positive, not {self.min_subjets}")
        if self.n_labels is not None and self.n_labels < 1:
            raise ConfigError(f"n_labels must be positive, not {self.n_labels}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError(f"stop_after must be a positive step, not {self.stop_after}")
        for name in ("epochs", "batch_size", "block_size", "prefetch", "patience", "bootstrap_resamples",
                     "checkpoint_every"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        if self.mode == "part" and self.preset is not None:
            raise ConfigError("mode part is sized by part.* (e.g. --set part.num_layers=2), not a preset; "
                              "drop --preset")
        if self.mode not in ("scratch", "part") and self.checkpoint is None:
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
