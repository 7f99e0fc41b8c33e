"""Evidently's data drift preset on the monitor benchmark's (store, window) frames.

Runs inside the peer's own virtual environment (``bench/monitor_peer.py``), never in the project's:
it imports nothing of storeml. Input, a folder written by the bench:

* ``reference.parquet``: ``ref`` (a store id, or ``*`` for the global reference) + the columns;
* ``current.parquet``: ``store_id``, ``window_start`` + the columns;
* ``job.json``: ``{"pairs": [[store, window_start, ref], ...], "numerical": [...],
  "categorical": [...], "method": "jensenshannon" | "default", "threshold": 0.1}``.

Prints one JSON object: per pair, each column's drift score, method, threshold and verdict, and
the seconds Evidently took for that pair (``Report.run`` plus reading its result).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def _drifted(method: str, value: float, threshold: float) -> bool:
    """Evidently's rule: p-value tests drift below the threshold, distances at or above it."""
    if "p_value" in method or method in ("ks", "chisquare", "z", "fisher_exact", "g_test"):
        return value < threshold
    return value >= threshold


def main(folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    import_s = time.perf_counter() - started
    job = json.loads((folder / "job.json").read_text())
    numerical, categorical = job["numerical"], job["categorical"]
    columns = [*numerical, *categorical]
    reference = pd.read_parquet(folder / "reference.parquet")
    current = pd.read_parquet(folder / "current.parquet")
    refs = {k: g[columns].reset_index(drop=True) for k, g in reference.groupby("ref")}
    curs = {
        (s, int(w)): g[columns].reset_index(drop=True)
        for (s, w), g in current.groupby(["store_id", "window_start"])
    }
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    if job["method"] == "default":
        preset = DataDriftPreset()
    else:
        preset = DataDriftPreset(method=job["method"], threshold=job["threshold"])
    datasets: dict[str, Any] = {}
    out = []
    for store, window, ref in job["pairs"]:
        t0 = time.perf_counter()
        if ref not in datasets:
            datasets[ref] = Dataset.from_pandas(refs[ref], data_definition=definition)
        cur = Dataset.from_pandas(curs[(store, int(window))], data_definition=definition)
        snapshot = Report([preset]).run(cur, datasets[ref])
        cols = {}
        for metric in snapshot.dict()["metrics"]:
            config = metric.get("config", {})
            if config.get("type", "").endswith("ValueDrift"):
                method = str(config.get("method") or metric["metric_name"])
                threshold = float(config.get("threshold") or job["threshold"])
                value = float(metric["value"])
                cols[config["column"]] = {
                    "value": value,
                    "method": method,
                    "threshold": threshold,
                    "drift": _drifted(method, value, threshold),
                }
        out.append(
            {
                "store_id": store,
                "window_start": int(window),
                "rows": len(curs[(store, int(window))]),
                "seconds": time.perf_counter() - t0,
                "columns": cols,
            }
        )
    return {
        "import_s": import_s,
        "total_s": time.perf_counter() - started,
        "pairs": out,
        "evidently": __import__("evidently").__version__,
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
