"""Emotion signals: metrics against hand-computed cases, label groupings, the encoder against
sentence-transformers, TF-IDF features against scikit-learn, training (checkpoints, resume), and the ONNX bundle
with its tokenizer: parity with Python, robustness to any text, refusal of tampered files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from twins.emotion.labels import LabelSpace, load_label_space, roll_up
from twins.evaluate.emotion import f1_per_label, macro_f1, predict_labels, tune_thresholds
from twins.runtime.text import clean_text, pad

GOEMOTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "goemotions"
SPACE = LabelSpace(("joy", "anger", "fear", "neutral"),
                   {"joy": ("joy",), "anger": ("anger",), "fear": ("fear",), "neutral": ("neutral",)},
                   {"positive": ("joy",), "negative": ("anger", "fear"), "neutral": ("neutral",)})
WORDS = {0: "happy glad wonderful thanks", 1: "angry furious hate stupid", 2: "scared afraid worried nervous",
         3: "the report arrives on tuesday"}


def synthetic(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts whose words reveal their labels (one or two of 4), so tiny models learn them quickly."""
    rng = np.random.default_rng(seed)
    texts, y = [], np.zeros((n, 4), dtype=np.float32)
    for i in range(n):
        labels = rng.choice(4, size=1 + (rng.random() < 0.2), replace=False)
        y[i, labels] = 1
        words = [w for label in labels for w in rng.choice(WORDS[label].split(), 2, replace=False)]
        texts.append(" ".join(rng.permutation(words + ["so", "today"])))
    return texts, y


# ------------------------------------------------------------------------------------------- metrics

def test_f1_and_macro_f1_match_hand_computed_values():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    # label 0: tp 1, 2 true, 2 predicted -> 0.5; label 1: tp 2 of 2 and 2 -> 1.0; label 2: nothing -> 0
    assert f1_per_label(y, pred).tolist() == [0.5, 1.0, 0.0]
    assert macro_f1(y, pred) == pytest.approx(0.5)


def test_thresholds_are_tuned_per_label_to_the_best_f1():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=float)
    p = np.array([[0.3, 0.9], [0.25, 0.2], [0.1, 0.85], [0.2, 0.8]])
    th = tune_thresholds(y, p, grid=np.array([0.15, 0.22, 0.5, 0.82]))
    # label 0: 0.22 keeps both positives and drops both negatives (F1 1.0); label 1: best is 0.15 (F1 0.8 > 0.667 at 0.82)
    assert th.tolist() == pytest.approx([0.22, 0.15])
    assert predict_labels(p, th)[:, 0].tolist() == [1, 1, 0, 0]


def test_roll_up_takes_the_max_member_probability_and_any_member_truth():
    m = SPACE.group_matrix("sentiment")
    p = np.array([[0.1, 0.7, 0.4, 0.2]], dtype=np.float32)
    assert roll_up(p, m)[0].tolist() == pytest.approx([0.1, 0.7, 0.2])
    assert roll_up(np.array([[0, 0, 1, 0]], dtype=np.float32), m).tolist() == [[0, 1, 0]]


@pytest.mark.skipif(not GOEMOTIONS.is_dir(), reason=f"{GOEMOTIONS} not present (the shared data sets live in ../shared/data)")
def test_official_label_space_and_mappings():
    space = load_label_space(GOEMOTIONS)
    assert len(space.labels) == 28 and space.labels[-1] == "neutral"
    assert list(space.ekman) == ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
    assert list(space.sentiment) == ["positive", "negative", "ambiguous", "neutral"]
    for level in ("ekman", "sentiment"):
        assert space.group_matrix(level).sum(1).tolist() == [1.0] * 28  # every label in exactly one group


def test_a_mapping_that_misses_a_label_is_refused(tmp_path):
    (tmp_path / "emotions.txt").write_text("joy\nanger\nneutral")
    (tmp_path / "ekman_mapping.json").write_text(json.dumps({"joy": ["joy"]}))
    (tmp_path / "sentiment_dict.json").write_text(json.dumps({"positive": ["joy"], "negative": ["anger"]}))
    with pytest.raises(ValueError, match=r"ekman_mapping.json.*missing \['anger'\]"):
        load_label_space(tmp_path)


# ------------------------------------------------------------------------------------------- text and features

