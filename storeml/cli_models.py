"""``storeml models``: the model lifecycle (see docs/model-packages.md).

``validate`` and ``train`` a model package; ``list`` the registered models; ``promote`` a version
to an alias (``champion`` is served, ``challenger`` scored in shadow); ``compare`` two versions'
per-store test metrics, or with ``--live`` the champion's and challenger's live performance the
monitor measured (:mod:`storeml.cli_models_live`); ``seal`` an older version with its digest.
The registry work lives in :mod:`storeml.connectors.mlflow_registry` and the comparison in
:mod:`storeml.batch.packages`: these commands only print.

Added to the main command with ``main.add_command(models)``; the subcommands use the settings the
main command built (``ctx.obj["settings"]``), or load them when run on their own.
"""

from __future__ import annotations

import json
from typing import Any

import click
from click.core import ParameterSource

from storeml.cli_common import settings_of
from storeml.errors import StoremlError
from storeml.settings import Settings

__all__ = ["models"]


@click.group()
def models() -> None:
    """Model packages and their registered versions: validate, train, list, promote, compare.

    A package is a folder with config.yaml (+ predictor.py, preprocess.py, requirements.txt);
    see docs/model-packages.md.
    """


@models.command("validate")
@click.argument("path", type=click.Path(file_okay=False))
def validate_cmd(path: str) -> None:
    """Check the package at PATH; every problem names the file, the key and the fix."""
    from storeml.models.package import load_package

    try:
        package = load_package(path)
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    config = package.config
    framework = config.model.framework
    what = getattr(framework, "estimator", None) or (
        f"{framework.file}:{framework.class_name}"  # type: ignore[union-attr]
    )
    click.echo(f"ok: {package.path}")
    click.echo(f"  model       {config.model.name} ({config.model.kind}), {what}")
    click.echo(f"  features    {', '.join(package.feature_names)}")
    click.echo(
        f"  prediction  {config.prediction.service} {config.prediction.version}: "
        + ", ".join(f"{o.name} {o.type}" for o in config.prediction.outputs)
    )
    if config.prediction.schedule:
        from datetime import UTC, datetime

        from storeml.models.schedule import next_run

        upcoming = next_run(config.prediction.schedule, datetime.now(UTC).replace(tzinfo=None))
        click.echo(f"  schedule    {config.prediction.schedule} (next run {upcoming} UTC)")
    for warning in package.warnings:
        click.echo(f"  warning: {warning}")


@models.command("train")
@click.argument("path", type=click.Path(file_okay=False))
@click.option(
    "--store", "store_ids", multiple=True, help="Train only this store (repeat for several)."
)
@click.option(
    "--date",
    "cutoff_date",
    default=None,
    help="Training cutoff YYYY-MM-DD (midnight UTC): profiles fold history before it; customer"
    " labels come after it [default: 70% of the history's events lie before the cutoff].",
)
@click.option(
    "--alias",
    default="challenger",
    show_default=True,
    help="Registry alias pointed at the new version.",
)
@click.option("--no-alias", is_flag=True, help="Register the version without an alias.")
@click.option(
    "--from-topics",
    is_flag=True,
    help="Train on the order and product topics instead of synthetic history.",
)
@click.option("--stores", default=50, show_default=True, help="Synthetic history: stores.")
@click.option("--events", default=20_000, show_default=True, help="Synthetic history: events.")
@click.option("--seed", default=7, show_default=True, help="Synthetic history: seed.")
@click.pass_context
def train_cmd(
    ctx: click.Context,
    path: str,
    store_ids: tuple[str, ...],
    cutoff_date: str | None,
    alias: str,
    no_alias: bool,
    from_topics: bool,
    stores: int,
    events: int,
    seed: int,
) -> None:
    """Train the package at PATH from history: one model per store, registered as a version."""
    settings = settings_of(ctx)
    try:
        handle, summary = _train(
            settings,
            path,
            store_ids,
            cutoff_date,
            None if no_alias else alias or None,
            from_topics,
            stores,
            events,
            seed,
        )
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    target = f" -> @{handle.alias}" if handle.alias else ""
    click.echo(f"{handle.name} version {handle.version}{target} (run {handle.run_id})")
    click.echo(json.dumps(summary, sort_keys=True))


def _train(
    settings: Settings,
    path: str,
    store_ids: tuple[str, ...],
    cutoff_date: str | None,
    alias: str | None,
    from_topics: bool,
    stores: int,
    events: int,
    seed: int,
) -> tuple[Any, dict[str, Any]]:
    from storeml.batch.packages import cutoff_from_date, default_cutoff, facts_from_topics
    from storeml.batch.train import train_package
    from storeml.connectors.mlflow_registry import get_client
    from storeml.models.package import load_package

    package = load_package(path)  # fail on a bad package before reading any history
    summary: dict[str, Any] = {}
    if from_topics:
        facts, counts = facts_from_topics(settings)
        summary.update(counts)
        cutoff = default_cutoff(facts)
    else:
        from storeml.batch.history import synthetic_facts

        facts, cutoff = synthetic_facts(stores, events, seed)
    if cutoff_date is not None:
        cutoff = cutoff_from_date(cutoff_date)
    handle = train_package(
        settings, package, facts, cutoff, stores=list(store_ids) or None, alias=alias
    )
    run = get_client(settings.tracking_uri, settings.registry_uri).get_run(str(handle.run_id))
    summary.update({"cutoff_ms": cutoff, **{k: round(v, 4) for k, v in run.data.metrics.items()}})
    return handle, summary


