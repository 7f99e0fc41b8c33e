"""Scoring benchmark: customer scoring throughput from 10 to 100,000 stores, fast path on and off.

Run from the repository root (about ten minutes at the default sizes, most of it writing the
100,000-store bundle and the per-store baseline at 100,000 stores)::

    .venv/bin/python -m bench.scoring_bench
    .venv/bin/python -m bench.scoring_bench --stores 10,1000 --batches 3 --skip-alias
    .venv/bin/python -m bench.scoring_bench --json /tmp/scoring.json --workdir /tmp/sb --keep

What it measures, per store count (``--stores``):

* **models** small customer propensity models: ``make_customer_estimator`` (StandardScaler +
  LogisticRegression, what ``fit_customer_models`` trains) fitted on synthetic features. Fitting
  100,000 of them would take minutes, so ``--templates`` models are fitted on bootstrap samples
  and every store's model is a copy of one of them with its coefficients and intercept perturbed
  (still a fitted pipeline). The bundle is written by the real ``write_bundle``: one joblib file
  per store, the global model, ``index.json`` and the linear table it derives and checks. The
  ``--without-model`` tail of the stores (least traffic) has no model of its own and falls back
  to the global model, as small stores do after training;
* **scoring** one fresh child process per store count and path, so memory and caches never carry
  over: it opens the bundle through a ``ModelCache`` (``--cache-size`` store models in memory,
  the stream's default), then scores ``--batches`` micro-batches of ``--rows`` customer profiles
  with ``score_customers``; each row's store is drawn from a power law (weight ``1/rank^skew``).
  Profiles are generated before the clock starts. Batch 1 is **cold** (opens the bundle and
  reads the table or the store files it needs); **warm** is the rate over the other batches;
* **paths** ``fast``: the linear table (one numpy expression for all stores); ``per-store``: the
  same bundle with the table switched off (``ModelCache(vectorise=False)``), one
  ``predict_proba`` per store and a joblib load per cache miss, as before the table existed;
* **peak RSS** of each child (``ru_maxrss`` from ``os.wait4``, so cases never mix);
* **alias move** (``--skip-alias`` to skip): MLflow on SQLite in the work folder, two registered
  versions of a ``--alias-stores`` bundle; a thread scores ``--alias-rows``-row batches in a loop,
  resolving the alias before each batch (as the stream's driver does) and opening the version
  through the cache; the main thread moves the alias and times the move to the end of the first
  batch scored by the new version. Registry and cache level, not the Spark stream.

Nothing here asserts a time: the script prints numbers (``--json`` also writes them) next to the
targets: warm rows/s at the largest store count at least ``TARGET_RATIO`` of the smallest, and
peak RSS under ``TARGET_RSS_BYTES``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit

__all__ = [
    "TARGET_RATIO",
    "TARGET_RSS_BYTES",
    "PATHS",
    "build_parser",
    "main",
    "run",
    "write_store_bundle",
    "profile_batch",
    "score_case",
    "alias_move",
    "format_report",
]

#: Warm rows/s at the largest store count must be at least this share of the smallest.
TARGET_RATIO = 0.5
#: Peak resident memory of a scoring process.
TARGET_RSS_BYTES = 2 * 1024**3

#: Scoring paths: the linear table, and the per-store predict_proba baseline.
PATHS = ("fast", "per-store")

_T0 = time.perf_counter()


def _say(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def _store_id(i: int) -> str:
    return f"store-{i:06d}"


# --- synthetic profiles and models --------------------------------------------------------------
def profile_batch(rng: np.random.Generator, store_ids: np.ndarray) -> Any:
    """One customer profile row per entry of ``store_ids`` (the columns the stream publishes)."""
    import pandas as pd

    n = len(store_ids)
    orders = rng.poisson(2.0, n)
    ordered = orders > 0
    shares = rng.uniform(size=n)
    return pd.DataFrame(
        {
            "store_id": store_ids,
            "customer_id": np.char.add("c", np.arange(n).astype(str)),
            "order_count": orders,
            "total_spend_minor": orders * rng.integers(100, 20_000, n),
            "avg_order_value_minor": np.where(ordered, rng.integers(100, 20_000, n), np.nan),
            "first_order_time": np.where(ordered, 1.0e12, np.nan),
            "last_order_time": np.where(ordered, 1.0e12 + 5.0e9, np.nan),
            "last_event_time": 1.0e12 + rng.uniform(0, 1.0e10, n),
            "days_since_last_order": np.where(ordered, rng.uniform(0, 400, n), np.nan),
            "product_views": rng.poisson(6.0, n),
            "top_categories": [
                [{"category": "toys", "spend_minor": 100, "share": float(s)}] if o else []
                for s, o in zip(shares.tolist(), ordered.tolist(), strict=True)
            ],
        }
    )


def _training_set(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    from storeml.models.features import customer_features

    stores = np.full(n, "t", dtype=object)
    x = customer_features(profile_batch(rng, stores)).to_numpy(dtype="float64")
    logit = 0.6 * x[:, 0] - 0.01 * x[:, 3] + 0.4 * x[:, 6] + 0.8 * x[:, 8] - 1.5
    y = (logit + rng.logistic(size=n) > 0).astype("int64")
    return x, y


class _PerturbedModels(Mapping[str, Any]):
    """Store id -> a template model with perturbed coefficients, built on access (not kept)."""

    def __init__(self, templates: list[Any], stores: list[str], seed: int) -> None:
        self.templates = templates
        self.stores = stores
        self.seed = seed

    def __getitem__(self, store: str) -> Any:
        i = int(store.rsplit("-", 1)[1])
        rng = np.random.default_rng([self.seed, i])
        model = copy.deepcopy(self.templates[i % len(self.templates)])
        head = model[-1]
        head.coef_ = head.coef_ * (1.0 + 0.15 * rng.normal(size=head.coef_.shape))
        head.intercept_ = head.intercept_ + 0.15 * rng.normal(size=head.intercept_.shape)
        return model

    def __iter__(self) -> Iterator[str]:
        return iter(self.stores)

    def __len__(self) -> int:
        return len(self.stores)


def write_store_bundle(
    folder: Path, stores: int, *, templates: int, without_model: float, seed: int
) -> dict[str, Any]:
    """Write the bundle of ``stores`` stores under ``folder/artifacts/stores``; returns timings."""
    from storeml.models.scoring import CUSTOMER_FEATURES
    from storeml.models.store_models import write_bundle
    from storeml.models.training import make_customer_estimator

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    x, y = _training_set(rng, 20_000)
    fitted = []
    for _ in range(templates):
        rows = rng.choice(len(x), 400)
        fitted.append(make_customer_estimator().fit(x[rows], y[rows]))
    global_model = make_customer_estimator().fit(x, y)
    own = max(1, round(stores * (1.0 - without_model)))
    ids = [_store_id(i) for i in range(own)]
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    write_bundle(
        folder / "artifacts" / "stores",
        kind="customer",
        features=CUSTOMER_FEATURES,
        store_models=_PerturbedModels(fitted, ids, seed),
        global_model=global_model,
        examples={_store_id(i): 400 if i < own else 5 for i in range(stores)},
        metadata={"model_name": "bench-customers", "bench": {"stores": stores, "seed": seed}},
    )
    return {
        "stores": stores,
        "own_models": own,
        "fit_s": fit_s,
        "write_s": time.perf_counter() - started,
    }


# --- one scoring case (runs in a child process) --------------------------------------------------
def score_case(case: Mapping[str, Any]) -> dict[str, Any]:
    """Score ``case["batches"]`` batches with one path; per-batch seconds and cache counters."""
    import pandas as pd

    from storeml.connectors.mlflow_registry import ModelHandle
    from storeml.models.scoring import score_customers
    from storeml.models.store_models import ModelCache

    stores, rows = int(case["stores"]), int(case["rows"])
    weights = 1.0 / np.arange(1, stores + 1) ** float(case["skew"])
    weights /= weights.sum()
    ids = np.asarray([_store_id(i) for i in range(stores)], dtype=object)
    cache = ModelCache(cache_size=int(case["cache_size"]), vectorise=case["path"] == "fast")
    handle = ModelHandle("bench-customers", "1", None, Path(case["root"]).as_uri())
    rng = np.random.default_rng(int(case["seed"]))
    batches = []
    for _ in range(int(case["batches"])):
        profiles = profile_batch(rng, ids[rng.choice(stores, rows, p=weights)])
        before = cache.stats()
        started = time.perf_counter()
        bundle = cache.bundle(handle)
        scored = score_customers(profiles, bundle, handle)
        seconds = time.perf_counter() - started
        after = cache.stats()
        propensity = pd.to_numeric(scored["propensity"], errors="coerce").to_numpy()
        scopes = pd.Series([m["scope"] for m in scored["model"]]).value_counts().to_dict()
        batch = {k: after[k] - before[k] for k in after if isinstance(after[k], int | float)}
        batch.update(
            {
                "seconds": seconds,
                "rows": rows,
                "distinct_stores": int(profiles["store_id"].nunique()),
                "scopes": scopes,
                "propensity_sum": float(np.nansum(propensity)),
                "store_models": after["store_models"],
            }
        )
        batches.append(batch)
        del profiles, scored
    return {"batches": batches}


def _run_child(case: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one case in a fresh interpreter; its result plus its own peak RSS."""
    name = f"{case['path']}-{case.get('stores', 'alias')}"
    spec, out = workdir / f"{name}.case.json", workdir / f"{name}.result.json"
    spec.write_text(json.dumps(case))
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.scoring_bench", "--child", str(spec), str(out)],
        cwd=Path(__file__).resolve().parents[1],
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"benchmark child {name} failed with exit code {process.returncode}")
    result = json.loads(out.read_text())
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024  # KiB on Linux
    result["process_s"] = time.perf_counter() - started
    return result


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    batches = result["batches"]
    first, warm = batches[0], batches[1:] or batches[:1]
    warm_rows = sum(b["rows"] for b in warm)
    warm_s = sum(b["seconds"] for b in warm)
    hits = sum(b["hits"] for b in warm)
    lookups = hits + sum(b["misses"] for b in warm)
    return {
        "cold_rate": first["rows"] / first["seconds"],
        "cold_s": first["seconds"],
        "warm_rate": warm_rows / warm_s,
        "warm_batch_s": statistics.fmean(b["seconds"] for b in warm),
        "hit_rate": hits / lookups if lookups else None,
        "lookups_per_batch": lookups / len(warm),
        "loads_per_batch": statistics.fmean(b["loads"] for b in warm),
        "cold_loads": first["loads"] + first.get("linear_loads", 0),
        "vectorised_share": sum(b["vectorised_rows"] for b in warm) / warm_rows,
        "distinct_stores": statistics.fmean(b["distinct_stores"] for b in batches),
        "propensity_sums": [b["propensity_sum"] for b in batches],
        "scopes": batches[0]["scopes"],
        "peak_rss_bytes": result["peak_rss_bytes"],
    }


