"""CSV transaction-log replay: column mapping, grouping, exact money, bad rows, real produce."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from storeml.connectors.csv_replay import (
    BadRow,
    CsvMapping,
    iter_csv_events,
    minor_units,
    parse_timestamp_ms,
    read_csv_events,
    replay_csv,
)
from storeml.connectors.kafka_admin import ensure_topics
from storeml.errors import ConfigError, ConnectorError
from storeml.schemas.codec import get_codec
from tests.test_synthetic import consume

SAMPLE = Path(__file__).parent / "data" / "transactions_sample.csv"
FULL = CsvMapping(
    customer="customer",
    timestamp="ts",
    amount="unit_price",
    store="shop",
    product="sku",
    category="category",
    quantity="qty",
    order_id="invoice",
)
MINIMAL = CsvMapping(customer="customer", timestamp="ts", amount="unit_price")


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("19.99", "USD", 1999),
        ("0.015", "USD", 2),
        ("0.005", "USD", 1),
        ("0.004", "USD", 0),
        ("1234.565", "USD", 123457),
        ("2.675", "EUR", 268),  # float math would give 267
        (" 5 ", "USD", 500),
        ("-1.005", "USD", -101),
        ("1500", "JPY", 1500),
        ("1500.5", "JPY", 1501),
        ("1.0005", "KWD", 1001),
    ],
)
def test_money_is_exact_and_rounds_half_up(amount: str, currency: str, minor: int) -> None:
    assert minor_units(amount, currency) == minor


@pytest.mark.parametrize("amount", ["abc", "", "1,000.00", "NaN", "Infinity", "1e3", "$5"])
def test_unparseable_amounts_raise(amount: str) -> None:
    with pytest.raises(ValueError):
        minor_units(amount)


@pytest.mark.parametrize(
    ("text", "fmt", "ms"),
    [
        ("2024-03-01T10:00:00Z", None, 1709287200000),
        ("2024-03-01T10:00:00", None, 1709287200000),  # naive is UTC
        ("2024-03-01 10:00:00.250", None, 1709287200250),
        ("2024-03-01T12:00:00+02:00", None, 1709287200000),
        ("1709287200", None, 1709287200000),  # epoch seconds
        ("1709287200.5", None, 1709287200500),
        ("1709287200123", None, 1709287200123),  # epoch millis
        ("1709287200123456", None, 1709287200123),  # epoch micros
        ("01/03/2024 10:00", "%d/%m/%Y %H:%M", 1709287200000),
    ],
)
def test_timestamps(text: str, fmt: str | None, ms: int) -> None:
    assert parse_timestamp_ms(text, fmt) == ms


def test_rows_are_mapped_and_grouped_by_order_id() -> None:
    events, bad = read_csv_events(SAMPLE, FULL)
    records = {e.record["order_id"]: e.record for e in events if e.record}
    # INV-1007's product id holds a newline: a bad row (BadId), see the next test
    assert sorted(records) == ["INV-1001", "INV-1002", "INV-1003"]
    first = records["INV-1001"]
    assert first["store_id"] == "shop-a" and first["customer_id"] == "cust-1"
    assert first["currency"] == "USD" and first["channel"] == "unknown"
    assert first["event_time"] == 1709287200000
    assert first["lines"] == [
        {"product_id": "sku-1", "category": "shoes", "quantity": 2, "unit_price_minor": 1999},
        {"product_id": "sku-2", "category": None, "quantity": 1, "unit_price_minor": 2},
    ]
    # Lines of INV-1002 are 8 rows apart: still one order.
    assert [line["product_id"] for line in records["INV-1002"]["lines"]] == ["sku-1", "sku-7"]
    assert records["INV-1002"]["lines"][1]["unit_price_minor"] == 500
    codec = get_codec("order_event")
    for event in events:
        assert event.topic_kind == "orders"
        assert codec.decode(event.value) == event.record
        assert event.key == f"{event.record['store_id']}|{event.record['customer_id']}".encode()


def test_bad_rows_are_reported_with_row_number_and_reason() -> None:
    _, bad = read_csv_events(SAMPLE, FULL)
    assert [(b.row, b.error_type) for b in bad] == [
        (6, "MissingOrderId"),
        (7, "MissingCustomer"),
        (8, "BadTimestamp"),
        (9, "BadAmount"),
        (10, "BadId"),
        (13, "BadQuantity"),
    ]
    by_row = {b.row: b for b in bad}
    assert "'yesterday'" in by_row[8].reason
    assert "'abc'" in by_row[9].reason
    # the quoted product id spans two lines: ids may not hold control characters
    assert "product 'sku-6\\nsecond line' contains '\\n'" in by_row[10].reason
    assert "column 'sku'" in by_row[10].reason
    lines = SAMPLE.read_text().splitlines()
    for b in bad:
        # line numbers count the header as line 1; row 10's quoted field spans two lines
        expected = "\n".join(lines[b.row - 1 : b.row + 1]) if b.row == 10 else lines[b.row - 1]
        assert b.raw == expected.encode()
    assert b'"home, kitchen"' in by_row[9].raw


def test_without_order_ids_every_row_is_an_order() -> None:
    events, bad = read_csv_events(SAMPLE, MINIMAL)
    # Only rows missing the customer, the timestamp or the amount are bad here.
    assert [b.row for b in bad] == [7, 8, 9]
    assert len(events) == 8
    first = events[0].record
    assert first is not None
    assert first["store_id"] == "csv"
    assert first["order_id"] == "transactions_sample.csv-2"  # no ':' (not an id character)
    assert first["lines"] == [
        {"product_id": "unknown", "category": None, "quantity": 1, "unit_price_minor": 1999}
    ]
    assert Counter(e.record["order_id"] for e in events if e.record).most_common(1)[0][1] == 1
    # row 10: a quoted field spanning two lines (unmapped here), an offset time, half-up rounding
    late = next(e.record for e in events if e.record and e.record["order_id"].endswith("-10"))
    assert late["lines"][0]["unit_price_minor"] == 123457
    assert late["event_time"] == 1709294400000


def test_lines_further_apart_than_the_group_window_become_separate_orders() -> None:
    events, _ = read_csv_events(SAMPLE, replace(FULL, group_window=2))
    split = [e.record for e in events if e.record and e.record["order_id"] == "INV-1002"]
    assert [len(r["lines"]) for r in split] == [1, 1]


def test_order_with_two_customers_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "order,who,when,price\n"
        "o1,alice,2024-01-01T00:00:00Z,1.00\n"
        "o1,bob,2024-01-01T00:00:01Z,2.00\n"
    )
    mapping = CsvMapping(customer="who", timestamp="when", amount="price", order_id="order")
    events, bad = read_csv_events(path, mapping)
    assert len(events) == 1 and events[0].record["lines"][0]["unit_price_minor"] == 100
    assert [(b.row, b.error_type) for b in bad] == [(3, "CustomerMismatch")]
    assert "'alice'" in bad[0].reason and "'bob'" in bad[0].reason


def test_rows_in_another_encoding_are_bad_rows_kept_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(
        b"who,when,price,item\n"
        b"alice,2024-01-01T00:00:00Z,1.00,caf\xc3\xa9\n"
        b"bob,2024-01-01T00:00:01Z,2.00,caf\xe9\n"
    )
    # a category: free text (ids are ASCII, docs/ids.md)
    mapping = CsvMapping(customer="who", timestamp="when", amount="price", category="item")
    events, bad = read_csv_events(path, mapping)
    assert events[0].record["lines"][0]["category"] == "caf\u00e9"
    assert [(b.row, b.error_type, b.raw) for b in bad] == [
        (3, "Encoding", b"bob,2024-01-01T00:00:01Z,2.00,caf\xe9")
    ]
    events, bad = read_csv_events(path, replace(mapping, encoding="latin-1"))
    assert len(events) == 2 and events[1].record["lines"][0]["category"] == "caf\u00e9"
    # the same text as a product id is a bad row naming the field and column
    _, bad = read_csv_events(path, replace(mapping, category=None, product="item"))
    assert bad[0].error_type == "BadId" and "product 'caf\u00e9' contains" in bad[0].reason


def test_mapping_errors_are_loud(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError, match="'nope'"):
        read_csv_events(SAMPLE, CsvMapping(customer="nope", timestamp="ts", amount="unit_price"))
    with pytest.raises(ConnectorError, match="cannot open"):
        read_csv_events(tmp_path / "missing.csv", MINIMAL)
    with pytest.raises(ConfigError, match="'usd'"):
        CsvMapping(customer="c", timestamp="t", amount="a", currency="usd")


def test_big_files_stream(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as handle:
        handle.write("order,customer,ts,amount\n")
        for i in range(30_000):
            handle.write(f"o{i // 3},c{(i // 3) % 97},{1_700_000_000 + i},{i % 50}.25\n")
    mapping = CsvMapping(customer="customer", timestamp="ts", amount="amount", order_id="order")
    orders = lines = 0
    for item in iter_csv_events(path, mapping):
        assert not isinstance(item, BadRow)
        orders += 1
        lines += len(item.record["lines"]) if item.record else 0
    assert (orders, lines) == (10_000, 30_000)


def test_replay_into_the_broker_with_dead_letters(kafka_bootstrap: str, unique: str) -> None:
    orders_topic, dead_topic = f"test.{unique}.orders", f"test.{unique}.dead-letter"
    config = {"bootstrap.servers": kafka_bootstrap}
    ensure_topics(config, [orders_topic, dead_topic], partitions=3)
    expected, bad = read_csv_events(SAMPLE, FULL)

    stats = replay_csv(config, SAMPLE, FULL, orders_topic, dead_letter_topic=dead_topic)

    assert (stats.orders, stats.lines, stats.dead_letters) == (3, 5, 6)
    assert stats.rows == 11
    assert stats.bad == bad
    got = consume(kafka_bootstrap, orders_topic, 3)
    assert Counter((m.key(), m.value()) for m in got) == Counter((e.key, e.value) for e in expected)
    letters = consume(kafka_bootstrap, dead_topic, 6)
    decoded = sorted(
        (get_codec("dead_letter").decode(m.value()) for m in letters),
        key=lambda r: r["source_offset"],
    )
    assert [r["source_offset"] for r in decoded] == [6, 7, 8, 9, 10, 13]
    for record, row in zip(decoded, sorted(bad, key=lambda b: b.row), strict=True):
        assert record["source_topic"] == "csv:transactions_sample.csv"
        assert record["source_partition"] == 0
        assert record["key"] is None
        assert record["value"] == row.raw
        assert record["stage"] == "validate"
        assert (record["error_type"], record["reason"]) == (row.error_type, row.reason)


def test_replay_without_dead_letter_topic_still_reports(kafka_bootstrap: str, unique: str) -> None:
    orders_topic = f"test.{unique}.orders"
    config = {"bootstrap.servers": kafka_bootstrap}
    ensure_topics(config, [orders_topic], partitions=3)
    stats = replay_csv(config, SAMPLE, MINIMAL, orders_topic)
    assert (stats.orders, stats.dead_letters) == (8, 0)
    assert [b.row for b in stats.bad] == [7, 8, 9]
    assert len(consume(kafka_bootstrap, orders_topic, 8)) == 8