@pytest.mark.parametrize("raw, clean", [
    (None, ""), ("", ""), ("   \n\t ", ""), ("a\x00b\x1fc", "a b c"), ("<p>Great <b>job</b></p>", "Great job"),
    ("I <3 you", "I <3 you"), (b"caf\xc3\xa9 \xff ok", "café \ufffd ok"), ("so  happy 😀", "so happy 😀"),
])
def test_clean_text_defines_every_input(raw, clean):
    assert clean_text(raw) == clean


def test_pad_pads_to_the_longest_sequence_of_the_batch():
    ids, mask = pad([[101, 5, 102], [101, 102]])
    assert ids.tolist() == [[101, 5, 102], [101, 102, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_tfidf_features_equal_scikit_learn():
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

    from twins.runtime.lexical import TfidfFeatures

    texts, _ = synthetic(200, 0)
    texts += ["Happy happy HAPPY day", "x", "", "l'été à Paris, très bien!", "a b c"]
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True).fit(texts)
    features = TfidfFeatures({t: int(i) for t, i in vec.vocabulary_.items()}, vec.idf_, (1, 2))
    ids, values = features.transform(texts)
    ours = sparse.csr_matrix((values.ravel(), (np.repeat(np.arange(len(texts)), ids.shape[1]), ids.ravel())),
                             shape=(len(texts), len(vec.vocabulary_)))
    assert abs(ours - vec.transform(texts)).max() < 1e-6


def test_pretrained_encoder_matches_sentence_transformers():
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    from twins.emotion.encoder import Encoder, pretrained_dir
    from twins.emotion.tokenize import encode, load_tokenizer

    texts = ["I love this so much!", "This is the worst, [NAME] is an idiot", "ok"]
    ids, mask = pad(encode(load_tokenizer(pretrained_dir() / "tokenizer.json", 64), texts))
    with torch.no_grad():
        ours = Encoder.pretrained().eval()(torch.from_numpy(ids), torch.from_numpy(mask))
    ref = st.SentenceTransformer(str(pretrained_dir()), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(torch.nn.functional.normalize(ours, dim=-1), ref, atol=1e-5)


# ------------------------------------------------------------------------------------------- training

def test_length_batches_cover_every_row_once():
    from twins.emotion.classifier import length_batches

    lengths = np.random.default_rng(0).integers(3, 40, 1003)
    batches = length_batches(lengths, 32, np.random.default_rng(1), pool=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1003))
    assert max(len(b) for b in batches) == 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small from-scratch classifier and a TF-IDF model on synthetic texts (4 labels)."""
    from twins.emotion.classifier import EmotionClassifier
    from twins.emotion.lexical import TfidfLogReg

    texts, y = synthetic(160, 0)
    dev_texts, dev_y = synthetic(60, 1)
    ckpt = tmp_path_factory.mktemp("ckpt")
    clf = EmotionClassifier(encoder="small", epochs=2, lr=1e-3, batch_size=16, max_length=16, patience=5,
                            checkpoint_dir=str(ckpt)).fit(texts, y, dev_texts, dev_y)
    lex = TfidfLogReg(C=[1.0, 10.0], min_df=1).fit(texts, y, dev_texts, dev_y)
    return clf, lex, ckpt, (texts, y, dev_texts, dev_y)


def test_classifier_learns_and_records_its_history(trained):
    clf, lex, _, (_, _, dev_texts, dev_y) = trained
    assert [h["epoch"] for h in clf.history_] == [1, 2] and clf.best_epoch_ in (1, 2)
    p = clf.predict_proba(dev_texts)
    assert p.shape == (60, 4) and ((p >= 0) & (p <= 1)).all()
    assert macro_f1(dev_y, predict_labels(p, tune_thresholds(dev_y, p))) > 0.5
    assert lex.C_ in (1.0, 10.0) and set(lex.dev_scores_) == {1.0, 10.0}


def test_a_finished_checkpoint_resumes_without_training_and_a_foreign_one_is_refused(trained):
    from twins.emotion.classifier import EmotionClassifier

    clf, _, ckpt, (texts, y, dev_texts, dev_y) = trained
    again = EmotionClassifier(encoder="small", epochs=2, lr=1e-3, batch_size=16, max_length=16, patience=5,
                              checkpoint_dir=str(ckpt)).fit(texts, y, dev_texts, dev_y)
    assert again.history_ == clf.history_
    np.testing.assert_allclose(again.predict_proba(dev_texts), clf.predict_proba(dev_texts), atol=1e-6)
    with pytest.raises(ValueError, match="other hyper-parameters or data"):
        EmotionClassifier(encoder="small", epochs=3, lr=1e-3, batch_size=16, max_length=16,
                          checkpoint_dir=str(ckpt)).fit(texts, y, dev_texts, dev_y)


def test_training_resumes_after_an_interruption(trained, tmp_path, monkeypatch):
    """Killed during epoch 2: the rerun continues from epoch 1's checkpoint instead of starting over."""
    import torch

    from twins.emotion.classifier import EmotionClassifier

    _, _, _, (texts, y, dev_texts, dev_y) = trained
    args = dict(encoder="small", epochs=2, lr=1e-3, batch_size=16, max_length=16, patience=5, checkpoint_dir=str(tmp_path))
    original, calls = EmotionClassifier._dev_score, []

    def crash_in_epoch_2(self, *a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *a)

    monkeypatch.setattr(EmotionClassifier, "_dev_score", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        EmotionClassifier(**args).fit(texts, y, dev_texts, dev_y)
    monkeypatch.undo()
    first = torch.load(tmp_path / "last.pt", weights_only=False)["state"]
    assert first["epoch"] == 1
    resumed = EmotionClassifier(**args).fit(texts, y, dev_texts, dev_y)
    assert [h["epoch"] for h in resumed.history_] == [1, 2] and resumed.history_[0] == first["history"][0]


# ------------------------------------------------------------------------------------------- bundle

@pytest.fixture(scope="module")
def bundle_dir(trained, tmp_path_factory) -> Path:
    from twins.emotion.ensemble import LevelThresholds
    from twins.emotion.export import export_emotion

    clf, lex, _, (_, _, dev_texts, dev_y) = trained
    p = 0.6 * clf.predict_proba(dev_texts) + 0.4 * lex.predict_proba(dev_texts)
    th = LevelThresholds.tune(SPACE, dev_y, p)
    return export_emotion(clf, SPACE, th, tmp_path_factory.mktemp("emo") / "bundle", lexical=lex, weight=0.6)


HARD_TEXTS = ["", "   ", "so happy today 😀🎉", "Je suis très en colère !!!", "<div>angry <i>furious</i></div>",
              "scared\x00\x07afraid", "word " * 2000, "日本語のテキスト", "x"]


def test_bundle_reproduces_the_python_models_at_several_batch_sizes(trained, bundle_dir):
    from twins.runtime import EmotionBundle, load

    clf, lex, _, (_, _, dev_texts, _) = trained
    bundle = load(bundle_dir)
    assert isinstance(bundle, EmotionBundle)
    texts = dev_texts + HARD_TEXTS
    want = 0.6 * clf.predict_proba(texts) + 0.4 * lex.predict_proba(texts)
    for batch_size in (1, 7, 64):
        got = bundle.probabilities(texts, batch_size=batch_size)
        np.testing.assert_allclose(got["labels"], want, atol=1e-4)
        np.testing.assert_allclose(got["sentiment"], roll_up(want, SPACE.group_matrix("sentiment")), atol=1e-4)


def test_bundle_answers_any_text(bundle_dir):
    from twins.runtime import load

    out = load(bundle_dir).predict(HARD_TEXTS + [b"bad \xff\xfe bytes"])
    assert len(out) == len(HARD_TEXTS) + 1
    for answer in out:
        assert set(answer) == {"labels", "ekman", "sentiment"}
        assert list(answer["sentiment"]["scores"]) == ["positive", "negative", "neutral"]
        assert all(0.0 <= v <= 1.0 for v in answer["labels"]["scores"].values())
    assert load(bundle_dir).predict([]) == []


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text().replace("[UNK]", "[UNK2]", 1)),
     "tokenizer.json: sha256 does not match"),
    (lambda d: (d / "lexical.json").unlink(), "lexical.json: missing"),
])
def test_tampered_or_incomplete_bundles_are_refused(bundle_dir, tmp_path, damage, message):
    import shutil

    from twins.runtime import BundleError, load

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "copy"))
    damage(copy)
    with pytest.raises(BundleError, match=message):
        load(copy)


