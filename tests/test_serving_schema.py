"""The served OpenAPI document against the live server: schemathesis, and hostile ids by hand.

Schemathesis (its own CLI, as a user would run it) generates valid and invalid requests for every
operation from the served document and checks that no answer is a 5xx, and that every answer's
status, content type and body are the ones the document declares.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from storeml.settings import Settings
from tests.test_serving_api import seeded  # noqa: F401  (the fixture)

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


def _schemathesis(
    server: Any, key: str, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [
            str(binary),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            CHECKS,
            "--max-examples",
            "25",
            "--seed",
            "11",
            "--generation-database",
            "none",
            "--no-color",
            "--output-sanitize",
            "true",
            "--phases",
            "examples,fuzzing,stateful",  # the coverage phase crashes in schemathesis 4.32 on Python 3.11 (AST recursion)
            "--workers",
            "2",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "schemathesis"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path.parent,
    )


def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    seeded: dict,  # noqa: F811
    api_server: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """With models in the registry (so predict answers), as an admin and as a store's key."""
    from storeml.batch.history import train_on_synthetic

    train_on_synthetic(settings, stores=3, events=2_000, seed=3)
    server = api_server(serve_rate_limit=0)
    server.wait_ready()  # the registry answered: predict has its models
    for who, key in (
        ("admin", server.admin_key),
        ("store", server.key("s1", "read,predict,segments")),
    ):
        run = _schemathesis(server, key, tmp_path / who)
        assert run.returncode == 0, who + "\n" + run.stdout[-6000:] + run.stderr[-3000:]
        assert "passed" in run.stdout


HOSTILE = ["{", "}", ":", "|", "a:b", "{s1}", "x|y", " ", "%20", "a" * 129, "a" * 10_000, "é"]


def test_hostile_ids_get_json_errors_never_5xx(
    seeded: dict,  # noqa: F811
    api_server: Any,
    settings: Settings,
) -> None:
    server = api_server(serve_rate_limit=0)
    with server.client(server.admin_key) as api:
        for bad in HOSTILE:
            for path in (
                f"/v1/stores/{bad}/customers/c1",
                f"/v1/stores/s1/customers/{bad}",
                f"/v1/stores/s1/products/{bad}",
            ):
                answer = api.get(path)
                assert answer.status_code in (404, 422), (path, answer.status_code, answer.text)
                assert answer.json()["error"]["code"] in ("not_found", "invalid")
            batch = api.post("/v1/stores/s1/customers:batchGet", json={"ids": [bad]})
            assert batch.status_code == 422, (bad, batch.text)
        # empty ids: an empty path segment is another route (404), an empty listed id is invalid
        assert api.get("/v1/stores/s1/customers/").status_code == 404
        assert api.post("/v1/stores/s1/customers:batchGet", json={"ids": [""]}).status_code == 422
        assert api.post("/v1/stores/s1/customers:batchGet", content=b"{not json").status_code == 422
