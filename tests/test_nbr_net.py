"""The repeat-explore next-basket network: its numpy inputs, the estimator contract, defined answers, resume,
and the ONNX bundle (raw history in, same top-k as PyTorch)."""

import hashlib
import json

import numpy as np
import pytest
import torch

from twins.evaluate.metrics import evaluate_rankings
from twins.models.nbr_net import AUTO_SAMPLED_ITEMS, AUTO_SHARE, NeuralNextBasket
from twins.models.nbr_net_export import NEIGHBOURS_FILE, export_nbr_net
from twins.models.tifuknn import TIFUKNN
from twins.runtime import BundleError, NeighbourNextBasketBundle, load
from twins.runtime.next_basket_features import NeighbourIndex, _nearest, _ranges, encode_baskets, encode_items, network_inputs


def _market(seed: int, n_users: int = 120) -> tuple[dict, dict]:
    """Users with a staple they rebuy, plus a pair rule: whoever bought "a" buys "b" next (an explore item)."""
    rng = np.random.default_rng(seed)
    histories, targets = {}, {}
    for u in range(n_users):
        staple = f"s{rng.integers(5)}"
        baskets = [[staple, f"n{rng.integers(40)}"] for _ in range(rng.integers(2, 8))]
        if u % 2 == 0:
            baskets[-1].append("a")
        histories[f"u{u}"] = baskets
        targets[f"u{u}"] = [staple] + (["b"] if u % 2 == 0 else [f"n{rng.integers(40)}"])
    return histories, targets


def _fit(**kw) -> NeuralNextBasket:
    torch.set_num_threads(1)
    histories, targets = _market(0)
    params = dict(knn=10, dim=8, hidden=16, lr=1e-2, weight_decay=0.0, batch_size=32, max_epochs=15, seed=0) | kw
    return NeuralNextBasket(**params).fit(histories, targets)


@pytest.fixture(scope="module")
def model() -> NeuralNextBasket:
    return _fit()


def test_encode_baskets_newest_first_deduplicated_truncated_padded():
    x = encode_baskets([[[1, 2, 2], [3]], [[4], [5], [6]]], n_items=9, max_baskets=2)
    assert x.shape == (2, 2, 2)
    assert x[0].tolist() == [[3, 9], [1, 2]]  # newest basket first, the repeated 2 kept once
    assert x[1].tolist() == [[6, 9], [5, 9]]  # only the last 2 baskets
    assert encode_baskets([[]], 3, 5).tolist() == [[[3]]]
    items = encode_items([[[1, 2, 2], [3]], [[4], [5], [6]], [[0], [0]]], n_items=9, max_baskets=2)
    assert items.tolist() == [[3, 1, 2], [6, 5, 9], [0, 9, 9]]  # newest first, each item once, padded
    assert encode_items([[]], 3, 5).tolist() == [[3]]


def test_neighbour_index_matches_tifuknn_and_hand_computed_context(tmp_path):
    histories = [[[0], [0, 1]], [[1], [2]], [[0, 1]], [[2], [2]]]
    targets = [[1], [2], [0, 2], [2]]
    index = NeighbourIndex.build(histories, targets, n_items=3, k=2, within_decay=0.9, group_decay=0.7, group_size=7)
    tifu = TIFUKNN(k=2).fit({u: h for u, h in enumerate(histories)})
    query = [[0], [0]]
    indptr, cols, vals = index.vectors_of([query])
    dense = np.zeros(3)
    dense[cols] = vals
    assert indptr.tolist() == [0, len(cols)] and np.allclose(dense, tifu._query({"q": query})[0].toarray()[0])
    got = index.neighbour_rows([query])[0]
    assert got.tolist() == tifu._neighbours(["q"], tifu._query({"q": query})[0], 2)[0].tolist()
    context = index.context([query])[0]
    assert np.allclose(index.vectors[2], tifu.vectors_.data) and np.array_equal(index.vectors[1], tifu.vectors_.indices)
    assert np.allclose(context[:3], tifu.vectors_.toarray()[got].mean(0))
    share = np.zeros(3)
    for r in got:
        share[targets[r]] += 0.5
    assert np.allclose(context[3:], share)
    assert 0 not in index.neighbour_rows([histories[0]], exclude=[0])[0]  # a training user is never its own neighbour
    assert not index.context([[[]], []]).any()  # no known item: zeros
    index.save(tmp_path / "index.npz")
    assert NeighbourIndex.load(tmp_path / "index.npz").max_history == index.max_history == 2
    with np.load(tmp_path / "index.npz") as f:
        arrays = dict(f)
    np.savez(tmp_path / "older.npz", **(arrays | {"params": arrays["params"][:5]}))  # saved before the cap existed
    assert NeighbourIndex.load(tmp_path / "older.npz").max_history is None


