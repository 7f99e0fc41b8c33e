"""What every ``storeml`` subcommand module shares: the settings of the running command."""

from __future__ import annotations

import click

from storeml.errors import StoremlError
from storeml.settings import Settings, load_settings

__all__ = ["settings_of"]


def settings_of(ctx: click.Context) -> Settings:
    """The settings the main command built (``ctx.obj["settings"]``), else loaded now.

    Subcommand groups also run on their own (tests invoke them directly), hence the fallback; a
    bad setting becomes a :class:`click.ClickException` naming the key.
    """
    obj = ctx.find_root().obj
    if isinstance(obj, dict) and isinstance(obj.get("settings"), Settings):
        return obj["settings"]
    try:
        return load_settings()
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