# ------------------------------------------------------------------------------------------- emotion in twins

def _scored(rows: list[tuple]):
    """A scored-messages frame: (customer, day offset, text, joy = 1 - anger, negative sentiment)."""
    from datetime import datetime, timedelta, timezone

    import polars as pl

    return pl.DataFrame({
        "customer_id": [r[0] for r in rows],
        "event_time": [datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(days=r[1]) for r in rows],
        "text": [r[2] for r in rows], "ekman_joy": [r[3] for r in rows], "ekman_anger": [1 - r[3] for r in rows],
        "sentiment_negative": [r[4] for r in rows]}).with_columns(pl.col("event_time").dt.cast_time_unit("us"))


def test_emotion_profile_matches_hand_computed_values():
    from datetime import datetime, timezone

    from twins.twin.emotion import emotion_profiles

    scored = _scored([
        ("a", 0, "fine", 0.8, 0.1),     # before both windows
        ("a", 15, "meh", 0.6, 0.3),     # previous window (days 10..20 before as_of day 30)
        ("a", 22, "awful!", 0.1, 0.95),  # recent window, strongly negative
        ("a", 28, "ok now", 0.5, 0.5),   # recent window
        ("a", 30, "future", 0.0, 1.0),   # at as_of: not seen (strictly before)
        ("b", 5, "great", 0.9, 0.05),
    ])
    out = emotion_profiles(scored, datetime(2024, 1, 31, tzinfo=timezone.utc), window_days=10, strong_negative=0.8)
    a, b = out.row(0, named=True), out.row(1, named=True)
    assert (a["messages"], a["messages_recent"]) == (4, 2)
    assert a["recent_joy"] == pytest.approx((0.1 + 0.5) / 2) and a["recent_anger"] == pytest.approx((0.9 + 0.5) / 2)
    assert a["negative_trend"] == pytest.approx((0.95 + 0.5) / 2 - 0.3)
    assert (a["last_negative_text"], a["last_negative_score"]) == ("awful!", pytest.approx(0.95))
    assert b["messages_recent"] == 0 and b["recent_joy"] is None and b["negative_trend"] is None
    assert b["last_negative_time"] is None


