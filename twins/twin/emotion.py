"""How each customer feels: message events scored in batch by an emotion bundle, rolled up per customer as of
any date (recent emotion distribution, sentiment trend, the last strongly negative message).

Point in time like the customer twins: only messages strictly before ``as_of`` count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

from twins.data.events import bucket_files, scan_events

CHUNK = 65_536  # messages per call to the bundle (sorted by length within it)


def score_messages(events: pl.LazyFrame, bundle, batch_size: int = 64,
                   on_batch: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """One row per message event (``event_type == "message"``): customer, time, text, the Ekman and sentiment
    group probabilities (columns ``ekman_<group>``, ``sentiment_<group>``) and the fine labels over threshold.

    Messages go to the bundle ``CHUNK`` at a time, which sorts each chunk by token length into batches of
    ``batch_size`` (as the runtime's batch throughput is measured; this runs at it): 256-message chunks in log order,
    each one batch padded to its longest message, ran at 0.38-0.40x of it (BENCHMARKS.md, "Emotion scoring in the
    pipeline"). The chunk bounds the token ids held at once."""
    messages = (events.filter(pl.col("event_type") == "message")
                .select("customer_id", "event_time", pl.col("text").fill_null("")).collect())
    texts = messages["text"].to_list()
    levels = ("ekman", "sentiment")
    chunks: dict[str, list[np.ndarray]] = {level: [] for level in (*levels, "labels")}
    for start in range(0, len(texts), CHUNK):
        progress = {"on_batch": lambda done, _, start=start: on_batch(start + done, len(texts))} if on_batch else {}
        probs = bundle.probabilities(texts[start:start + CHUNK], batch_size=batch_size, **progress)
        for level in chunks:
            chunks[level].append(probs[level])
    probs = {level: np.concatenate(parts) if parts else np.zeros((0, len(bundle.groups[level])), np.float32)
             for level, parts in chunks.items()}
    over = probs["labels"] >= bundle.thresholds["labels"]
    columns = {f"{level}_{group}": probs[level][:, g] for level in levels for g, group in enumerate(bundle.groups[level])}
    labels = pl.Series("labels", [[bundle.labels[j] for j in np.flatnonzero(row)] for row in over], dtype=pl.List(pl.String))
    return messages.with_columns(*[pl.Series(name, values) for name, values in columns.items()], labels)


def emotion_profiles(scored: pl.DataFrame, as_of: datetime | None, window_days: float = 30.0,
                     strong_negative: float = 0.8) -> pl.DataFrame:
    """Per customer with a message before ``as_of`` (``None``: after the last message):

    - ``messages``, ``messages_recent`` (in the last ``window_days``);
    - ``recent_<ekman group>``: mean group probability over the recent messages (null when none);
    - ``recent_negative``: mean negative-sentiment probability over the recent messages (null when none);
    - ``negative_trend``: mean negative-sentiment probability in the recent window minus the window before it
      (null unless both windows have messages; > 0 means getting more negative);
    - ``last_negative_time`` / ``_text`` / ``_score``: the last message with negative probability >= ``strong_negative``.

    Messages without times (a source that maps no ``event_time``, e.g. GoEmotions) have no clock: every message is
    recent, ``negative_trend`` is null, "last" is the last in the log's order and ``as_of`` must be ``None``.
    """
    if scored.height and scored["event_time"].null_count() == scored.height:
        if as_of is not None:
            raise ValueError(f"the messages carry no time (the source maps no event_time), so as_of {as_of} cannot "
                             "apply; leave it out: the profiles cover every message")
        every = pl.col("customer_id").is_not_null()  # each message (a literal would count once per group)
        return _profiles(scored, every, ~every, strong_negative)
    if as_of is None:
        as_of = scored["event_time"].max() + timedelta(microseconds=1) if scored.height else datetime.now(timezone.utc)
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    window = timedelta(days=window_days)
    recent = pl.col("event_time") >= as_of - window
    before = (pl.col("event_time") >= as_of - 2 * window) & ~recent
    return _profiles(scored.filter(pl.col("event_time") < as_of).sort("event_time", maintain_order=True), recent, before,
                     strong_negative)


def _profiles(past: pl.DataFrame, recent: pl.Expr, before: pl.Expr, strong_negative: float) -> pl.DataFrame:
    """``emotion_profiles`` of the messages ``past`` (in time order) with the windows ``recent`` and ``before``."""
    ekman = [c for c in past.columns if c.startswith("ekman_")]
    negative = pl.col("sentiment_negative")
    strong = past.filter(negative >= strong_negative).group_by("customer_id", maintain_order=True).agg(
        pl.col("event_time").last().alias("last_negative_time"), pl.col("text").last().alias("last_negative_text"),
        negative.last().alias("last_negative_score"))
    profile = past.group_by("customer_id").agg(
        pl.len().alias("messages"), recent.sum().alias("messages_recent"),
        *[pl.col(c).filter(recent).mean().alias("recent_" + c.removeprefix("ekman_")) for c in ekman],
        negative.filter(recent).mean().alias("recent_negative"),
        (negative.filter(recent).mean() - negative.filter(before).mean()).alias("negative_trend"))
    return profile.join(strong, on="customer_id", how="left").sort("customer_id")


#: messages per work item of ``score_store_messages``
MESSAGE_CHUNK = 4096


def _messages(events_dir: Path, bucket: int) -> pl.LazyFrame:
    return scan_events(events_dir, bucket=bucket).filter(pl.col("event_type") == "message")


def bucket_message_counts(job: tuple[Path, int]) -> int:
    """How many message events bucket ``job[1]`` of the events folder ``job[0]`` holds."""
    return _messages(*job).select(pl.len()).collect().item()


def score_message_chunk(bundle, job: tuple[Path, int, int, int]) -> pl.DataFrame:
    """``score_messages`` of the messages ``offset .. offset + length`` of one bucket (in its order)."""
    events_dir, bucket, offset, length = job
    return score_messages(_messages(events_dir, bucket).slice(offset, length), bundle)


def score_store_messages(events_dir: str | Path, bundle: str | Path, engine=None,
                         on_batch: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """``score_messages`` of every message of a partitioned events folder, in the store's order (bucket by bucket),
    in chunks of ``MESSAGE_CHUNK`` messages through ``engine`` (default: local; each worker loads ``bundle``, a
    folder or ``models:/NAME@ALIAS``, once); ``on_batch(messages scored, messages in all)`` after each chunk."""
    from functools import partial

    from twins.engine import get_engine
    from twins.runtime import load

    engine, events_dir = engine or get_engine("local"), Path(events_dir)
    buckets = range(len(bucket_files(events_dir)))
    counts = engine.map(bucket_message_counts, [(events_dir, b) for b in buckets])
    jobs = [(events_dir, b, start, min(MESSAGE_CHUNK, n - start)) for b, n in zip(buckets, counts)
            for start in range(0, n, MESSAGE_CHUNK)]
    total = sum(counts)
    sizes = [length for *_, length in jobs]

    def done(n: int, _: int) -> None:
        if on_batch:
            on_batch(sum(sizes[:n]), total)

    if not jobs:  # the schema of an empty scoring
        return score_messages(_messages(events_dir, 0), load(str(bundle)))
    return pl.concat(engine.map(score_message_chunk, jobs, setup=partial(load, str(bundle)), on_done=done))
