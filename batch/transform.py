"""Batch predictions: score a dataset of entities with each store's current champion, on Spark.

Wiring only; the scoring is the stream's (``models/serving.py``)::

    entities (Parquet, Spark or pandas)
      ──by store, sorted: mapInPandas(score_kind per chunk)──▶ <output>/date=<run date>/store_id=<s>/

* The alias (or version) is resolved **once, on the driver**; the small :class:`ModelHandle` is
  shipped to executors, which open the version through the per-process model cache
  (:func:`storeml.models.store_models.get_model_cache`): each Python worker loads a version and
  each store's model once, however many buckets it scores.
* Rows are placed by a CRC-32 hash of the store id into one task per shuffle partition and sorted
  by store inside it; each task scores chunks of ``task_chunk_rows`` rows (Spark's Arrow batches),
  and ``score_kind`` makes **one predict call per store** (plus one for the stores served by the
  global fallback) per chunk. A task's memory is a chunk, however large the dataset.
* Output: Parquet, partitioned by ``date`` (the run date) and ``store_id``. Each file holds the
  entity key (``customer_id`` / ``product_id``), the prediction (``propensity``, or
  ``predicted_categories``: up to five ``{category, probability, rank}`` for uncategorised
  products, ``[]`` for the others) and ``model`` (``{name, version, scope}``: which version scored
  the row and whether the store's own model, the global fallback or none did). ``date`` and
  ``store_id`` live in the folder names only, as Hive partitioning does.
* A run **replaces the whole ``date=`` partition it writes**: the result is written to
  ``<output>/_staging/`` and swapped in by two renames, so a re-run of a date never duplicates rows
  and never leaves a store of the earlier run behind. Readers skip ``_``-prefixed folders. Two
  runs writing the same date at once are not supported (the scheduler's lock files prevent it);
  a crash between the two renames leaves the old partition under ``_staging/``.
* A run of one **store group** (``store_group``: the stores whose CRC-32 bucket of ``n`` is
  ``k - 1``, the state buckets of :func:`storeml.models.events.bucket_of`) scores only that
  group's stores and replaces only that group's ``store_id=`` folders of the date (each by the
  same two renames; a store of the group that is gone is removed): the other groups' folders are
  left as they are, so the ``n`` groups together give the rows of one ungrouped run. Groups of
  one date may run at once; an ungrouped run of the date must not run with them (the lock files
  of ``storeml schedule run-job`` see to it).

The input's profile fields are what the models read (``models/features.py``); other columns are
ignored, and served fields already present (``propensity``, ``model``, ``shadow``, e.g. in a
recompute's ``--output``) are recomputed, never copied.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pyspark.accumulators import AccumulatorParam

from storeml.errors import ConfigError, ConnectorError, ModelError
from storeml.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from storeml.connectors.mlflow_registry import ModelHandle

__all__ = [
    "StoreGroup",
    "TransformSummary",
    "batch_transform",
    "KEYS",
    "OUTPUT_FIELD",
    "output_schema",
    "read_predictions",
]

#: Entity key column of each kind.
KEYS = {"customer": "customer_id", "product": "product_id"}
#: The prediction column of each kind (the profile's served field).
OUTPUT_FIELD = {"customer": "propensity", "product": "predicted_categories"}
_OUTPUT_TYPE = {
    "customer": "double",
    "product": "array<struct<category:string,probability:double,rank:int>>",
}
_MODEL_TYPE = "struct<name:string,version:string,scope:string>"
#: Profile fields that are model outputs or provenance: never read as model input.
_NOT_INPUT = {"propensity", "predicted_categories", "model", "shadow", "source"}
_PROFILE_SCHEMA = {"customer": "customer_profile", "product": "product_profile"}


def output_schema(kind: str) -> str:
    """Spark DDL of the rows scored per bucket: ``store_id``, the key, the prediction, ``model``."""
    return (
        f"store_id string, {KEYS[kind]} string, {OUTPUT_FIELD[kind]} {_OUTPUT_TYPE[kind]},"
        f" model {_MODEL_TYPE}"
    )


@dataclass(frozen=True)
class StoreGroup:
    """Group ``index`` (1..``count``) of a package's stores, by the stores' CRC-32 bucket."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ConfigError(
                f"store group {self.index}/{self.count} does not exist; write K/N with"
                " 1 <= K <= N, e.g. 1/4"
            )

    @classmethod
    def parse(cls, text: str) -> StoreGroup:
        """``"K/N"`` (group K of N)."""
        index, slash, count = text.strip().partition("/")
        if not (slash and index.isdigit() and count.isdigit()):
            raise ConfigError(f"store group {text!r} is not K/N; write e.g. 2/4 (group 2 of 4)")
        return cls(int(index), int(count))

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def contains(self, store_id: str) -> bool:
        from storeml.models.events import bucket_of

        return bucket_of(store_id, self.count) == self.index - 1


