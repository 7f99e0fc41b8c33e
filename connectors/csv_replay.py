"""Replay a CSV transaction log into the order topic, with bad rows sent to the dead-letter topic.

A :class:`CsvMapping` names the columns. Each good row becomes one order line; rows are grouped
into one ``OrderEvent`` when an order-id column is mapped (lines of the same order must lie within
``group_window`` rows of each other: logs list an order's lines together, and the window keeps
memory bounded on big files; an order is produced when its group closes, so orders may come out
up to ``group_window`` rows later than their first line). Without an order-id column every row is
an order of one line, with order id ``<file name>-<row>`` (characters ids may not hold replaced by
``_``). Store, customer, product and order ids must follow the stream's id rules
(:mod:`storeml.schemas.rules`; ``error_type="BadId"``), line totals its money bound.

Money is exact: the amount (the unit price) is parsed as a ``Decimal`` and converted to minor
units with ROUND_HALF_UP ("19.99" USD -> 1999, "0.015" -> 2, "1500" JPY -> 1500); no float is
involved. Timestamps are ISO 8601 or epoch seconds/milliseconds/microseconds/nanoseconds
(autodetected by magnitude), or parsed with ``timestamp_format`` (``datetime.strptime``); times
without a zone are UTC.

Bad rows are never dropped silently: :func:`read_csv_events` returns them, and :func:`replay_csv`
returns them in its stats and produces each as a ``dead_letter`` record through
:class:`~storeml.connectors.dead_letter.DeadLetterSink` (``source_topic = "csv:<file name>"``,
``source_partition = 0``, ``source_offset = row``, ``value`` = the raw CSV text of the row, stage
``validate``, ``error_type`` a short code such as ``BadAmount``). A row's
number is the line on which it starts in the file (the header is line 1). The file is streamed
with the ``csv`` module, never loaded whole (except by :func:`read_csv_events`, which returns
lists).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from storeml.connectors.dead_letter import DeadLetterSink
from storeml.connectors.event_producer import EventProducer
from storeml.connectors.synthetic import SyntheticEvent
from storeml.errors import ConfigError, ConnectorError
from storeml.schemas.codec import get_codec
from storeml.schemas.currencies import CURRENCY_EXPONENTS, is_currency
from storeml.schemas.rules import MAX_AMOUNT_MINOR, id_problem, printable

__all__ = [
    "BadRow",
    "CURRENCY_EXPONENTS",
    "CsvMapping",
    "ReplayStats",
    "iter_csv_events",
    "minor_units",
    "parse_timestamp_ms",
    "read_csv_events",
    "replay_csv",
]


log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._~@-]")  # the file name in a generated order id


@dataclass(frozen=True)
class CsvMapping:
    """Which CSV columns hold what. ``customer``, ``timestamp`` and ``amount`` are required.

    ``amount`` is the unit price in major units of ``currency``. Unmapped optional columns take
    defaults: store ``default_store``, product ``"unknown"``, category none, quantity 1, channel
    ``"unknown"``. ``encoding`` is the file's text encoding; rows that do not decode with it are
    bad rows (``error_type="Encoding"``), kept byte for byte in their dead letters.
    """

    customer: str
    timestamp: str
    amount: str
    store: str | None = None
    product: str | None = None
    category: str | None = None
    quantity: str | None = None
    order_id: str | None = None
    channel: str | None = None
    default_store: str = "csv"
    currency: str = "USD"
    timestamp_format: str | None = None
    group_window: int = 1_000
    encoding: str = "utf-8-sig"

    def __post_init__(self) -> None:
        if not is_currency(self.currency):
            raise ConfigError(
                f"CsvMapping: currency {self.currency!r} is not an ISO 4217 code with a minor unit"
                " such as 'USD' (storeml.schemas.currencies)"
            )
        if self.group_window < 1:
            raise ConfigError(f"CsvMapping: group_window={self.group_window} must be >= 1")

    def columns(self) -> dict[str, str]:
        """Mapped role -> column name, for the columns that are mapped."""
        roles = ("customer", "timestamp", "amount", "store", "product", "category", "quantity")
        mapped = {role: getattr(self, role) for role in (*roles, "order_id", "channel")}
        return {role: column for role, column in mapped.items() if column is not None}


@dataclass(frozen=True, slots=True)
class BadRow:
    """A CSV row that could not become an order line: where it is, why, and its raw text."""

    row: int
    error_type: str
    reason: str
    raw: bytes


@dataclass
class ReplayStats:
    """What :func:`replay_csv` did.

    ``rows`` counts data rows (blank lines excepted), ``lines`` the order lines among them,
    ``bad`` lists every rejected row (also dead-lettered if a dead-letter topic was given).
    """

    rows: int = 0
    orders: int = 0
    lines: int = 0
    dead_letters: int = 0
    bad: list[BadRow] = field(default_factory=list)


def minor_units(amount: str, currency: str = "USD") -> int:
    """``amount`` (a decimal string in major units) as an int of minor units, rounded half up.

    Raises ``ValueError`` for text that is not a finite decimal number.
    """
    text = amount.strip()
    if not _NUMBER.match(text):
        raise ValueError(f"amount {amount!r} is not a decimal number like 19.99")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"amount {amount!r} is not a decimal number") from exc
    scaled = value.scaleb(CURRENCY_EXPONENTS.get(currency, 2))
    return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def parse_timestamp_ms(text: str, timestamp_format: str | None = None) -> int:
    """Epoch milliseconds of ``text``: ISO 8601, epoch s/ms/us/ns, or ``timestamp_format``.

    Numbers are read by magnitude: below 1e11 seconds, below 1e14 milliseconds, below 1e17
    microseconds, else nanoseconds. Times without a zone are UTC. Raises ``ValueError``.
    """
    value = text.strip()
    if not value:
        raise ValueError("timestamp is empty")
    if timestamp_format is not None:
        moment = datetime.strptime(value, timestamp_format)
    elif _NUMBER.match(value):
        number = Decimal(value)
        magnitude = abs(number)
        scale = 3 if magnitude < Decimal(10) ** 11 else 0 if magnitude < Decimal(10) ** 14 else -3
        if magnitude >= Decimal(10) ** 17:
            scale = -6
        return int(number.scaleb(scale).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    else:
        iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


class _LineRecorder:
    """Iterates a text file's lines for ``csv.reader`` and remembers the ones not yet claimed."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.pending: list[str] = []

    def __iter__(self) -> _LineRecorder:
        return self

    def __next__(self) -> str:
        line = next(self._handle)
        self.pending.append(line)
        return line

    def take(self) -> tuple[bytes, bool]:
        """The raw text read since the last call, as bytes, and whether it decoded cleanly.

        Undecodable bytes were read as lone surrogates (``surrogateescape``) and are restored.
        """
        raw = "".join(self.pending).rstrip("\r\n")
        self.pending.clear()
        try:
            return raw.encode("utf-8"), True
        except UnicodeEncodeError:
            return raw.encode("utf-8", "surrogateescape"), False


