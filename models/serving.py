"""Scoring a micro-batch's profiles with the served model and, in shadow, the challenger.

The stream serves the version behind ``settings.serving_alias`` ("champion"): its scores fill the
served fields (``propensity``, ``predicted_categories``) and ``model``. The version behind
``settings.shadow_alias`` ("challenger") scores the same rows with the same code, and its result
goes to the ``shadow`` field only (``{"model": ModelRef, "propensity": ...}`` for customers,
``{"model": ModelRef, "predicted_categories": [...]}`` for products), so champion and challenger
can be compared row by row on live traffic without the challenger ever reaching a consumer's
served fields. ``shadow`` is None when there is no challenger, or when it names the served version.

Given a ``faults`` list, failures stay put: the served model's failures follow the per-store
fallback of :mod:`storeml.models.scoring`, and a challenger that fails at all (it could not be
opened, or any of its stores raised) only leaves ``shadow`` None on this call's rows, its
failures recorded with ``role`` "shadow".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from storeml.models.scoring import ScoringFault, score_customers, score_products

if TYPE_CHECKING:
    from storeml.connectors.mlflow_registry import ModelHandle
    from storeml.models.store_models import StoreModelBundle

__all__ = ["Scorer", "Fault", "SCORED_FIELD", "score_kind"]

#: The served field each kind's scoring fills (and that ``shadow`` carries for the challenger).
SCORED_FIELD = {"customer": "propensity", "product": "predicted_categories"}


@dataclass(frozen=True)
class Scorer:
    """An opened model version: the bundle to score with and the handle naming it (or Nones)."""

    bundle: StoreModelBundle | None
    handle: ModelHandle | None
    #: Why the handle's version could not be opened (then ``bundle`` is None).
    error: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Fault:
    """A scoring failure, with the kind of profile and the role of the model that failed."""

    kind: str
    role: str  # "served" or "shadow"
    fault: ScoringFault

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "role": self.role, **self.fault.as_dict()}


def _score(
    kind: str,
    profiles: pd.DataFrame,
    scorer: Scorer,
    model_name: str,
    faults: list[ScoringFault] | None,
) -> pd.DataFrame:
    score = score_customers if kind == "customer" else score_products
    return score(profiles, scorer.bundle, scorer.handle, model_name=model_name, faults=faults)


def _open_failure(scorer: Scorer, model_name: str, rows: int) -> ScoringFault | None:
    if scorer.bundle is not None or scorer.handle is None:
        return None
    return ScoringFault(
        None, scorer.handle.name or model_name, scorer.handle.version, scorer.error or "", rows
    )


def score_kind(
    kind: str,
    profiles: pd.DataFrame,
    served: Scorer,
    shadow: Scorer | None,
    *,
    model_name: str,
    faults: list[Fault] | None = None,
) -> pd.DataFrame:
    """``profiles`` scored by ``served``, with the ``shadow`` column filled by ``shadow``.

    ``kind`` is "customer" or "product". A ``shadow`` without a bundle, or naming the served
    version, leaves ``shadow`` None on every row. ``faults``: see the module docstring; without
    it the first failure raises.
    """
    served_faults: list[ScoringFault] | None = None if faults is None else []
    out = _score(kind, profiles, served, model_name, served_faults)
    if faults is not None and served_faults is not None:
        failed = _open_failure(served, model_name, len(out))
        if failed is not None and len(out):
            served_faults.append(failed)
        faults.extend(Fault(kind, "served", f) for f in served_faults)
    scored = SCORED_FIELD[kind]
    same = (
        shadow is not None
        and shadow.handle is not None
        and served.handle is not None
        and (shadow.handle.name, shadow.handle.version)
        == (served.handle.name, served.handle.version)
    )
    if shadow is not None and faults is not None and not out.empty:
        failed = _open_failure(shadow, model_name, len(out))
        if failed is not None:
            faults.append(Fault(kind, "shadow", failed))
    if shadow is None or shadow.bundle is None or same or out.empty:
        return _no_shadow(out)
    if faults is None:
        challenger = _score(kind, profiles, shadow, model_name, None)
    else:
        shadow_faults: list[ScoringFault] = []
        try:
            challenger = _score(kind, profiles, shadow, model_name, shadow_faults)
        except Exception as exc:  # a challenger never stops the served scoring
            shadow_faults.append(
                ScoringFault(
                    None,
                    shadow.handle.name if shadow.handle is not None else model_name,
                    _version(shadow),
                    f"{type(exc).__name__}: {exc}"[:500],
                    len(out),
                )
            )
        if shadow_faults:
            faults.extend(Fault(kind, "shadow", f) for f in shadow_faults)
            return _no_shadow(out)
    out["shadow"] = pd.Series(
        [
            {"model": model, scored: value}
            for model, value in zip(challenger["model"], challenger[scored], strict=True)
        ],
        index=out.index,
        dtype=object,
    )
    return out


def _version(scorer: Scorer) -> str | None:
    return scorer.handle.version if scorer.handle is not None else None


def _no_shadow(out: pd.DataFrame) -> pd.DataFrame:
    out["shadow"] = pd.Series([None] * len(out), index=out.index, dtype=object)
    return out
