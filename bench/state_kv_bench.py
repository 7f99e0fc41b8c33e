"""Candidate stores for entity-keyed profile state: point reads and writes of the touched rows.

Measures what a micro-batch asks of the state store: read the current rows of ``--touched``
entities (some of them new) and write their new rows, with ``--entities`` already stored. Prints
milliseconds per batch for each size and the ratio of the largest size to the smallest.

    .venv/bin/python -m bench.state_kv_bench                     # SQLite only
    PYTHONPATH=/tmp/rdx .venv/bin/python -m bench.state_kv_bench --rocksdict

The second line needs ``rocksdict`` importable (``pip install --target /tmp/rdx rocksdict``); it
is not a dependency of storeml. See docs/state.md for the numbers and the choice.
"""

from __future__ import annotations

import argparse
import pickle
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

COLUMNS = 7


def _rows(keys: list[str], seed: int) -> list[tuple[object, ...]]:
    rnd = random.Random(seed)
    return [(k, *(rnd.randrange(1 << 40) for _ in range(COLUMNS))) for k in keys]


def sqlite_store(folder: Path) -> tuple[Callable[..., list], Callable[..., None]]:
    db = sqlite3.connect(folder / "state.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA cache_size=-65536")
    cols = ", ".join(f"c{i} INTEGER" for i in range(COLUMNS))
    db.execute(f"CREATE TABLE s (k TEXT PRIMARY KEY, {cols}) WITHOUT ROWID")
    db.execute("CREATE TEMP TABLE want (k TEXT PRIMARY KEY) WITHOUT ROWID")
    marks = ", ".join("?" * (COLUMNS + 1))

    def read(keys: list[str]) -> list:
        db.execute("BEGIN")
        db.execute("DELETE FROM want")
        db.executemany("INSERT OR IGNORE INTO want VALUES (?)", [(k,) for k in keys])
        out = db.execute("SELECT s.* FROM want JOIN s USING (k)").fetchall()
        db.execute("COMMIT")
        return out

    def write(rows: list[tuple[object, ...]]) -> None:
        db.execute("BEGIN")
        db.executemany(f"INSERT OR REPLACE INTO s VALUES ({marks})", rows)
        db.execute("COMMIT")

    return read, write


def rocksdict_store(folder: Path) -> tuple[Callable[..., list], Callable[..., None]]:
    from rocksdict import Options, Rdict, WriteBatch

    options = Options(raw_mode=True)
    db = Rdict(str(folder / "rocks"), options)

    def read(keys: list[str]) -> list:
        values = db[[k.encode() for k in keys]]
        return [pickle.loads(v) for v in values if v is not None]

    def write(rows: list[tuple[object, ...]]) -> None:
        batch = WriteBatch(raw_mode=True)
        for row in rows:
            batch.put(row[0].encode(), pickle.dumps(row[1:]))
        db.write(batch)

    return read, write


def run(kind: str, entities: int, touched: int, batches: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        make = sqlite_store if kind == "sqlite" else rocksdict_store
        read, write = make(Path(tmp))
        keys = [f"store-{i % 1000:04d}|customer-{i:09d}" for i in range(entities)]
        for start in range(0, entities, 100_000):
            write(_rows(keys[start : start + 100_000], start))
        rnd = random.Random(7)
        timings = []
        for batch in range(batches):
            old = rnd.sample(keys, min(int(touched * 0.9), entities // 2))
            new = [f"store-{i % 1000:04d}|new-{batch}-{i}" for i in range(touched - len(old))]
            wanted = old + new
            started = time.perf_counter()
            read(wanted)
            write(_rows(wanted, batch))
            timings.append(time.perf_counter() - started)
        timings.sort()
        return timings[len(timings) // 2] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--touched", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=9)
    parser.add_argument("--rocksdict", action="store_true", help="also measure rocksdict")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = ["sqlite", *(["rocksdict"] if args.rocksdict else [])]
    for kind in kinds:
        medians = [run(kind, n, args.touched, args.batches) for n in sizes]
        line = ", ".join(f"{n:,}: {ms:.0f} ms" for n, ms in zip(sizes, medians, strict=True))
        print(
            f"{kind}: read+write {args.touched:,} rows, median per batch: {line};"
            f" ratio {sizes[-1]:,}/{sizes[0]:,} = {medians[-1] / medians[0]:.2f}"
        )


if __name__ == "__main__":
    main()