@dataclass(slots=True)
class _Row:
    store_id: str
    customer_id: str
    order_id: str
    event_time: int
    channel: str
    line: dict[str, Any]


@dataclass
class _Order:
    row: int
    store_id: str
    customer_id: str
    order_id: str
    event_time: int
    channel: str
    lines: list[dict[str, Any]]
    last_row: int


def iter_csv_events(path: str | Path, mapping: CsvMapping) -> Iterator[SyntheticEvent | BadRow]:
    """Stream the file, yielding order events (``topic_kind="orders"``) and :class:`BadRow` s.

    Raises :class:`ConnectorError` if the file cannot be read or lacks a mapped column.
    """
    source = Path(path)
    codec = get_codec("order_event")
    try:
        handle = source.open(encoding=mapping.encoding, errors="surrogateescape", newline="")
    except (OSError, LookupError) as exc:
        raise ConnectorError(f"cannot open CSV file {source}: {exc}") from exc
    with handle:
        recorder = _LineRecorder(handle)
        reader = csv.reader(recorder)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ConnectorError(f"{source}: unreadable CSV header: {exc}") from exc
        if not recorder.take()[1]:
            raise ConnectorError(
                f"{source}: header is not valid {mapping.encoding}; set CsvMapping.encoding"
            )
        index = {name.strip(): i for i, name in enumerate(header)}
        missing = [
            f"{role}={column!r}"
            for role, column in mapping.columns().items()
            if column not in index
        ]
        if missing:
            raise ConnectorError(
                f"{source}: mapped column(s) {', '.join(missing)} not in the header"
                f" {[name.strip() for name in header]}; fix the CsvMapping"
            )
        columns = {role: index[column] for role, column in mapping.columns().items()}
        open_orders: OrderedDict[tuple[str, str], _Order] = OrderedDict()
        line_end = reader.line_num
        while True:
            row_number = line_end + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                line_end = reader.line_num
                yield BadRow(row_number, "CsvSyntax", f"malformed CSV: {exc}", recorder.take()[0])
                continue
            line_end = reader.line_num
            raw, clean = recorder.take()
            if not cells or all(not cell.strip() for cell in cells):
                continue  # blank line
            if not clean:
                reason = f"row is not valid {mapping.encoding}; set CsvMapping.encoding"
                yield BadRow(row_number, "Encoding", reason, raw)
                continue
            parsed = _parse_row(cells, columns, mapping, source, row_number)
            if isinstance(parsed, tuple):
                error_type, reason = parsed
                yield BadRow(row_number, error_type, reason, raw)
                continue
            store_id, customer_id, order_id = parsed.store_id, parsed.customer_id, parsed.order_id
            event_time, channel, line = parsed.event_time, parsed.channel, parsed.line
            if mapping.order_id is None:
                yield _event(
                    codec,
                    _Order(
                        row_number,
                        store_id,
                        customer_id,
                        order_id,
                        event_time,
                        channel,
                        [line],
                        row_number,
                    ),
                    mapping.currency,
                )
                continue
            while open_orders:  # close the orders whose window ended, before this row joins one
                oldest = next(iter(open_orders.values()))
                if row_number - oldest.last_row <= mapping.group_window:
                    break
                open_orders.popitem(last=False)
                yield _event(codec, oldest, mapping.currency)
            key = (store_id, order_id)
            order = open_orders.get(key)
            if order is None:
                open_orders[key] = _Order(
                    row_number,
                    store_id,
                    customer_id,
                    order_id,
                    event_time,
                    channel,
                    [line],
                    row_number,
                )
            elif order.customer_id != customer_id:
                yield BadRow(
                    row_number,
                    "CustomerMismatch",
                    f"order {order_id!r} belongs to customer {order.customer_id!r} (row"
                    f" {order.row}) but this row names customer {customer_id!r}",
                    raw,
                )
                continue
            else:
                order.lines.append(line)
                order.last_row = row_number
                order.event_time = min(order.event_time, event_time)
                open_orders.move_to_end(key)
        for order in open_orders.values():
            yield _event(codec, order, mapping.currency)