def _store_bucket(buckets: int) -> Any:
    """The Spark column of each row's store bucket: :func:`storeml.models.events.bucket_of`."""
    from pyspark.sql import functions as F

    return F.pmod(F.crc32(F.col("store_id").cast("binary")), F.lit(buckets))


@dataclass
class TransformSummary:
    """What one batch transform wrote (counted from the written files)."""

    kind: str
    model: str
    version: str
    alias: str
    run_date: str
    output: str
    rows: int
    stores: int
    seconds: float
    scopes: dict[str, int] = field(default_factory=dict)
    max_chunk_rows: int = 0  # the most rows one scoring call held
    store_group: str = ""  # "K/N" when one store group was scored

    @property
    def partition(self) -> str:
        """The ``date=`` folder this run wrote (replaced as a whole, or its group's stores)."""
        return f"{self.output.rstrip('/')}/date={self.run_date}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        """Two human lines: what was scored by which version, and where it went."""
        scopes = ", ".join(f"{scope} {n:,}" for scope, n in sorted(self.scopes.items()))
        return (
            f"batch-transform {self.kind}: {self.rows:,} rows in {self.stores:,} stores scored by"
            f" {self.model} version {self.version} (@{self.alias}) in {self.seconds:.1f}s"
            f" (scope: {scopes or 'no rows'})\n"
            f"written to {self.partition}"
            + (f" (store group {self.store_group})" if self.store_group else "")
        )


def _run_date(value: date | str | None) -> str:
    if value is None:
        return datetime.now(UTC).date().isoformat()
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(str(value).strip()).isoformat()
    except ValueError as exc:
        raise ConfigError(
            f"run date {value!r} is not a date; write YYYY-MM-DD, e.g. 2024-05-01"
        ) from exc


def _input_frame(spark: SparkSession, entities: Any, kind: str) -> tuple[DataFrame, str]:
    """``entities`` as a Spark DataFrame, and how to name it in messages."""
    from pyspark.sql import DataFrame

    if isinstance(entities, DataFrame):
        return entities, "the input DataFrame"
    if isinstance(entities, pd.DataFrame):
        return _from_pandas(spark, entities, kind), "the input pandas DataFrame"
    if isinstance(entities, str | Path):
        folder = Path(entities)
        if "://" not in str(entities):
            if (folder / kind).is_dir():  # a recompute --output folder: take its <kind>/ part
                folder = folder / kind
            if not folder.exists():
                raise ConfigError(
                    f"batch transform input {folder} does not exist; pass a Parquet file or folder"
                    f" of {kind} entities (e.g. the '{kind}' folder of `storeml recompute --output`)"
                )
        try:
            return spark.read.parquet(str(folder)), str(folder)
        except Exception as exc:  # AnalysisException: no Parquet there
            raise ConnectorError(
                f"cannot read Parquet {kind} entities from {folder}: {_first_line(exc)}; pass a"
                " folder of Parquet files with at least store_id and"
                f" {KEYS[kind]} columns"
            ) from exc
    raise ConfigError(
        f"batch transform entities of type {type(entities).__name__}: pass a Spark DataFrame, a"
        " pandas DataFrame or the path of a Parquet dataset"
    )


def _from_pandas(spark: SparkSession, frame: pd.DataFrame, kind: str) -> DataFrame:
    """A Spark DataFrame of ``frame``'s profile fields, typed as the profile's Avro schema.

    Typing from the schema (not by inference) keeps all-null columns and nested lists intact.
    """
    import pyarrow as pa

    from storeml.schemas.arrow import arrow_schema

    fields = [
        f
        for f in arrow_schema(_PROFILE_SCHEMA[kind])
        if f.name in frame.columns and f.name not in _NOT_INPUT
    ]
    try:
        table = pa.Table.from_arrays(
            [pa.array(frame[f.name], type=f.type, from_pandas=True) for f in fields],
            schema=pa.schema([f.with_nullable(True) for f in fields]),
        )
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ConfigError(
            f"the input pandas DataFrame does not hold {kind} profiles: {exc}; give the columns"
            f" the {_PROFILE_SCHEMA[kind]} schema's types (schemas/avro/)"
        ) from exc
    return spark.createDataFrame(table)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _executor_error(exc: BaseException) -> str:
    """The Python error an executor raised, without the JVM and worker stack traces."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error:" in line or "Exception:" in line:
            return line
    return _first_line(exc)


