"""The J-JEPA predictor: from the context representations, predict the target subjets' representations.

Narrower and shallower than the encoder. The context representations are projected down to the
predictor width and tagged with an embedding of their subjet's position; each target gets one
query: a learnable mask token plus the embedding of the target subjet's position (scaled Δη,
sin(Δφ/2)), optionally plus an embedding of its four-vector (log pT, Δη, sin(Δφ/2), log E). All
targets of a jet are predicted in one pass: the sequence is [context tokens; target queries]
(2S tokens), attention sees only real context tokens and real queries, and the query outputs are
projected back to the encoder width. ``predict`` takes the same tokens packed (the context
subjets and the targets gathered to the front, ``jjepa.train.model.packing``), so that the sequence
is (most context subjets + most targets in the batch) long instead of 2S.
"""

from __future__ import annotations

import torch
from jjepa.train.config import ModelConfig
from jjepa.train.model.blocks import MLP, Block, attention_mask
from torch import nn


class Predictor(nn.Module):
    """(B, S, D) context representations + target positions → (B, S, D) predictions at the targets."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.predictor_dim
        self.proj_in = nn.Linear(config.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.position_embed = MLP(2, dim / 2, out_dim=dim)
        self.fourvec_embed = MLP(4, dim / 4, out_dim=dim) if config.predictor_fourvec else None
        self.blocks = nn.ModuleList(Block(dim, config.predictor_heads, config.mlp_ratio)
                                    for _ in range(config.predictor_depth))
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, config.embed_dim)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor, target_mask: torch.Tensor,
                subjets: torch.Tensor) -> torch.Tensor:
        """Predict the target representations from slot-aligned (unpacked) inputs: 2S tokens.

        Args:
            context: (B, S, D) context-encoder output (only ``context_mask`` slots are read).
            context_mask: (B, S) bool, the context subjets.
            target_mask: (B, S) bool, the target subjets.
            subjets: (B, S, 4) transformed subjet features; [..., 1:3] is the position.

        Returns:
            (B, S, D) predictions, 0 where ``target_mask`` is false.
        """
        out = self.predict(context, subjets, context_mask, subjets, target_mask)
        return torch.where(target_mask.unsqueeze(-1), out, 0.0)

    def predict(self, context: torch.Tensor, context_subjets: torch.Tensor, context_valid: torch.Tensor,
                target_subjets: torch.Tensor, target_valid: torch.Tensor) -> torch.Tensor:
        """Predict from any token layout, packed or slot-aligned: Lc context tokens and Lt queries.

        Args:
            context: (B, Lc, D) context representations.
            context_subjets: (B, Lc, 4) transformed features of the subjets of those tokens.
            context_valid: (B, Lc) bool, the tokens that are real context subjets (others are ignored).
            target_subjets: (B, Lt, 4) transformed features of the subjets to predict.
            target_valid: (B, Lt) bool, the real queries.

        Returns:
            (B, Lt, D) predictions; rows where ``target_valid`` is false hold garbage for the caller to drop.
        """
        n_context = context.shape[1]
        target_position = self.position_embed(target_subjets[..., 1:3])
        queries = self.mask_token + target_position
        if self.fourvec_embed is not None:
            queries = queries + self.fourvec_embed(target_subjets)
        # Slot-aligned inputs share one tensor of subjets: embed the positions once.
        context_position = (target_position if context_subjets is target_subjets
                            else self.position_embed(context_subjets[..., 1:3]))
        tokens = self.proj_in(context) + context_position
        x = torch.cat([tokens, queries], dim=1)
        mask = attention_mask(torch.cat([context_valid, target_valid], dim=1))
        for block in self.blocks:
            x = block(x, mask)
        return self.proj_out(self.norm(x[:, n_context:]))
