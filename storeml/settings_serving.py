"""Settings of the serving API (``storeml serve``) and of its clients, mixed into ``Settings``.

Kept apart from ``storeml/settings.py`` so that the stream's settings module stays readable; the
fields are ordinary ``Settings`` fields (``STOREML_SERVE_PORT``, ``storeml settings`` lists them).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

__all__ = ["ServeSettings"]


class ServeSettings(BaseSettings):
    """The ``serve_*`` fields (and the client's ``api_url`` / ``api_key``)."""

    serve_host: str = Field(default="127.0.0.1", description="Address `storeml serve` binds.")
    serve_port: int = Field(default=8000, ge=0, le=65535, description="Port `storeml serve` binds.")
    serve_auth: bool = Field(
        default=True,
        description="Require an API key on every /v1 request; false treats every request as an"
        " admin's (local experiments only).",
    )
    serve_key_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        description="How long the server trusts a key it looked up; a revoked key is refused"
        " within this time.",
    )
    serve_rate_limit: float = Field(
        default=1000.0,
        ge=0,
        description="Requests per second allowed per API key (token bucket, bursts of twice"
        " that); past it the server answers 429. 0 turns the limit off. Counted per server"
        " process.",
    )
    serve_batch_limit: int = Field(
        default=100, ge=1, le=10_000, description="Most ids in one batchGet or predict request."
    )
    serve_page_limit: int = Field(
        default=1000, ge=1, le=100_000, description="Largest `limit` of one segment page."
    )
    serve_alias_refresh_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the API re-resolves the registry aliases: a promotion is served"
        " at most this long (plus the model's download) after the alias moved.",
    )
    serve_ssl_certfile: Path | None = Field(
        default=None,
        description="TLS certificate (PEM) for `storeml serve`; with serve_ssl_keyfile.",
    )
    serve_ssl_keyfile: Path | None = Field(
        default=None, description="TLS private key (PEM) for `storeml serve`."
    )
    serve_access_log: bool = Field(
        default=False,
        description="Log one line per request (method, route, status, key id; never the key).",
    )
    # --- clients of the API (`storeml lookup --api`, `storeml.client`) ------------------------
    api_url: str | None = Field(
        default=None, description="Base URL of a storeml API for `storeml lookup --api`."
    )
    api_key: SecretStr | None = Field(
        default=None, description="API key the CLI sends to the API (`storeml keys create`)."
    )
