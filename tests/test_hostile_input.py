"""Hostile input: ids that try to reach another tenant, values that overflow, times far ahead,
unknown currencies, bytes mutated at random and dead letters too large for the broker.

The bulk test pushes 100,000 messages through the stream's decode step (:func:`decode_frames`)
with its real dead-letter sink on the test broker, then reads the dead-letter topic back: every
message is either facts or a dead letter with a reason (never both, never neither), nothing raises,
and no fact carries an id, amount or time the rules refuse. Property tests (hypothesis) check the
id rules against the key and path formats directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from confluent_kafka import Consumer, TopicPartition
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from storeml.connectors.dead_letter import DeadLetterSink, clean_reason
from storeml.connectors.kafka_admin import ensure_topics
from storeml.connectors.redis_sink import profile_key
from storeml.errors import CodecError
from storeml.models.events import MAX_EVENT_TIME_MS, validate_order
from storeml.schemas.codec import get_codec
from storeml.schemas.currencies import CURRENCY_EXPONENTS
from storeml.schemas.rules import ID_PATTERN, MAX_AMOUNT_MINOR, REASON_MAX_CHARS, id_problem
from storeml.settings import Settings
from storeml.streams.context import job_context
from storeml.streams.decode import DECODE_STATS, decode_frames

NOW_MS = 1_767_225_600_000  # the Kafka timestamp of most fuzzed records (2026-01-01)
DAY_MS = 86_400_000

#: Ids that must never pass: separators of the Redis key, Kafka key and lake path, whitespace,
#: control and invisible characters, non-ASCII look-alikes, 10 kB, one past the length limit.
HOSTILE_IDS = [
    "x}:customer:y",
    "a}:customer:x",
    "{store}",
    "s|c",
    "a:b",
    "a b",
    "tab\tid",
    "line\nbreak",
    "nul\x00",
    "\x1b[31mred",
    "caf\u00e9",
    "a/../b",
    "%2e%2e",
    "k=v",
    "\u202egnp.exe",
    "zero\u200bwidth",
    "\uff21\uff22",
    "x" * 10_000,
    "x" * 129,
    "",
]
EDGE_IDS = ["x" * 128, "a.b_c~d@e-f", "-", ".", "..", "~", "0", "A"]
BAD_CURRENCIES = ["usd", "XXX", "XAU", "ZZZ", "", "US D", "EURO", "\u20ac"]


# --- property tests of the rules (no services) ----------------------------------------------
_ALPHABET = st.characters(codec="utf-8") | st.sampled_from(list(":{}|/=%.\n\x00 -_~@aZ9"))


@hsettings(max_examples=3_000, deadline=None)
@given(
    st.tuples(st.text(_ALPHABET, max_size=12), st.text(_ALPHABET, max_size=12)),
    st.tuples(st.text(_ALPHABET, max_size=12), st.text(_ALPHABET, max_size=12)),
)
def test_valid_ids_never_share_a_redis_key_kafka_key_or_lake_folder(
    a: tuple[str, str], b: tuple[str, str]
) -> None:
    """Two different valid (store, entity) pairs never build the same key or folder."""
    if any(id_problem("id", v) for v in (*a, *b)):
        return
    same = a == b
    for kind in ("customer", "product"):
        assert (profile_key("p", kind, *a) == profile_key("p", kind, *b)) == same
    assert (f"{a[0]}|{a[1]}".encode() == f"{b[0]}|{b[1]}".encode()) == same
    assert (f"store_id={a[0]}" == f"store_id={b[0]}") == (a[0] == b[0])
    assert "/" not in a[0] and "%" not in a[0]


def test_the_issues_example_is_refused() -> None:
    # profile_key('a', 'x}:customer:y') == profile_key('a}:customer:x', 'y') without the rules
    assert profile_key("p", "customer", "a", "x}:customer:y") == profile_key(
        "p", "customer", "a}:customer:x", "y"
    )
    order = _order(random.Random(1))
    for field, value in (("customer_id", "x}:customer:y"), ("store_id", "a}:customer:x")):
        reason = validate_order({**order, field: value})
        assert reason is not None and field in reason and "contains '}'" in reason, reason


@hsettings(max_examples=2_000, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_decode_and_validate_raise_nothing_but_codec_errors(data: bytes, framed: bool) -> None:
    codec = get_codec("order_event")
    if framed:  # behind a valid header, so the body parser is what gets fuzzed
        data = codec.encode(_order(random.Random(0)))[:10] + data
    try:
        record = codec.decode(data)
    except CodecError:
        return
    validate_order(record, NOW_MS)  # must return, whatever the decoded values


@hsettings(max_examples=1_000, deadline=None)
@given(
    st.integers(min_value=1, max_value=2**31 - 1),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=1, max_value=40),
)
def test_money_bounds_are_exact(quantity: int, price: int, lines: int) -> None:
    order = {
        **_order(random.Random(2)),
        "lines": [
            {"product_id": "p", "category": None, "quantity": quantity, "unit_price_minor": price}
        ]
        * lines,
    }
    reason = validate_order(order, NOW_MS)
    fits = price <= MAX_AMOUNT_MINOR and quantity * price * lines <= MAX_AMOUNT_MINOR
    assert (reason is None) == fits, reason
    if not fits:
        assert "unit_price_minor" in reason or "totals" in reason


def test_future_times_are_measured_from_the_record_timestamp() -> None:
    order = _order(random.Random(3))
    limit = 86_400_000
    assert validate_order({**order, "event_time": NOW_MS + limit}, NOW_MS, limit) is None
    late = validate_order({**order, "event_time": NOW_MS + limit + 1}, NOW_MS, limit)
    assert late is not None and "event_time" in late and "Kafka record" in late
    # the same record with the same timestamp gets the same answer whenever it is replayed
    assert validate_order({**order, "event_time": NOW_MS + limit + 1}, NOW_MS, limit) == late
    # without a timestamp only the absolute bound applies
    assert validate_order({**order, "event_time": NOW_MS + 400 * DAY_MS}, None, limit) is None
    assert validate_order({**order, "event_time": MAX_EVENT_TIME_MS + 1}, None, limit) is not None


def test_reasons_are_printable_and_short() -> None:
    reason = clean_reason("bad \x00\x1b[2J\n" + "y" * 5_000)
    assert reason.isprintable() and len(reason) <= REASON_MAX_CHARS and "\\x00" in reason
    shown = validate_order({**_order(random.Random(4)), "order_id": "o\n" + "z" * 10_000})
    assert shown is not None and shown.isprintable() and len(shown) < 400
    assert "order_id" in shown and "10002 characters" in shown


# --- message generation ---------------------------------------------------------------------
def _id(rng: random.Random, prefix: str) -> str:
    return f"{prefix}{rng.randrange(10**6)}" if rng.random() < 0.9 else rng.choice(EDGE_IDS)


def _order(rng: random.Random) -> dict[str, Any]:
    lines = [
        {
            "product_id": _id(rng, "p"),
            "category": rng.choice(
                [None, "shoes", "caf\u00e9 \n{x}|y"]
            ),  # free text may be anything
            "quantity": rng.randint(1, 5),
            "unit_price_minor": rng.randint(0, 100_000),
        }
        for _ in range(rng.randint(1, 4))
    ]
    return {
        "store_id": rng.choice(["store-001", "store-002", "s.3", "~"]),
        "customer_id": _id(rng, "c"),
        "order_id": _id(rng, "o"),
        "event_time": NOW_MS - rng.randint(0, 365 * DAY_MS),
        "currency": rng.choice(sorted(CURRENCY_EXPONENTS)),
        "lines": lines,
        "channel": "web",
    }


def _product(rng: random.Random) -> dict[str, Any]:
    return {
        "store_id": rng.choice(["store-001", "store-002", "s.3"]),
        "product_id": _id(rng, "p"),
        "event_time": NOW_MS - rng.randint(0, 365 * DAY_MS),
        "kind": rng.choice(["created", "updated", "viewed"]),
        "title": "T\u00eete \x00",
        "description": None,
        "price_minor": rng.choice([None, rng.randint(0, MAX_AMOUNT_MINOR)]),
        "category": None,
        "customer_id": rng.choice([None, _id(rng, "c")]),
    }


def _hostile(rng: random.Random, kind: str) -> tuple[dict[str, Any], str]:
    """A well-formed record with one defect, and the word its dead letter's reason must hold."""
    if kind == "order":
        record = _order(rng)
        defect = rng.choice(
            ["store_id", "customer_id", "order_id", "product_id", "quantity", "price", "sum"]
            + ["future", "currency", "hive"]
        )
        if defect in ("store_id", "customer_id", "order_id"):
            record[defect] = rng.choice(HOSTILE_IDS)
            return record, defect
        line = record["lines"][0]
        if defect == "product_id":
            line["product_id"] = rng.choice(HOSTILE_IDS)
            return record, "product_id"
        if defect == "quantity":  # int64 overflow of quantity x price
            line["quantity"], line["unit_price_minor"] = 2**31 - 1, 2**62
            return record, "unit_price_minor"
        if defect == "price":
            line["unit_price_minor"] = MAX_AMOUNT_MINOR + rng.randint(1, 10**6)
            return record, "unit_price_minor"
        if defect == "sum":  # every line within the bound, their sum not
            record["lines"] = [{**line, "quantity": 1, "unit_price_minor": MAX_AMOUNT_MINOR}] * 3
            return record, "totals"
        if defect == "future":
            record["event_time"] = NOW_MS + DAY_MS + rng.randint(1, 10 * 365 * DAY_MS)
            return record, "event_time"
        if defect == "hive":
            record["store_id"] = "__HIVE_DEFAULT_PARTITION__"
            return record, "store_id"
        record["currency"] = rng.choice(BAD_CURRENCIES)
        return record, "currency"
    record = _product(rng)
    defect = rng.choice(["store_id", "product_id", "customer_id", "future", "price", "past"])
    if defect in ("store_id", "product_id", "customer_id"):
        record[defect] = rng.choice(HOSTILE_IDS)
    elif defect == "future":
        record["event_time"] = 2**62
        return record, "event_time"
    elif defect == "past":
        record["event_time"] = -rng.randint(1, 10**12)
        return record, "event_time"
    else:
        record["price_minor"] = rng.choice([MAX_AMOUNT_MINOR + 1, 2**63 - 1])
        return record, "price_minor"
    return record, defect


