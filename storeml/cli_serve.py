"""``storeml serve`` (the API under uvicorn) and ``storeml keys`` (its API keys)."""

from __future__ import annotations

import json

import click

from storeml.cli_common import settings_of
from storeml.errors import StoremlError

__all__ = ["serve_cmd", "keys_group"]


def _fail(exc: StoremlError) -> click.ClickException:
    from storeml.redaction import redact_url

    return click.ClickException(redact_url(str(exc)))


@click.command("serve")
@click.option(
    "--host",
    envvar="STOREML_SERVE_HOST",
    show_envvar=True,
    help="Bind address [default: 127.0.0.1].",
)
@click.option(
    "--port", type=int, envvar="STOREML_SERVE_PORT", show_envvar=True, help="Port [default: 8000]."
)
@click.option(
    "--print-openapi",
    is_flag=True,
    help="Print the OpenAPI document (as kept in docs/openapi.json) and exit.",
)
@click.pass_context
def serve_cmd(ctx: click.Context, host: str | None, port: int | None, print_openapi: bool) -> None:
    """Run the serving API: lookups, real-time predict, segments (docs/serving.md).

    TLS: set STOREML_SERVE_SSL_CERTFILE and STOREML_SERVE_SSL_KEYFILE (PEM files), which go to
    uvicorn's ssl options.
    """
    from storeml.serving.app import create_app, openapi_document

    settings = settings_of(ctx)
    if print_openapi:
        click.echo(json.dumps(openapi_document(settings), indent=2, sort_keys=True))
        return
    import uvicorn

    try:
        app = create_app(settings)
    except StoremlError as exc:
        raise _fail(exc) from exc
    config = uvicorn.Config(
        app,
        host=host or settings.serve_host,
        port=port if port is not None else settings.serve_port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # the app's own access log names the key id, never the key
        log_level="info",
        ssl_certfile=str(settings.serve_ssl_certfile) if settings.serve_ssl_certfile else None,
        ssl_keyfile=str(settings.serve_ssl_keyfile) if settings.serve_ssl_keyfile else None,
        server_header=False,
    )
    uvicorn.Server(config).run()


@click.group("keys")
def keys_group() -> None:
    """API keys of the serving API: one store (or every store, --admin), with scopes."""


def _store(ctx: click.Context):  # type: ignore[no-untyped-def]
    from storeml.connectors.api_keys import KeyStore

    settings = settings_of(ctx)
    return KeyStore(settings.redis.connect(socket_timeout=10), settings.redis_prefix)


@keys_group.command("create")
@click.option("--store", help="The store the key may read (omit with --admin).")
@click.option("--admin", is_flag=True, help="A key for every store and scope.")
@click.option(
    "--scope",
    default="read",
    show_default=True,
    help="Comma-separated scopes: read, predict, segments.",
)
@click.option("--label", help="A note shown by `storeml keys list` (who holds the key).")
@click.pass_context
def keys_create(
    ctx: click.Context, store: str | None, admin: bool, scope: str, label: str | None
) -> None:
    """Create a key and print it once (only its sha256 is stored)."""
    from storeml.connectors.api_keys import ADMIN, SCOPES

    if admin == bool(store):
        raise click.UsageError("give exactly one of --store S or --admin")
    scopes = list(SCOPES) if admin else [s.strip() for s in scope.split(",") if s.strip()]
    try:
        key, record = _store(ctx).create(ADMIN if admin else str(store), scopes, label)
    except StoremlError as exc:
        raise _fail(exc) from exc
    click.echo(key)
    click.echo(
        f"key id {record.key_id}: store {record.store}, scopes {','.join(sorted(record.scopes))}"
        " (shown once; keep it secret)",
        err=True,
    )


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List keys (ids, stores, scopes, dates; never the keys)."""
    try:
        records = _store(ctx).list()
    except StoremlError as exc:
        raise _fail(exc) from exc
    for record in records:
        if as_json:
            click.echo(json.dumps(record.as_dict(), sort_keys=True))
        else:
            state = f"revoked {record.revoked}" if record.revoked else "active"
            click.echo(
                f"{record.key_id}  store={record.store}  scopes={','.join(sorted(record.scopes))}"
                f"  created={record.created}  {state}  {record.label or ''}".rstrip()
            )


@keys_group.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by its id (refused by the server within serve_key_cache_seconds)."""
    try:
        record = _store(ctx).revoke(key_id)
    except StoremlError as exc:
        raise _fail(exc) from exc
    click.echo(f"revoked {record.key_id} (store {record.store}) at {record.revoked}")
