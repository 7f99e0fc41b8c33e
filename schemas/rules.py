"""What a valid event holds beyond its Avro types: the id charset, money bounds, printable reasons.

Ids (store, customer, product, order) are **1 to 128 characters of** ``A-Z a-z 0-9 . _ ~ @ -``
(:data:`ID_PATTERN`). None of them can appear in the separators storeml builds keys and paths with:
``:`` ``{`` ``}`` of the Redis key ``<prefix>:{<store>}:<kind>:<id>``, ``|`` of the Kafka key
``<store>|<entity>``, ``/`` ``=`` ``%`` of the lake's ``store_id=<store>`` folder (Spark would
unescape ``%xx``), nor whitespace or control characters; so two different (store, id) pairs can
never name the same Redis key, Kafka key or lake folder. The store id
``__HIVE_DEFAULT_PARTITION__`` is refused too: Spark reads that folder name as a null store.

Money is an integer count of minor units; a unit price, a line total (quantity x unit price), an
order total and a product price are each at most :data:`MAX_AMOUNT_MINOR` (10^15 minor units,
ten trillion dollars), so no sum of an order overflows int64, and a customer's lifetime spend has
room for more than 9,000 orders of that size before it could.

These rules are shared by the stream's validation (``models/events.py``) and the producers of
input (``connectors/csv_replay.py``, ``connectors/synthetic.py``), so a replayed file is held to
the same rules as the topic.
"""

from __future__ import annotations

import re

__all__ = [
    "ID_CHARS",
    "ID_MAX_LENGTH",
    "ID_PATTERN",
    "MAX_AMOUNT_MINOR",
    "REASON_MAX_CHARS",
    "id_problem",
    "printable",
]

#: The characters an id may use, as written in error messages and docs.
ID_CHARS = "A-Z a-z 0-9 . _ ~ @ -"
ID_MAX_LENGTH = 128
ID_PATTERN = re.compile(rf"[A-Za-z0-9._~@-]{{1,{ID_MAX_LENGTH}}}", re.ASCII)
MAX_AMOUNT_MINOR = 10**15
#: Longest reason a dead letter carries (longer ones are cut, saying how long they were).
REASON_MAX_CHARS = 1_000
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_SHOWN = 64  # characters of a bad value quoted in a reason


def printable(value: object, limit: int = _SHOWN) -> str:
    """``value`` quoted for an error message: control and invisible characters escaped (repr),
    cut to ``limit`` characters with the full length said, so a reason stays one short line."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    if len(text) > limit + 2:
        return f"{text[:limit]}... ({len(text)} characters)"
    return text


def id_problem(field: str, value: object, store: bool = False) -> str | None:
    """Why ``value`` is not a valid id for ``field`` (naming the field), or None when it is."""
    if value is None or value == "":
        return f"empty {field}"
    if not isinstance(value, str):
        return f"{field} {printable(value)} is not a string"
    if ID_PATTERN.fullmatch(value) is None:
        if len(value) > ID_MAX_LENGTH:
            return f"{field} {printable(value)} is longer than {ID_MAX_LENGTH} characters"
        bad = next((c for c in value if ID_PATTERN.fullmatch(c) is None), "")
        return (
            f"{field} {printable(value)} contains {bad!r}; ids are 1-{ID_MAX_LENGTH} characters of"
            f" {ID_CHARS} (docs/ids.md)"
        )
    if store and value == _HIVE_NULL:
        return f"{field} {value!r} is reserved (Spark reads it as a null partition)"
    return None