def test_emotion_profile_of_messages_without_times_covers_them_all():
    """GoEmotions' comments carry no time: every message is recent, "last" is the last in the log, no trend."""
    from datetime import datetime, timezone

    import polars as pl

    from twins.twin.emotion import emotion_profiles

    scored = _scored([("a", 0, "awful!", 0.1, 0.95), ("a", 0, "fine", 0.7, 0.2), ("a", 0, "terrible", 0.2, 0.9),
                      ("b", 0, "great", 0.9, 0.05)]).with_columns(pl.lit(None, pl.Datetime("us", "UTC")).alias("event_time"))
    a, b = emotion_profiles(scored, None).rows(named=True)
    assert (a["messages"], a["messages_recent"], b["messages_recent"]) == (3, 3, 1)
    assert a["recent_joy"] == pytest.approx((0.1 + 0.7 + 0.2) / 3) and a["negative_trend"] is None
    assert (a["last_negative_text"], a["last_negative_time"], b["last_negative_text"]) == ("terrible", None, None)
    with pytest.raises(ValueError, match="carry no time"):
        emotion_profiles(scored, datetime(2024, 1, 1, tzinfo=timezone.utc))


def test_scored_messages_equal_the_runtime_answers_in_any_chunking(bundle_dir, monkeypatch):
    """Messages sorted by length across a chunk (not batch by batch in log order) score as the runtime scores them,
    rows stay in log order, and the progress counts reach every message."""
    import polars as pl

    from twins.runtime import load
    from twins.twin import emotion

    texts = [" ".join(["happy glad angry scared"] * (i % 9)) + f" {i}" for i in range(70)] + [None, ""]
    events = pl.LazyFrame({"customer_id": [str(i % 5) for i in range(len(texts))], "event_time": None,
                           "event_type": "message", "text": texts})
    bundle = load(bundle_dir)
    want = bundle.probabilities([t or "" for t in texts])
    seen = []
    whole = emotion.score_messages(events, bundle, batch_size=8, on_batch=lambda done, n: seen.append((done, n)))
    monkeypatch.setattr(emotion, "CHUNK", 16)
    chunked = emotion.score_messages(events, bundle, batch_size=5)
    assert whole["text"].to_list() == [t or "" for t in texts]
    for level in ("ekman", "sentiment"):
        got = whole.select(f"{level}_{g}" for g in bundle.groups[level]).to_numpy()
        np.testing.assert_allclose(got, want[level], atol=1e-5)
        np.testing.assert_allclose(chunked.select(f"{level}_{g}" for g in bundle.groups[level]).to_numpy(), got, atol=1e-5)
    assert whole["labels"].to_list() == chunked["labels"].to_list()
    assert seen[-1] == (len(texts), len(texts)) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_emotions_command_scores_messages_and_stores_profiles(bundle_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from twins import api
    from twins.cli import app

    (tmp_path / "chat.csv").write_text(
        "customer,ts,message\n"
        "c1,2024-03-01 10:00,I am so angry and furious about this\n"
        "c1,2024-03-05 11:00,thanks that is wonderful\n"
        "c2,2024-03-02 09:00,\n"
        "c2,2024-04-01 09:00,scared and worried\n")
    (tmp_path / "chat.yaml").write_text(
        "name: chat\nfiles:\n  - path: chat.csv\nformat: csv\ncolumns:\n  customer_id: customer\n  event_time: ts\n"
        "  text: message\nconstants:\n  event_type: message\n  channel: chat\n  actor: human\n"
        "time:\n  format: \"%Y-%m-%d %H:%M\"\n")
    api.ingest(tmp_path / "chat.yaml", track=False)
    result = CliRunner().invoke(app, ["emotions", str(tmp_path / "chat.yaml"), "--bundle", str(bundle_dir),
                                      "--as-of", "2024-03-10", "--window-days", "30"])
    assert result.exit_code == 0, result.output
    c1, c2 = api.twin("c1", "chat", kind="emotion"), api.twin("c2", "chat", kind="emotion")
    assert c1["messages"] == 2 and c2["messages"] == 1  # c2's April message is after as_of
    assert set(c1) >= {"recent_joy", "recent_anger", "negative_trend", "last_negative_text"}
    import polars as pl
    from twins import paths
    assert pl.read_parquet(paths.events_dir("chat") / "messages_scored.parquet").height == 4  # every message scored
    # another as_of reuses the scores (same events, same bundle); new events are scored again
    with monkeypatch.context() as m:
        m.setattr("twins.twin.emotion.score_messages", None)  # would fail if called
        api.emotions(tmp_path / "chat.yaml", bundle_dir, as_of="2024-04-10")
    assert api.twin("c2", "chat", kind="emotion")["messages"] == 2
    with (tmp_path / "chat.csv").open("a") as f:
        f.write("c3,2024-03-03 08:00,so happy today\n")
    api.ingest(tmp_path / "chat.yaml", track=False)
    api.emotions(tmp_path / "chat.yaml", bundle_dir, as_of="2024-04-10")
    assert pl.read_parquet(paths.events_dir("chat") / "messages_scored.parquet").height == 5
    bad = CliRunner().invoke(app, ["emotions", str(tmp_path / "chat.yaml"), "--bundle", str(tmp_path)])
    assert bad.exit_code == 2 and "error:" in bad.output


@pytest.mark.slow
def test_training_runs_under_torchrun_ddp(tmp_path, torchrun_histories):
    """Two CPU processes (gloo), an odd number of batches: equal step counts per rank, no hang, one checkpoint."""
    histories = torchrun_histories(
        "from test_emotion import synthetic\nfrom twins.emotion.classifier import EmotionClassifier\n"
        "texts, y = synthetic(100, 0); dev_texts, dev_y = synthetic(40, 1)\n"
        "c = EmotionClassifier(encoder='small', epochs=2, lr=1e-3, batch_size=16, max_length=16, patience=5,\n"
        "                      checkpoint_dir=sys.argv[1]).fit(texts, y, dev_texts, dev_y)\n"
        "history = [h['epoch'] for h in c.history_]")
    assert histories == {0: [1, 2], 1: [1, 2]}
    assert (tmp_path / "ckpt" / "last.pt").exists()


def test_service_answers_emotion_requests_like_the_runtime(bundle_dir):
    from fastapi.testclient import TestClient

    from twins.runtime import load
    from twins.serve import create_app

    texts = ["so happy and glad", "", "<b>furious</b> 😡", "word " * 500]
    with TestClient(create_app({"emo": bundle_dir}, [], poll_seconds=0)) as client:
        r = client.post("/v1/models/emo/emotion", json={"texts": texts})
        assert r.status_code == 200, r.text
        want = load(bundle_dir).predict(texts)
        for got, expected in zip(r.json()["results"], want):
            assert got["labels"]["predicted"] == expected["labels"]["predicted"]
            assert got["sentiment"]["scores"] == pytest.approx(expected["sentiment"]["scores"], abs=1e-6)
        bad = client.post("/v1/models/emo/emotion", json={"texts": []})
        assert bad.status_code == 422 and "texts" in bad.text