def _mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """1-4 byte-level mutations (atheris/libFuzzer style): flips, sets, inserts, deletes, cuts,
    copies, splices; one in ten also hits the 10-byte header."""
    buf = bytearray(data)
    start = 0 if rng.random() < 0.1 else 10
    for _ in range(rng.randint(1, 4)):
        if len(buf) <= start:
            buf += rng.randbytes(rng.randint(1, 8))
        at = rng.randrange(start, len(buf))
        op = rng.randrange(8)
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:
            del buf[at : at + rng.randint(1, 16)]
        elif op == 4:
            del buf[at:]
        elif op == 5:
            chunk = buf[at : at + rng.randint(1, 32)]
            buf[rng.randrange(start, len(buf) + 1) : 0] = chunk
        elif op == 6:
            buf[at:] = other[rng.randrange(10, len(other)) :]
        else:  # a varint length or count made huge or negative
            buf[at : at + 1] = bytes([0xFF] * rng.randint(1, 9) + [0x01])
    return bytes(buf)


@dataclasses.dataclass
class Fuzz:
    """The generated input: frames for decode_frames and what must become of each message."""

    frames: list[pd.DataFrame]
    values: dict[tuple[str, int, int], bytes | None]
    good: dict[tuple[str, int, int], int]  # coordinates -> fact rows expected
    bad: dict[tuple[str, int, int], str]  # coordinates -> word the reason must hold
    stamps: dict[tuple[str, int, int], int | None]