def _cell(cells: list[str], columns: dict[str, int], role: str) -> str | None:
    position = columns.get(role)
    if position is None:
        return None
    return cells[position].strip() if position < len(cells) else ""


def _parse_row(
    cells: list[str],
    columns: dict[str, int],
    mapping: CsvMapping,
    source: Path,
    row: int,
) -> _Row | tuple[str, str]:
    """The row's fields and order line, or ``(error_type, reason)``."""
    customer = _cell(cells, columns, "customer")
    if not customer:
        return "MissingCustomer", f"missing customer (column {mapping.customer!r})"
    store = _cell(cells, columns, "store")
    if store is None:
        store = mapping.default_store
    elif not store:
        return "MissingStore", f"missing store (column {mapping.store!r})"
    timestamp = _cell(cells, columns, "timestamp") or ""
    try:
        event_time = parse_timestamp_ms(timestamp, mapping.timestamp_format)
    except (ValueError, OverflowError) as exc:
        fmt = mapping.timestamp_format or "ISO 8601 or epoch seconds/millis"
        return "BadTimestamp", f"unparseable timestamp {timestamp!r} (expected {fmt}): {exc}"
    amount = _cell(cells, columns, "amount") or ""
    try:
        price = minor_units(amount, mapping.currency)
    except ValueError:
        return "BadAmount", f"unparseable amount {amount!r} (column {mapping.amount!r})"
    if price < 0:
        return "NegativeAmount", f"negative amount {amount!r} (column {mapping.amount!r})"
    quantity_text = _cell(cells, columns, "quantity")
    quantity = 1
    if quantity_text is not None:
        try:
            quantity = int(quantity_text)
        except ValueError:
            return (
                "BadQuantity",
                f"unparseable quantity {quantity_text!r} (column {mapping.quantity!r})",
            )
        if quantity < 1:
            return "BadQuantity", f"quantity {quantity} < 1 (column {mapping.quantity!r})"
        if quantity >= 2**31:
            return "BadQuantity", f"quantity {quantity} >= 2**31 (column {mapping.quantity!r})"
    product = _cell(cells, columns, "product") or "unknown"
    category = _cell(cells, columns, "category") or None
    channel = _cell(cells, columns, "channel") or "unknown"
    order_id = _cell(cells, columns, "order_id")
    if order_id is None:
        order_id = f"{_UNSAFE_ID.sub('_', source.name)[:100]}-{row}"
    elif not order_id:
        return "MissingOrderId", f"missing order id (column {mapping.order_id!r})"
    for role, value in (
        ("store", store),
        ("customer", customer),
        ("product", product),
        ("order_id", order_id),
    ):
        problem = id_problem(role, value, store=role == "store")
        if problem is not None:
            column = getattr(mapping, role) or "default_store"
            return "BadId", f"{problem} (column {column!r})"
    if price > MAX_AMOUNT_MINOR or quantity * price > MAX_AMOUNT_MINOR:
        return (
            "BadAmount",
            f"line total {quantity} x {price} minor units is above the bound {MAX_AMOUNT_MINOR}"
            f" (amount {printable(amount)}, column {mapping.amount!r})",
        )
    line = {
        "product_id": product,
        "category": category,
        "quantity": quantity,
        "unit_price_minor": price,
    }
    return _Row(store, customer, order_id, event_time, channel, line)


