"""Subjet embedding: a subjet's constituents (N, 4) → one token of width D.

Two kinds, as in the paper:

- ``mlp``: the N×4 transformed constituent features, flattened (padding is 0), through a linear
  layer and GELU residual blocks. Fast; sees the constituents in their pT order.
- ``attention``: a per-constituent MLP, transformer blocks over the constituents of each subjet
  (padding masked out), then class-attention pooling that ignores padding. Permutation-invariant
  over constituents.

Tokens of padded subjet slots are set to 0; the encoder masks them anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jjepa.train.config import ModelConfig
from jjepa.train.model.blocks import MLP, Block, ClassAttentionBlock, attention_mask
from torch import nn

N_FEATURES = 4


class ResidualMLPBlock(nn.Module):
    """x + Linear(GELU(Linear(LayerNorm(x))))."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class MLPEmbedding(nn.Module):
    """Flattened constituents (B, S, N·4) → GELU residual MLP → (B, S, D)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.inp = nn.Linear(config.n_particles * N_FEATURES, config.embedding_dim)
        self.blocks = nn.ModuleList(ResidualMLPBlock(config.embedding_dim, config.mlp_ratio)
                                    for _ in range(config.embedding_depth))
        self.norm = nn.LayerNorm(config.embedding_dim)
        self.out = nn.Linear(config.embedding_dim, config.embed_dim)

    def forward(self, particles: torch.Tensor, particle_mask: torch.Tensor) -> torch.Tensor:
        """particles: (B, S, N, 4) transformed, 0 where padded; particle_mask (B, S, N). Returns (B, S, D)."""
        x = F.gelu(self.inp(particles.flatten(2)))
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))


class AttentionEmbedding(nn.Module):
    """Per-constituent MLP → transformer over constituents → class-attention pooling → (B, S, D)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.embedding_dim
        self.inp = MLP(N_FEATURES, dim / N_FEATURES, out_dim=dim)
        self.blocks = nn.ModuleList(Block(dim, config.embedding_heads, config.mlp_ratio)
                                    for _ in range(config.embedding_depth))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pool = ClassAttentionBlock(dim, config.embedding_heads, config.mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, config.embed_dim)

    def forward(self, particles: torch.Tensor, particle_mask: torch.Tensor) -> torch.Tensor:
        """particles: (B, S, N, 4) transformed; particle_mask (B, S, N). Returns (B, S, D)."""
        b, s, n, _ = particles.shape
        x = self.inp(particles.reshape(b * s, n, N_FEATURES))
        keys = particle_mask.reshape(b * s, n)
        mask = attention_mask(keys)
        for block in self.blocks:
            x = block(x, mask)
        cls = self.pool(self.cls_token.expand(b * s, -1, -1), x, keys)
        return self.out(self.norm(cls)).view(b, s, -1)


def build_embedding(config: ModelConfig) -> nn.Module:
    """The subjet embedding named by ``config.embedding``."""
    return {"mlp": MLPEmbedding, "attention": AttentionEmbedding}[config.embedding](config)
