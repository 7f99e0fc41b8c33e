"""The monitor benchmark's peer: Evidently's data drift preset on the same (store, window) frames.

Evidently lives in a virtual environment the bench creates and caches
(``~/.cache/storeml-bench/evidently-venv``; ``--evidently-venv`` or ``STOREML_BENCH_EVIDENTLY_VENV``
to move it), never in the project's lock. Its 0.7 line imports a pandas internal that pandas 3
removed, so the venv pins ``pandas<3`` beside it (:data:`EVIDENTLY_SPEC`).

:func:`compare` writes the reference rows the orders monitor was fit on and the live rows of the
chosen (store, window) pairs to parquet, runs ``bench/monitor_evidently_run.py`` in that venv, and
sets Evidently's verdicts beside the monitor's: per (store, window) "any column drifted", and per
column, as confusion counts and an agreement rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["EVIDENTLY_SPEC", "default_venv", "ensure_venv", "compare", "confusion"]

#: What the peer's venv installs.
EVIDENTLY_SPEC = ("evidently==0.7.23", "pandas<3", "pyarrow")
_STAMP = "storeml-bench.json"
_RUNNER = Path(__file__).with_name("monitor_evidently_run.py")
MISSING = "(none)"


def default_venv() -> Path:
    env = os.environ.get("STOREML_BENCH_EVIDENTLY_VENV")
    return Path(env) if env else Path.home() / ".cache" / "storeml-bench" / "evidently-venv"


def ensure_venv(venv: Path, say: Any = print) -> dict[str, Any]:
    """Create ``venv`` with :data:`EVIDENTLY_SPEC` unless its stamp says it holds it already."""
    python = venv / "bin" / "python"
    stamp = venv / _STAMP
    started = time.perf_counter()
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        recorded = {}
    if recorded.get("spec") != list(EVIDENTLY_SPEC) or not python.exists():
        say(f"creating the Evidently venv {venv} ({' '.join(EVIDENTLY_SPEC)}); once")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *EVIDENTLY_SPEC],
            capture_output=True,
            text=True,
            check=False,
        )
        if install.returncode != 0:
            lines = [x for x in install.stderr.splitlines() if not x.startswith("WARNING")]
            raise RuntimeError("pip install of the Evidently peer failed: " + "\n".join(lines[-8:]))
    version = subprocess.run(
        [str(python), "-c", "import evidently; print(evidently.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stamp.write_text(json.dumps({"spec": list(EVIDENTLY_SPEC), "version": version}))
    return {"python": str(python), "version": version, "created_s": time.perf_counter() - started}


def _frame(rows: pd.DataFrame, numerical: Sequence[str], categorical: Sequence[str]) -> Any:
    out = pd.DataFrame(index=rows.index)
    for c in numerical:
        out[c] = pd.to_numeric(rows[c], errors="coerce").astype("float64")
    for c in categorical:
        out[c] = rows[c].astype(object).where(rows[c].notna(), MISSING).astype(str)
    return out


def confusion(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """Counts of (monitor, peer) verdicts and the share where they agree."""
    both = sum(1 for a, b in pairs if a and b)
    only_monitor = sum(1 for a, b in pairs if a and not b)
    only_peer = sum(1 for a, b in pairs if b and not a)
    neither = sum(1 for a, b in pairs if not a and not b)
    n = len(pairs)
    return {
        "n": n,
        "both": both,
        "monitor_only": only_monitor,
        "evidently_only": only_peer,
        "neither": neither,
        "agreement": (both + neither) / n if n else None,
    }


def compare(
    venv: dict[str, Any],
    workdir: Path,
    monitor: Any,
    reference: pd.DataFrame,
    live: pd.DataFrame,
    verdicts: Mapping[tuple[str, int], Mapping[str, Any]],
    pairs: Sequence[tuple[str, int]],
    *,
    method: str,
) -> dict[str, Any]:
    """Run Evidently on ``pairs`` and compare with the monitor's ``verdicts``.

    ``reference``: the rows the orders monitor was fit on; ``live``: live order rows with a
    ``window_start`` column; ``verdicts``: (store, window) -> the monitor's stored drift row
    (``alert`` and per-column ``columns``). A store without its own reference in the monitor is
    compared with the global reference, as the monitor does.
    """
    numerical = [c.name for c in monitor.columns if c.kind == "numeric"]
    categorical = [c.name for c in monitor.columns if c.kind == "categorical"]
    own = {str(s) for s in monitor.store_ids}
    folder = workdir / f"evidently-{method}"
    folder.mkdir(parents=True, exist_ok=True)
    refs = {s if s in own else "*" for s, _ in pairs}
    parts = []
    for key in sorted(refs):
        rows = reference if key == "*" else reference[reference["store_id"] == key]
        part = _frame(rows, numerical, categorical)
        part.insert(0, "ref", key)
        parts.append(part)
    pd.concat(parts, ignore_index=True).to_parquet(folder / "reference.parquet")
    wanted = set(pairs)
    keys = list(zip(live["store_id"], live["window_start"].astype(int), strict=True))
    chosen = live[[k in wanted for k in keys]]
    current = _frame(chosen, numerical, categorical)
    current.insert(0, "window_start", chosen["window_start"].astype("int64").to_numpy())
    current.insert(0, "store_id", chosen["store_id"].astype(str).to_numpy())
    current.to_parquet(folder / "current.parquet")
    job = {
        "pairs": [[s, int(w), s if s in own else "*"] for s, w in pairs],
        "numerical": numerical,
        "categorical": categorical,
        "method": method,
        "threshold": monitor.min_js,
    }
    (folder / "job.json").write_text(json.dumps(job))
    started = time.perf_counter()
    run = subprocess.run(
        [venv["python"], str(_RUNNER), str(folder)],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"the Evidently runner failed:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    store_level, column_level = [], []
    per_window: dict[int, float] = {}
    for row in result["pairs"]:
        key = (row["store_id"], int(row["window_start"]))
        mine = verdicts[key]
        theirs = row["columns"]
        store_level.append((bool(mine["alert"]), any(c["drift"] for c in theirs.values())))
        mine_cols = {c["column"]: bool(c["alert"]) for c in mine.get("columns", ())}
        for column, verdict in theirs.items():
            if column in mine_cols:
                column_level.append((mine_cols[column], bool(verdict["drift"])))
        per_window[key[1]] = per_window.get(key[1], 0.0) + float(row["seconds"])
    methods = sorted({c["method"] for r in result["pairs"] for c in r["columns"].values()})
    return {
        "method": method,
        "methods_used": methods,
        "pairs": len(result["pairs"]),
        "wall_s": wall,
        "import_s": result["import_s"],
        "seconds_per_pair": (
            sum(r["seconds"] for r in result["pairs"]) / len(result["pairs"])
            if result["pairs"]
            else None
        ),
        "seconds_by_window": {str(k): v for k, v in sorted(per_window.items())},
        "store_level": confusion(store_level),
        "column_level": confusion(column_level),
        "disagreements": [
            {
                "store_id": r["store_id"],
                "window_start": r["window_start"],
                "rows": r["rows"],
                "monitor": bool(verdicts[(r["store_id"], int(r["window_start"]))]["alert"]),
                "evidently": {k: round(v["value"], 4) for k, v in r["columns"].items()},
            }
            for r, (a, b) in zip(result["pairs"], store_level, strict=True)
            if a != b
        ][:20],
        "evidently": result["evidently"],
    }