@models.command("list")
@click.argument("contains", required=False, default="")
@click.pass_context
def list_cmd(ctx: click.Context, contains: str) -> None:
    """Registered models (names containing CONTAINS), their versions and aliases."""
    from storeml.connectors.mlflow_registry import list_models

    settings = settings_of(ctx)
    try:
        found = list_models(settings.tracking_uri, settings.registry_uri, contains)
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    if not found:
        where = f" with {contains!r} in the name" if contains else ""
        click.echo(
            f"no registered models{where} in {settings.registry_uri}; train one with"
            " `storeml models train PACKAGE`"
        )
        return
    width = max(len("NAME"), *(len(m.name) for m in found))
    click.echo(f"{'NAME':<{width}}  VERSIONS  LATEST  ALIASES")
    for model in found:
        aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(model.aliases.items())) or "-"
        click.echo(
            f"{model.name:<{width}}  {len(model.versions):>8}  {model.latest or '-':>6}  {aliases}"
        )


@models.command("promote")
@click.argument("name")
@click.option("--version", "version", required=True, help="Version number to point the alias at.")
@click.option(
    "--alias",
    default=None,
    help="Alias to move [default: the alias the stream serves, STOREML_SERVING_ALIAS (champion)].",
)
@click.pass_context
def promote_cmd(ctx: click.Context, name: str, version: str, alias: str | None) -> None:
    """Point ALIAS of model NAME at VERSION; a running stream follows at its next micro-batch."""
    from storeml.connectors.mlflow_registry import promote

    settings = settings_of(ctx)
    target_alias = alias or settings.serving_alias
    try:
        previous, handle = promote(
            settings.tracking_uri, settings.registry_uri, name, version, target_alias
        )
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    old = previous.version if previous is not None else "(none)"
    note = " (unchanged)" if previous is not None and previous.version == handle.version else ""
    click.echo(f"{name}@{target_alias}: version {old} -> {handle.version}{note}")


@models.command("seal")
@click.argument("name")
@click.option("--version", "version", required=True, help="Version number to record a digest for.")
@click.pass_context
def seal_cmd(ctx: click.Context, name: str, version: str) -> None:
    """Record the SHA-256 of version VERSION's index.json (a version registered without one).

    The digest blesses the artifacts as they are now: seal only versions whose files you trust.
    Versions trained by this storeml record theirs at registration.
    """
    from storeml.connectors.mlflow_registry import record_digest

    settings = settings_of(ctx)
    try:
        handle = record_digest(settings.tracking_uri, settings.registry_uri, name, version)
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name} version {handle.version}: storeml.bundle_sha256 = {handle.digest}")


