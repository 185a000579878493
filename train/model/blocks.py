"""Transformer building blocks shared by the subjet embedding, the encoder and the predictor.

Pre-norm blocks (LayerNorm → attention → residual, LayerNorm → MLP → residual) over tokens with a
key-padding mask. Attention is PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient
kernels on CUDA) with a boolean mask that is true where a query may attend to a key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(key_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool key mask → (B, 1, 1, L) boolean ``attn_mask`` for ``scaled_dot_product_attention``.

    A row with no real key (a fully padded subjet in the constituent transformer) would make the
    softmax 0/0; such rows attend to their first slot instead, and their outputs are discarded by
    the caller (they are padding).
    """
    empty = ~key_mask.any(dim=-1, keepdim=True)
    first = torch.zeros_like(key_mask)
    first[..., 0] = True
    safe = key_mask | (empty & first)
    return safe[:, None, None, :]


class MLP(nn.Module):
    """Linear → GELU → Linear, hidden width ``ratio`` × ``dim``."""

    def __init__(self, dim: int, ratio: float, out_dim: int | None = None):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention of queries ``x`` over keys/values ``context`` (self-attention if None)."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, Lq, D); context: (B, Lk, D); mask: boolean, broadcastable to (B, H, Lq, Lk)."""
        context = x if context is None else context
        b, lq, d = x.shape
        h = self.n_heads
        q = self.q(x).view(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, lq, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class ClassAttentionBlock(Block):
    """CaiT class attention: a class token attends to [itself; tokens] and is updated; tokens are not.

    Same layers as ``Block``. Padding is ignored through the key mask; the class token itself is
    always a valid key, so no row of the softmax is ever empty.
    """

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """cls: (B, 1, D); tokens: (B, L, D); key_mask: (B, L) bool. Returns the new (B, 1, D) class token."""
        both = self.norm1(torch.cat([cls, tokens], dim=1))
        mask = torch.cat([torch.ones_like(key_mask[:, :1]), key_mask], dim=1)[:, None, None, :]
        cls = cls + self.attn(both[:, :1], mask, context=both)
        return cls + self.mlp(self.norm2(cls))
