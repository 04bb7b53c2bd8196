"""The next-basket network at a retailer's size: the sparse, blocked neighbour features agree with the dense
definition, blocks change nothing, and the neighbour index (so the bundle) is capped at ``max_users``."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from twins.models.nbr_net import NeuralNextBasket
from twins.models.nbr_net_export import NEIGHBOURS_FILE, export_nbr_net
from twins.runtime import load
from twins.runtime import next_basket_features as features
from twins.runtime.next_basket_features import NeighbourIndex, basket_weights

N_ITEMS, K = 40, 7


def _histories(rng: np.random.Generator, n: int) -> list[list[list[int]]]:
    """Random histories over a skewed catalogue, with empty baskets (unknown items dropped) among them."""
    pop = rng.zipf(1.5, 5000) % N_ITEMS
    return [[[int(i) for i in rng.choice(pop, rng.integers(0, 6))] for _ in range(rng.integers(1, 12))]
            for _ in range(n)]


def _dense(histories: list[list[list[int]]], max_history: int | None = None) -> np.ndarray:
    """The TIFU-KNN vectors by their definition: sum over baskets of the basket's weight times its one-hot."""
    out = np.zeros((len(histories), N_ITEMS))
    for r, h in enumerate(histories):
        h = h[-max_history:] if max_history else h
        for w, basket in zip(basket_weights(len(h), 0.9, 0.7, 3), h):
            out[r, sorted(set(basket))] += w
    return out


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(3)
    train, queries = _histories(rng, 300), _histories(rng, 60) + [[[]], []]
    targets = [sorted({int(i) for i in rng.integers(0, N_ITEMS, rng.integers(1, 5))}) for _ in train]
    return train, targets, queries, NeighbourIndex.build(train, targets, N_ITEMS, K, 0.9, 0.7, 3)


def test_sparse_neighbour_features_equal_the_dense_computation(case):
    train, targets, queries, index = case
    indptr, cols, data = index.vectors
    got = np.zeros((len(train), N_ITEMS))
    got[np.repeat(np.arange(len(train)), np.diff(indptr)), cols] = data
    users = _dense(train)
    assert np.allclose(got, users, rtol=0, atol=1e-12)  # CSR holds exactly the non-zeros of the dense vectors
    reference = sp.csr_matrix(users)  # scipy's CSR of the dense vectors: the same layout, columns ascending
    assert np.array_equal(indptr, reference.indptr) and np.array_equal(cols, reference.indices)
    dense_targets = np.zeros((len(train), N_ITEMS))
    for r, t in enumerate(targets):
        dense_targets[r, t] = 1.0
    q = _dense(queries, index.max_history)
    exclude = [r if r % 4 == 0 and r < len(train) else None for r in range(len(queries))]
    rows = index.neighbour_rows(queries, exclude)
    context = index.mean_context(rows)
    for b, chosen in enumerate(rows):
        if not q[b].any():  # no known item: no neighbours, zero context
            assert len(chosen) == 0 and not context[b].any()
            continue
        distance = ((users - q[b]) ** 2).sum(1)
        if exclude[b] is not None:
            distance[exclude[b]] = np.inf
        assert len(chosen) == K and exclude[b] not in chosen
        # the k nearest by the dense distance (ties may fall either way at float precision)
        assert np.allclose(distance[chosen], np.sort(distance)[:K], rtol=0, atol=1e-9)
        assert np.allclose(context[b, :N_ITEMS], users[chosen].mean(0), atol=1e-6)
        assert np.allclose(context[b, N_ITEMS:], dense_targets[chosen].mean(0), atol=1e-6)


def test_blocks_change_nothing(case, monkeypatch):
    _, _, queries, index = case
    whole = index.neighbour_rows(queries)
    monkeypatch.setattr(features, "BLOCK_CELLS", 1)  # one query per block
    assert all(np.array_equal(a, b) for a, b in zip(whole, index.neighbour_rows(queries)))
    monkeypatch.setattr(features, "BLOCK_CELLS", 1 << 30)
    monkeypatch.setattr(features, "BLOCK_TOUCHED", 50)  # blocks cut by the index entries the queries reach
    assert all(np.array_equal(a, b) for a, b in zip(whole, index.neighbour_rows(queries)))


def test_context_sums_dense_or_per_key_and_the_signal_agree_bit_for_bit(case, monkeypatch):
    """``mean_context`` sums each half densely or per distinct key (``SPARSE_SUMS``), in blocks or not; each way
    gives the same float32 numbers, and ``signal`` of one history is its row."""
    _, _, queries, index = case
    rows = index.neighbour_rows(queries)
    rows[3] = rows[3][:2]  # a history with fewer neighbours than k
    monkeypatch.setattr(features, "SPARSE_SUMS", 0)  # every half dense
    dense = index.mean_context(rows)
    monkeypatch.setattr(features, "SPARSE_SUMS", 1 << 30)  # every half per distinct key
    assert np.array_equal(index.mean_context(rows), dense)
    monkeypatch.setattr(features, "CONTEXT_CELLS", 1)  # one history per block
    assert np.array_equal(index.mean_context(rows), dense)
    for r, row in zip(rows, dense):
        assert np.array_equal(index.signal(r), row.reshape(2, N_ITEMS))
    assert not dense[-1].any() and not index.signal(np.zeros(0, np.int64)).any()  # no neighbours: zeros
    want = np.zeros((len(rows), 2, N_ITEMS))  # the definition: the means in float64, then float32
    for b, r in enumerate(rows):
        for half, (indptr, indices, data) in enumerate((index.vectors, index.targets)):
            for user in r:
                np.add.at(want[b, half], indices[indptr[user]:indptr[user + 1]], data[indptr[user]:indptr[user + 1]])
            want[b, half] /= max(len(r), 1)
    assert np.allclose(dense, want.reshape(len(rows), -1).astype(np.float32), rtol=1e-6, atol=0)


