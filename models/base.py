"""One model interface: everything that learns from or transforms profiles is a :class:`Model`.

Feature steps, predictors, preprocessing steps and (later) monitors share five methods on pandas
DataFrames and a version:

* ``fit(X, y=None) -> self``     learn from a frame (a no-op for stateless steps);
* ``transform(X) -> DataFrame``  derive columns (feature and preprocessing steps; predictors
  return one probability column per class);
* ``predict(X)``                 one prediction per row (predictors: the most likely class);
* ``save(path)`` / ``Model.load(path)``  one joblib file;
* ``version``                    a string naming what was trained (a package's prediction version).

:class:`Predictor` adds ``predict_proba(X) -> ndarray`` and ``classes_``, the two things the
stream calls (``models/scoring.py``). :class:`SklearnPredictor` and :class:`SklearnTransformer`
adapt a scikit-learn estimator or pipeline; :class:`FeatureStep` computes named features of the
registry (:mod:`storeml.models.features`).

:class:`PackagedModel` is what a model package trains for each store: feature step, optional
preprocessing step and predictor in one picklable object whose ``predict_proba`` accepts exactly
what the stream passes (the base frame as a matrix, or the texts), so the serving path is the same
for built-in and packaged models. When the package has its own Python files, their source travels
*inside* the pickle: loading installs them as modules ``storeml_pkg_<digest>.<file stem>`` (from
memory, see :func:`install_package_code`) before the objects that need them are rebuilt. So a
store file loads on any executor or in a fresh process that has ``storeml`` and the package's
requirements, with no package folder on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.util
import linecache
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import joblib
import numpy as np
import pandas as pd

from storeml.errors import ModelError
from storeml.models.features import base_frame, compute_features, get_feature

__all__ = [
    "Model",
    "Predictor",
    "FeatureStep",
    "SklearnPredictor",
    "SklearnTransformer",
    "PackagedModel",
    "PackageCode",
    "install_package_code",
    "sklearn_input",
]


class Model(ABC):
    """Base of every model: fit / transform / predict on pandas DataFrames, save / load, version.

    Subclasses override what they do; ``transform`` and ``predict`` raise :class:`ModelError`
    when a model does not offer them. Instances must pickle (they are saved with joblib and
    shipped to Spark executors): open clients lazily, never in ``__init__``.
    """

    #: What was trained; set by training (a package's ``prediction.version``).
    version: str = "0"

    @abstractmethod
    def fit(self, X: pd.DataFrame, y: Any = None) -> Self:
        """Learn from ``X`` (and labels ``y``); returns self."""

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Derived columns of ``X``, one row per input row."""
        raise ModelError(f"{type(self).__name__} does not transform; it is not a feature step")

    def predict(self, X: pd.DataFrame) -> Any:
        """One prediction per row of ``X``."""
        raise ModelError(f"{type(self).__name__} does not predict; it is a feature step")

    def save(self, path: str | Path) -> Path:
        """Write this model to one joblib file at ``path``; returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            joblib.dump(self, target)
        except Exception as exc:  # pickling can raise anything
            raise ModelError(
                f"cannot save {type(self).__name__} to {target}: {exc}; every attribute must"
                " pickle (open clients lazily, not in __init__)"
            ) from exc
        return target

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a model written by :meth:`save`; it must be an instance of ``cls``."""
        try:
            model = joblib.load(Path(path))
        except Exception as exc:  # unpickling can raise anything
            raise ModelError(
                f"cannot load a model from {path}: {exc}; is it a file written by Model.save?"
            ) from exc
        if not isinstance(model, cls):
            raise ModelError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


class Predictor(Model):
    """A model that predicts class probabilities: the contract the stream scores with.

    After ``fit``, ``classes_`` holds the class labels in the column order of ``predict_proba``
    (customers: labels 0/1, the propensity is the probability of 1; products: category names).
    """

    classes_: np.ndarray

    @abstractmethod
    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """A (rows, classes) array of probabilities, columns in ``classes_`` order."""

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The most likely class of each row."""
        proba = np.asarray(self.predict_proba(X))
        return np.asarray(self.classes_)[np.argmax(proba, axis=1)]

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Probabilities as columns ``proba_<class>`` (so a predictor can feed another model)."""
        proba = np.asarray(self.predict_proba(X))
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame(proba, columns=[f"proba_{c}" for c in self.classes_], index=index)


