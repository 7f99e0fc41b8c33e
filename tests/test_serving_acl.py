"""The API runs as a read-only Redis user: the ACL lines of docs/serving.md, on a Redis of our own.

The lines are read from the docs, so the docs cannot drift from what works. The API's user serves
the lookups, the segments and the monitoring dashboard (the monitor's results, written as the
default user here, are read by the API's user).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from pydantic import SecretStr

from storeml.connectors.api_keys import ADMIN, KeyStore
from storeml.connectors.monitor_store import MonitorStore
from storeml.connectors.redis_client import RedisTarget
from storeml.connectors.redis_sink import RedisProfileSink
from storeml.settings import Settings
from storeml.stack import RedisServer
from tests.api_server import start_server
from tests.monitor_data import seed
from tests.test_serving_api import customer

DOC = Path(__file__).resolve().parent.parent / "docs" / "serving.md"


def acl_lines(prefix: str) -> dict[str, list[str]]:
    """``{user: ACL SETUSER arguments}`` from the docs, with the docs' prefix replaced."""
    out = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("ACL SETUSER "):
            words = shlex.split(line.replace("~storeml:", f"~{prefix}:"))
            out[words[2]] = words[2:]
    return out


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_api_works_as_the_documented_read_only_user(
    own_redis: RedisServer, settings: Settings, tmp_path: Path
) -> None:
    prefix = settings.redis_prefix
    lines = acl_lines(prefix)
    assert set(lines) == {"storeml-api", "storeml-keys"}, lines
    admin = redis_py.Redis.from_url(own_redis.url)
    passwords = {"storeml-api": "api-secret-1", "storeml-keys": "keys-secret-2"}
    for user, words in lines.items():
        args = [re.sub(r"^>.*", f">{passwords[user]}", w) for w in words]
        admin.execute_command("ACL", "SETUSER", *args)

    sink = RedisProfileSink(own_redis.url, prefix)  # the stream writes as the default user
    sink.write("customer", [customer("s1", n) for n in range(10)], "customer_id")
    sink.close()

    keys_user = RedisTarget(
        own_redis.url, username="storeml-keys", password=SecretStr(passwords["storeml-keys"])
    )
    key, _ = KeyStore(keys_user.connect(), prefix).create("s1", ["read", "segments"])
    admin_key, _ = KeyStore(keys_user.connect(), prefix).create(ADMIN, ["read"])
    monitor = MonitorStore(RedisTarget(own_redis.url), prefix)  # the monitor's results
    seed(monitor, ["s-drift", "s-calm"], drifting="s-drift", windows=4)
    monitor.close()
    with pytest.raises(redis_py.exceptions.NoPermissionError):  # nothing but the key hash
        keys_user.connect().hset(f"{prefix}:{{s1}}:customer:c1", "order_count", "0")

    api_user = settings.model_copy(
        update={
            "redis_url": own_redis.url,
            "redis_username": "storeml-api",
            "redis_password": SecretStr(passwords["storeml-api"]),
        }
    )
    api_target = api_user.redis
    with pytest.raises(redis_py.exceptions.NoPermissionError):  # the API's user cannot write
        api_target.connect().hset(f"{prefix}:{{s1}}:customer:c1", "order_count", "0")

    server = start_server(api_user, tmp_path / "serve.log", admin=False)
    try:
        with server.client(key) as api:
            ready = api.get("/readyz").json()
            assert ready["checks"]["redis"] == "ok", ready
            one = api.get("/v1/stores/s1/customers/c3")
            assert one.status_code == 200, one.text
            batch = api.post("/v1/stores/s1/customers:batchGet", json={"ids": ["c1", "c2", "x"]})
            assert batch.status_code == 200 and batch.json()["missing"] == ["x"], batch.text
            segment: Any = api.get(
                "/v1/stores/s1/segments/customer", params={"field": "propensity", "min": 0}
            )
            assert segment.status_code == 200, segment.text
            assert segment.json()["items"], segment.text
        with server.client(admin_key) as admin_api:  # the dashboard reads <prefix>:monitor:*
            for path, shows in (
                ("/dashboard", "s-drift"),
                ("/dashboard/stores/s-drift", "Jensen-Shannon"),
                ("/dashboard/models/customers-model", "challenger"),
            ):
                page = admin_api.get(path)
                assert page.status_code == 200, (path, page.text[:2000])
                assert shows in page.text, path
    finally:
        server.stop()
    assert passwords["storeml-api"] not in server.output()