def test_nearest_and_ranges_equal_their_loop_forms():
    rng = np.random.default_rng(0)
    for k in (0, 1, 5, 29, 30, 31):
        distance = rng.integers(0, 4, 30).astype(float)  # many ties: the lower index first, as a stable sort
        distance[3] = np.inf
        assert _nearest(distance, k).tolist() == np.argsort(distance, kind="stable")[:k].tolist()
    starts, ends = np.array([4, 0, 7, 7]), np.array([6, 3, 7, 9])
    assert _ranges(starts, ends).tolist() == [4, 5, 0, 1, 2, 7, 8]
    assert _ranges(starts[:0], ends[:0]).tolist() == []


def test_estimator_contract_and_learning(model):
    assert model.get_params()["knn"] == 10 and model.best_epoch_ >= 1 and len(model.history_) == 15
    assert all(h["train_loss"] > 0 for h in model.history_)
    histories, targets = _market(1, 60)  # unseen users from the same market
    recs = model.recommend(histories, 2)
    r = evaluate_rankings(recs, targets, histories, ks=[2])
    assert r["recall@2"] > 0.7  # the staple (repeat) and "b" after "a" (explore) are both learned
    assert all("b" in recs[u] for u in histories if "a" in histories[u][-1])


def test_earlier_baskets_become_extra_training_examples(model):
    m = NeuralNextBasket(targets_per_user=3)
    m.neighbours_ = model.neighbours_
    rows = [[[0], [1], [2, 3, 2]], [[4]], [[5], [], [6]]]
    owner, cut = m._examples(rows)
    # user 0: its last 2 history baskets as targets of the baskets before them; user 1 has no earlier basket;
    # user 2's empty basket is no target, and a history must keep at least one basket
    assert owner.tolist() == [0, 1, 2, 0, 0, 2] and cut.tolist() == [3, 1, 3, 1, 2, 2]
    ex_rows = [rows[o][:c] for o, c in zip(owner, cut)]
    assert ex_rows[3:] == [[[0]], [[0], [1]], [[5], []]] and ex_rows[:3] == rows
    neighbour_rows = model.neighbours_.neighbour_rows(ex_rows, exclude=list(owner))
    assert all(u not in r for u, r in zip(owner, neighbour_rows)) and len(neighbour_rows[5]) == model.neighbours_.k
    assert np.array_equal(model.neighbours_.mean_context(neighbour_rows[3:]),
                          model.neighbours_.context(ex_rows[3:], exclude=[0, 0, 2]))
    assert m.set_params(targets_per_user=1)._examples(rows)[1].tolist() == [3, 1, 3]
    with pytest.raises(ValueError, match="targets_per_user must be >= 1"):
        NeuralNextBasket(targets_per_user=0).fit({"u": [["a"]]}, {"u": ["a"]})


def test_defined_answers_for_unknown_empty_and_long_histories(model):
    recs = model.recommend({"new": [], "strangers": [["zz", "yy"]], "long": [["s1"]] * 120 + [["a"]],
                            "longest": [["s1"]] * 5000 + [["a"]]}, 5)
    assert recs["new"] == recs["strangers"]  # no known item: the same popularity answer
    assert len(set(recs["new"])) == 5 and set(recs["new"]) <= set(model.items_)
    assert "s1" in recs["long"] and len(set(recs["long"])) == 5  # 120 baskets: the network reads the last 50
    # the neighbour search reads a history longer than any in training as its last baskets, as many as the longest
    # training history (else TIFU-KNN's whole-history decay would shrink its vector towards zero)
    longest = max(len(h) for h in _market(0)[0].values())
    index, rows = model.neighbours_, model._indices({"long": [["s1"]] * 5000 + [["a"]]})
    assert index.max_history == longest
    assert np.array_equal(index.context(rows), index.context([rows[0][-longest:]]))
    assert recs["longest"] == recs["long"]  # so 5,000 baskets read as 120 do: the same last baskets everywhere
    with pytest.raises(ValueError, match="k must be"):
        model.recommend({"x": []}, 0)
    with pytest.raises(ValueError, match="no training user"):
        NeuralNextBasket().fit({"u": [["a"]]}, {"u": []})