def _event(codec: Any, order: _Order, currency: str) -> SyntheticEvent:
    record = {
        "store_id": order.store_id,
        "customer_id": order.customer_id,
        "order_id": order.order_id,
        "event_time": order.event_time,
        "currency": currency,
        "lines": order.lines,
        "channel": order.channel,
    }
    key = f"{order.store_id}|{order.customer_id}".encode()
    return SyntheticEvent("orders", key, record, codec.encode(record))


def read_csv_events(
    path: str | Path, mapping: CsvMapping
) -> tuple[list[SyntheticEvent], list[BadRow]]:
    """All order events and bad rows of the file, in memory (:func:`iter_csv_events` streams)."""
    events: list[SyntheticEvent] = []
    bad: list[BadRow] = []
    for item in iter_csv_events(path, mapping):
        if isinstance(item, BadRow):
            bad.append(item)
        else:
            events.append(item)
    return events, bad


def replay_csv(
    kafka_config: dict[str, Any],
    path: str | Path,
    mapping: CsvMapping,
    orders_topic: str,
    dead_letter_topic: str | None = None,
) -> ReplayStats:
    """Stream the file into ``orders_topic``; bad rows go to ``dead_letter_topic`` (if given).

    Bad rows are always listed in the returned :class:`ReplayStats`. Returns after every message
    is delivered; raises :class:`ConnectorError` if the file is unusable or a delivery failed.
    """
    source = Path(path)
    producer = EventProducer(kafka_config)
    dead_letters = DeadLetterSink(kafka_config, dead_letter_topic) if dead_letter_topic else None
    stats = ReplayStats()
    try:
        for item in iter_csv_events(source, mapping):
            if isinstance(item, BadRow):
                stats.rows += 1
                stats.bad.append(item)
                if dead_letters is not None:
                    dead_letters.send(
                        source_topic=f"csv:{source.name}",
                        partition=0,
                        offset=item.row,
                        key=None,
                        value=item.raw,
                        stage="validate",
                        error_type=item.error_type,
                        reason=item.reason,
                    )
                    stats.dead_letters += 1
                continue
            producer.send(orders_topic, item.key, item.value)
            lines = len(item.record["lines"]) if item.record is not None else 0
            stats.orders += 1
            stats.lines += lines
            stats.rows += lines
            if stats.orders % 10_000 == 0:
                producer.poll()
        producer.flush()
        if dead_letters is not None:
            dead_letters.flush()
        elif stats.bad:
            log.warning(
                "%s: %d bad row(s) not replayed (first: row %d, %s); pass dead_letter_topic to"
                " keep them in Kafka",
                source,
                len(stats.bad),
                stats.bad[0].row,
                stats.bad[0].reason,
            )
    finally:
        producer.close()
        if dead_letters is not None:
            dead_letters.close()
    return stats
