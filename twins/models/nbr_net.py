"""A repeat-explore neural network for next-basket recommendation, scoring every item from a raw history.

The score of item ``i`` for a user is the sum of three parts (DESIGN §5: repeat items are most of the reachable
recall, explore items most of the target):

* **repeat** ``mlp(features[i])`` at the user's own items only: normalised decayed frequencies (decays
  ``DECAYS``), a recency-weighted count, count per basket, log count, item popularity overall and in the training
  users' target baskets, the user's basket count and mean size, and the two neighbour signals below;
* **prior** ``prior_mlp(popularity, target popularity, neighbour mean, neighbours' targets)`` for every item: the
  explore module's view of what a user like this buys next. The neighbour signals are TIFU-KNN's (Hu et al.,
  SIGIR 2020): the ``knn`` training users nearest in decayed-frequency space (searched among at most ``max_users``
  of them, a seeded sample when there are more, so the index and the bundle stop growing with the customer
  base), their mean vector and the share of them whose last basket held the item
  (``twins.runtime.next_basket_features``);
* **embedding** ``<u, out[i]> + bias[i]`` with ``u`` the recency-weighted mean over baskets of the summed input
  embeddings of the basket's items: co-purchase structure the neighbours miss.

Trained with a multinomial log-likelihood over all items (the target basket's items share the probability mass,
which ranks by expected Recall) or, with ``sampled_items`` = m, a sampled softmax (each batch's target and
history items and m uniform draws, log-q corrected: a step's cost follows m, not the catalogue; by default "auto":
sampled where that cuts a step's columns to under a fifth of a wide catalogue, ``AUTO_SHARE``), on the training
users' last baskets and, with ``targets_per_user`` = m > 1, on
their m - 1 baskets before the last too, each predicted from the baskets before it (more examples from the same
training users; no validation or test user is read); the target popularity a training user sees is out of fold
(its own target never counts, as in ``twins.models.rerank``). The epoch is chosen on the
validation users' Recall@10, with early stopping. Device picked automatically; bf16 autocast on CUDA (``precision``:
``"auto"``; ``"fp32"`` or ``"bf16"`` on any device); ``torchrun``
DDP splits the batches over processes; checkpoints after every epoch, resumed when ``checkpoint_dir`` holds one
written with the same settings and data.

Defined answers: item ids unseen in training are ignored; a history with no known item gets the prior and bias
alone (the training users' popular and trending items); only the last ``max_baskets`` baskets enter the network,
the neighbour search reads as many as the longest training history, and basket counts beyond that are read as that
length; every known item gets a score, so ``k`` items come back whenever ``k <= n_items``.
"""

from __future__ import annotations

import time
from itertools import chain
from collections.abc import Hashable, Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Self

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from twins.runtime.next_basket_features import INPUTS, NeighbourIndex, network_inputs
from twins.training import (autocast_enabled, fingerprint, load_checkpoint, progress, restore_best, save_checkpoint,
                            setup_distributed, shared_score, trim_heap)

Item = Hashable
Baskets = Sequence[Sequence[Item]]
DECAYS = (0.5, 0.8, 0.95)
N_FEATURES = len(DECAYS) + 9
TARGET_FOLDS = 5
TRIM_EVERY = 8  # batches between heap trims (twins.training.trim_heap: without them CJ's RSS grew past 21 GiB)
RESUME_IGNORES = ("max_epochs", "patience", "device", "precision", "checkpoint_dir", "progress")
#: the most training users the neighbour index (and so the bundle) holds: a seeded sample beyond it. Above Ta-Feng's
#: 13,858 users and Complete Journey's 2,469, so their models are unchanged; neighbours.npz is 10 MiB at 20,000
#: users of ~28 items each (experiments.scale_models), whatever the number of customers
MAX_USERS = 20_000
#: ``sampled_items="auto"``: a sampled softmax of this many drawn items when a batch's columns (its targets, its
#: users' history items and the draws, averaged over ``AUTO_PROBES`` seeded batches of training examples) are under
#: ``AUTO_SHARE`` of the catalogue, else every item. A step's cost follows its columns: at 11 % of 50k items, 1.61 ->
#: 0.43 s a batch (experiments.scale_models); nearer the catalogue's width sampling saves too little to give up the
#: exact loss. A cost rule, set from costs alone: every Ta-Feng version (12k items or fewer: 40-90 %) and Complete
#: Journey (27 % of ~60k) keep every item, as their reported models did; the generated 50k-item log samples (11 %).
AUTO_SAMPLED_ITEMS, AUTO_SHARE, AUTO_PROBES = 2048, 0.2, 8