def _fuzz(settings: Settings, total: int, seed: int) -> Fuzz:
    rng = random.Random(seed)
    orders, products = get_codec("order_event"), get_codec("product_event")
    pool = [orders.encode(_order(rng)) for _ in range(300)]
    pool += [products.encode(_product(rng)) for _ in range(200)]
    rows: list[tuple[str, int, int, int | None, bytes | None, bytes | None]] = []
    fuzz = Fuzz([], {}, {}, {}, {})
    offsets = {settings.topic_orders: 0, settings.topic_products: 0}
    for n in range(total):
        kind = "order" if rng.random() < 0.6 else "product"
        topic = settings.topic_orders if kind == "order" else settings.topic_products
        codec = orders if kind == "order" else products
        stamp: int | None = NOW_MS if rng.random() < 0.97 else None
        key: bytes | None = f"k{n}".encode() if rng.random() < 0.9 else rng.randbytes(20)
        roll = rng.random()
        where = (topic, n % 3, offsets[topic])
        offsets[topic] += 1
        if roll < 0.15:  # good
            record = _order(rng) if kind == "order" else _product(rng)
            value: bytes | None = codec.encode(record)
            fuzz.good[where] = len(record["lines"]) if kind == "order" else 1
        elif roll < 0.40:  # well-formed, one defect
            record, word = _hostile(rng, kind)
            value = codec.encode(record)
            stamp = NOW_MS  # a far-future time is only far from a timestamp
            fuzz.bad[where] = word
        elif roll < 0.995:  # mutated bytes: facts or a dead letter, the decoder decides
            value = _mutate(rng, rng.choice(pool), rng.choice(pool))
        elif roll < 0.998:  # tombstone
            value = None
            fuzz.bad[where] = "tombstone"
        else:  # the other topic's schema
            value = rng.choice(pool)
            if value[:10] != codec.encode(_order(rng) if kind == "order" else _product(rng))[:10]:
                fuzz.bad[where] = "fingerprint"
        fuzz.values[where] = value
        fuzz.stamps[where] = stamp
        rows.append((*where[:1], where[1], where[2], stamp, key, value))
    # three values above the broker's message size (the largest dead letter must be cut)
    for size in (1_000_001, 1_500_000, 3_000_000):
        where = (settings.topic_orders, 0, offsets[settings.topic_orders])
        offsets[settings.topic_orders] += 1
        value = b"\xc3\x01" + rng.randbytes(size - 2)
        fuzz.values[where], fuzz.stamps[where] = value, NOW_MS
        fuzz.bad[where] = "fingerprint"
        rows.append((*where, NOW_MS, b"big", value))
    columns = ["topic", "partition", "offset", "timestamp", "key", "value"]
    for start in range(0, len(rows), 10_000):
        frame = pd.DataFrame(rows[start : start + 10_000], columns=columns)
        frame["timestamp"] = frame["timestamp"].astype("Int64").astype(object)
        fuzz.frames.append(frame)
    return fuzz