class FeatureStep(Model):
    """Computes named features of the registry (:mod:`storeml.models.features`) for one kind.

    ``transform`` accepts profiles, a base frame or what the stream passes, and returns the
    features in the order given. Stateless: ``fit`` only returns self.
    """

    def __init__(self, kind: str, names: Sequence[str]) -> None:
        self.kind = kind
        self.names = list(names)
        for name in self.names:
            get_feature(kind, name)  # fails early, naming the known features

    def fit(self, X: pd.DataFrame, y: Any = None) -> Self:
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        return compute_features(self.kind, self.names, X)

    @property
    def dtypes(self) -> list[str]:
        return [get_feature(self.kind, name).dtype for name in self.names]

    def __repr__(self) -> str:
        return f"FeatureStep({self.kind!r}, {self.names!r})"


def sklearn_input(X: Any) -> Any:
    """What a scikit-learn estimator gets for ``X``.

    A frame with one text column becomes that column (1-D): text vectorizers need 1-D input.
    Anything else (frames, arrays, sparse matrices) passes unchanged.
    """
    if (
        isinstance(X, pd.DataFrame)
        and X.shape[1] == 1
        and not pd.api.types.is_numeric_dtype(X.dtypes.iloc[0])
    ):
        return X.iloc[:, 0]
    return X


class SklearnPredictor(Predictor):
    """A scikit-learn classifier or pipeline ending in one, as a :class:`Predictor`."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def fit(self, X: Any, y: Any = None) -> Self:
        self.estimator.fit(sklearn_input(X), y)
        return self

    @property
    def classes_(self) -> np.ndarray:  # type: ignore[override]
        return np.asarray(self.estimator.classes_)

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(sklearn_input(X)))

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.estimator.predict(sklearn_input(X)))

    def __repr__(self) -> str:
        return f"SklearnPredictor({self.estimator!r})"


class SklearnTransformer(Model):
    """A scikit-learn transformer (scaler, vectorizer, imputer...) as a preprocessing step.

    ``transform`` returns a DataFrame (same index and column names when the output is dense and
    as wide as the input, ``x0..xN`` otherwise); a sparse output (text vectorizers) is returned as
    the sparse matrix, which scikit-learn estimators take as is.
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def fit(self, X: Any, y: Any = None) -> Self:
        self.estimator.fit(sklearn_input(X), y)
        return self

    def transform(self, X: Any) -> Any:
        out = self.estimator.transform(sklearn_input(X))
        if hasattr(out, "tocsr"):  # scipy sparse
            return out
        out = np.asarray(out)
        index = X.index if isinstance(X, pd.DataFrame) else None
        if isinstance(X, pd.DataFrame) and out.shape[1] == X.shape[1]:
            return pd.DataFrame(out, columns=X.columns, index=index)
        return pd.DataFrame(out, columns=[f"x{i}" for i in range(out.shape[1])], index=index)

    def __repr__(self) -> str:
        return f"SklearnTransformer({self.estimator!r})"


# --- package code carried inside pickles -----------------------------------------------------
@dataclass(frozen=True)
class PackageCode:
    """The Python files of a model package, installable as modules from memory.

    ``root`` is the module name they live under (``storeml_pkg_<sha256 of the sources>``), so two
    packages never clash and the same code always gets the same name; ``sources`` are
    ``(file stem, source text)`` pairs; ``label`` names the package in tracebacks.
    """

    root: str
    sources: tuple[tuple[str, str], ...]
    label: str = "package"

    @classmethod
    def from_folder(cls, folder: str | Path, label: str | None = None) -> PackageCode:
        """The top-level ``*.py`` files of ``folder``."""
        path = Path(folder)
        sources = tuple(
            (file.stem, file.read_text(encoding="utf-8")) for file in sorted(path.glob("*.py"))
        )
        return cls.from_sources(sources, label or path.name)

    @classmethod
    def from_sources(cls, sources: Iterable[tuple[str, str]], label: str) -> PackageCode:
        pairs = tuple(sorted(sources))
        digest = hashlib.sha256()
        for stem, text in pairs:
            digest.update(stem.encode() + b"\0" + text.encode() + b"\0")
        return cls(f"storeml_pkg_{digest.hexdigest()[:16]}", pairs, label)

    def install(self) -> ModuleType:
        """Make ``<root>.<stem>`` importable (idempotent); returns the root module."""
        return install_package_code(self.root, self.sources, self.label)

    def module(self, stem: str) -> ModuleType:
        """Import ``<root>.<stem>`` (installing the code first)."""
        self.install()
        return importlib.import_module(f"{self.root}.{stem}")

    def write(self, folder: str | Path) -> list[Path]:
        """Write the files into ``folder`` (for people and other loaders; loading never reads it)."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for stem, text in self.sources:
            (target / f"{stem}.py").write_text(text, encoding="utf-8")
            written.append(target / f"{stem}.py")
        return written


class _SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``<root>`` (an empty package) and ``<root>.<stem>`` modules in in-memory sources."""

    def __init__(self, root: str, sources: dict[str, str], label: str) -> None:
        self.root = root
        self.sources = sources
        self.label = label

    def _filename(self, stem: str) -> str:
        return f"<{self.label}>/{stem}.py"

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == self.root:
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        prefix, _, stem = fullname.rpartition(".")
        if prefix == self.root and stem in self.sources:
            spec = importlib.util.spec_from_loader(fullname, self, origin=self._filename(stem))
            if spec is not None:
                spec.has_location = False
            return spec
        return None

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        if module.__name__ == self.root:
            module.__path__ = []
            return
        stem = module.__name__.rpartition(".")[2]
        source = self.sources[stem]
        filename = self._filename(stem)
        # tracebacks show the package's lines
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module.__file__ = filename
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102


