"""Small models of mainstream architecture families, built from torch.nn (no downloads).

Shared by the unit tests that vet each export, the integration test that runs each one on a
real grid, and the CUDA tolerance calibration (tensorgrid.tools.calibrate_tolerance), which runs
them on an operator's GPU. Each model is tiny, seeded and in eval mode; its inputs are named in the
order its forward takes them (the job's input_names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

VOCAB, WIDTH, SEQ, HEADS = 64, 32, 12, 4


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int, torch.Generator], dict[str, torch.Tensor]]  # rows -> named inputs, forward order

    def export(self, path: Path) -> dict[str, torch.Tensor]:
        """Export the model as its authors would (dynamic batch); return the example inputs it was traced with."""
        torch.manual_seed(0)
        module = self.build().eval()
        example = self.inputs(4, torch.Generator().manual_seed(1))
        batch = torch.export.Dim("batch")
        program = torch.export.export(
            module, tuple(example.values()), dynamic_shapes=tuple({0: batch} for _ in example)
        )
        torch.export.save(program, str(path))
        return example


def _tokens(rows: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (rows, SEQ), generator=gen)
    lengths = torch.randint(3, SEQ + 1, (rows,), generator=gen)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()  # 1 = real token, 0 = padding
    return {"input_ids": ids * mask, "attention_mask": mask}


def _encoder(layers: int = 2) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 2 * WIDTH, dropout=0.1, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class Bert(nn.Module):
    """BERT-style: token + position embeddings, encoder with a padding mask, mean pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, WIDTH, padding_idx=0), nn.Embedding(SEQ, WIDTH)
        self.encoder, self.head = _encoder(), nn.Linear(WIDTH, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.tokens(input_ids) + self.positions(torch.arange(input_ids.shape[1], device=input_ids.device))
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        keep = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1.0))


class Gpt(nn.Module):
    """GPT-style decoder block stack: causal self-attention, next-token logits at every position."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, WIDTH), nn.Embedding(SEQ, WIDTH)
        self.blocks, self.norm = _encoder(), nn.LayerNorm(WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        h = self.tokens(input_ids) + self.positions(torch.arange(t, device=input_ids.device))
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=input_ids.device)
        return self.lm_head(self.norm(self.blocks(h, mask=causal, is_causal=True)))


class Vit(nn.Module):
    """ViT: conv patchify, class token, position embeddings, encoder, head on the class token."""

    def __init__(self, image: int = 16, patch: int = 4) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(3, WIDTH, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, WIDTH) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, WIDTH) * 0.02)
        self.encoder, self.head = _encoder(), nn.Sequential(nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patchify(pixels).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(pixels.shape[0], -1, -1), patches], dim=1) + self.pos
        return self.head(self.encoder(h)[:, 0])


def _cnn() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    model = nn.Sequential(
        *block(3, 8), nn.MaxPool2d(2), *block(8, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    )
    with torch.no_grad():  # running statistics as after training, so eval-mode BatchNorm does something
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None  # track_running_stats
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


class Recurrent(nn.Module):
    """An LSTM or GRU over token embeddings, classified from the last hidden state."""

    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.rnn = cell(WIDTH, WIDTH, num_layers=2, batch_first=True, dropout=0.1)
        self.head = nn.Linear(WIDTH, 5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.tokens(input_ids))
        return self.head(out[:, -1])


class BagClassifier(nn.Module):
    """EmbeddingBag (mean of a row's tokens, padding ignored) and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(VOCAB, WIDTH, mode="mean", padding_idx=0)
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(input_ids))


def _mlp(dtype: torch.dtype) -> nn.Module:
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 8)).to(dtype)


def _images(rows: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"pixels": torch.randn(rows, 3, 16, 16, generator=gen)}


def _ids(rows: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_ids": _tokens(rows, gen)["input_ids"]}


def _features(dtype: torch.dtype) -> Callable[[int, torch.Generator], dict[str, torch.Tensor]]:
    return lambda rows, gen: {"features": torch.randn(rows, 16, generator=gen).to(dtype)}


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("bert", Bert, _tokens),
        Architecture("gpt", Gpt, _ids),
        Architecture("vit", Vit, _images),
        Architecture("cnn_batchnorm", _cnn, _images),
        Architecture("lstm", lambda: Recurrent(nn.LSTM), _ids),
        Architecture("gru", lambda: Recurrent(nn.GRU), _ids),
        Architecture("embedding_bag", BagClassifier, _ids),
        Architecture("float16", lambda: _mlp(torch.float16), _features(torch.float16)),
        Architecture("bfloat16", lambda: _mlp(torch.bfloat16), _features(torch.bfloat16)),
    )
}