class RepeatExploreNet(nn.Module):
    """Scores all ``n_items`` items; see the module docstring.

    ``forward(baskets, items, context, target_popularity=None, popularity_row=None)``: ``baskets`` int64
    ``[B, T, L]`` (newest basket first, padded with ``n_items``), ``items`` int64 ``[B, U]`` the distinct items of
    those baskets (padded with ``n_items``; ``twins.runtime.next_basket_features.network_inputs`` builds both),
    ``context`` float32 ``[B, 2 * n_items]``, ``target_popularity`` float32 ``[R, n_items]`` and ``popularity_row``
    int64 ``[B]`` each example's row of it (training passes the out-of-fold counts, a row per fold; without
    ``popularity_row`` R = B, a row per example; without either, the fitted buffer). Returns ``[B, n_items]``, or
    ``[B, C]``, the scores at ``columns`` int64 ``[C]`` (a sampled softmax's items), when given.

    The prior MLP is evaluated where its input differs: once per target-popularity row for the items without a
    neighbour signal (most of them), then at the (example, item) pairs with one. The same function as evaluating
    it at every (example, item), ~10x cheaper in training on 50k items (it was 90 % of a step).
    """

    def __init__(self, n_items: int, dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.n_items = n_items
        self.register_buffer("decays", torch.tensor(DECAYS))
        self.register_buffer("log_popularity", torch.zeros(n_items))
        self.register_buffer("target_popularity", torch.zeros(n_items))
        self.register_buffer("max_baskets", torch.tensor(1.0))  # the most baskets a training user had (extrapolation cap)
        self.embed_in = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        self.embed_out = nn.Embedding(n_items, dim)
        self.bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.embed_in.weight, std=0.01)
        nn.init.normal_(self.embed_out.weight, std=0.01)
        with torch.no_grad():
            self.embed_in.weight[n_items].zero_()
        self.repeat = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                    nn.Linear(hidden, 1))
        self.prior = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 1))

    def forward(self, baskets: torch.Tensor, items: torch.Tensor, context: torch.Tensor,
                target_popularity: torch.Tensor | None = None, popularity_row: torch.Tensor | None = None,
                columns: torch.Tensor | None = None) -> torch.Tensor:
        b, n = baskets.shape[0], self.n_items
        at_columns = (lambda x: x) if columns is None else (lambda x: x[..., columns])  # noqa: E731
        tpop_rows = torch.log1p(self.target_popularity[None] if target_popularity is None else target_popularity) / 5.0
        if popularity_row is not None:
            row = popularity_row
        else:  # the fitted buffer for all, or a row of target_popularity per example
            row = items.new_zeros(b) if target_popularity is None else torch.arange(b, device=items.device)
        tpop = tpop_rows[row]  # [B, n]
        pop_row = self.log_popularity / 10.0
        neighbours, neighbour_targets = context[:, :n] * 10.0, context[:, n:] * 10.0
        own = items.clamp(max=n - 1)  # the padding reads item n - 1; its output is dropped
        own_repeat, user = self._own_and_user(baskets, baskets, n, [v.gather(1, own) for v in (
            pop_row.expand(b, n), tpop, neighbours, neighbour_targets)], context.dtype, own)
        # the rest at the scored columns only (all items, or a training batch's sampled ones)
        tpop_rows, pop_row, tpop, neighbours, neighbour_targets = map(at_columns, (
            tpop_rows, pop_row, tpop, neighbours, neighbour_targets))
        silent = torch.zeros_like(tpop_rows)  # no neighbour signal: the prior depends on the item and row alone
        base = self.prior(torch.stack([pop_row.expand_as(tpop_rows), tpop_rows, silent, silent], -1)).squeeze(-1)
        at_b, at_i = ((neighbours != 0) | (neighbour_targets != 0)).nonzero(as_tuple=True)
        signal = self.prior(torch.stack([pop_row[at_i], tpop[at_b, at_i], neighbours[at_b, at_i],
                                         neighbour_targets[at_b, at_i]], -1)).squeeze(-1)
        prior = base[row].index_put((at_b, at_i), signal)
        repeat = at_columns(context.new_zeros(b, n + 1).scatter(1, items, own_repeat.to(context.dtype))[:, :n])
        out = self.embed_out.weight if columns is None else self.embed_out(columns)
        return repeat + prior + user @ out.T + at_columns(self.bias)

    def candidate_scores(self, positions: torch.Tensor, items: torch.Tensor, own_signal: torch.Tensor,
                         others: torch.Tensor, other_signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s scores (fitted target popularity) at the candidates ``[items | others]`` only ``[B, U + S]``,
        and the user embedding ``u`` ``[B, dim]``. ``positions`` int64 ``[B, T, L]``: ``forward``'s ``baskets``
        with each item replaced by its position in ``items`` (padded with ``U``), so that no step of the graph is as
        wide as the catalogue (``twins.runtime.next_basket_features.encode_positions``); ``others`` int64 ``[B, S]``:
        further items, none of the user's
        (padded with ``n_items``; a padded candidate's score is meaningless); ``own_signal`` ``[B, U, 2]`` and
        ``other_signal`` ``[B, S, 2]`` float32: the neighbour context (mean vector, neighbours' targets) at
        ``items`` and ``others``. The prior MLP runs at every candidate: at a zero signal it is ``forward``'s
        signal-free prior. So an item outside the candidates, not the user's and without a signal, scores
        ``prior(item, 0, 0) + bias + <u, out[item]>``, at most that with ``|u| |out[item]|`` for the product (the
        runtime's bound, ``twins.runtime.next_basket_candidates``)."""
        n = self.n_items
        index = torch.cat([items, others], 1).clamp(max=n - 1)  # [B, C]
        signal = torch.cat([own_signal, other_signal], 1) * 10.0
        pop = self.log_popularity[index] / 10.0  # elementwise after the gather: forward's values, at C items not n
        tpop = torch.log1p(self.target_popularity[index]) / 5.0
        neighbours, neighbour_targets = signal[..., 0], signal[..., 1]
        b, u = items.shape
        baskets = torch.cat([items, items.new_full((b, 1), n)], 1).gather(1, positions.reshape(b, -1)).view_as(positions)
        own_repeat, user = self._own_and_user(baskets, positions, u, [v[:, :u] for v in (
            pop, tpop, neighbours, neighbour_targets)], signal.dtype)
        prior = self.prior(torch.stack([pop, tpop, neighbours, neighbour_targets], -1)).squeeze(-1)
        repeat = torch.cat([own_repeat.to(signal.dtype), signal.new_zeros(others.shape)], 1)
        dots = torch.bmm(self.embed_out(index), user.unsqueeze(-1)).squeeze(-1)
        return repeat + prior + dots + self.bias[index], user

    def _own_and_user(self, baskets: torch.Tensor, columns: torch.Tensor, n_columns: int, at_items: list[torch.Tensor],
                      dtype: torch.dtype, own: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The repeat MLP's scores at the user's items ``[B, U]`` and the user embedding ``u`` ``[B, dim]``.
        ``columns``: where each basket entry is summed, ``0 .. n_columns - 1`` (``n_columns``: padding), read at
        ``own`` ``[B, U]`` (``None``: the columns are the user's items); ``at_items``: popularity, target popularity
        and the two neighbour signals at the user's items (scaled)."""
        b, t, width = baskets.shape
        known = (baskets < self.n_items).to(dtype)  # [B, T, L]
        present = known.amax(-1)  # [B, T]: basket has a known item
        n_baskets = present.sum(1, keepdim=True).clamp(min=1.0)
        age = torch.arange(t, device=baskets.device, dtype=dtype)
        flat = columns.reshape(b, t * width)

        def at(weight: torch.Tensor) -> torch.Tensor:  # [B, T] per-basket weight -> [B, U] its sum at the user's items
            entries = weight.unsqueeze(-1).expand(b, t, width).reshape(b, t * width)
            summed = weight.new_zeros(b, n_columns + 1).scatter_add(1, flat, entries)[:, :n_columns]
            return summed if own is None else summed.gather(1, own)

        decayed = [at(present * d ** age / (present * d ** age).sum(1, keepdim=True).clamp(min=1e-9)) for d in self.decays]
        count = at(present)
        recent = at(present * 0.5 ** age)
        size = known.sum((1, 2)).unsqueeze(1) / n_baskets
        capped = n_baskets.clamp(max=self.max_baskets)  # counts beyond any training history read as the longest one
        pop, tpop, neighbours, neighbour_targets = at_items
        m = pop.shape[1]
        features = torch.stack([*decayed, recent, count / n_baskets, torch.log1p(count.clamp(max=self.max_baskets)),
                                pop, tpop, torch.log(capped).expand(b, m) / 3.0,
                                torch.log(size.clamp(min=1.0)).expand(b, m) / 3.0, neighbours,
                                neighbour_targets], -1)  # [B, U, F]
        weight = present * 0.8 ** age
        user = (self.embed_in(baskets).sum(2) * weight.unsqueeze(-1)).sum(1) / weight.sum(1, keepdim=True).clamp(min=1e-9)
        return self.repeat(features).squeeze(-1), user


class CandidateScores(nn.Module):
    """The exported graph: ``RepeatExploreNet.candidate_scores`` -> ``(scores, user)``."""

    def __init__(self, net: RepeatExploreNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, positions: torch.Tensor, items: torch.Tensor, own_signal: torch.Tensor, others: torch.Tensor,
                other_signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.candidate_scores(positions, items, own_signal, others, other_signal)


class TopK(nn.Module):
    """``RepeatExploreNet`` scores -> the top ``k`` (scores, item indices): every item scored, the graph bundles held
    before ``CandidateScores`` (``experiments.bench_nbr_runtime`` checks and times the runtime against it)."""

    def __init__(self, net: RepeatExploreNet, k: int) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, baskets: torch.Tensor, items: torch.Tensor,
                context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.topk(self.net(baskets, items, context), self.k, dim=1)


class NeuralNextBasket(BaseEstimator):
    """Repeat-explore next-basket model (module docstring), scikit-learn style: hyper-parameters here, ``fit``
    returns ``self``, learned state ends in ``_``."""

    def __init__(self, knn: int = 300, within_decay: float = 0.9, group_decay: float = 0.7, group_size: int = 7,
                 dim: int = 64, hidden: int = 64, lr: float = 3e-3, weight_decay: float = 1.0, batch_size: int = 128,
                 max_epochs: int = 12, patience: int = 3, max_baskets: int = 50, targets_per_user: int = 1,
                 max_users: int = MAX_USERS, steps_per_epoch: int | None = None, sampled_items: int | str | None = "auto",
                 seed: int = 0,
                 device: str | None = None, precision: str = "auto", checkpoint_dir: str | None = None,
                 progress: bool = False) -> None:
        self.knn = knn
        self.within_decay = within_decay
        self.group_decay = group_decay
        self.group_size = group_size
        self.dim = dim
        self.hidden = hidden
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.max_baskets = max_baskets
        self.targets_per_user = targets_per_user
        self.max_users = max_users
        self.steps_per_epoch = steps_per_epoch
        self.sampled_items = sampled_items
        self.seed = seed
        self.device = device
        self.precision = precision
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress

    # ------------------------------------------------------------------------------------------- inputs

    def _indices(self, histories: Mapping[Hashable, Baskets]) -> list[list[list[int]]]:
        """Histories as item indices; unknown items dropped, baskets kept (a basket's position still counts)."""
        index = self.item_index_
        return [[[index[i] for i in basket if i in index] for basket in h] for h in histories.values()]

    def _inputs(self, rows: list[list[list[int]]], context: np.ndarray) -> tuple[torch.Tensor, ...]:
        """``(baskets, items, context)`` tensors on the device."""
        feeds = network_inputs(rows, len(self.items_), self.max_baskets) | {"context": context}
        return tuple(torch.from_numpy(feeds[name]).to(self.device_) for name in INPUTS)

    # ------------------------------------------------------------------------------------------- fitting

    def fit(self, histories: Mapping[Hashable, Baskets], targets: Mapping[Hashable, Sequence[Item]],
            valid_histories: Mapping[Hashable, Baskets] | None = None,
            valid_targets: Mapping[Hashable, Sequence[Item]] | None = None) -> Self:
        """Fit on the training users' histories and target (last) baskets; with validation users, choose the epoch
        by their Recall@10 and stop after ``patience`` epochs without a gain."""
        if self.targets_per_user < 1:
            raise ValueError(f"targets_per_user must be >= 1 (1: the last basket only), got {self.targets_per_user}")
        if not (self.sampled_items in (None, "auto") or (isinstance(self.sampled_items, Integral)
                                                          and not isinstance(self.sampled_items, bool) and self.sampled_items >= 1)):
            raise ValueError(f"sampled_items must be an integer >= 1, None (every item in the softmax) or 'auto' (by "
                             f"the catalogue's width), got {self.sampled_items!r}")
        if self.max_users < 1:
            raise ValueError(f"max_users must be >= 1 (training users in the neighbour index), got {self.max_users}")
        users = [u for u in histories if u in targets and len(targets[u]) > 0]
        if not users:
            raise ValueError("no training user has a non-empty target basket; nothing to learn from")
        torch.manual_seed(self.seed)
        self.device_, rank, world = setup_distributed(self.device)

        self.items_ = sorted({i for u in users for b in histories[u] for i in b} | {i for u in users for i in targets[u]})
        self.item_index_ = {item: j for j, item in enumerate(self.items_)}
        n = len(self.items_)
        rows = self._indices({u: histories[u] for u in users})
        target_rows = [sorted({self.item_index_[i] for i in targets[u]}) for u in users]
        indexed = np.arange(len(users))
        if len(users) > self.max_users:
            indexed = np.sort(np.random.default_rng([self.seed, 1]).choice(len(users), self.max_users, replace=False))
        self.neighbours_ = NeighbourIndex.build([rows[u] for u in indexed], [target_rows[u] for u in indexed], n,
                                                self.knn, self.within_decay, self.group_decay, self.group_size)
        index_row = np.full(len(users), -1)
        index_row[indexed] = np.arange(len(indexed))
        popularity = _basket_counts(rows, n)
        fold = np.random.default_rng(self.seed).permutation(len(users)) % min(TARGET_FOLDS, len(users))
        n_folds = int(fold.max()) + 1
        fold_counts = np.zeros((n_folds, n))
        for f, t in zip(fold, target_rows):
            fold_counts[f, t] += 1
        total = fold_counts.sum(0)
        sizes = np.bincount(fold, minlength=n_folds)
        oof = (total - fold_counts) * (len(users) / np.maximum(len(users) - sizes, 1))[:, None]
        owner, cut = self._examples(rows)
        self.sampled_items_ = self._choose_sampled(rows, target_rows, owner, cut, n)

        self.net_ = RepeatExploreNet(n, self.dim, self.hidden).to(self.device_)
        self.net_.log_popularity.copy_(torch.as_tensor(np.log1p(popularity), dtype=torch.float32))
        self.net_.target_popularity.copy_(torch.as_tensor(total, dtype=torch.float32))
        self.net_.max_baskets.fill_(float(min(self.max_baskets, int(cut.max()))))
        model = nn.parallel.DistributedDataParallel(self.net_) if world > 1 else self.net_
        oof_t = torch.as_tensor(oof, dtype=torch.float32, device=self.device_)
        fold_t = torch.as_tensor(fold[owner], device=self.device_)
        embeddings = [self.net_.embed_in.weight, self.net_.embed_out.weight, self.net_.bias]
        mlps = [*self.net_.repeat.parameters(), *self.net_.prior.parameters()]
        opt = torch.optim.AdamW([{"params": mlps, "weight_decay": 0.0},
                                 {"params": embeddings, "weight_decay": self.weight_decay}], lr=self.lr)
        amp = autocast_enabled(self.precision, self.device_)
        ckpt = Path(self.checkpoint_dir) if self.checkpoint_dir else None
        fprint = fingerprint({k: v for k, v in self.get_params().items() if k not in RESUME_IGNORES}, n, len(users))
        state = {"epoch": 0, "best": -1.0, "bad_epochs": 0, "done": False, "history": []}
        saved = load_checkpoint(ckpt, fprint, self.device_)
        if saved is not None:
            self.net_.load_state_dict(saved["net"])
            opt.load_state_dict(saved["opt"])
            state = saved["state"]
        best_state = None
        while not state["done"] and state["epoch"] < self.max_epochs:
            epoch = state["epoch"]
            order = np.random.default_rng(self.seed * 1000 + epoch).permutation(len(owner))
            draws = np.random.default_rng([self.seed, 2, epoch, rank])  # the sampled softmax's negatives
            batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
            batches = batches[: max(1, len(batches) // world) * world][rank::world]  # DDP syncs every step
            batches = batches[:self.steps_per_epoch]  # None: all; else an epoch of that many batches (large logs)
            model.train()
            running, started = 0.0, time.perf_counter()
            for step, batch in enumerate(progress(batches, f"epoch {epoch + 1}/{self.max_epochs}",
                                                  self.progress and rank == 0)):
                if step % TRIM_EVERY == 0:
                    trim_heap()
                # features per batch (streamed): each example's history, target and neighbours (never its owner)
                examples = list(zip(owner[batch].tolist(), cut[batch].tolist()))
                history_b = [rows[o][:c] for o, c in examples]
                exclude = [int(index_row[o]) if index_row[o] >= 0 else None for o, _ in examples]
                inputs = self._inputs(history_b, self.neighbours_.context(history_b, exclude))
                y = torch.zeros(len(batch), n, device=self.device_)
                for r, (o, c) in enumerate(examples):
                    y[r, target_rows[o] if c == len(rows[o]) else sorted(set(rows[o][c]))] = 1.0
                columns, log_q = self._sampled_columns(draws, y, inputs[1]) if self.sampled_items_ else (None, 0.0)
                with torch.autocast(self.device_.type, dtype=torch.bfloat16, enabled=amp):
                    scores = model(*inputs, oof_t, fold_t[torch.as_tensor(batch, device=self.device_)], columns)
                if columns is not None:
                    y = y[:, columns]
                loss = -(torch.log_softmax(scores.float() - log_q, -1) * y).sum(-1).div(y.sum(-1)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.item()
            seconds = time.perf_counter() - started
            score = self._valid_recall(valid_histories, valid_targets) if valid_histories and rank == 0 else 0.0
            score = shared_score(score, self.device_, world)
            state["history"].append({"epoch": epoch + 1, "train_loss": running / max(1, len(batches)),
                                     "train_seconds": seconds, "valid_recall@10": score})
            if not valid_histories or score > state["best"]:
                state.update(best=score, bad_epochs=0, best_epoch=epoch + 1)
                best_state = {k: v.detach().clone() for k, v in self.net_.state_dict().items()}
                save_checkpoint(ckpt, "best.pt", {"net": best_state}, rank)
            else:
                state["bad_epochs"] += 1
                state["done"] = state["bad_epochs"] >= self.patience
            state["epoch"] = epoch + 1
            save_checkpoint(ckpt, "last.pt", {"net": self.net_.state_dict(), "opt": opt.state_dict(), "state": state,
                                         "fingerprint": fprint}, rank)
        restore_best(self.net_, best_state, ckpt, self.device_)
        self.history_ = state["history"]
        self.best_epoch_ = state.get("best_epoch", state["epoch"])
        self.popularity_ = popularity
        return self

    def _choose_sampled(self, rows: list[list[list[int]]], target_rows: list[list[int]], owner: np.ndarray,
                        cut: np.ndarray, n: int) -> int | None:
        """``sampled_items`` as fitted (``sampled_items_``): as given, or for "auto" ``AUTO_SAMPLED_ITEMS`` when
        the columns of ``AUTO_PROBES`` seeded batches of examples (their histories' last ``max_baskets`` baskets and
        targets, plus the draws) average under ``AUTO_SHARE`` of the ``n`` items, else None (every item)."""
        if self.sampled_items != "auto":
            return self.sampled_items
        if AUTO_SAMPLED_ITEMS >= AUTO_SHARE * n:
            return None
        probe = np.random.default_rng([self.seed, 3])
        forced = []
        for _ in range(AUTO_PROBES):
            batch = probe.choice(len(owner), min(self.batch_size, len(owner)), replace=False)
            seen: set[int] = set()
            for o, c in zip(owner[batch].tolist(), cut[batch].tolist()):
                seen.update(chain.from_iterable(rows[o][max(0, c - self.max_baskets):c]))
                seen.update(target_rows[o] if c == len(rows[o]) else rows[o][c])
            forced.append(len(seen))
        return AUTO_SAMPLED_ITEMS if float(np.mean(forced)) + AUTO_SAMPLED_ITEMS < AUTO_SHARE * n else None

    def _sampled_columns(self, draws: np.random.Generator, y: torch.Tensor,
                         items: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | float]:
        """A batch's sampled softmax: every item of its targets ``y`` and of its users' histories ``items`` (the hard
        negatives), and ``sampled_items`` drawn uniformly without replacement from the catalogue; with each column's
        log inclusion probability (0 for the forced ones, log(m / n) for the drawn), subtracted from the scores so
        the softmax over the columns estimates the one over all items (Jean et al., ACL 2015). ``(None, 0.0)``: every
        item (when m reaches the catalogue)."""
        n = y.shape[1]
        if self.sampled_items_ >= n:
            return None, 0.0
        forced = torch.zeros(n + 1, dtype=torch.bool, device=y.device)
        forced[items.reshape(-1)] = True
        forced = forced[:n] | (y > 0).any(0)
        chosen = forced.clone()
        chosen[torch.as_tensor(draws.choice(n, self.sampled_items_, replace=False), device=y.device)] = True
        columns = chosen.nonzero().squeeze(1)
        return columns, torch.where(forced[columns], 0.0, float(np.log(self.sampled_items_ / n)))

    def _examples(self, rows: list[list[list[int]]]) -> tuple[np.ndarray, np.ndarray]:
        """Training examples as ``(owner, cut)``: the history ``rows[owner][:cut]`` and its next basket as the
        target. First each user's whole history (``cut = len``; the target is its last basket), then, with
        ``targets_per_user`` = m > 1, each of its m - 1 non-empty baskets before the last as the target of the
        baskets before it. ``fit`` builds an example's inputs, target and neighbours (never its owner's row) per
        batch: held for all examples, the context alone (``[examples, 2 * n_items]`` float32) would take 8.7 GB on
        Complete Journey at m = 10, and the neighbour rows 2.4 GB per million examples."""
        owner, cut = list(range(len(rows))), [len(h) for h in rows]
        for u, history in enumerate(rows):
            for c in range(max(1, len(history) - self.targets_per_user + 1), len(history)):
                if history[c]:
                    owner.append(u)
                    cut.append(c)
        return np.asarray(owner, dtype=np.int64), np.asarray(cut, dtype=np.int64)

    def _valid_recall(self, histories: Mapping[Hashable, Baskets], targets: Mapping[Hashable, Sequence[Item]]) -> float:
        from twins.evaluate.metrics import evaluate_rankings

        return evaluate_rankings(self.recommend(histories, 10), {u: targets[u] for u in histories}, histories,
                                 ks=[10])["recall@10"]

    # ------------------------------------------------------------------------------------------- prediction

    def scores(self, histories: Mapping[Hashable, Baskets], batch_size: int = 512) -> np.ndarray:
        """``[n_users, n_items]`` float32 scores (columns ``items_``), users in the order of ``histories``."""
        if not hasattr(self, "net_"):
            raise RuntimeError("NeuralNextBasket is not fitted; call fit(histories, targets) first")
        rows = self._indices(histories)
        out = np.zeros((len(rows), len(self.items_)), dtype=np.float32)
        self.net_.eval()
        with torch.no_grad():
            for s in range(0, len(rows), batch_size):
                chunk = rows[s:s + batch_size]
                out[s:s + len(chunk)] = self.net_(*self._inputs(chunk, self.neighbours_.context(chunk))).float().cpu().numpy()
        return out

    def recommend(self, histories: Mapping[Hashable, Baskets], k: int) -> dict[Hashable, list[Item]]:
        """Top-``k`` items for each user of ``{user: [basket, ...]}``, best first (ties: item order)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        users = list(histories)
        out: dict[Hashable, list[Item]] = {}
        for s in range(0, len(users), 512):
            chunk = users[s:s + 512]
            scores = self.scores({u: histories[u] for u in chunk})
            for user, row in zip(chunk, scores):
                top = np.argsort(-row, kind="stable")[:k]
                out[user] = [self.items_[j] for j in top]
        return out


def _basket_counts(rows: list[list[list[int]]], n_items: int) -> np.ndarray:
    """Per item, the number of baskets of ``rows`` holding it (float64)."""
    sizes = np.fromiter((len(b) for h in rows for b in h), np.int64)
    flat = np.fromiter(chain.from_iterable(chain.from_iterable(rows)), np.int64, int(sizes.sum()))
    entries = np.unique(np.repeat(np.arange(len(sizes), dtype=np.int64), sizes) * n_items + flat)
    return np.bincount(entries % n_items, minlength=n_items).astype(float)
