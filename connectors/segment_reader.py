"""Segments: the entities of one store whose score lies in a range, read from the score index.

The stream's Redis sink keeps a sorted set per store and score (``connectors/redis_sink.py``,
"Score index"): customers by ``propensity``, products by the probability of each predicted
category. This module reads them with one Redis command only, ``ZRANGE ... BYSCORE REV``
(``WITHSCORES``, with ``LIMIT`` for pages), so the API's read-only Redis user needs ``+zrange``
and nothing else.

``min`` and ``max`` are inclusive; None is unbounded.

**Pages** (:meth:`SegmentReader.page`) return ``(items, next_cursor)``; ``next_cursor`` is None
on the last page. Two orders:

* ``order="id"`` (the default): ids ascending. The cursor is the last id, and the next page holds
  the segment's ids after it, so **no id is ever returned twice**, and every entity that is in
  the segment for the whole paging is returned, whatever else moves meanwhile. Each page reads
  the segment's members once (one ``ZRANGE BYSCORE``, O(segment)), so for segments of hundreds of
  thousands of members the export is the cheaper way.
* ``order="score"``: score descending, ties by id descending, for "the top N". The cursor holds
  the last item's ``(score, id)`` and how many entries of that score came at or before it, and
  the next page starts strictly after that ``(score, id)``: an entity whose score does not change
  between the pages is returned exactly once, but one whose score changes may be seen twice or
  not at all (it moved). The count is only a hint for the ``LIMIT`` offset that skips ties of the
  cursor's score: each page checks, inside the one atomic reply, that the skipped part held
  nothing after the cursor, and asks again from offset 0 when it did (ties removed meanwhile).
  So a page is one ``ZRANGE`` of ``limit + 1`` entries, however many entities share a score.

**Exports** (:meth:`SegmentReader.export`) take one snapshot of the segment, a single ``ZRANGE``
without ``LIMIT`` (atomic in Redis), and yield it in chunks: no duplicate and no gap, even while
the stream writes. The snapshot is held in memory (about 100 bytes per member).

:class:`SegmentReader` takes a ``redis.asyncio.Redis`` (the API); :class:`SyncSegmentReader` a
``redis.Redis`` (``storeml segments export``). Both run the same pure planning code
(:func:`_plan_page`), which says which ``ZRANGE`` to send and reads its reply.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any, TypedDict

from storeml.connectors.redis_sink import index_key
from storeml.errors import CodecError, ConnectorError

__all__ = [
    "SEGMENT_FIELDS",
    "EXPORT_CHUNK",
    "SegmentItem",
    "SegmentReader",
    "SyncSegmentReader",
    "segment_key",
    "ORDERS",
    "encode_cursor",
    "decode_cursor",
    "encode_id_cursor",
    "decode_id_cursor",
    "export_header",
    "export_lines",
]

#: The score fields a segment can be taken on, per kind.
SEGMENT_FIELDS = {"customer": ("propensity",), "product": ("category",)}
#: Page orders: ids ascending (consistent while the stream writes), or score descending.
ORDERS = ("id", "score")
#: Items per chunk an export yields.
EXPORT_CHUNK = 1_000


class SegmentItem(TypedDict):
    """One member of a segment: the entity id and its score."""

    id: str
    score: float


#: ``(score, id, ties)``: the last item of a page and how many entries of its score came at or
#: before it in page order.
Cursor = tuple[float, str, int]
#: A ``ZRANGE key top bottom BYSCORE REV LIMIT offset count WITHSCORES`` to send.
_Range = tuple[str, str, str, int, int]


def segment_key(prefix: str, kind: str, store: str, field: str, category: str | None = None) -> str:
    """The sorted set of a segment; raises :class:`CodecError` naming what is wrong."""
    fields = SEGMENT_FIELDS.get(kind)
    if fields is None:
        raise CodecError(f"unknown kind {kind!r}: segments are of customer or product")
    if field not in fields:
        raise CodecError(f"field {field!r}: {kind} segments are taken on {', '.join(fields)}")
    if kind == "product" and not category:
        raise CodecError("category: a product segment needs category=<name>")
    if kind == "customer" and category is not None:
        raise CodecError("category: only product segments take a category")
    return index_key(prefix, kind, store, field, category)


def encode_cursor(cursor: Cursor) -> str:
    """``(score, id, ties)`` as an opaque url-safe string (base64url of JSON, no padding)."""
    score, entity, ties = cursor
    text = json.dumps([repr(float(score)), entity, int(ties)], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> Cursor:
    """Inverse of :func:`encode_cursor`; a cursor this module did not make is a CodecError."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        score_text, entity, ties = json.loads(raw)
        score = float(score_text)
        if (
            not isinstance(score_text, str)
            or not isinstance(entity, str)
            or not isinstance(ties, int)
            or isinstance(ties, bool)
            or ties < 0
            or math.isnan(score)
        ):
            raise ValueError("wrong types")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise CodecError(
            "cursor: not a cursor of this API; pass the next_cursor of the previous page"
        ) from exc
    return score, entity, ties