def _check_columns(frame: DataFrame, kind: str, label: str) -> list[str]:
    """The input columns the model reads; ConfigError when a key or every feature is missing."""
    from storeml.schemas.arrow import arrow_schema

    key = KEYS[kind]
    present = set(frame.columns)
    missing = [c for c in ("store_id", key) if c not in present]
    profile = [f.name for f in arrow_schema(_PROFILE_SCHEMA[kind]) if f.name not in _NOT_INPUT]
    inputs = [c for c in profile if c in present]
    if missing or len(inputs) <= 2:
        what = f"no column {', '.join(missing)}" if missing else "no profile field to score"
        raise ConfigError(
            f"{label} has {what} (columns: {', '.join(sorted(present)) or 'none'}); {kind}"
            f" entities need store_id, {key} and the {_PROFILE_SCHEMA[kind]} fields the model"
            f" reads: {', '.join(c for c in profile if c not in ('store_id', key))}"
        )
    return inputs


class _Max(AccumulatorParam[int]):
    """Accumulator parameter: the largest value any task saw."""

    def zero(self, value: int) -> int:
        return 0

    def addInPlace(self, value1: int, value2: int) -> int:  # noqa: N802 (Spark's name)
        return max(value1, value2)


def _score_chunks(
    largest: Any,
    kind: str,
    handle: ModelHandle,
    model_name: str,
    tracking_uri: str,
    registry_uri: str,
    cache_size: int,
) -> Any:
    """mapInPandas function: chunks of entities -> key, prediction, model (executor side).

    Captures plain values only; the model cache is reached inside, once per worker process.
    """
    columns = ["store_id", KEYS[kind], OUTPUT_FIELD[kind], "model"]

    def run(frames: Any) -> Any:
        from storeml.models.serving import Scorer, score_kind
        from storeml.models.store_models import get_model_cache

        bundle = get_model_cache(cache_size).bundle(handle, tracking_uri, registry_uri)
        for frame in frames:
            if len(frame):
                largest.add(len(frame))
                scored = score_kind(
                    kind, frame, Scorer(bundle, handle), None, model_name=model_name
                )
                yield scored[columns]

    return run


