"""The jet classifier for finetuning: the subjet transformer, an aggregation of its subjet outputs, a linear layer.

Aggregations: ``flatten`` (the paper's: the (S, D) subjet representations, padded slots zeroed,
flattened to S·D) or ``cls_attn`` (two class-attention blocks with a learnable class token that
attend to the real subjets only). The encoder is rebuilt from a pretraining checkpoint alone (its
stored model config and input transform): the target (EMA) encoder by default, or the context
encoder. Loading reports missing and unexpected keys and fails when encoder weights are absent.
"""

from __future__ import annotations

import logging

import torch
from jjepa.common.errors import JJepaError
from jjepa.train.config import ModelConfig
from jjepa.train.data.transform import ModelInputs
from jjepa.train.model.blocks import ClassAttentionBlock
from jjepa.train.model.subjet_transformer import SubjetTransformer
from torch import nn

log = logging.getLogger(__name__)


class FlattenHead(nn.Module):
    """(B, S, D) → (B, S·D) with padded slots zeroed (the encoder does) → LayerNorm → Linear → (B, C)."""

    def __init__(self, config: ModelConfig, n_classes: int):
        super().__init__()
        width = config.n_subjets * config.embed_dim
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, n_classes)

    def forward(self, reps: torch.Tensor, subjet_mask: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(reps.flatten(1)))


class ClassAttentionHead(nn.Module):
    """Two class-attention blocks over the real subjets → LayerNorm → Linear → (B, C)."""

    def __init__(self, config: ModelConfig, n_classes: int):
        super().__init__()
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(ClassAttentionBlock(dim, config.n_heads, config.mlp_ratio) for _ in range(2))
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, n_classes)

    def forward(self, reps: torch.Tensor, subjet_mask: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token.expand(reps.shape[0], -1, -1)
        for block in self.blocks:
            cls = block(cls, reps, subjet_mask)
        return self.linear(self.norm(cls[:, 0]))


class JetClassifier(nn.Module):
    """Subjet transformer → aggregation → logits (B, C).

    Args:
        config: encoder hyperparameters (``n_subjets``, ``n_particles`` set).
        n_classes: C.
        aggregation: ``flatten`` or ``cls_attn``.
        freeze_encoder: keep the encoder's weights fixed and the encoder in eval mode (linear probe).
    """

    def __init__(self, config: ModelConfig, n_classes: int, aggregation: str, freeze_encoder: bool = False):
        super().__init__()
        self.encoder = SubjetTransformer(config)
        head = {"flatten": FlattenHead, "cls_attn": ClassAttentionHead}[aggregation]
        self.head = head(config, n_classes)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> JetClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def representations(self, inputs: ModelInputs) -> torch.Tensor:
        """(B, S, D) subjet representations, 0 at padded slots."""
        return self.encoder(inputs)

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """(B, C) float32 logits: the encoder may run under bf16/fp16 autocast, the small head never does,
        so scores are not rounded to bf16 (ties where the rejection at εS = 0.3 is read)."""
        reps = self.representations(inputs)
        with torch.autocast(reps.device.type, enabled=False):
            return self.head(reps.float(), inputs.subjet_mask)


def encoder_state(checkpoint: dict, which: str) -> dict[str, torch.Tensor]:
    """The encoder weights of a pretraining checkpoint: ``target`` (EMA) or ``context``, keys without prefix."""
    if which == "target":
        return dict(checkpoint["target_encoder"])
    prefix = "context_encoder."
    return {k[len(prefix):]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)}


def load_encoder(model: JetClassifier, state: dict[str, torch.Tensor], source: str) -> None:
    """Load encoder weights into ``model.encoder``, logging missing and unexpected keys.

    Raises:
        JJepaError: some encoder weights are absent from ``state`` (a checkpoint of another model).
    """
    try:
        result = model.encoder.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise JJepaError(f"{source}: the encoder weights do not fit this architecture ({err})") from None
    if result.unexpected_keys:
        log.warning("%s: %d unexpected keys ignored, e.g. %s", source, len(result.unexpected_keys),
                    result.unexpected_keys[:3])
    if result.missing_keys:
        raise JJepaError(f"{source}: {len(result.missing_keys)} encoder weights are missing from the checkpoint, "
                         f"e.g. {result.missing_keys[:3]}; is it a jjepa pretraining checkpoint of this model?")
    log.info("loaded %d encoder tensors from %s", len(state), source)
