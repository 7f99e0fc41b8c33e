"""Codec: exact bytes, round trips, evolution from an older writer schema, clear errors."""

from __future__ import annotations

import pytest

from storeml.errors import CodecError, UnknownSchemaError
from storeml.schemas.codec import MAGIC, AvroCodec, get_codec, schema_names

ORDER = {
    "store_id": "s1",
    "customer_id": "c1",
    "order_id": "o1",
    "event_time": 1_700_000_000_000,
    "currency": "EUR",
    "lines": [{"product_id": "p1", "category": "shoes", "quantity": 2, "unit_price_minor": 1999}],
    "channel": "web",
}


def test_exact_bytes_of_current_order_schema() -> None:
    data = get_codec("order_event").encode(ORDER)
    # c301 marker, CRC-64-AVRO fingerprint of order_event v2 (little endian), then the Avro body:
    # "s1" "c1" "o1" zigzag(1700000000000) "EUR" [1 line: "p1" union#1 "shoes" 2 1999] end "web"
    assert data.hex() == (
        "c301"
        "f9d3fd5ee8108add"
        "047331"
        "046331"
        "046f31"
        "80a0abfef962"
        "06455552"
        "02"
        "047031"
        "02"
        "0a73686f6573"
        "04"
        "9e1f"
        "00"
        "06776562"
    )


def test_round_trip_every_schema() -> None:
    assert schema_names() == [
        "customer_profile",
        "dead_letter",
        "order_event",
        "product_event",
        "product_profile",
    ]
    assert get_codec("order_event").decode(get_codec("order_event").encode(ORDER)) == ORDER
    product = {
        "store_id": "s1",
        "product_id": "p9",
        "event_time": 5,
        "kind": "viewed",
        "title": None,
        "description": None,
        "price_minor": None,
        "category": None,
        "customer_id": "c1",
    }
    assert get_codec("product_event").decode(get_codec("product_event").encode(product)) == product


def test_older_writer_resolves_to_current_reader() -> None:
    codec = get_codec("order_event")
    v1 = {k: v for k, v in ORDER.items() if k != "channel"}
    data = codec.encode(v1, version=1)
    assert data[:2] == MAGIC and data[2:10] == codec.versions[1].fingerprint
    assert data[2:10] != codec.current.fingerprint
    assert codec.decode(data) == {**v1, "channel": "unknown"}


def test_errors_are_ours_and_explain() -> None:
    codec = get_codec("order_event")
    with pytest.raises(CodecError, match="not an Avro single-object message"):
        codec.decode(b"{json: true}")
    with pytest.raises(UnknownSchemaError, match="unknown writer schema fingerprint"):
        codec.decode(MAGIC + b"\x00" * 8 + b"\x02")
    with pytest.raises(CodecError, match="corrupt body"):
        codec.decode(codec.encode(ORDER)[:-6])
    with pytest.raises(CodecError, match="tombstone"):
        codec.decode(None)
    with pytest.raises(CodecError, match="cannot encode"):
        codec.encode({**ORDER, "lines": "nope"})
    with pytest.raises(CodecError, match="no schema files"):
        AvroCodec("no_such_schema")


def test_codec_pickles_for_spark_closures() -> None:
    import pickle

    codec = pickle.loads(pickle.dumps(get_codec("customer_profile")))
    assert (
        codec.version == 1
        and codec.current.fingerprint == get_codec("customer_profile").current.fingerprint
    )
