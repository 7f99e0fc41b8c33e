"""Model packages: a folder that onboards a model, loaded and validated before anything trains.

A package is a folder with::

    config.yaml        three sections: model, features, prediction (reference: docs/model-packages.md)
    predictor.py       optional: a custom Predictor class   (model.framework.type: custom)
    preprocess.py      optional: a custom preprocessing Model (features.preprocess.type: custom)
    requirements.txt   optional: extra pip requirements of the package's code

:func:`load_package` parses ``config.yaml`` with pydantic models that forbid unknown keys, then
checks what a schema cannot: the scikit-learn estimator exists in an allowed module and accepts the
hyper-parameters, custom classes import and subclass the right base class, every feature is in the
registry for the model kind, output column types parse, the cron schedule parses and fires, and
``requirements.txt`` lines parse. Every problem found is reported at once in one
:class:`PackageError` (a :class:`~storeml.errors.ConfigError`), each naming the file, the key
path (``model.framework.estimator``) and the fix.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from storeml.errors import ConfigError
from storeml.models.base import (
    FeatureStep,
    Model,
    PackageCode,
    PackagedModel,
    Predictor,
    SklearnPredictor,
    SklearnTransformer,
)
from storeml.models.features import FEATURES, KINDS, feature_names
from storeml.models.schedule import parse_cron

__all__ = [
    "CONFIG_FILE",
    "REQUIREMENTS_FILE",
    "SKLEARN_MODULES",
    "OUTPUT_TYPES",
    "Problem",
    "PackageError",
    "PackageConfig",
    "ModelSection",
    "FeaturesSection",
    "PredictionSection",
    "ModelPackage",
    "load_package",
    "parse_type",
]

CONFIG_FILE = "config.yaml"
REQUIREMENTS_FILE = "requirements.txt"
DOCS = "docs/model-packages.md"

#: Modules a built-in estimator or preprocessing step may come from.
SKLEARN_MODULES: tuple[str, ...] = (
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.tree",
    "sklearn.naive_bayes",
    "sklearn.neighbors",
    "sklearn.svm",
    "sklearn.neural_network",
    "sklearn.discriminant_analysis",
    "sklearn.dummy",
    "sklearn.calibration",
    "sklearn.preprocessing",
    "sklearn.feature_extraction.text",
    "sklearn.decomposition",
    "sklearn.impute",
    "sklearn.kernel_approximation",
)

#: Primitive output column types; ``array<T>``, ``map<string,T>`` and ``struct<name:T,...>`` nest.
OUTPUT_TYPES: tuple[str, ...] = (
    "string",
    "boolean",
    "int",
    "long",
    "float",
    "double",
    "timestamp",
    "date",
)

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_SERVICE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_VERSION = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


# --- problems --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a package: where (file, key path), what, and how to fix it."""

    file: str
    key: str
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}; fix: {self.fix}"


class PackageError(ConfigError):
    """A model package is invalid; ``problems`` lists every problem found."""

    def __init__(self, folder: Path, problems: Sequence[Problem]) -> None:
        self.folder = folder
        self.problems = list(problems)
        lines = "\n  ".join(str(p) for p in self.problems)
        count = len(self.problems)
        super().__init__(
            f"model package {folder} is invalid ({count} problem{'s' * (count != 1)}):\n  {lines}"
        )


# --- config.yaml schema ----------------------------------------------------------------------
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SklearnFramework(_Section):
    """A built-in scikit-learn classifier (``model.framework`` with ``type: sklearn``)."""

    type: Literal["sklearn"]
    estimator: str = Field(description="Dotted path, e.g. sklearn.linear_model.LogisticRegression.")


class CustomFramework(_Section):
    """A Predictor class of the package (``model.framework`` with ``type: custom``)."""

    type: Literal["custom"]
    file: str = Field(default="predictor.py", description="File of the package defining the class.")
    class_name: str = Field(alias="class", description="Class name in that file.")