def encode_id_cursor(entity: str) -> str:
    """The cursor of an id-ordered page: the last id, opaque (base64url of JSON)."""
    text = json.dumps(["id", entity], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def decode_id_cursor(text: str) -> str:
    """Inverse of :func:`encode_id_cursor`; anything else is a CodecError."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        tag, entity = json.loads(raw)
        if tag != "id" or not isinstance(entity, str):
            raise ValueError("not an id cursor")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise CodecError(
            "cursor: not a cursor of this API for order=id; pass the next_cursor of the"
            " previous page (with the same order)"
        ) from exc
    return entity


def _id_query(
    prefix: str,
    kind: str,
    store: str,
    field: str,
    category: str | None,
    low: float | None,
    high: float | None,
    limit: int,
    cursor: str | None,
) -> tuple[str, str, str]:
    """The ``ZRANGE`` (key, top, bottom) of an id-ordered page; bad input is refused first."""
    if limit < 1:
        raise CodecError(f"limit: {limit} is not a positive number of items")
    if cursor is not None:
        decode_id_cursor(cursor)
    key = segment_key(prefix, kind, store, field, category)
    return key, _bound(high, "+inf"), _bound(low, "-inf")


def _id_page(reply: Any, limit: int, cursor: str | None) -> tuple[list[SegmentItem], str | None]:
    """One id-ordered page from the segment's members (a whole-range ``ZRANGE`` reply)."""
    if limit < 1:
        raise CodecError(f"limit: {limit} is not a positive number of items")
    after = decode_id_cursor(cursor) if cursor is not None else None
    rows = sorted(row for row in _rows(reply) if after is None or row[0] > after)
    items = [SegmentItem(id=entity, score=score) for entity, score in rows[:limit]]
    more = len(rows) > limit
    return items, encode_id_cursor(items[-1]["id"]) if more else None


def export_header(format: str) -> bytes:
    """What an export file starts with: ``id,score`` for CSV, nothing for NDJSON."""
    return b"id,score\n" if format == "csv" else b""


def export_lines(chunk: list[SegmentItem], format: str) -> bytes:
    """``chunk`` in an export ``format``: "ndjson" (``{"id","score"}`` per line) or "csv"."""
    if format == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(
            (item["id"], repr(item["score"])) for item in chunk
        )
        return out.getvalue().encode()
    return "".join(_json_line(item) + "\n" for item in chunk).encode()


_json_line = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _bound(value: float | None, infinite: str) -> str:
    if value is None:
        return infinite
    if math.isnan(value):
        raise CodecError("min/max: NaN is no score bound")
    return repr(float(value))


def _rows(reply: Any) -> list[tuple[str, float]]:
    """A ``WITHSCORES`` reply as ``(id, score)`` pairs (bytes or text members, RESP2 or 3)."""
    out = []
    for member, score in reply:
        entity = member.decode() if isinstance(member, bytes) else str(member)
        out.append((entity, float(score)))
    return out


def _after(row: tuple[str, float], cursor: tuple[float, str]) -> bool:
    """Whether ``row`` comes strictly after ``cursor`` in page order (score desc, id desc)."""
    entity, score = row
    return score < cursor[0] or (score == cursor[0] and entity < cursor[1])


def _plan_page(
    key: str, low: float | None, high: float | None, limit: int, cursor: str | None
) -> Generator[_Range, Any, tuple[list[SegmentItem], str | None]]:
    """Yields the ``ZRANGE`` calls of one page, is sent their replies, returns the page."""
    if limit < 1:
        raise CodecError(f"limit: {limit} is not a positive number of items")
    bottom = _bound(low, "-inf")
    top, offset, after = _bound(high, "+inf"), 0, None
    if cursor is not None:
        score, entity, ties = decode_cursor(cursor)
        if high is None or score <= high:  # else every entry in range comes after the cursor
            # start one entry early: that entry must be at or before the cursor (normally the
            # cursor's own), which proves the offset skipped nothing that comes after it
            top, offset, after = repr(score), max(0, ties - 1), (score, entity)
    count = limit + 1 + (1 if offset else 0)
    while True:
        rows = _rows((yield key, top, bottom, offset, count))
        if after is not None and offset > 0 and (not rows or _after(rows[0], after)):
            # ties of the cursor's score went away since: the offset may skip entries
            offset, count = 0, offset + limit + 2
            continue
        skipped = 0
        if after is not None:
            while skipped < len(rows) and not _after(rows[skipped], after):
                skipped += 1
        fresh = rows[skipped:]
        if len(fresh) > limit or len(rows) < count:
            break  # a full page and one more, or the end of the range
        count = skipped + limit + 1  # entries at or before the cursor took the room: ask more
    items = [SegmentItem(id=entity, score=score) for entity, score in fresh[:limit]]
    if len(fresh) <= limit:
        return items, None
    last = items[-1]
    ties = sum(1 for item in items if item["score"] == last["score"])
    if after is not None and last["score"] == after[0]:
        ties += offset + skipped  # the cursor's ties before this page share the score
    return items, encode_cursor((last["score"], last["id"], ties))


def _snapshot_rows(reply: Any) -> Iterator[list[SegmentItem]]:
    rows = _rows(reply)
    for start in range(0, len(rows), EXPORT_CHUNK):
        yield [SegmentItem(id=e, score=s) for e, s in rows[start : start + EXPORT_CHUNK]]


def _failed(what: str, exc: Exception) -> ConnectorError:
    return ConnectorError(f"Redis read of a segment ({what}) failed: {exc}")


class SegmentReader:
    """Segment pages and exports; ``client`` is a ``redis.asyncio.Redis``."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def page(
        self,
        kind: str,
        store: str,
        field: str,
        min: float | None,
        max: float | None,
        limit: int,
        cursor: str | None,
        category: str | None = None,
        order: str = "id",
    ) -> tuple[list[SegmentItem], str | None]:
        """One page of at most ``limit`` items and the cursor of the next (None at the end)."""
        import redis

        if order == "id":
            key, top, bottom = _id_query(
                self.prefix, kind, store, field, category, min, max, limit, cursor
            )
            try:
                reply = await self.client.zrange(
                    key, top, bottom, desc=True, byscore=True, withscores=True
                )
            except redis.RedisError as exc:
                raise _failed(f"{kind} {field} of store {store!r}", exc) from exc
            return _id_page(reply, limit, cursor)
        if order != "score":
            raise CodecError(f"order: {order!r}; expected one of {', '.join(ORDERS)}")
        plan = _plan_page(
            segment_key(self.prefix, kind, store, field, category), min, max, limit, cursor
        )
        try:
            call = next(plan)
            while True:
                key, top, bottom, offset, count = call
                reply = await self.client.zrange(
                    key,
                    top,
                    bottom,
                    desc=True,
                    byscore=True,
                    withscores=True,
                    offset=offset,
                    num=count,
                )
                call = plan.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        except redis.RedisError as exc:
            raise _failed(f"{kind} {field} of store {store!r}", exc) from exc

    async def export(
        self,
        kind: str,
        store: str,
        field: str,
        min: float | None,
        max: float | None,
        category: str | None = None,
    ) -> AsyncIterator[list[SegmentItem]]:
        """The whole segment in chunks of :data:`EXPORT_CHUNK`, from one atomic snapshot.

        The snapshot is read when iteration starts (so a bad request fails on the first chunk).
        """
        import redis

        key = segment_key(self.prefix, kind, store, field, category)
        top, bottom = _bound(max, "+inf"), _bound(min, "-inf")
        try:
            reply = await self.client.zrange(
                key, top, bottom, desc=True, byscore=True, withscores=True
            )
        except redis.RedisError as exc:
            raise _failed(f"{kind} {field} of store {store!r}", exc) from exc
        for chunk in _snapshot_rows(reply):
            yield chunk

    async def start(self) -> None:
        """Nothing to open: the client is the app's (it connects on first use)."""

    async def close(self) -> None:
        """Nothing to close: the app closes its client."""


class SyncSegmentReader:
    """:class:`SegmentReader` for a ``redis.Redis`` (the CLI), same order and cursors."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def page(
        self,
        kind: str,
        store: str,
        field: str,
        min: float | None,
        max: float | None,
        limit: int,
        cursor: str | None,
        category: str | None = None,
        order: str = "id",
    ) -> tuple[list[SegmentItem], str | None]:
        import redis

        if order == "id":
            key, top, bottom = _id_query(
                self.prefix, kind, store, field, category, min, max, limit, cursor
            )
            try:
                reply = self.client.zrange(
                    key, top, bottom, desc=True, byscore=True, withscores=True
                )
            except redis.RedisError as exc:
                raise _failed(f"{kind} {field} of store {store!r}", exc) from exc
            return _id_page(reply, limit, cursor)
        if order != "score":
            raise CodecError(f"order: {order!r}; expected one of {', '.join(ORDERS)}")
        plan = _plan_page(
            segment_key(self.prefix, kind, store, field, category), min, max, limit, cursor
        )
        try:
            call = next(plan)
            while True:
                key, top, bottom, offset, count = call
                reply = self.client.zrange(
                    key,
                    top,
                    bottom,
                    desc=True,
                    byscore=True,
                    withscores=True,
                    offset=offset,
                    num=count,
                )
                call = plan.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        except redis.RedisError as exc:
            raise _failed(f"{kind} {field} of store {store!r}", exc) from exc

    def export(
        self,
        kind: str,
        store: str,
        field: str,
        min: float | None,
        max: float | None,
        category: str | None = None,
    ) -> Iterator[list[SegmentItem]]:
        """The whole segment in chunks, from one atomic snapshot (read before the first chunk)."""
        import redis

        key = segment_key(self.prefix, kind, store, field, category)
        top, bottom = _bound(max, "+inf"), _bound(min, "-inf")
        try:
            reply = self.client.zrange(key, top, bottom, desc=True, byscore=True, withscores=True)
        except redis.RedisError as exc:
            raise _failed(f"{kind} {field} of store {store!r}", exc) from exc
        return _snapshot_rows(reply)
