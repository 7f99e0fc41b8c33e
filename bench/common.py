"""What every benchmark's ``main`` does with its results: print the report, optionally save JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["emit"]


def emit(
    results: Mapping[str, Any], report: str, json_path: Path | None, out: Callable[[str], None]
) -> None:
    """Print ``report``; with ``json_path``, also write ``results`` there as JSON."""
    out(report)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
        out(f"\nresults written to {json_path}")
