"""The next-basket runtime scores candidates only: its bounds hold (hand-computed and against brute force), its
inputs are the network's, and the bundle's top-k equals the network's top-k over all items, whether the bound is
tight (one graph run) or loose (a second run with the items that could still beat the k-th best)."""

import copy

import numpy as np
import pytest
import torch

from twins.models import nbr_net_export
from twins.models.nbr_net import NeuralNextBasket
from twins.runtime import load
from twins.runtime.next_basket_candidates import ExploreBound, best, others, signal_slopes
from twins.runtime.next_basket_features import SAMPLE, _nearest, encode_baskets, encode_items, encode_positions


def test_bound_hand_computed():
    bound = ExploreBound(np.array([3.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]), rho=1.0, signal=np.array([2.0, 10.0]))
    assert bound.order.tolist() == [2, 0, 1]  # keys static + norms: 3, 2, 4
    assert bound.after(0, 2.0) == 6.0  # item 2: 2 + 2 * 2
    assert bound.after(1, 2.0) == 4.0  # items 0, 1: key 3 + (2 - 1) * largest norm 1 (true best: 3)
    assert bound.after(1, 0.0) == 3.0  # key 3 + (0 - 1) * smallest norm 0 (true best: 3)
    assert bound.after(3, 5.0) == -np.inf
    signal = np.array([[0.0, 0.5, 0.0], [0.0, 0.1, 0.2]], dtype=np.float32)  # item 1: (0.5, 0.1), item 2: (0, 0.2)
    assert bound.outside(1, 2.0, signal.max(1)) == pytest.approx(4.0 + 2 * 0.5 + 10 * 0.2)
    assert np.allclose(bound.scores(signal, 2.0), [3.0, 1 + 2 + 1 + 1, 2 + 4 + 2])  # static + |u| norm + signal
    # past the prefix [2], item 1's key at rho = 1 (1 + 1 + 2: 4) reaches the prefix's bound (3), item 0's (3) too
    assert sorted(bound.choose(signal, 1, 5).tolist()) == [0, 1] and bound.choose(signal, 1, 1).tolist() == [1]
    with pytest.raises(ValueError, match="norms, rho and signal >= 0"):
        ExploreBound(np.zeros(2), np.array([1.0, -1.0]), 0.0, np.zeros(2))


def test_bound_holds_and_never_rises_on_random_items():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        static, norms = rng.normal(size=n) * rng.uniform(0.1, 5), rng.uniform(0, 2, n) ** 3
        bound = ExploreBound(static, norms, float(rng.uniform(0, 3)), rng.uniform(0, 2, 2))
        signal = (rng.uniform(0, 1, (2, n)) * (rng.uniform(size=n) < 0.3)).astype(np.float32)
        for user in (0.0, float(rng.uniform(0, 6)), bound.rho):
            after = [bound.after(p, user) for p in range(n + 1)]
            truth = [(static + user * norms)[bound.order[p:]].max(initial=-np.inf) for p in range(n + 1)]
            assert all(a >= t - 1e-12 for a, t in zip(after, truth)) and np.all(np.diff(after) <= 0)
            each = bound.scores(signal, user)
            assert np.allclose(each, static + user * norms + bound.signal @ signal)
            assert all(bound.outside(p, user, signal.max(1)) >= each[bound.order[p:]].max(initial=-np.inf) - 1e-12
                       for p in range(n + 1))


