"""Scoring a micro-batch's profiles with the served model and, in shadow, the challenger.

The stream serves the version behind ``settings.serving_alias`` ("champion"): its scores fill the
served fields (``propensity``, ``predicted_categories``) and ``model``. The version behind
``settings.shadow_alias`` ("challenger") scores the same rows with the same code, and its result
goes to the ``shadow`` field only (``{"model": ModelRef, "propensity": ...}`` for customers,
``{"model": ModelRef, "predicted_categories": [...]}`` for products), so champion and challenger
can be compared row by row on live traffic without the challenger ever reaching a consumer's
served fields. ``shadow`` is None when there is no challenger, or when it names the served version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from storeml.models.scoring import score_customers, score_products

if TYPE_CHECKING:
    from storeml.connectors.mlflow_registry import ModelHandle
    from storeml.models.store_models import StoreModelBundle

__all__ = ["Scorer", "SCORED_FIELD", "score_kind"]

#: The served field each kind's scoring fills (and that ``shadow`` carries for the challenger).
SCORED_FIELD = {"customer": "propensity", "product": "predicted_categories"}


@dataclass(frozen=True)
class Scorer:
    """An opened model version: the bundle to score with and the handle naming it (or Nones)."""

    bundle: StoreModelBundle | None
    handle: ModelHandle | None


def _score(kind: str, profiles: pd.DataFrame, scorer: Scorer, model_name: str) -> pd.DataFrame:
    score = score_customers if kind == "customer" else score_products
    return score(profiles, scorer.bundle, scorer.handle, model_name=model_name)


def score_kind(
    kind: str,
    profiles: pd.DataFrame,
    served: Scorer,
    shadow: Scorer | None,
    *,
    model_name: str,
) -> pd.DataFrame:
    """``profiles`` scored by ``served``, with the ``shadow`` column filled by ``shadow``.

    ``kind`` is "customer" or "product". A ``shadow`` without a bundle, or naming the served
    version, leaves ``shadow`` None on every row.
    """
    out = _score(kind, profiles, served, model_name)
    field = SCORED_FIELD[kind]
    same = (
        shadow is not None
        and shadow.handle is not None
        and served.handle is not None
        and (shadow.handle.name, shadow.handle.version)
        == (served.handle.name, served.handle.version)
    )
    if shadow is None or shadow.bundle is None or same or out.empty:
        out["shadow"] = pd.Series([None] * len(out), index=out.index, dtype=object)
        return out
    challenger = _score(kind, profiles, shadow, model_name)
    out["shadow"] = pd.Series(
        [
            {"model": model, field: value}
            for model, value in zip(challenger["model"], challenger[field], strict=True)
        ],
        index=out.index,
        dtype=object,
    )
    return out