def test_validation_early_stopping_and_checkpoint_resume(tmp_path):
    histories, targets = _market(0)
    valid_h, valid_t = _market(2, 40)
    ckpt = tmp_path / "ckpt"
    first = _fit(max_epochs=3, patience=10, checkpoint_dir=str(ckpt))
    resumed = NeuralNextBasket(**(first.get_params() | {"max_epochs": 5})).fit(histories, targets)  # no checkpoint: fresh
    assert len(resumed.history_) == 5
    again = NeuralNextBasket(**(first.get_params() | {"max_epochs": 5})).fit(histories, targets)
    assert again.history_[:3] != first.history_ or len(again.history_) == 5
    cont = NeuralNextBasket(**(first.get_params() | {"max_epochs": 5, "checkpoint_dir": str(ckpt)})).fit(histories, targets)
    assert [h["epoch"] for h in cont.history_] == [1, 2, 3, 4, 5] and cont.history_[:3] == first.history_
    with pytest.raises(ValueError, match="other hyper-parameters"):
        NeuralNextBasket(**(first.get_params() | {"dim": 4})).fit(histories, targets)
    stopped = _fit(max_epochs=30, patience=1)
    stopped = NeuralNextBasket(**(stopped.get_params() | {"max_epochs": 30, "patience": 1})).fit(
        histories, targets, valid_h, valid_t)
    assert len(stopped.history_) < 30 and all("valid_recall@10" in h for h in stopped.history_)
    best = max(h["valid_recall@10"] for h in stopped.history_)
    assert stopped.history_[stopped.best_epoch_ - 1]["valid_recall@10"] == best


def test_seed_reproducible():
    a, b = _fit(max_epochs=2), _fit(max_epochs=2)
    assert a.history_[-1]["train_loss"] == b.history_[-1]["train_loss"]


def test_onnx_bundle_matches_pytorch_from_raw_histories(model, tmp_path):
    path = export_nbr_net(model, tmp_path / "nbr", k=10, name="toy-nbr")
    bundle = load(path, threads=1)
    assert isinstance(bundle, NeighbourNextBasketBundle)
    histories, _ = _market(3, 50)
    histories |= {"empty": [], "unknown": [["zz"]], "long": [["s2", "n3"]] * 80}
    users = list(histories)
    got = bundle.recommend([histories[u] for u in users], k=10)
    want = model.recommend(histories, 10)
    scores = model.scores(histories)
    for u, row, answer in zip(users, scores, got):
        assert [i for i, _ in answer] == [str(i) for i in want[u]]
        assert np.allclose([s for _, s in answer], np.sort(row)[::-1][:10], atol=1e-4)
    assert bundle.recommend_one(histories["u0"], k=3) == got[0][:3]
    assert bundle.neighbours.max_history == model.neighbours_.max_history  # "long" (80 baskets) read alike
    batched = bundle.recommend([histories[u] for u in users], k=10, batch_size=7)  # grouped by shape, answers in order
    assert [[i for i, _ in r] for r in batched] == [[i for i, _ in r] for r in got]
    assert np.allclose([[s for _, s in r] for r in batched], [[s for _, s in r] for r in got], atol=1e-5)
    with pytest.raises(ValueError, match="k must be"):
        bundle.recommend([[]], k=11)


