"""The subjet transformer: the J-JEPA encoder (context and target encoders share this architecture).

Each subjet is one token, embedded from its constituents (``jjepa.train.model.embedding``); pre-norm
transformer blocks mix the tokens of a jet, attending only to real subjets (and, for an I-JEPA style
context encoder, only to the context subjets). By default no positional encoding is added: the
constituents' (Δη, sin(Δφ/2)) relative to the jet axis already tell each token where it sits. With
``model.encoder_positions`` (the paper's choice) an embedding of the subjet's own position relative to
the jet axis, a small MLP of the scaled (Δη, sin(Δφ/2)), is added to every token before the blocks;
the target encoder, an EMA copy of the context encoder, carries the same module. The paper's code
encodes the absolute (η + 3, sin(φ/2)) with fixed sin/cos features instead; absolute η is not
invariant under boosts along the beam, so jjepa uses the jet-relative position.
"""

from __future__ import annotations

import torch
from jjepa.train.config import ModelConfig
from jjepa.train.data.transform import ModelInputs
from jjepa.train.model.blocks import MLP, Block, attention_mask
from jjepa.train.model.embedding import build_embedding
from torch import nn


class SubjetTransformer(nn.Module):
    """(B, S, N, 4) constituents → (B, S, D) subjet representations; 0 at slots not attended to."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embedding = build_embedding(config)
        # 2 → D/2·2 = D hidden → D, as the predictor's position embedding; absent (no weights in the
        # state dict) when off, so checkpoints from before the option load unchanged.
        self.position_embed = (MLP(2, config.embed_dim / 2, out_dim=config.embed_dim)
                               if config.encoder_positions else None)
        self.blocks = nn.ModuleList(Block(config.embed_dim, config.n_heads, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.embed_dim)

    def forward(self, inputs: ModelInputs, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Encode a batch.

        Args:
            inputs: the transformed batch.
            visible: (B, S) bool, the subjets this encoder may see; default all real subjets.
                Must be a subset of ``inputs.subjet_mask``.

        Returns:
            (B, S, D) representations, exactly 0 where ``visible`` is false.
        """
        visible = inputs.subjet_mask if visible is None else visible
        x = self.embedding(inputs.particles, inputs.particle_mask)
        if self.position_embed is not None:
            x = x + self.position_embed(inputs.subjet_positions)
        mask = attention_mask(visible)
        for block in self.blocks:
            x = block(x, mask)
        return torch.where(visible.unsqueeze(-1), self.norm(x), 0.0)


def jet_representation(subjet_reps: torch.Tensor, subjet_mask: torch.Tensor) -> torch.Tensor:
    """(B, S, D) subjet representations → (B, D) jet representation: the mean over real subjets."""
    weights = subjet_mask.to(subjet_reps.dtype).unsqueeze(-1)
    return (subjet_reps * weights).sum(1) / weights.sum(1).clamp_min(1.0)
