"""What every benchmark's ``main`` does with its results: print the report, optionally save JSON."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["emit", "RssSampler"]


def emit(
    results: Mapping[str, Any], report: str, json_path: Path | None, out: Callable[[str], None]
) -> None:
    """Print ``report``; with ``json_path``, also write ``results`` there as JSON."""
    out(report)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
        out(f"\nresults written to {json_path}")


class RssSampler:
    """Peak resident memory of this process and all its descendants (JVM, Python workers)."""

    def __init__(self, every: float = 0.2) -> None:
        import psutil

        self._root = psutil.Process(os.getpid())
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        import psutil

        total = 0
        for proc in [self._root, *self._root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self._total())

    def __enter__(self) -> RssSampler:
        self.peak = self._total()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