def test_bundle_refuses_tampered_neighbours(model, tmp_path):
    path = export_nbr_net(model, tmp_path / "nbr", k=5)
    with np.load(path / NEIGHBOURS_FILE) as f:
        arrays = dict(f)
    arrays["tgt_data"] = arrays["tgt_data"] * 2
    np.savez(path / NEIGHBOURS_FILE, **arrays)
    with pytest.raises(BundleError, match="sha256"):
        load(path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["task"] == "next_basket_net" and NEIGHBOURS_FILE in manifest["files"]


def test_index_saved_as_int32_and_older_int64_bundles_answer_alike(model, tmp_path):
    """A bundle's neighbour index is saved with int32 pointers and indices and held with int64 ones (what the
    search and the sums index with); one exported before, with int64 arrays, loads as the same numbers and gives
    the same answers."""
    path = export_nbr_net(model, tmp_path / "nbr", k=5)
    with np.load(path / NEIGHBOURS_FILE) as f:
        arrays = dict(f)
    assert {arrays[key].dtype for key in ("vec_indptr", "vec_indices", "tgt_indptr", "tgt_indices")} == {np.dtype(np.int32)}
    new = load(path)
    assert {a.dtype for a in (*new.neighbours.vectors[:2], *new.neighbours.targets[:2])} == {np.dtype(np.int64)}
    np.savez(path / NEIGHBOURS_FILE, **{key: a.astype(np.int64) if a.dtype.kind == "i" else a for key, a in arrays.items()})
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][NEIGHBOURS_FILE] = hashlib.sha256((path / NEIGHBOURS_FILE).read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    old = load(path)
    for mine, theirs in zip((*new.neighbours.vectors, *new.neighbours.targets),
                            (*old.neighbours.vectors, *old.neighbours.targets)):
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)
    histories, _ = _market(1, 40)
    assert new.recommend(list(histories.values()), 5) == old.recommend(list(histories.values()), 5)


def test_bundle_from_an_older_graph_is_refused_with_the_fix(model, tmp_path):
    """A graph with other inputs (the network before ``items`` was an input) is named, not run into an
    onnxruntime error."""
    import onnx

    path = export_nbr_net(model, tmp_path / "nbr", k=5)
    graph = onnx.load(path / "model.onnx")
    graph.graph.input[1].name = "legacy"
    for node in graph.graph.node:
        node.input[:] = ["legacy" if name == "items" else name for name in node.input]
    onnx.save(graph, path / "model.onnx")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["model_sha256"] = hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest()
    manifest["inputs"][1]["name"] = "legacy"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="Re-export it"):
        load(path)


@pytest.mark.slow
def test_training_runs_under_torchrun_ddp(tmp_path, torchrun_histories):
    """Two CPU processes (gloo): the same epochs on both ranks, validation broadcast, one checkpoint."""
    histories = torchrun_histories(
        "from test_nbr_net import _market\nfrom twins.models.nbr_net import NeuralNextBasket\n"
        "h, t = _market(0); vh, vt = _market(2, 30)\n"
        "m = NeuralNextBasket(knn=10, dim=8, hidden=8, batch_size=16, max_epochs=2, patience=5,\n"
        "                     checkpoint_dir=sys.argv[1]).fit(h, t, vh, vt)\n"
        "history = [round(x['valid_recall@10'], 6) for x in m.history_]")
    assert sorted(histories) == [0, 1] and len(histories[0]) == 2
    assert histories[0] == histories[1]  # rank 1 got rank 0's scores
    assert (tmp_path / "ckpt" / "last.pt").exists()


def test_service_answers_with_the_neural_bundle(model, tmp_path):
    from fastapi.testclient import TestClient

    from twins.serve import create_app

    path = export_nbr_net(model, tmp_path / "nbr", k=10, name="toy-nbr")
    histories = [[["s1", "a"]], [], [["zz"]]]
    with TestClient(create_app({"nbr": str(path)}, [], poll_seconds=0)) as client:
        r = client.post("/v1/models/nbr/recommend", json={"histories": histories, "k": 4})
        assert r.status_code == 200, r.text
        got = [[(x["item"], x["score"]) for x in recs] for recs in r.json()["results"]]
    want = load(path).recommend(histories, 4)
    assert [[i for i, _ in g] for g in got] == [[i for i, _ in w] for w in want]
    assert np.allclose([s for g in got for _, s in g], [s for w in want for _, s in w])


