"""Text clean-up before the predictor: lower case, digits and punctuation removed."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from storeml.models.base import Model

_NOT_WORD = re.compile(r"[^a-z ]+")


class NormaliseText(Model):
    """Lower-cases the ``text`` feature and keeps letters and spaces only. Stateless."""

    def __init__(self, min_length: int = 2) -> None:
        self.min_length = min_length

    def fit(self, X: pd.DataFrame, y: Any = None) -> NormaliseText:
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        def clean(text: str) -> str:
            words = _NOT_WORD.sub(" ", str(text).lower()).split()
            return " ".join(w for w in words if len(w) >= self.min_length)

        return pd.DataFrame({"text": X["text"].map(clean)}, index=X.index)