class SklearnStep(_Section):
    """A built-in scikit-learn transformer (``features.preprocess`` with ``type: sklearn``)."""

    type: Literal["sklearn"]
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)


class CustomStep(_Section):
    """A Model class of the package with ``transform`` (``features.preprocess``, ``type: custom``)."""

    type: Literal["custom"]
    file: str = "preprocess.py"
    class_name: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)


class TrainingOptions(_Section):
    """How a package's per-store models are trained (``model.training``)."""

    min_examples: int = Field(default=20, ge=2)
    min_class_examples: int = Field(default=3, ge=1)
    test_size: float = Field(default=0.25, gt=0, lt=1)
    seed: int = 0
    horizon_days: float | None = Field(default=None, gt=0)


class ModelSection(_Section):
    name: str = Field(pattern=_NAME)
    kind: Literal["customer", "product"]
    description: str = ""
    framework: Annotated[SklearnFramework | CustomFramework, Field(discriminator="type")]
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    global_hyperparameters: dict[str, Any] = Field(default_factory=dict)
    training: TrainingOptions = Field(default_factory=TrainingOptions)


class FeaturesSection(_Section):
    profile_fields: list[str] = Field(default_factory=list)
    derived: list[str] = Field(default_factory=list)
    preprocess: Annotated[SklearnStep | CustomStep, Field(discriminator="type")] | None = None


class OutputColumn(_Section):
    name: str
    type: str
    description: str = ""


class PredictionSection(_Section):
    service: str = Field(pattern=_SERVICE)
    version: str = Field(pattern=_VERSION)
    outputs: list[OutputColumn] = Field(min_length=1)
    schedule: str | None = None


class PackageConfig(_Section):
    """The whole ``config.yaml``."""

    model: ModelSection
    features: FeaturesSection
    prediction: PredictionSection


# --- the loaded package ----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelPackage:
    """A validated package: its folder, parsed config, code and requirements."""

    path: Path
    config: PackageConfig
    code: PackageCode
    requirements: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.config.model.name

    @property
    def kind(self) -> str:
        return self.config.model.kind

    @property
    def feature_names(self) -> list[str]:
        """Profile fields first, then derived features, in config order."""
        return [*self.config.features.profile_fields, *self.config.features.derived]

    @property
    def uses_code(self) -> bool:
        """Whether a custom class of the package is used (its code then travels with models)."""
        preprocess = self.config.features.preprocess
        return self.config.model.framework.type == "custom" or (
            preprocess is not None and preprocess.type == "custom"
        )

    def files(self) -> list[Path]:
        """The package's files that are logged with every training (config, code, requirements)."""
        names = [CONFIG_FILE, REQUIREMENTS_FILE, *(f"{stem}.py" for stem, _ in self.code.sources)]
        return [self.path / n for n in names if (self.path / n).is_file()]

    def prediction_dict(self) -> dict[str, Any]:
        """The prediction section as plain JSON."""
        return self.config.prediction.model_dump(mode="json")

    def describe(self) -> dict[str, Any]:
        """What a bundle's ``index.json`` records about the package."""
        model = self.config.model
        preprocess = self.config.features.preprocess
        return {
            "name": model.name,
            "kind": model.kind,
            "framework": model.framework.model_dump(mode="json", by_alias=True),
            "hyperparameters": dict(model.hyperparameters),
            "features": self.feature_names,
            "preprocess": None
            if preprocess is None
            else preprocess.model_dump(mode="json", by_alias=True),
            "code_module": self.code.root if self.uses_code else None,
            "requirements": list(self.requirements),
        }

    def hyperparameters(self, scope: str = "store") -> dict[str, Any]:
        """Hyper-parameters of the store models, or (``scope="global"``) of the global model."""
        params = dict(self.config.model.hyperparameters)
        if scope == "global":
            params.update(self.config.model.global_hyperparameters)
        return params

    def build_model(self, scope: str = "store") -> PackagedModel:
        """A fresh, unfitted model for one store (``"store"``) or the global fallback."""
        model = self.config.model
        step = self.config.features.preprocess
        preprocess: Model | None = None
        if isinstance(step, SklearnStep):
            preprocess = SklearnTransformer(_import_sklearn(step.estimator)(**step.params))
        elif isinstance(step, CustomStep):
            preprocess = self._custom_class(step.file, step.class_name)(**step.params)
        framework = model.framework
        params = self.hyperparameters(scope)
        predictor: Predictor
        if isinstance(framework, SklearnFramework):
            predictor = SklearnPredictor(_import_sklearn(framework.estimator)(**params))
        else:
            predictor = self._custom_class(framework.file, framework.class_name)(**params)
        return PackagedModel(
            model.kind,
            FeatureStep(model.kind, self.feature_names),
            predictor,
            preprocess,
            name=model.name,
            version=self.config.prediction.version,
            code=self.code if self.uses_code else None,
        )

    def _custom_class(self, file: str, name: str) -> Any:
        return getattr(self.code.module(Path(file).stem), name)