def test_forward_under_bf16_autocast(model):
    """The CUDA path trains under bf16 autocast; the same ops must accept mixed dtypes (checked with CPU autocast)."""
    histories, _ = _market(4, 8)
    rows = model._indices(histories)
    feeds = network_inputs(rows, len(model.items_), model.max_baskets) | {"context": model.neighbours_.context(rows)}
    inputs = [torch.from_numpy(feeds[name]) for name in ("baskets", "items", "context")]
    with torch.no_grad():
        plain = model.net_(*inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.net_(*inputs)
    assert mixed.shape == plain.shape and torch.isfinite(mixed.float()).all()
    assert (mixed.float().argmax(1) == plain.argmax(1)).float().mean() >= 0.75


def test_scores_at_columns_are_the_full_scores_there(model):
    histories = _market(1, 20)[0]
    rows = model._indices(histories)
    inputs = model._inputs(rows, model.neighbours_.context(rows))
    columns = torch.tensor([0, 3, 4, len(model.items_) - 1])
    with torch.no_grad():
        full, some = model.net_(*inputs), model.net_(*inputs, columns=columns)
    assert some.shape == (20, 4)
    torch.testing.assert_close(some, full[:, columns], rtol=0, atol=1e-6)


def test_sampled_columns_force_targets_and_history_items_and_correct_the_draws():
    est = NeuralNextBasket(sampled_items=3)
    est.sampled_items_ = 3  # as fit resolves it
    y = torch.zeros(2, 10)
    y[0, 1] = y[1, 7] = 1.0
    items = torch.tensor([[2, 10, 10], [2, 5, 10]])  # padded with n = 10
    columns, log_q = est._sampled_columns(np.random.default_rng(0), y, items)
    forced = {1, 2, 5, 7}
    drawn = set(np.random.default_rng(0).choice(10, 3, replace=False).tolist())
    assert columns.tolist() == sorted(forced | drawn)
    assert log_q.tolist() == pytest.approx([0.0 if c in forced else np.log(3 / 10) for c in columns.tolist()])
    est.sampled_items_ = 10
    assert est._sampled_columns(np.random.default_rng(0), y, items) == (None, 0.0)


def test_auto_samples_only_where_a_batch_spans_under_a_share_of_a_wide_catalogue():
    est = NeuralNextBasket(batch_size=4, max_baskets=2)
    rows = [[[0, 1], [2], [3]], [[4], [5, 6]], [[7]], [[8, 9]]]  # the 2-basket window of user 0 is [2], [3]
    target_rows = [[10], [11], [12], [13]]
    owner, cut = np.arange(4), np.array([3, 2, 1, 1])
    forced = len({2, 3, 4, 5, 6, 7, 8, 9} | {10, 11, 12, 13})  # every example is in the one batch of 4
    wide = next(n for n in range(int((forced + AUTO_SAMPLED_ITEMS) / AUTO_SHARE) - 2, 10**6)
                if forced + AUTO_SAMPLED_ITEMS < AUTO_SHARE * n)  # the narrowest catalogue that samples
    assert est._choose_sampled(rows, target_rows, owner, cut, wide) == AUTO_SAMPLED_ITEMS
    assert est._choose_sampled(rows, target_rows, owner, cut, wide - 1) is None  # columns at the share: every item
    assert est._choose_sampled(rows, target_rows, owner, cut, int(AUTO_SAMPLED_ITEMS / AUTO_SHARE)) is None
    assert est.set_params(sampled_items=None)._choose_sampled(rows, target_rows, owner, cut, wide) is None
    assert est.set_params(sampled_items=7)._choose_sampled(rows, target_rows, owner, cut, 10) == 7


def test_auto_on_a_narrow_catalogue_is_the_full_softmax_bit_for_bit():
    auto, full = _fit(max_epochs=2), _fit(max_epochs=2, sampled_items=None)
    assert auto.sampled_items == "auto" and auto.sampled_items_ is None
    assert [h["train_loss"] for h in auto.history_] == [h["train_loss"] for h in full.history_]


def test_sampled_softmax_training_learns_and_a_full_sample_is_the_full_softmax():
    sampled = _fit(sampled_items=8)
    histories, targets = _market(1, 60)
    r = evaluate_rankings(sampled.recommend(histories, 2), targets, histories, ks=[2])
    assert r["recall@2"] > 0.7
    full, everything = _fit(max_epochs=2), _fit(max_epochs=2, sampled_items=10_000)  # m >= the catalogue
    assert [h["train_loss"] for h in full.history_] == [h["train_loss"] for h in everything.history_]
    for bad in (0, "some", 2.5, True):
        with pytest.raises(ValueError, match="sampled_items"):
            _fit(sampled_items=bad)