# --- alias move (runs in a child process) --------------------------------------------------------
def alias_move(case: Mapping[str, Any]) -> dict[str, Any]:
    """Time from ``set_alias`` to the end of the first batch scored by the new version."""
    import mlflow

    from storeml.connectors.mlflow_registry import (
        configure,
        ensure_experiment,
        log_bundle_model,
        register_bundle,
        resolve_alias,
        set_alias,
    )
    from storeml.models.scoring import score_customers
    from storeml.models.store_models import ModelCache, make_pyfunc_model

    workdir = Path(case["workdir"])
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    started = time.perf_counter()
    configure(tracking)
    experiment = ensure_experiment(
        "bench-alias", (workdir / "artifacts").as_uri(), tracking_uri=tracking
    )
    name, alias, stores = "bench-alias-customers", "champion", int(case["stores"])
    versions = []
    for seed in (1, 2):
        folder = workdir / f"alias-v{seed}"
        write_store_bundle(
            folder, stores, templates=4, without_model=float(case["without_model"]), seed=seed
        )
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_bundle_model(
                folder / "artifacts" / "stores", make_pyfunc_model(), ["storeml"]
            )
        handle = register_bundle(
            tracking,
            None,
            name,
            info.model_uri,
            run_id=run.info.run_id,
            alias=alias if seed == 1 else None,
        )
        versions.append(handle.version)
    setup_s = time.perf_counter() - started

    cache = ModelCache(cache_size=int(case["cache_size"]))
    rng = np.random.default_rng(3)
    ids = np.asarray([_store_id(i) for i in range(stores)], dtype=object)
    weights = 1.0 / np.arange(1, stores + 1) ** float(case["skew"])
    weights /= weights.sum()
    batch = profile_batch(rng, ids[rng.choice(stores, int(case["rows"]), p=weights)])
    done: list[tuple[float, str, float, float]] = []  # (end, version, resolve s, batch s)
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                begin = time.perf_counter()
                handle = resolve_alias(tracking, None, name, alias)
                resolved = time.perf_counter()
                assert handle is not None
                score_customers(batch, cache.bundle(handle), handle)
                end = time.perf_counter()
                done.append((end, handle.version, resolved - begin, end - begin))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    while len(done) < 5 and not errors:
        time.sleep(0.01)
    moves = []
    current = versions[0]
    for i in range(int(case["moves"])):
        target = versions[1] if current == versions[0] else versions[0]
        cached = any(d[1] == target for d in done)  # this process opened it before
        time.sleep(0.137 + 0.05 * i)  # land at different points of a batch
        seen = len(done)
        moved = time.perf_counter()
        set_alias(tracking, None, name, alias, target)
        set_s = time.perf_counter() - moved
        while not errors:
            first = next((d for d in done[seen:] if d[1] == target and d[0] > moved), None)
            if first is not None:
                break
            time.sleep(0.001)
        if errors:
            break
        assert first is not None
        moves.append(
            {
                "to_version": target,
                "already_cached": cached,
                "set_alias_s": set_s,
                "latency_s": first[0] - moved,
                "new_batch_s": first[3],
            }
        )
        current = target
    stop.set()
    worker.join(timeout=60)
    if errors:
        raise errors[0]
    steady = [d for d in done if d[1] == versions[0]][1:] or done
    return {
        "setup_s": setup_s,
        "stores": stores,
        "rows": int(case["rows"]),
        "moves": moves,
        "batch_s": statistics.median(d[3] for d in steady),
        "resolve_ms": 1e3 * statistics.median(d[2] for d in done),
        "batches": len(done),
    }


