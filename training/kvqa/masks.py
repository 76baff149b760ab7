"""Attention masks of the recipe (True = may attend).

Block mode (the Block-Attention paper's mask): a token of a non-final block attends causally to the
tokens of its own block only; a token of the final block (question, answer) attends causally to
everything before it. With rotary embeddings, encoding a block alone at positions 0..n-1 and then
re-encoding its keys to the block's offset gives the same keys as computing it at its real
positions under this mask, so training uses real positions and this mask.
Full mode: ordinary causal attention.
"""

from __future__ import annotations

import torch


def full_mask(seq_len: int, device=None) -> torch.Tensor:
    """[seq_len, seq_len] causal mask."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def block_mask(block: torch.Tensor) -> torch.Tensor:
    """block: [B, T] long, the non-final block index of each token, or -1 for the final block
    (and the answer). Padding must carry a block index of its own (e.g. a large one) so that a
    padded query still attends to itself. Returns [B, T, T]."""
    t = block.shape[-1]
    causal = full_mask(t, block.device)
    same = block.unsqueeze(-1) == block.unsqueeze(-2)
    final_query = (block == -1).unsqueeze(-1)
    return causal & (same | final_query)