def batch_transform(
    spark: SparkSession,
    settings: Settings,
    entities: DataFrame | pd.DataFrame | str | Path,
    *,
    kind: str,
    model_name: str | None = None,
    alias: str = "champion",
    output: str | Path,
    run_date: date | str | None = None,
    buckets: int | None = None,
    store_group: StoreGroup | None = None,
) -> TransformSummary:
    """Score ``entities`` with ``model_name@alias`` and write them under ``output``; see the module.

    ``kind`` is "customer" or "product"; ``model_name`` defaults to the setting of that kind
    (``STOREML_CUSTOMER_MODEL`` / ``STOREML_PRODUCT_MODEL``); ``alias`` may also be a version
    number. ``entities`` is a Spark DataFrame, a pandas DataFrame or a Parquet path (a folder of
    a recompute's ``--output`` is read from its ``<kind>/`` folder). ``run_date`` (default: today,
    UTC) names the ``date=`` partition, which is replaced as a whole. ``buckets`` (default: the
    shuffle partitions) is the number of scoring tasks; each scores ``task_chunk_rows`` rows at a
    time. With ``store_group`` only that group's stores are scored, and only their folders of
    the date are replaced (see the module).

    Raises :class:`ModelError` when the model, alias or version does not exist (naming what
    does) or scoring fails, :class:`ConfigError` for an input without the key columns or with
    null keys, :class:`ConnectorError` when the input cannot be read or the output written.
    """
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F

    from storeml.connectors.mlflow_registry import resolve_version

    if kind not in KEYS:
        raise ConfigError(f"kind {kind!r} is not a model kind; use 'customer' or 'product'")
    started = time.perf_counter()
    day = _run_date(run_date)
    name = model_name or (settings.customer_model if kind == "customer" else settings.product_model)
    handle = resolve_version(settings.tracking_uri, settings.registry_uri, name, alias)
    frame, label = _input_frame(spark, entities, kind)
    inputs = _check_columns(frame, kind, label)
    key = KEYS[kind]
    frame = frame.select(*inputs)
    if frame.where(F.col("store_id").isNull() | F.col(key).isNull()).limit(1).count():
        raise ConfigError(
            f"{label} has rows with a null store_id or {key}; predictions are stored by store and"
            " entity, so drop or fix those rows first"
        )
    if store_group is not None:  # after the null check: a null store_id has no bucket
        frame = frame.where(_store_bucket(store_group.count) == store_group.index - 1)
    tasks = buckets or settings.shuffle_partitions
    # Rows of a store meet in one task, sorted by store (Spark's sort spills), and each task scores
    # Arrow-batch-sized chunks: one predict call per store and chunk, memory bounded by the chunk.
    placed = (
        frame.withColumn("_bucket", _store_bucket(tasks))
        .repartition(tasks, "_bucket")
        .sortWithinPartitions("store_id")
        .drop("_bucket")
    )
    largest = spark.sparkContext.accumulator(0, _Max())
    scored_frame = placed.mapInPandas(
        _score_chunks(
            largest,
            kind,
            handle,
            name,
            settings.tracking_uri,
            settings.registry_uri,
            settings.model_cache_size,
        ),
        output_schema(kind),
    )
    root = str(output).rstrip("/")
    staging = f"{root}/_staging/date={day}-{uuid.uuid4().hex}"
    spark.sparkContext.setJobDescription(f"storeml batch-transform {kind} {name}@{alias} {day}")
    files = _HadoopFiles(spark)
    batch_rows = "spark.sql.execution.arrow.maxRecordsPerBatch"
    previous = spark.conf.get(batch_rows) or "10000"
    spark.conf.set(batch_rows, str(settings.task_chunk_rows))
    try:
        scored_frame.write.mode("error").partitionBy("store_id").parquet(staging)
        written = spark.read.schema(output_schema(kind)).parquet(staging)
        counts = written.groupBy("model.scope").agg(F.count("*").alias("rows")).collect()
        stores = written.select("store_id").distinct().count()
        if store_group is None:
            files.swap(staging, f"{root}/date={day}")
        else:
            files.swap_stores(staging, f"{root}/date={day}", store_group)
    except (PySparkException, Py4JError) as exc:
        files.delete(staging)
        message = _executor_error(exc)
        if "ModelError" in message:
            raise ModelError(
                f"scoring with {name} version {handle.version} failed: {message}"
            ) from exc
        raise ConnectorError(
            f"batch transform of {label} with {name} version {handle.version} to {root} failed:"
            f" {message}"
        ) from exc
    finally:
        spark.conf.set(batch_rows, previous)
        spark.sparkContext.setJobDescription(None)  # type: ignore[arg-type]
    return TransformSummary(
        kind=kind,
        model=name,
        version=handle.version,
        alias=alias,
        run_date=day,
        output=root,
        rows=sum(int(row["rows"]) for row in counts),
        stores=int(stores),
        seconds=time.perf_counter() - started,
        scopes={str(row["scope"]): int(row["rows"]) for row in counts},
        max_chunk_rows=int(largest.value),
        store_group=store_group.label if store_group is not None else "",
    )