def _read_dead_letters(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 5,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages: list[Any] = []
        deadline = time.monotonic() + 120
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(10_000, timeout=0.2) if m.error() is None]
        messages += [m for m in consumer.consume(10_000, timeout=0.5) if m.error() is None]
        return messages
    finally:
        consumer.close()


def _check_facts(facts: pd.DataFrame, fuzz: Fuzz, max_future_ms: int) -> None:
    """No fact carries an id, amount or time the rules refuse."""
    for column in ("store_id", "customer_id", "product_id", "order_id"):
        values = facts[column].dropna().unique()
        bad = [v for v in values if ID_PATTERN.fullmatch(v) is None]
        assert not bad, f"{column}: {bad[:3]}"
    lines = facts[facts["kind"] == "order_line"]
    totals = lines["quantity"].astype(object) * lines["unit_price_minor"].astype(object)
    assert (totals <= MAX_AMOUNT_MINOR).all()
    for row in facts.itertuples():
        stamp = fuzz.stamps[(row.topic, row.partition, row.offset)]
        assert 0 <= row.event_time <= MAX_EVENT_TIME_MS
        if stamp is not None:
            assert row.event_time <= stamp + max_future_ms


def test_a_hundred_thousand_fuzzed_messages_become_facts_or_dead_letters(
    settings: Settings,
) -> None:
    ensure_topics(settings.kafka_config(), [settings.topic_dead_letter], 3)
    ctx = dataclasses.replace(job_context(settings), lake_root=None)
    fuzz = _fuzz(settings, total=100_000, seed=20260101)
    assert len(fuzz.values) >= 100_000

    started = time.perf_counter()
    out = list(decode_frames(ctx, iter(fuzz.frames)))  # nothing may raise
    decode_s = time.perf_counter() - started
    stats = out[-1]
    assert stats["kind"].tolist() == [DECODE_STATS]
    assert int(stats["decode_events"].iloc[0]) == len(fuzz.values)
    facts = pd.concat(out[:-1], ignore_index=True)
    accepted = facts.groupby(["topic", "partition", "offset"]).size()
    accepted_at = {(t, int(p), int(o)): int(n) for (t, p, o), n in accepted.items()}
    dead = int(stats["decode_dead_letters"].iloc[0])
    assert len(accepted_at) + dead == len(fuzz.values)

    # good messages became exactly their facts; hostile ones none
    for where, rows in fuzz.good.items():
        assert accepted_at.get(where) == rows, where
    wrong = sorted(set(fuzz.bad) & set(accepted_at))
    assert not wrong, [(w, fuzz.bad[w], fuzz.values[w][:80]) for w in wrong[:5]]
    _check_facts(facts, fuzz, ctx.max_event_future_ms)

    letters = _read_dead_letters(settings.kafka_bootstrap, settings.topic_dead_letter, dead)
    codec = get_codec("dead_letter")
    by_source: dict[tuple[str, int, int], dict[str, Any]] = {}
    for message in letters:
        assert len(message.value()) + len(message.key() or b"") <= settings.dead_letter_max_bytes
        record = codec.decode(message.value())
        where = (record["source_topic"], record["source_partition"], record["source_offset"])
        assert dict(message.headers())["storeml.source"] == ":".join(map(str, where)).encode()
        by_source[where] = record
    assert len(letters) == dead, "each rejected message is dead-lettered once"
    # complete: every message is facts or a dead letter, never both
    assert set(by_source) == set(fuzz.values) - set(accepted_at)
    for where, record in by_source.items():
        original = fuzz.values[where]
        reason = record["reason"]
        assert reason and reason.isprintable() and len(reason) <= REASON_MAX_CHARS
        assert record["stage"] in ("decode", "validate") and record["error_type"]
        if original is None:
            assert record["value"] is None and record["value_sha256"] is None
        else:
            assert record["value_size"] == len(original)
            assert record["value_sha256"] == hashlib.sha256(original).hexdigest()
            if record["truncated"]:
                assert original.startswith(record["value"] or b"") and len(original) > 900_000
            else:
                assert record["value"] == original
        word = fuzz.bad.get(where)
        if word == "tombstone":
            assert "tombstone" in reason
        elif word == "fingerprint":
            assert record["error_type"] == "UnknownSchemaError"
        elif word is not None:
            assert record["stage"] == "validate" and word in reason, (word, reason)
    big = [r for r in by_source.values() if r["truncated"]]
    assert len(big) == 3 and all("cut to fit" in r["reason"] for r in big)
    kinds = {(r["stage"], r["error_type"]) for r in by_source.values()}
    assert {("decode", "CodecError"), ("validate", "InvalidEvent")} <= kinds
    print(f"decode of {len(fuzz.values)} messages: {decode_s:.1f}s, {dead} dead letters")