@models.command("compare")
@click.argument("name")
@click.option(
    "--champion",
    default=None,
    help="Alias or version number of the reference [default: STOREML_SERVING_ALIAS (champion)].",
)
@click.option(
    "--challenger",
    default=None,
    help="Alias or version number compared with it [default: the shadow alias,"
    " STOREML_SHADOW_ALIAS (challenger)].",
)
@click.option(
    "--metric",
    default=None,
    help="Test metric to compare [default: auc for customer models, top5_accuracy for product"
    " models]; with --live one of auc, brier, precision, recall, hit1, hit5 [default: auc, or"
    " hit5 for product models].",
)
@click.option(
    "--live",
    is_flag=True,
    help="Compare the live performance the monitor measured (`storeml monitor run`, read from"
    " Redis) per window, instead of the versions' test metrics.",
)
@click.option(
    "--store",
    "store_id",
    default=None,
    help="With --live: one store's windows [default: the figures over all stores].",
)
@click.option(
    "--windows",
    default=12,
    show_default=True,
    type=click.IntRange(min=1),
    help="With --live: show the newest N windows.",
)
@click.option("--json", "as_json", is_flag=True, help="With --live: print JSON instead of a table.")
@click.pass_context
def compare_cmd(
    ctx: click.Context,
    name: str,
    champion: str | None,
    challenger: str | None,
    metric: str | None,
    live: bool,
    store_id: str | None,
    windows: int,
    as_json: bool,
) -> None:
    """Per-store test metrics of NAME's champion and challenger versions, side by side.

    Each version's numbers come from its own test rows (its training's split); a store trained
    by only one version shows '-' on the other side. The last line aggregates the stores both
    versions score.

    With --live: the champion's and the challenger's (shadow) live metrics per window, on the
    same traffic, from the monitor's results in Redis; then totals over the shown windows
    (n-weighted) and which role is better.
    """
    if live:
        if champion is not None or challenger is not None:
            raise click.UsageError(
                "--champion/--challenger pick registry versions; --live compares the roles the"
                " monitor scored (each row names its version)"
            )
        _compare_live(settings_of(ctx), name, store_id, windows, metric, as_json)
        return
    if (
        store_id is not None
        or as_json
        or ctx.get_parameter_source("windows") is not ParameterSource.DEFAULT
    ):
        raise click.UsageError("--store, --windows and --json go with --live")
    from storeml.batch.packages import ALL_STORES, compare_versions
    from storeml.connectors.mlflow_registry import resolve_version

    settings = settings_of(ctx)
    champion_ref = champion or settings.serving_alias
    challenger_ref = challenger or settings.shadow_alias or "challenger"
    try:
        first = resolve_version(settings.tracking_uri, settings.registry_uri, name, champion_ref)
        second = resolve_version(settings.tracking_uri, settings.registry_uri, name, challenger_ref)
        frame = compare_versions(settings, first, second, metric)
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    value = frame.columns[-1].removeprefix("delta_")
    click.echo(
        f"{name}: champion {_ref(champion_ref, first.version)} vs challenger"
        f" {_ref(challenger_ref, second.version)}; metric {value} (higher is better)"
    )
    if first.version == second.version:
        click.echo("  (both name the same version)")
    click.echo(_table(frame, value))
    stores = frame[frame["store_id"] != ALL_STORES]
    delta = stores[f"delta_{value}"].dropna()
    only_champion = stores.loc[stores["challenger_scope"].isna(), "store_id"].tolist()
    only_challenger = stores.loc[stores["champion_scope"].isna(), "store_id"].tolist()
    click.echo(
        f"challenger better in {int((delta > 0).sum())}, worse in {int((delta < 0).sum())},"
        f" equal in {int((delta == 0).sum())} of {len(delta)} stores both score"
    )
    if only_champion:
        click.echo(f"only in the champion: {', '.join(only_champion)}")
    if only_challenger:
        click.echo(f"only in the challenger: {', '.join(only_challenger)}")


def _compare_live(
    settings: Settings,
    name: str,
    store_id: str | None,
    windows: int,
    metric: str | None,
    as_json: bool,
) -> None:
    from storeml.cli_models_live import LIVE_METRICS, live_comparison, live_table
    from storeml.connectors.monitor_store import MonitorStore
    from storeml.models.monitor_results import ALL_STORES

    if metric is not None and metric not in LIVE_METRICS:
        raise click.BadParameter(
            f"{metric!r} is not a live metric; choose one of {', '.join(LIVE_METRICS)}",
            param_hint="--metric",
        )
    store = MonitorStore.from_settings(settings)
    try:
        rows = store.performance_series(name, store_id or ALL_STORES)
        known = [] if rows else [m["name"] for m in store.models()]
    except StoremlError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    where = f"store {store_id}" if store_id else "all stores"
    comparison = live_comparison(rows, windows, metric)
    if as_json:
        out = {"model": name, "store": store_id or ALL_STORES, **comparison}
        if not rows:
            out["message"] = _no_live_rows(settings, name, store_id, known)
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    if not rows:
        click.echo(_no_live_rows(settings, name, store_id, known))
        return
    shown = comparison["windows"]
    click.echo(
        f"{name}: live performance, {where}, the newest {len(shown)} window"
        f"{'s' if len(shown) != 1 else ''} (champion vs challenger on the same traffic)"
    )
    click.echo(live_table(comparison))


def _no_live_rows(settings: Settings, name: str, store_id: str | None, known: list[str]) -> str:
    where = f" for store {store_id}" if store_id else ""
    text = (
        f"no live performance of {name}{where} yet in Redis at {settings.redis.describe()}"
        f" (prefix {settings.redis_prefix!r}); run `storeml monitor run`: it writes a window"
        " once the labels of scored events arrive"
    )
    if known:
        text += f". The monitor has results for: {', '.join(known)}"
    return text


def _ref(ref: str, version: str) -> str:
    return f"version {version}" if ref == version else f"@{ref} (version {version})"


def _table(frame: Any, metric: str) -> str:
    """The comparison as text: '-' for what a version does not have, metrics to 3 decimals."""
    import pandas as pd

    def number(value: Any, digits: int) -> str:
        return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"

    rows = [
        [
            str(row["store_id"]),
            row["champion_scope"] or "-",
            number(row["champion_test"], 0),
            number(row[f"champion_{metric}"], 3),
            row["challenger_scope"] or "-",
            number(row["challenger_test"], 0),
            number(row[f"challenger_{metric}"], 3),
            "-" if pd.isna(row[f"delta_{metric}"]) else f"{row[f'delta_{metric}']:+.3f}",
        ]
        for _, row in frame.iterrows()
    ]
    header = ["store", "champion", "test", metric, "challenger", "test", metric, "delta"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in (0, 1, 4) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])
