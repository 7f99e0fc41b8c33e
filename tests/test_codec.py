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
        "monitor_alert",
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

    original = get_codec("customer_profile")
    codec = pickle.loads(pickle.dumps(original))
    assert codec.version == original.version
    assert codec.current.fingerprint == original.current.fingerprint


def test_profile_written_before_shadow_scores_decodes_with_shadow_null() -> None:
    """customer_profile v1 (before the ``shadow`` field) resolves against v2: shadow is null."""
    codec = get_codec("customer_profile")
    assert codec.version >= 2
    profile = {
        "store_id": "s1",
        "customer_id": "c1",
        "profile_version": 3,
        "order_count": 2,
        "total_spend_minor": 1234,
        "avg_order_value_minor": 617.0,
        "first_order_time": 1_700_000_000_000,
        "last_order_time": 1_700_000_100_000,
        "last_event_time": 1_700_000_200_000,
        "days_since_last_order": 0.5,
        "top_categories": [{"category": "shoes", "spend_minor": 1234, "share": 1.0}],
        "product_views": 1,
        "propensity": 0.25,
        "model": {"name": "m", "version": "4", "scope": "store"},
        "source": [{"topic": "orders", "partition": 0, "first_offset": 5, "last_offset": 7}],
    }
    old = codec.decode(codec.encode(profile, version=1))
    assert old == {**profile, "shadow": None}
    shadow = {"model": {"name": "m", "version": "5", "scope": "global"}, "propensity": 0.5}
    assert codec.decode(codec.encode({**profile, "shadow": shadow}))["shadow"] == shadow