def _import_sklearn(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# --- validation ------------------------------------------------------------------------------
def load_package(path: str | Path) -> ModelPackage:
    """Load and validate the package folder ``path``; :class:`PackageError` lists all problems."""
    folder = Path(path).expanduser().absolute()
    problems: list[Problem] = []
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise PackageError(
            folder,
            [
                Problem(
                    str(folder),
                    "",
                    "no such folder",
                    f"pass the folder that holds {CONFIG_FILE} (see {DOCS})",
                )
            ],
        )
    if not config_path.is_file():
        raise PackageError(
            folder,
            [
                Problem(
                    CONFIG_FILE,
                    "",
                    f"missing in {folder}",
                    f"a model package is a folder with a {CONFIG_FILE} holding the sections model,"
                    f" features and prediction (see {DOCS} or examples/packages/)",
                )
            ],
        )
    raw = _read_yaml(config_path)
    try:
        config = PackageConfig.model_validate(raw)
    except ValidationError as exc:
        raise PackageError(folder, _schema_problems(exc)) from exc
    code = PackageCode.from_folder(folder, label=f"{config.model.name}")
    warnings: list[str] = []
    problems.extend(_check_framework(folder, config, code))
    problems.extend(_check_features(folder, config, code, warnings))
    problems.extend(_check_prediction(config))
    requirements, requirement_problems = _check_requirements(folder, warnings)
    problems.extend(requirement_problems)
    if config.model.framework.type == "sklearn" and (folder / "predictor.py").is_file():
        warnings.append(
            "predictor.py is not used: model.framework.type is sklearn (set type: custom and"
            " class: ... to use it)"
        )
    if problems:
        raise PackageError(folder, problems)
    return ModelPackage(folder, config, code, tuple(requirements), tuple(warnings))


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PackageError(
            path.parent,
            [
                Problem(
                    CONFIG_FILE,
                    "",
                    f"not valid YAML: {where}{problem}",
                    "fix the YAML syntax there (indent with spaces, quote values containing ': ' or '#')",
                )
            ],
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(
            path.parent,
            [
                Problem(
                    CONFIG_FILE, "", f"cannot be read: {exc}", "make it a readable UTF-8 text file"
                )
            ],
        ) from exc
    if data is None:
        raise PackageError(
            path.parent,
            [
                Problem(
                    CONFIG_FILE,
                    "",
                    "is empty",
                    "write the three sections model:, features: and prediction: (start from"
                    f" examples/packages/, see {DOCS})",
                )
            ],
        )
    if not isinstance(data, dict):
        raise PackageError(
            path.parent,
            [
                Problem(
                    CONFIG_FILE,
                    "",
                    f"holds a {type(data).__name__}, not a mapping of sections",
                    "write the three sections model:, features: and prediction: at the top level",
                )
            ],
        )
    return data


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, UnionType, list, Annotated) or get_args(annotation):
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    return []


def _keys_at(parts: Sequence[Any]) -> list[str]:
    """Valid keys of the mapping at ``parts`` (pydantic's location, union tags included)."""
    current: list[type[BaseModel]] = [PackageConfig]
    for part in parts:
        if isinstance(part, int):
            continue
        tagged = [cls for cls in current if _tag_of(cls) == part]
        if tagged:  # a union tag pydantic put in the location: keep that member
            current = tagged
            continue
        following: list[type[BaseModel]] = []
        for cls in current:
            for name, info in cls.model_fields.items():
                if part in (name, info.alias):
                    following.extend(_models_in(info.annotation))
        current = following or current
    keys = {info.alias or name for cls in current for name, info in cls.model_fields.items()}
    return sorted(keys)


def _tag_of(cls: type[BaseModel]) -> str | None:
    info = cls.model_fields.get("type")
    args = get_args(info.annotation) if info is not None else ()
    return str(args[0]) if len(args) == 1 else None


def _key(parts: Sequence[Any]) -> str:
    out = ""
    for i, part in enumerate(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif (
            i > 0 and parts[i - 1] in ("framework", "preprocess") and part in ("sklearn", "custom")
        ):
            continue  # the union tag pydantic adds to the location
        else:
            out += f".{part}" if out else str(part)
    return out


def _clean_parts(parts: Sequence[Any]) -> list[Any]:
    return [
        p
        for i, p in enumerate(parts)
        if not (
            i > 0 and parts[i - 1] in ("framework", "preprocess") and p in ("sklearn", "custom")
        )
    ]


def _schema_problems(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        parts = _clean_parts(item["loc"])
        key = _key(parts)
        kind = item["type"]
        value = item.get("input")
        if kind == "extra_forbidden":
            valid = _keys_at(item["loc"][:-1])
            close = difflib.get_close_matches(str(parts[-1]), valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            tag = item["loc"][-2] if len(item["loc"]) > 1 else None
            if tag in ("sklearn", "custom") and parts[-1] in _keys_at(
                _clean_parts(item["loc"][:-1])
            ):
                hint = f"{parts[-1]!r} belongs to type: {'custom' if tag == 'sklearn' else 'sklearn'}; "
            problems.append(
                Problem(
                    CONFIG_FILE,
                    key,
                    "unknown key",
                    f"{hint}remove it or use one of: {', '.join(valid)}",
                )
            )
        elif kind == "missing":
            problems.append(
                Problem(CONFIG_FILE, key, "required key is missing", f"add {key}: (see {DOCS})")
            )
        elif kind in ("union_tag_not_found", "union_tag_invalid"):
            problems.append(
                Problem(
                    CONFIG_FILE,
                    f"{key}.type",
                    "missing"
                    if kind == "union_tag_not_found"
                    else f"unknown type {value!r}"
                    if not isinstance(value, dict)
                    else f"unknown type {value.get('type')!r}",
                    "set type: sklearn (with estimator: sklearn.<module>.<Class>) or type: custom"
                    " (with file: and class:)",
                )
            )
        elif kind == "string_pattern_mismatch":
            fixes = {
                "model.name": "letters, digits, '.', '_' and '-' (at most 100), e.g."
                " customer-propensity",
                "prediction.service": "lowercase letters, digits and '-' (a DNS label), e.g."
                " customer-propensity",
                "prediction.version": "letters, digits, '.', '_', '+', '-', e.g. 1.0.0",
            }
            problems.append(
                Problem(
                    CONFIG_FILE,
                    key,
                    f"{value!r} is not a valid value",
                    f"use {fixes.get(key, 'a value matching ' + str(item.get('ctx', {})))}",
                )
            )
        elif kind == "model_type" or kind == "dict_type":
            problems.append(
                Problem(
                    CONFIG_FILE,
                    key,
                    f"must be a mapping of keys, got {value!r}",
                    f"indent its keys under {key}: (valid keys: {', '.join(_keys_at(parts))})",
                )
            )
        else:
            problems.append(
                Problem(
                    CONFIG_FILE,
                    key,
                    f"{item['msg']} (got {value!r})",
                    f"change {key} to a valid value (see {DOCS})",
                )
            )
    return problems


def _allowed_list() -> str:
    return ", ".join(SKLEARN_MODULES)


def _check_sklearn(path: str, key: str, method: str) -> tuple[Any | None, list[Problem]]:
    """Resolve an allow-listed scikit-learn class having ``method``."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        found = [
            f"{m}.{path}" for m in SKLEARN_MODULES if hasattr(importlib.import_module(m), path)
        ]
        fix = (
            f"write the full path, {found[0]}"
            if found
            else f"write sklearn.<module>.<Class>, from one of: {_allowed_list()}"
        )
        return None, [Problem(CONFIG_FILE, key, f"{path!r} is not a dotted path", fix)]
    if module_name not in SKLEARN_MODULES:
        found = [
            f"{m}.{class_name}"
            for m in SKLEARN_MODULES
            if hasattr(importlib.import_module(m), class_name)
        ]
        fix = (
            f"use {found[0]}"
            if found
            else f"use a class of one of: {_allowed_list()}; anything else goes in a custom"
            " class (type: custom)"
        )
        return None, [
            Problem(
                CONFIG_FILE,
                key,
                f"module {module_name!r} is not an allowed scikit-learn module",
                fix,
            )
        ]
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        names = [n for n in dir(module) if isinstance(getattr(module, n), type)]
        close = difflib.get_close_matches(class_name, names, n=1)
        fix = (
            f"did you mean {module_name}.{close[0]}?"
            if close
            else (f"use a class of {module_name}: {', '.join(sorted(names)[:12])}...")
        )
        return None, [Problem(CONFIG_FILE, key, f"{module_name} has no class {class_name!r}", fix)]
    if not hasattr(cls, method):
        what = (
            "a classifier with predict_proba"
            if method == "predict_proba"
            else ("a transformer with transform")
        )
        return None, [
            Problem(
                CONFIG_FILE,
                key,
                f"{path} has no {method}()",
                f"use {what} here"
                + (" (or put it under features.preprocess)" if method == "predict_proba" else ""),
            )
        ]
    return cls, []


def _check_params(cls: Any, params: dict[str, Any], key: str, *, sklearn: bool) -> list[Problem]:
    """Check that ``cls(**params)`` is accepted (names, then scikit-learn's own checks)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    ):
        accepted = [
            n
            for n, p in signature.parameters.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        unknown = [k for k in params if k not in accepted]
        if unknown:
            problems = []
            for name in unknown:
                close = difflib.get_close_matches(name, accepted, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                problems.append(
                    Problem(
                        CONFIG_FILE,
                        f"{key}.{name}",
                        f"{cls.__name__} has no parameter {name!r}",
                        f"{hint}valid parameters: {', '.join(accepted) or 'none'}",
                    )
                )
            return problems
    try:
        instance = cls(**params)
        validate = getattr(instance, "_validate_params", None) if sklearn else None
        if validate is not None:
            validate()
    except Exception as exc:  # constructors and sklearn's checks raise many types
        # scikit-learn names the parameter: "The 'C' parameter of LogisticRegression must be ..."
        named = re.match(r"The '([A-Za-z_][A-Za-z0-9_]*)' parameter of", str(exc))
        if named and named.group(1) in params:
            param = named.group(1)
            return [
                Problem(
                    CONFIG_FILE,
                    f"{key}.{param}",
                    f"{params[param]!r} is not accepted: {str(exc).rstrip('.')}",
                    f"give {param} a value as the message says, or remove it to use the default",
                )
            ]
        return [
            Problem(
                CONFIG_FILE,
                key,
                f"{cls.__name__}(**{params!r}) fails: {str(exc).rstrip('.')}",
                "change the values under this key",
            )
        ]
    return []


def _import_custom(
    folder: Path, code: PackageCode, file: str, class_name: str, key: str, base: type
) -> tuple[Any | None, list[Problem]]:
    stem = Path(file).stem
    if Path(file).name != file or not file.endswith(".py"):
        return None, [
            Problem(
                CONFIG_FILE,
                f"{key}.file",
                f"{file!r} is not a .py file at the package's top level",
                "name a file next to config.yaml, e.g. predictor.py",
            )
        ]
    if not (folder / file).is_file():
        present = sorted(p.name for p in folder.glob("*.py"))
        return None, [
            Problem(
                CONFIG_FILE,
                f"{key}.file",
                f"{file} does not exist in the package",
                f"create {file} next to config.yaml or name one of: {', '.join(present) or 'none'}",
            )
        ]
    try:
        module = code.module(stem)
    except Exception as exc:  # user code can raise anything
        frames = traceback.extract_tb(exc.__traceback__)
        line = next((f.lineno for f in reversed(frames) if f.filename.endswith(f"/{file}")), None)
        if isinstance(exc, SyntaxError) and exc.lineno:
            line = exc.lineno
        where = f" at line {line}" if line else ""
        return None, [
            Problem(
                file,
                "",
                f"importing it failed{where}: {type(exc).__name__}: {exc}",
                "fix the code (package files import each other with relative imports, e.g."
                " `from .helpers import f`; third-party packages go in requirements.txt)",
            )
        ]
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        classes = [
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and v.__module__ == module.__name__
        ]
        close = difflib.get_close_matches(class_name, classes, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return None, [
            Problem(
                CONFIG_FILE,
                f"{key}.class",
                f"{file} defines no class {class_name!r}",
                f"{hint}classes in {file}: {', '.join(classes) or 'none'}",
            )
        ]
    if not issubclass(cls, base):
        return None, [
            Problem(
                file,
                f"class {class_name}",
                f"does not subclass storeml.models.base.{base.__name__} (named by {key}.class)",
                f"declare it `class {class_name}({base.__name__}):` after"
                f" `from storeml.models.base import {base.__name__}` (see {DOCS})",
            )
        ]
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        return None, [
            Problem(
                file,
                f"class {class_name}",
                f"leaves abstract methods unimplemented: {missing}",
                f"implement {missing} (see {DOCS})",
            )
        ]
    return cls, []


def _check_framework(folder: Path, config: PackageConfig, code: PackageCode) -> list[Problem]:
    model = config.model
    framework = model.framework
    key = "model.framework"
    if isinstance(framework, SklearnFramework):
        cls, problems = _check_sklearn(framework.estimator, f"{key}.estimator", "predict_proba")
        sklearn = True
    else:
        cls, problems = _import_custom(
            folder, code, framework.file, framework.class_name, key, Predictor
        )
        sklearn = False
    if cls is None:
        return problems
    problems.extend(
        _check_params(cls, dict(model.hyperparameters), "model.hyperparameters", sklearn=sklearn)
    )
    if model.global_hyperparameters and not problems:
        merged = {**model.hyperparameters, **model.global_hyperparameters}
        problems.extend(_check_params(cls, merged, "model.global_hyperparameters", sklearn=sklearn))
    return problems


def _check_features(
    folder: Path, config: PackageConfig, code: PackageCode, warnings: list[str]
) -> list[Problem]:
    kind = config.model.kind
    section = config.features
    problems: list[Problem] = []
    if not section.profile_fields and not section.derived:
        return [
            Problem(
                CONFIG_FILE,
                "features",
                "no features listed",
                "list feature names under features.profile_fields and/or features.derived;"
                f" {kind} features: {', '.join(feature_names(kind))}",
            )
        ]
    seen: set[str] = set()
    for source, names in (("profile", section.profile_fields), ("derived", section.derived)):
        list_key = "features.profile_fields" if source == "profile" else "features.derived"
        for i, name in enumerate(names):
            key = f"{list_key}[{i}]"
            feature = FEATURES[kind].get(name)
            if name in seen:
                problems.append(
                    Problem(CONFIG_FILE, key, f"feature {name!r} is listed twice", "list it once")
                )
                continue
            seen.add(name)
            if feature is None:
                other = [k for k in KINDS if name in FEATURES[k]]
                close = difflib.get_close_matches(name, feature_names(kind), n=1)
                hint = (
                    f"did you mean {close[0]!r}? "
                    if close
                    else f"{name!r} is a {other[0]} feature; "
                    if other
                    else ""
                )
                problems.append(
                    Problem(
                        CONFIG_FILE,
                        key,
                        f"unknown {kind} feature {name!r}",
                        f"{hint}{source} {kind} features: "
                        f"{', '.join(feature_names(kind, source)) or 'none'}",
                    )
                )
            elif feature.source != source:
                right = (
                    "features.derived"
                    if feature.source == "derived"
                    else ("features.profile_fields")
                )
                problems.append(
                    Problem(
                        CONFIG_FILE,
                        key,
                        f"{name!r} is a {feature.source} feature, not a {source} one",
                        f"move it to {right}",
                    )
                )
    problems.extend(_check_preprocess(folder, config, code, seen, warnings))
    return problems


def _check_preprocess(
    folder: Path, config: PackageConfig, code: PackageCode, names: set[str], warnings: list[str]
) -> list[Problem]:
    kind = config.model.kind
    step = config.features.preprocess
    key = "features.preprocess"
    problems: list[Problem] = []
    vectorizer = False
    if isinstance(step, SklearnStep):
        cls, problems = _check_sklearn(step.estimator, f"{key}.estimator", "transform")
        if cls is not None:
            problems.extend(_check_params(cls, dict(step.params), f"{key}.params", sklearn=True))
            vectorizer = step.estimator.startswith("sklearn.feature_extraction.text.")
    elif isinstance(step, CustomStep):
        cls, problems = _import_custom(folder, code, step.file, step.class_name, key, Model)
        if cls is not None:
            if cls.transform is Model.transform:
                problems.append(
                    Problem(
                        step.file,
                        f"class {step.class_name}",
                        "does not implement transform",
                        "implement transform(self, X) returning the preprocessed frame",
                    )
                )
            problems.extend(_check_params(cls, dict(step.params), f"{key}.params", sklearn=False))
    texts = [n for n in names if n in FEATURES[kind] and FEATURES[kind][n].dtype == "text"]
    if problems or config.model.framework.type != "sklearn":
        return problems
    # A built-in estimator gets the features as they are: text must be vectorised first.
    if texts and not isinstance(step, CustomStep):
        if not vectorizer:
            problems.append(
                Problem(
                    CONFIG_FILE,
                    key,
                    f"text feature {texts[0]!r} goes to a scikit-learn estimator without a vectorizer",
                    "add preprocess: {type: sklearn, estimator:"
                    " sklearn.feature_extraction.text.TfidfVectorizer}, or use a custom predictor",
                )
            )
        elif len(names) > 1:
            problems.append(
                Problem(
                    CONFIG_FILE,
                    "features",
                    f"a text vectorizer takes one text feature, got"
                    f" {len(names)}: {', '.join(sorted(names))}",
                    f"keep only {texts[0]!r}, or combine features in a custom preprocess step",
                )
            )
    elif vectorizer and not texts:
        problems.append(
            Problem(
                CONFIG_FILE,
                f"{key}.estimator",
                f"{step.estimator} needs a text feature"  # type: ignore[union-attr]
                " and none is listed",
                f"list a text feature (e.g. 'text' of product packages) or use a numeric step"
                f" such as sklearn.preprocessing.StandardScaler (kind {kind})",
            )
        )
    return problems


def parse_type(text: str) -> str:
    """Normalise an output column type; raises ValueError saying what is wrong."""
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|[<>,:]|\S", text)
    position = 0

    def take(expected: str | None = None) -> str:
        nonlocal position
        if position >= len(tokens):
            raise ValueError(
                f"type {text!r} ends early" + (f"; expected {expected!r}" if expected else "")
            )
        token = tokens[position]
        if expected is not None and token != expected:
            raise ValueError(f"type {text!r}: expected {expected!r}, found {token!r}")
        position += 1
        return token

    def parse() -> str:
        name = take().lower()
        if name == "array":
            take("<")
            inner = parse()
            take(">")
            return f"array<{inner}>"
        if name == "map":
            take("<")
            key = parse()
            if key != "string":
                raise ValueError(f"type {text!r}: map keys must be string, not {key}")
            take(",")
            value = parse()
            take(">")
            return f"map<string,{value}>"
        if name == "struct":
            take("<")
            fields = []
            while True:
                field_name = take()
                if not re.match(_IDENTIFIER, field_name):
                    raise ValueError(f"type {text!r}: {field_name!r} is not a field name")
                take(":")
                fields.append(f"{field_name}:{parse()}")
                if take() == ">":
                    break
                if tokens[position - 1] != ",":
                    raise ValueError(f"type {text!r}: expected ',' or '>' in struct")
            return f"struct<{','.join(fields)}>"
        if name not in OUTPUT_TYPES:
            close = difflib.get_close_matches(name, OUTPUT_TYPES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown type {name!r}{hint}")
        return name

    result = parse()
    if position != len(tokens):
        raise ValueError(f"type {text!r} has extra text after {result!r}")
    return result


def _check_prediction(config: PackageConfig) -> list[Problem]:
    prediction = config.prediction
    problems = []
    seen: set[str] = set()
    for i, output in enumerate(prediction.outputs):
        key = f"prediction.outputs[{i}]"
        if not re.match(_IDENTIFIER, output.name):
            problems.append(
                Problem(
                    CONFIG_FILE,
                    f"{key}.name",
                    f"{output.name!r} is not a column name",
                    "use letters, digits and '_', starting with a letter or '_'",
                )
            )
        elif output.name in seen:
            problems.append(
                Problem(
                    CONFIG_FILE,
                    f"{key}.name",
                    f"output column {output.name!r} is listed twice",
                    "give every output column its own name",
                )
            )
        seen.add(output.name)
        try:
            parse_type(output.type)
        except ValueError as exc:
            problems.append(
                Problem(
                    CONFIG_FILE,
                    f"{key}.type",
                    str(exc),
                    f"use one of {', '.join(OUTPUT_TYPES)}, or array<T>, map<string,T>,"
                    " struct<name:T,...>",
                )
            )
    if prediction.schedule is not None:
        try:
            parse_cron(prediction.schedule)
        except ConfigError as exc:
            problems.append(
                Problem(
                    CONFIG_FILE,
                    "prediction.schedule",
                    str(exc),
                    "write five fields 'minute hour day-of-month month day-of-week', e.g."
                    " '0 3 * * *' (03:00 every day)",
                )
            )
    return problems


def _check_requirements(folder: Path, warnings: list[str]) -> tuple[list[str], list[Problem]]:
    path = folder / REQUIREMENTS_FILE
    if not path.is_file():
        return [], []
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    requirements: list[str] = []
    problems: list[Problem] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        key = f"line {number}"
        if line.startswith("-"):
            problems.append(
                Problem(
                    REQUIREMENTS_FILE,
                    key,
                    f"pip option {line!r} is not supported",
                    "list one requirement per line, e.g. scikit-learn>=1.5",
                )
            )
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(
                Problem(
                    REQUIREMENTS_FILE,
                    key,
                    f"{line!r} is not a requirement: {str(exc).splitlines()[0]}",
                    "write name[extras] and an optional version specifier, e.g. numpy>=1.26",
                )
            )
            continue
        requirements.append(str(requirement))
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            warnings.append(f"{REQUIREMENTS_FILE} {key}: {requirement.name} is not installed here")
            continue
        if requirement.specifier and not requirement.specifier.contains(
            installed, prereleases=True
        ):
            warnings.append(
                f"{REQUIREMENTS_FILE} {key}: installed {requirement.name} {installed} does not"
                f" satisfy {requirement.specifier}"
            )
    return requirements, problems
