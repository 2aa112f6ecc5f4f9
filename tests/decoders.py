"""A tiny GPT-style decoder built from torch.nn, for tests: tokens [B, T] → logits [B, T, V]."""

from __future__ import annotations

import os

import torch
from torch import nn


class Block(nn.Module):
    causal: torch.Tensor

    def __init__(self, width: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        # one spare row: slicing [:t, :t] at t == size would make export guard on t != context
        self.register_buffer("causal", torch.tril(torch.ones(context + 1, context + 1, dtype=torch.bool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        att = att.masked_fill(~self.causal[:t, :t], float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 50, width: int = 32, depth: int = 2, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads, context) for _ in range(depth)))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.ln(self.blocks(self.tok(tokens) + self.pos(positions))))


def export_decoder(module: nn.Module, path: str | os.PathLike[str], context: int = 64) -> None:
    """Export with a dynamic batch and a dynamic sequence length up to the context."""
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=context)
    example = torch.zeros(2, 8, dtype=torch.int64)
    program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch, 1: length},))
    torch.export.save(program, os.fspath(path))


def tiny_decoder(seed: int = 0, **sizes: int) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(**sizes).eval()