# --- driver --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    """Write the bundles, run every case in a child process; returns the results."""
    counts = [int(s.strip().replace("_", "")) for s in args.stores.split(",") if s.strip()]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for path in paths:
        if path not in PATHS:
            raise SystemExit(f"--paths: unknown path {path!r}; use {', '.join(PATHS)}")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="scoring-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_start": [round(x, 2) for x in os.getloadavg()],
        },
        "bundles": {},
        "cases": {},
    }
    try:
        for stores in counts:
            root = workdir / (
                f"bundle-{stores}-t{args.templates}-w{args.without_model:g}-s{args.seed}"
            )
            if (root / "artifacts" / "stores" / "index.json").exists():
                _say(f"{stores:,} stores: reusing {root}")
                results["bundles"][str(stores)] = {"stores": stores, "reused": str(root)}
            else:
                _say(f"{stores:,} stores: writing the bundle")
                info = write_store_bundle(
                    root,
                    stores,
                    templates=args.templates,
                    without_model=args.without_model,
                    seed=args.seed,
                )
                info["bytes"] = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
                results["bundles"][str(stores)] = info
                _say(f"  written in {info['write_s']:.1f}s ({info['bytes'] / 2**20:,.0f} MiB)")
            for path in paths:
                case = {
                    "path": path,
                    "stores": stores,
                    "root": str(root),
                    "rows": args.rows,
                    "batches": args.batches,
                    "cache_size": args.cache_size,
                    "skew": args.skew,
                    "seed": args.seed + 1,
                }
                _say(f"  scoring: {path} path, {args.batches} x {args.rows:,} rows")
                result = _run_child(case, workdir)
                summary = _summary(result)
                results["cases"][f"{path}/{stores}"] = {"summary": summary, **result}
                _say(
                    f"  {path}: warm {summary['warm_rate']:,.0f} rows/s, cold"
                    f" {summary['cold_rate']:,.0f} rows/s, peak RSS"
                    f" {summary['peak_rss_bytes'] / 2**20:,.0f} MiB"
                )
        if not args.skip_alias:
            _say(f"alias move: MLflow on SQLite, {args.alias_stores:,}-store versions")
            case = {
                "path": "alias",
                "workdir": str(workdir / "alias"),
                "stores": args.alias_stores,
                "rows": args.alias_rows,
                "moves": args.alias_moves,
                "cache_size": args.cache_size,
                "skew": args.skew,
                "without_model": args.without_model,
            }
            (workdir / "alias").mkdir(exist_ok=True)
            results["alias"] = _run_child(case, workdir)
    finally:
        results["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def _fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def _yes(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def format_report(results: Mapping[str, Any]) -> str:
    """The human-readable tables of a run."""
    args, machine = results["args"], results["machine"]
    lines = [
        f"machine: {machine['cpus']} CPUs, Python {machine['python']}; load avg at start"
        f" {machine['load_start']}, at end {machine.get('load_end', '-')}",
        f"input: {args['batches']} batches x {args['rows']:,} customer profiles per store count"
        f" (batch 1 cold, the rest warm); store of a row ~ 1/rank^{args['skew']:g};"
        f" the {args['without_model']:.0%} least-busy stores have no model of their own (global"
        f" fallback); ModelCache(cache_size={args['cache_size']:,}); each table row scored in"
        " its own fresh process",
        f"models: StandardScaler + LogisticRegression per store; {args['templates']} fitted on"
        " synthetic features, every store a copy of one with perturbed coefficients (not one fit"
        " per store, to keep writing 100,000 stores fast); bundles written by write_bundle"
        " (one joblib file per store + linear.npz)",
    ]
    for stores, info in results["bundles"].items():
        if "write_s" in info:
            lines.append(
                f"  bundle of {int(stores):,} stores ({info['own_models']:,} own models):"
                f" written in {info['write_s']:.1f}s, {info['bytes'] / 2**20:,.1f} MiB on disk"
            )
    lines.append("")
    header = (
        f"{'stores':>8}  {'path':<10}{'warm rows/s':>12}{'cold rows/s':>12}{'warm batch':>11}"
        f"{'stores/batch':>13}{'LRU hit rate':>13}{'loads/batch':>12}{'vectorised':>11}"
        f"{'peak RSS':>10}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    cases = results["cases"]
    for key, case in cases.items():
        path, stores = key.split("/")
        s = case["summary"]
        lines.append(
            f"{int(stores):>8,}  {path:<10}{_fmt(s['warm_rate']):>12}{_fmt(s['cold_rate']):>12}"
            f"{_fmt(s['warm_batch_s'], 2, ' s'):>11}{_fmt(s['distinct_stores']):>13}"
            f"{_fmt(None if s['hit_rate'] is None else 100 * s['hit_rate'], 1, '%'):>13}"
            f"{_fmt(s['loads_per_batch']):>12}{_fmt(100 * s['vectorised_share'], 0, '%'):>11}"
            f"{_fmt(s['peak_rss_bytes'] / 2**20, 0, ' MiB'):>10}"
        )
    lines.append("")
    lines.append(
        f"target: warm rows/s at the most stores >= {TARGET_RATIO:g} x at the fewest; peak RSS"
        f" < {TARGET_RSS_BYTES / 2**30:g} GiB"
    )
    counts = sorted({int(k.split("/")[1]) for k in cases})
    for path in PATHS:
        mine = {int(k.split("/")[1]): c["summary"] for k, c in cases.items() if k.startswith(path)}
        if len(mine) < 2:
            continue
        low, high = mine[counts[0]], mine[counts[-1]]
        ratio = high["warm_rate"] / low["warm_rate"]
        rss = max(s["peak_rss_bytes"] for s in mine.values())
        lines.append(
            f"  {path:<10} {counts[-1]:,}/{counts[0]:,} stores warm ratio {ratio:.2f}"
            f" (>= {TARGET_RATIO:g}: {_yes(ratio >= TARGET_RATIO)}), cold ratio"
            f" {high['cold_rate'] / low['cold_rate']:.2f}; max peak RSS {rss / 2**20:,.0f} MiB"
            f" (< {TARGET_RSS_BYTES / 2**30:g} GiB: {_yes(rss < TARGET_RSS_BYTES)})"
        )
    for stores in counts:
        fast, slow = cases.get(f"fast/{stores}"), cases.get(f"per-store/{stores}")
        if fast and slow:
            a, b = fast["summary"], slow["summary"]
            sums = zip(a["propensity_sums"], b["propensity_sums"], strict=True)
            gap = max(abs(x - y) for x, y in sums)
            lines.append(
                f"  {stores:>7,} stores: fast / per-store warm"
                f" {a['warm_rate'] / b['warm_rate']:,.1f}x;"
                f" same scopes {_yes(a['scopes'] == b['scopes'])}, largest difference of"
                f" per-batch propensity sums {gap:.1e}"
            )
    alias = results.get("alias")
    if alias:
        lines.append("")
        lines.append(
            f"alias move (MLflow SQLite registry + ModelCache, not Spark): two versions of"
            f" {alias['stores']:,} stores, a loop scoring {alias['rows']:,}-row batches"
            f" (median {alias['batch_s'] * 1e3:,.0f} ms) and resolving the alias before each"
            f" (median {alias['resolve_ms']:.1f} ms); setup {alias['setup_s']:.1f}s"
        )
        head = (
            f"  {'move':>4}  {'to':>3}  {'version':<14}{'set_alias':>10}{'move -> first rows':>20}"
        )
        lines.append(head + f"{'that batch':>12}")
        for i, move in enumerate(alias["moves"], 1):
            lines.append(
                f"  {i:>4}  v{move['to_version']:<2}  "
                f"{'cached' if move['already_cached'] else 'first use':<14}"
                f"{_fmt(move['set_alias_s'] * 1e3, 1, ' ms'):>10}"
                f"{_fmt(move['latency_s'] * 1e3, 0, ' ms'):>20}"
                f"{_fmt(move['new_batch_s'] * 1e3, 0, ' ms'):>12}"
            )
        lines.append(
            f"  peak RSS of the alias process {alias['peak_rss_bytes'] / 2**20:,.0f} MiB (MLflow"
            " imported)"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scoring_bench",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--stores", default="10,1000,100000", help="store counts (comma separated)")
    add("--paths", default=",".join(PATHS), help="scoring paths to run (comma separated)")
    add("--rows", type=int, default=200_000, help="profiles per micro-batch")
    add("--batches", type=int, default=5, help="micro-batches per case (the first is cold)")
    add("--cache-size", type=int, default=2048, help="store models the cache keeps in memory")
    add("--skew", type=float, default=1.1, help="power-law exponent of rows per store")
    add("--without-model", type=float, default=0.2, help="share of stores without own model")
    add("--templates", type=int, default=16, help="models fitted; stores perturb their copies")
    add("--seed", type=int, default=7, help="seed of models and batches")
    add("--skip-alias", action="store_true", help="skip the alias-move measurement")
    add("--alias-stores", type=int, default=1_000, help="stores per version in the alias run")
    add("--alias-rows", type=int, default=20_000, help="rows per batch in the alias run")
    add("--alias-moves", type=int, default=4, help="alias moves (alternating versions)")
    add("--workdir", type=Path, default=None, help="keep bundles here and reuse them next time")
    add("--keep", action="store_true", help="keep the temporary work folder")
    add("--json", type=Path, default=None, help="also write the results as JSON here")
    add("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    return parser


def _quiet() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    _quiet()
    if args.child:
        spec, target = (Path(p) for p in args.child)
        case = json.loads(spec.read_text())
        result = alias_move(case) if case["path"] == "alias" else score_case(case)
        Path(target).write_text(json.dumps(result))
        return 0
    results = run(args)
    emit(results, format_report(results), args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