def _market(n_users: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    histories = {f"u{u}": [[f"i{j}" for j in rng.integers(0, 30, 3)] for _ in range(rng.integers(2, 6))]
                 for u in range(n_users)}
    return histories, {u: [h[-1][0], f"i{rng.integers(30)}"] for u, h in histories.items()}


def test_neighbour_index_and_bundle_capped_at_max_users(tmp_path):
    torch.set_num_threads(1)
    params = dict(knn=5, dim=4, hidden=8, max_epochs=1, seed=0)
    histories, targets = _market(160)
    small = NeuralNextBasket(**params, max_users=40).fit(histories, targets)
    assert small.neighbours_.n_users == 40  # a seeded sample of the 160 training users
    again = NeuralNextBasket(**params, max_users=40).fit(histories, targets)
    assert np.array_equal(small.neighbours_.vectors[0], again.neighbours_.vectors[0])
    full = NeuralNextBasket(**params, max_users=160).fit(histories, targets)
    assert full.neighbours_.n_users == 160
    bigger = NeuralNextBasket(**params, max_users=40).fit(*_market(320))
    assert bigger.neighbours_.n_users == 40  # twice the customers, the same index size
    path = export_nbr_net(small, tmp_path / "bundle", k=10)  # checks ONNX parity on the way
    bundle = load(path)
    assert bundle.neighbours.n_users == 40 and (path / NEIGHBOURS_FILE).stat().st_size < 40_000
    test = dict(list(_market(200)[0].items())[160:])  # raw histories of customers not in training
    ranked = bundle.recommend(list(test.values()), k=5)
    assert [[i for i, _ in r] for r in ranked] == [small.recommend(test, 5)[u] for u in test]
    with pytest.raises(ValueError, match="max_users must be >= 1"):
        NeuralNextBasket(max_users=0).fit(histories, targets)


def test_steps_per_epoch_bounds_an_epoch():
    torch.set_num_threads(1)
    histories, targets = _market(160)
    params = dict(knn=5, dim=4, hidden=8, max_epochs=1, batch_size=32, seed=0)
    whole = NeuralNextBasket(**params).fit(histories, targets).net_.state_dict()
    enough = NeuralNextBasket(**params, steps_per_epoch=5).fit(histories, targets).net_.state_dict()  # 5 batches
    one = NeuralNextBasket(**params, steps_per_epoch=1).fit(histories, targets).net_.state_dict()
    assert all(torch.equal(whole[k], enough[k]) for k in whole)
    assert not torch.equal(whole["bias"], one["bias"])


class _Silent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :1] * 0.0


def test_prior_evaluated_sparsely_equals_it_at_every_item():
    from twins.models.nbr_net import RepeatExploreNet

    torch.manual_seed(0)
    n, b = 300, 6
    net = RepeatExploreNet(n, dim=4, hidden=8)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    net.log_popularity.uniform_(0, 5)
    baskets, items = torch.randint(0, n + 1, (b, 4, 3)), torch.randint(0, n + 1, (b, 7))
    context = torch.where(torch.rand(b, 2 * n) < 0.1, torch.rand(b, 2 * n), torch.zeros(b, 2 * n))
    folds, row = torch.rand(3, n) * 9, torch.tensor([0, 2, 2, 1, 0, 1])
    dense = net.prior(torch.stack([(net.log_popularity / 10.0).expand(b, n), torch.log1p(folds[row]) / 5.0,
                                   context[:, :n] * 10.0, context[:, n:] * 10.0], -1)).squeeze(-1)
    with torch.no_grad():
        scores = net(baskets, items, context, folds, row)
        per_example = net(baskets, items, context, folds[row])  # a row per example, without popularity_row
        net.prior = _Silent()
        used = scores - net(baskets, items, context, folds, row)
    assert torch.allclose(used, dense, atol=1e-5)
    assert torch.allclose(per_example, scores, atol=1e-5)


@pytest.mark.slow
def test_scale_models_steps_on_a_small_generated_log(tmp_path):
    from experiments.retail_log import generate
    from experiments.scale_models import load_baskets, nbr_auto_step, nbr_step, outlook_step

    generate(tmp_path / "log", lines=20_000, customers=400, items=300, days=200, fmt="csv", bad_rate=0.01)
    baskets = load_baskets(tmp_path / "log")
    assert len(baskets) <= 400 and all(len(set(b)) == len(b) for h in baskets.values() for b in h)
    got = nbr_step(tmp_path / "log", steps=1)
    assert got["index_users"] == got["train_users"] > 0 and got["epoch_batches"] >= 1 and got["bundle_bytes"] > 0
    auto = nbr_auto_step(tmp_path / "log", steps=1)
    assert auto["sampled_items"] == 0 and auto["items"] == got["items"] and auto["step_s"] > 0  # 300 items: every one
    assert 0 < got["context_p50_ms"] <= got["p50_ms"] and got["graph_p50_ms"] > 0
    outlook = outlook_step(tmp_path / "log")
    assert outlook["windows"] >= outlook["fit_rows"] > 0 and outlook["customers"] <= 400