def _dead_letter_sink(settings: Settings, **config: Any) -> DeadLetterSink:
    ensure_topics(settings.kafka_config(), [settings.topic_dead_letter], 1)
    return DeadLetterSink({**settings.kafka_config(), **config}, settings.topic_dead_letter)


def test_a_dead_letter_the_producer_refuses_is_sent_without_its_payload(
    settings: Settings,
) -> None:
    """The producer's own limit below the sink's: the letter is re-sent stripped, the batch goes on."""
    sink = _dead_letter_sink(settings, **{"message.max.bytes": 200_000})
    value = bytes(range(256)) * 2_000  # 512 kB: under the sink's 1 MB, over the producer's limit
    sink.send("orders", 0, 7, b"key", value, "decode", "CodecError", "corrupt body")
    sink.send("orders", 0, 8, b"key", b"small", "decode", "CodecError", "corrupt body")
    sink.flush()
    letters = _read_dead_letters(settings.kafka_bootstrap, settings.topic_dead_letter, 2)
    records = sorted(
        (get_codec("dead_letter").decode(m.value()) for m in letters),
        key=lambda r: r["source_offset"],
    )
    assert [r["source_offset"] for r in records] == [7, 8]
    stripped, small = records
    assert stripped["truncated"] and stripped["value"] is None and stripped["key"] is None
    assert "dropped" in stripped["reason"] and "corrupt body" in stripped["reason"]
    assert stripped["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert stripped["value_size"] == len(value)
    assert small["value"] == b"small" and not small["truncated"]
    assert sink.stripped == 1


def test_dead_letters_are_cut_to_the_configured_size(settings: Settings) -> None:
    sink = DeadLetterSink(settings.kafka_config(), settings.topic_dead_letter, max_bytes=50_000)
    ensure_topics(settings.kafka_config(), [settings.topic_dead_letter], 1)
    key, value = b"k" * 40_000, b"v" * 60_000
    sink.send("orders", 1, 2, key, value, "validate", "InvalidEvent", "r\x00" * 2_000)
    sink.flush()
    (message,) = _read_dead_letters(settings.kafka_bootstrap, settings.topic_dead_letter, 1)
    assert len(message.value()) + len(message.key()) <= 50_000
    record = get_codec("dead_letter").decode(message.value())
    assert record["truncated"] and record["key"] == key[:256] and message.key() == key[:256]
    assert value.startswith(record["value"]) and len(record["value"]) > 5_000
    assert (record["key_size"], record["value_size"]) == (40_000, 60_000)
    assert record["reason"].isprintable() and len(record["reason"]) <= REASON_MAX_CHARS
    assert "cut to fit 50000 bytes" in record["reason"]


def frames_of(rows: list[tuple]) -> Iterator[pd.DataFrame]:
    yield pd.DataFrame(rows, columns=["topic", "partition", "offset", "timestamp", "key", "value"])


def test_a_replay_decides_far_future_events_the_same_way(settings: Settings) -> None:
    """Measured from the record's timestamp: the same answer today and in ten years."""
    ctx = dataclasses.replace(job_context(settings), lake_root=None, dead_letter_topic=None)
    codec = get_codec("order_event")
    record = {**_order(random.Random(5)), "event_time": NOW_MS + 2 * DAY_MS}
    rows = [
        (settings.topic_orders, 0, 0, NOW_MS, b"k", codec.encode(record)),
        (settings.topic_orders, 0, 1, NOW_MS + DAY_MS, b"k", codec.encode(record)),
    ]
    for _ in range(2):
        out = list(decode_frames(ctx, frames_of(rows)))
        facts = pd.concat(out[:-1]) if len(out) > 1 else pd.DataFrame({"offset": []})
        assert facts["offset"].unique().tolist() == [1]  # 2 days ahead of 0, 1 day ahead of 1
        assert int(out[-1]["decode_dead_letters"].iloc[0]) == 1


@pytest.mark.parametrize("code", sorted(CURRENCY_EXPONENTS))
def test_every_listed_currency_is_accepted(code: str) -> None:
    assert validate_order({**_order(random.Random(6)), "currency": code}, NOW_MS) is None