def test_choose_looks_at_a_run_of_the_order_or_all_items_alike(monkeypatch):
    """``choose`` over the run of the order the largest lift can reach equals its definition over all items (the
    items outside the prefix whose key at rho plus their signal term reaches the prefix's bound, the highest
    ``count``), for sparse and dense signals, every prefix, and with the run always or never used."""
    import twins.runtime.next_basket_candidates as candidates

    rng = np.random.default_rng(1)
    for trial in range(40):
        n = int(rng.integers(1, 80))
        static = rng.normal(size=n)
        static[rng.integers(n, size=n // 4)] = 0.5  # ties in the order
        bound = ExploreBound(static, rng.uniform(0, 1, n), float(rng.uniform(0, 2)), rng.uniform(0, 1, 2))
        signal = (rng.uniform(0, 1, (2, n)) * (rng.uniform(size=n) < rng.uniform(0, 1))).astype(np.float32)
        for position in range(n + 1):
            key = bound._rho_key + bound.signal @ signal
            key[bound.order[:position]] = -np.inf
            want = np.flatnonzero(key >= bound.after(position, bound.rho))
            want = want[key[want] > -np.inf]  # outside the prefix (all of it is once the prefix holds every item)
            for count in (1, 3, n):
                expected = set(want.tolist()) if len(want) <= count else None
                for window in (1, n + 1):  # the run never / always short enough
                    monkeypatch.setattr(candidates, "WINDOW", window)
                    got = bound.choose(signal, position, count)
                    if expected is not None:
                        assert got.tolist() == sorted(expected), (trial, position, count)
                    else:  # the count highest keys (ties either way)
                        assert len(got) == count and set(got) <= set(want.tolist())
                        assert key[got].min() >= np.sort(key[want])[::-1][count - 1]


def test_signal_slopes_bound_the_priors_rise():
    first, second = np.array([[1.0, 2.0, 3.0, -4.0], [0.0, 0.0, -1.0, 2.0]]), np.array([0.5, -2.0])
    assert np.allclose(signal_slopes(first, second, 10.0), [11.29 * (1.5 + 2.0), 11.29 * (2.0 + 4.0)])
    torch.manual_seed(0)
    for _ in range(20):
        prior = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.GELU(), torch.nn.Linear(16, 1)).double()
        for weight in prior.parameters():
            torch.nn.init.normal_(weight, std=2.0)
        slopes = signal_slopes(prior[0].weight.detach().numpy(), prior[2].weight.detach().numpy()[0], 10.0)
        x = torch.randn(2000, 4, dtype=torch.float64)
        signal = torch.rand(2000, 2, dtype=torch.float64) * torch.rand(2000, 1, dtype=torch.float64)  # >= 0
        with torch.no_grad():
            rise = prior(torch.cat([x[:, :2], 10.0 * signal], 1)) - prior(torch.cat([x[:, :2], 0.0 * signal], 1))
        assert (rise[:, 0].numpy() <= signal.numpy() @ slopes + 1e-9).all()


def test_others_and_best():
    assert others(np.array([4, 1]), np.array([0, 1, 3]), np.array([3, 2, 4, 5]), 6).tolist() == [0, 3, 2, 5]
    scores = np.array([0.5, 2.0, 0.5, 1.0, 2.0], dtype=np.float32)
    items = np.array([9, 7, 3, 5, 2])
    assert best(scores, items, 3).tolist() == [4, 1, 3]  # 2.0 at items 2 then 7, then 1.0
    assert best(scores, items, 5).tolist() == [4, 1, 3, 2, 0]


def test_positions_index_the_users_items():
    histories = [[[3, 5], [5]], [[7], [1, 7, 2]]]  # newest first: [5], [3, 5] and [1, 7, 2], [7]
    baskets, items = encode_baskets(histories, 9, 50), encode_items(histories, 9, 50)
    assert items.tolist() == [[5, 3, 9], [1, 7, 2]]
    assert encode_positions(baskets, items, 9).tolist() == [[[0, 3, 3], [1, 0, 3]], [[0, 1, 2], [1, 3, 3]]]


def _market(n_users: int, seed: int, n_items: int = 600) -> tuple[dict, dict]:
    """Users with a few favourites among a long catalogue (most items outside any one user's candidates)."""
    rng = np.random.default_rng(seed)
    histories, targets = {}, {}
    for u in range(n_users):
        liked = rng.integers(0, n_items, 6)
        histories[f"u{seed}-{u}"] = [[f"i{j}" for j in rng.choice(liked, rng.integers(1, 4))] for _ in range(rng.integers(1, 7))]
        targets[f"u{seed}-{u}"] = [f"i{j}" for j in rng.integers(0, n_items, 2)]
    return histories, targets


@pytest.fixture(scope="module")
def wide() -> tuple[NeuralNextBasket, dict]:
    torch.set_num_threads(1)
    model = NeuralNextBasket(knn=8, dim=8, hidden=8, max_epochs=1, seed=0).fit(*_market(300, 0))
    test = _market(120, 1)[0] | {"empty": [], "unknown": [["zz"]]}
    return model, test


@pytest.mark.parametrize("spread, second_runs", [(0.01, False), (2.0, True)])
def test_bundle_top_k_equals_the_networks_over_all_items(wide, tmp_path, monkeypatch, spread, second_runs):
    """Output embeddings small (the bound prunes: one run each) and large (the bound fails: some histories are
    scored again); either way the answer is the estimator's full scoring."""
    model, test = copy.deepcopy(wide[0]), wide[1]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in (model.net_.embed_out.weight, model.net_.embed_in.weight[:-1]):
            weight.copy_(torch.randn(weight.shape, generator=generator) * spread)
        model.net_.bias.copy_(torch.randn(model.net_.bias.shape, generator=generator))
    monkeypatch.setattr(nbr_net_export, "PREFIX", 16)
    bundle = load(nbr_net_export.export_nbr_net(model, tmp_path / "nbr", k=10), threads=1)
    assert bundle.prefix == 16 and len(bundle.vocabulary) > 500
    runs = []
    run = bundle.run
    monkeypatch.setattr(bundle, "run", lambda feeds: runs.append(feeds["items"].shape[0]) or run(feeds))
    users = list(test)
    got = bundle.recommend([test[u] for u in users], k=10)
    want, scores = model.recommend(test, 10), model.scores(test)
    for u, answer, row in zip(users, got, scores):
        assert [i for i, _ in answer] == [str(i) for i in want[u]], u
        assert np.allclose([s for _, s in answer], np.sort(row)[::-1][:10], atol=1e-4)
    assert (len(runs) > len(users)) == second_runs  # one run per history, plus one per history scored again
    batched = bundle.recommend([test[u] for u in users], k=10, batch_size=16)
    assert [[i for i, _ in r] for r in batched] == [[i for i, _ in r] for r in got]


def test_signal_is_the_context(wide):
    model, test = wide
    index = model.neighbours_
    neighbours = index.neighbour_rows(model._indices(test))
    context, n = index.mean_context(neighbours), index.n_items
    for dense, rows in zip(context, neighbours):
        assert np.array_equal(index.signal(rows), np.stack([dense[:n], dense[n:]]))  # the same float32 numbers


def test_nearest_by_a_sampled_threshold_equals_a_stable_sort():
    """Over many distances ``_nearest`` partitions those within a sampled threshold; ties, an excluded row (inf)
    and a sample that misses the smallest (the threshold then holds too few: all are partitioned) change nothing."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        n, k = int(rng.integers(2_000, 25_000)), int(rng.integers(1, 300))
        distance = rng.integers(0, 40, n).astype(float) if trial % 2 else rng.normal(size=n)
        distance[rng.integers(0, n)] = np.inf
        assert _nearest(distance, k).tolist() == np.argsort(distance, kind="stable")[:k].tolist()
    n, k = 20_000, 300
    stride = n // (SAMPLE * k)
    distance = np.where(np.arange(n) % stride == 0, 1.0 + np.arange(n) / n, 5.0)  # the sample holds the smallest:
    assert (distance <= np.sort(distance[::stride])[2 * k // stride]).sum() < k  # too few within its threshold
    assert _nearest(distance, k).tolist() == np.argsort(distance, kind="stable")[:k].tolist()


def test_runtime_speed_reports_what_the_benchmarks_read(wide, tmp_path):
    """``experiments.next_basket_baselines.neural_notes`` reads the batch-256 throughput of both graphs and the
    end-to-end latency from ``runtime_speed``: the keys exist and the answers are the estimator's."""
    from experiments.bench_nbr_runtime import ALL_ITEMS, CANDIDATES, END_TO_END, runtime_speed

    model, test = wide
    bundle = nbr_net_export.export_nbr_net(model, tmp_path / "nbr", k=10)
    histories = [h for h in test.values() if h][:40]
    speed = runtime_speed(bundle, model, histories, batch_sizes=(1, 256))
    assert speed["top10_equal"] == speed["full_equal"] == len(histories)
    assert {(CANDIDATES, 256), (ALL_ITEMS, 256)} <= set(speed["throughput"])
    p50, p99 = speed["stages"][END_TO_END]
    assert 0 < p50 <= p99
