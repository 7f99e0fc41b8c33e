"""Which source coordinates the compacted event lake already holds: one bit per Kafka offset.

The lake's compaction (``connectors/event_lake.py``) asks it which incoming rows are already
compacted, so that a replayed micro-batch, a replay cut into another number of tasks, or the
inputs of a compaction killed before it deleted them never reach the compacted files twice.

Layout, under ``<root>/_ledger/``::

    <topic>+<partition>/<block>.bits     bit i set: offset block * 2**20 + i is compacted
    FORMAT                               written last by the first compaction: the ledger is complete
    DUPLICATES                           the compacted files written before the ledger repeat events

A block is 2**20 offsets as a zlib-compressed bitmap (128 KiB before compression, a few hundred
bytes for a run of compacted offsets). A compaction reads and rewrites only the blocks its rows
fall in, which sit at the end of each partition, so its cost does not grow with the lake.
Blocks are rewritten under a temporary name and renamed; setting a bit twice changes nothing, so
a compaction that died half-way through its ledger update simply repeats it. Only a compaction,
holding the lake's compaction lock, writes here.
"""

from __future__ import annotations

import os
import uuid
import zlib
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from storeml.errors import ConnectorError

__all__ = ["LEDGER", "Ledger"]

LEDGER = "_ledger"
_BITS = 20  # offsets per block: 2**_BITS
_MASK = (1 << _BITS) - 1
_Key = tuple[str, int, int]  # topic, partition, block


class Ledger:
    """The compacted coordinates of the lake at ``root``; blocks are cached until :meth:`flush`."""

    def __init__(self, root: str | Path) -> None:
        self.folder = Path(root, LEDGER)
        self._blocks: dict[_Key, np.ndarray] = {}
        self._dirty: set[_Key] = set()

    @property
    def complete(self) -> bool:
        """Whether the ledger covers every compacted file (written by :meth:`mark_complete`)."""
        return (self.folder / "FORMAT").exists()

    @property
    def trusted(self) -> bool:
        """Whether the compacted files hold each event once (complete, built from no repeats)."""
        return self.complete and not (self.folder / "DUPLICATES").exists()

    def mark_complete(self, duplicates: bool) -> None:
        """Record that the ledger is complete, and whether the files it was built from repeat."""
        self.flush()
        self.folder.mkdir(parents=True, exist_ok=True)
        if duplicates:
            (self.folder / "DUPLICATES").write_text("compacted files written before the ledger\n")
        (self.folder / "FORMAT").write_text("1\n")

    def seen(self, coordinates: pd.DataFrame) -> np.ndarray:
        """A boolean per row of ``coordinates`` (``topic, partition, offset``): already compacted."""
        mask = np.zeros(len(coordinates), dtype=bool)
        for key, rows, offsets in self._groups(coordinates):
            mask[rows] = self._block(key)[offsets & _MASK]
        return mask

    def add(self, coordinates: pd.DataFrame) -> None:
        """Mark ``coordinates`` compacted (in the cache: :meth:`flush` writes them)."""
        for key, _, offsets in self._groups(coordinates):
            self._block(key)[offsets & _MASK] = True
            self._dirty.add(key)

    def flush(self) -> None:
        """Write every changed block (each under a temporary name, then renamed over the old)."""
        for key in sorted(self._dirty):
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            temporary.write_bytes(zlib.compress(np.packbits(self._blocks[key]).tobytes(), 1))
            os.replace(temporary, path)
        self._dirty.clear()

    def _path(self, key: _Key) -> Path:
        topic, partition, block = key
        return self.folder / f"{quote(topic, safe='')}+{partition}" / f"{block}.bits"

    def _block(self, key: _Key) -> np.ndarray:
        if key not in self._blocks:
            path = self._path(key)
            try:
                packed = np.frombuffer(zlib.decompress(path.read_bytes()), dtype=np.uint8)
            except FileNotFoundError:
                packed = np.zeros((1 << _BITS) // 8, dtype=np.uint8)
            except zlib.error as exc:
                raise ConnectorError(
                    f"event lake ledger block {path} is corrupt ({exc}); delete {self.folder}"
                    " and the next compaction rebuilds it from the compacted files"
                ) from exc
            self._blocks[key] = np.unpackbits(packed).astype(bool)
        return self._blocks[key]

    @staticmethod
    def _groups(coordinates: pd.DataFrame) -> list[tuple[_Key, np.ndarray, np.ndarray]]:
        """``(key, row positions, offsets)`` per topic, partition and block."""
        if coordinates.empty:
            return []
        offsets = coordinates["offset"].to_numpy(dtype=np.int64)
        if int(offsets.min()) < 0:
            raise ConnectorError(
                f"event lake rows with a negative Kafka offset ({int(offsets.min())}):"
                " offsets are never negative; the rows did not come from a Kafka source"
            )
        blocks = offsets >> _BITS
        keys = [
            coordinates["topic"].to_numpy(dtype=object),
            coordinates["partition"].to_numpy(dtype=np.int64),
            blocks,
        ]
        groups = pd.Series(np.arange(len(offsets))).groupby(keys, sort=False).indices
        return [
            ((str(topic), int(partition), int(block)), rows, offsets[rows])
            for (topic, partition, block), rows in groups.items()
        ]