_finders: dict[str, _SourceFinder] = {}
_install_lock = threading.Lock()


def install_package_code(
    root: str, sources: Iterable[tuple[str, str]], label: str = "package"
) -> ModuleType:
    """Register in-memory ``sources`` as modules ``<root>.<stem>``; returns the ``root`` module.

    Idempotent per process. Modules are imported on first use (``import_module`` or unpickling),
    so package files may import each other with relative imports (``from .helpers import f``).
    """
    with _install_lock:
        if root not in _finders:
            finder = _SourceFinder(root, dict(sources), label)
            sys.meta_path.append(finder)
            _finders[root] = finder
    return importlib.import_module(root)


def _packaged_from_code(root: str | None, sources: tuple[tuple[str, str], ...], label: str) -> Any:
    """Unpickling entry of :class:`PackagedModel`: install the code, then an empty instance.

    Pickle calls this before it reads the instance's state, so the package's classes referenced
    by the state are importable by then.
    """
    if root is not None:
        install_package_code(root, sources, label)
    return PackagedModel.__new__(PackagedModel)


class PackagedModel(Predictor):
    """A package's model for one store (or the global fallback): features, preprocess, predictor.

    ``fit`` / ``predict_proba`` accept anything :func:`storeml.models.features.base_frame`
    accepts: profiles, a base frame, or what the stream passes (a float matrix of the customer
    base columns, or a sequence of product texts). Pickles with its package code (see the module
    docstring).
    """

    def __init__(
        self,
        kind: str,
        features: FeatureStep,
        predictor: Predictor,
        preprocess: Model | None = None,
        *,
        name: str = "",
        version: str = "0",
        code: PackageCode | None = None,
    ) -> None:
        self.kind = kind
        self.features = features
        self.preprocess = preprocess
        self.predictor = predictor
        self.name = name
        self.version = version
        self.code = code

    def _inputs(self, X: Any, y: Any = None, *, fitting: bool) -> Any:
        frame = self.features.transform(base_frame(self.kind, X))
        if self.preprocess is None:
            return frame
        if fitting:
            self.preprocess.fit(frame, y)
        return self.preprocess.transform(frame)

    def fit(self, X: Any, y: Any = None) -> Self:
        labels = None if y is None else np.asarray(y)
        self.predictor.fit(self._inputs(X, labels, fitting=True), labels)
        return self

    @property
    def classes_(self) -> np.ndarray:  # type: ignore[override]
        return np.asarray(self.predictor.classes_)

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.asarray(self.predictor.predict_proba(self._inputs(X, fitting=False)))

    def inner_estimators(self) -> list[Any]:
        """The scikit-learn objects inside (for :func:`storeml.models.training.compact`)."""
        out = []
        for step in (self.preprocess, self.predictor):
            estimator = getattr(step, "estimator", None)
            if estimator is not None:
                out.append(estimator)
        return out

    def __reduce__(self) -> Any:
        if self.code is None:
            return (_packaged_from_code, (None, (), ""), self.__dict__)
        code = self.code
        return (_packaged_from_code, (code.root, code.sources, code.label), self.__dict__)

    def __repr__(self) -> str:
        return (
            f"PackagedModel({self.name!r}, kind={self.kind!r}, version={self.version!r},"
            f" features={self.features.names!r}, predictor={self.predictor!r})"
        )
