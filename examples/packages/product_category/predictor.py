"""A custom predictor: TF-IDF over the product text, then multinomial naive Bayes.

It follows the storeml Predictor contract (docs/model-packages.md): constructed with the package's
hyper-parameters as keyword arguments, ``fit(X, y)`` on a DataFrame of the package's features,
``predict_proba(X)`` returning one column per class in ``classes_`` order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.naive_bayes import MultinomialNB

from storeml.models.base import Predictor


class TextCategoryPredictor(Predictor):
    """Category probabilities from the ``text`` column."""

    def __init__(self, max_features: int = 1000, alpha: float = 0.1) -> None:
        self.max_features = max_features
        self.alpha = alpha

    def fit(self, X: pd.DataFrame, y: Any = None) -> TextCategoryPredictor:
        self.vectorizer_ = TfidfVectorizer(
            sublinear_tf=True, max_features=self.max_features, dtype=np.float32
        )
        counts = self.vectorizer_.fit_transform(X["text"])
        self.classifier_ = MultinomialNB(alpha=self.alpha).fit(counts, np.asarray(y))
        self.classes_ = self.classifier_.classes_
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.classifier_.predict_proba(self.vectorizer_.transform(X["text"]))