class _HadoopFiles:
    """Renames and deletes through Spark's Hadoop filesystem, so any output URI Spark writes works."""

    def __init__(self, spark: SparkSession) -> None:
        jvm: Any = getattr(spark, "_jvm", None)
        if jvm is None:
            raise ConnectorError(
                "batch transform swaps its output folders through the Spark driver's Hadoop"
                " filesystem, which a Spark Connect session does not expose; use a classic"
                " session (storeml.streams.spark_session.get_spark)"
            )
        self._path = jvm.org.apache.hadoop.fs.Path
        self._conf = spark._jsc.hadoopConfiguration()  # type: ignore[attr-defined]

    def _fs(self, path: str) -> tuple[Any, Any]:
        target = self._path(path)
        return target.getFileSystem(self._conf), target

    def delete(self, path: str) -> None:
        try:
            fs, target = self._fs(path)
            fs.delete(target, True)
        except Exception:  # best effort: leftovers under _staging are ignored by readers
            pass

    def swap(self, staging: str, final: str) -> None:
        """Put ``staging`` at ``final``, replacing what was there (two renames)."""
        fs, source = self._fs(staging)
        _, target = self._fs(final)
        old = self._path(f"{staging}-replaced")
        if fs.exists(target) and not fs.rename(target, old):
            raise ConnectorError(
                f"cannot move the previous {final} aside to {old}; check permissions on the"
                " output folder"
            )
        if not fs.rename(source, target):
            raise ConnectorError(
                f"cannot rename {staging} to {final}; the previous partition is kept at {old}:"
                " move it back by hand, or re-run"
            )
        fs.delete(old, True)
        self._drop_if_empty(fs, source.getParent())

    @staticmethod
    def _drop_if_empty(fs: Any, folder: Any) -> None:
        try:
            if len(fs.listStatus(folder)) == 0:
                fs.delete(folder, False)
        except Exception:  # another run may be writing there: leave the folder
            pass

    def swap_stores(self, staging: str, final: str, group: StoreGroup) -> None:
        """Put each ``store_id=`` folder of ``staging`` into ``final``, replacing the group's.

        Folders of ``final`` whose store is in ``group`` but not in ``staging`` are deleted;
        every other folder of ``final`` is left alone. ``staging`` is deleted at the end.
        """
        fs, source = self._fs(staging)
        _, target = self._fs(final)
        written = {
            status.getPath().getName()
            for status in fs.listStatus(source)
            if status.isDirectory() and _store_of(status.getPath().getName()) is not None
        }
        if not fs.exists(target) and not fs.mkdirs(target):
            raise ConnectorError(f"cannot create {final}; check permissions on the output folder")
        for status in fs.listStatus(target):
            name = status.getPath().getName()
            store = _store_of(name)
            if store is not None and name not in written and group.contains(store):
                fs.delete(status.getPath(), True)  # a store of this group that is gone
        for name in sorted(written):
            self.swap(f"{staging}/{name}", f"{final}/{name}")
        fs.delete(source, True)
        self._drop_if_empty(fs, source.getParent())


def _store_of(folder_name: str) -> str | None:
    """The store id of a ``store_id=<escaped id>`` folder (Hive escapes characters as %XX)."""
    from urllib.parse import unquote

    prefix = "store_id="
    return unquote(folder_name[len(prefix) :]) if folder_name.startswith(prefix) else None


def read_predictions(path: str | Path, kind: str) -> pd.DataFrame:
    """Every prediction row under ``path`` (an ``output`` root or one ``date=`` folder), as pandas.

    ``date`` and ``store_id`` come back as string columns (from the folder names).
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    root = Path(path)
    partitions = (
        pa.schema([("store_id", pa.string())])
        if root.name.startswith("date=")
        else pa.schema([("date", pa.string()), ("store_id", pa.string())])
    )
    dataset = ds.dataset(
        root, format="parquet", partitioning=ds.partitioning(partitions, flavor="hive")
    )
    return dataset.to_table().to_pandas()
