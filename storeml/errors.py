"""The storeml exception tree. Every error we raise on purpose derives from ``StoremlError``.

    StoremlError
    ├── ConfigError          a setting, config file or model package is invalid (names key and file)
    ├── CodecError           a message could not be encoded or decoded
    │   └── UnknownSchemaError   the message names a writer schema we do not know
    ├── ConnectorError       talking to Kafka, Redis, MLflow or the filesystem failed
    │   ├── StackError       the local stack (broker, Redis, MLflow, Java) could not be started
    │   └── FencedError      a transactional producer was fenced by a newer one with its id
    ├── StateError           the profile state store is missing a version or is inconsistent
    └── ModelError           a model could not be loaded or failed to score
        └── ArtifactUnavailableError  the artifact store did not answer (worth retrying)

Messages name the bad value and say how to fix it.
"""

from __future__ import annotations

__all__ = [
    "StoremlError",
    "ConfigError",
    "CodecError",
    "UnknownSchemaError",
    "ConnectorError",
    "StackError",
    "FencedError",
    "StateError",
    "ModelError",
    "ArtifactUnavailableError",
]


class StoremlError(Exception):
    """Root of every error storeml raises on purpose."""


class ConfigError(StoremlError):
    """A setting, config file or model package is invalid."""


class CodecError(StoremlError):
    """A message could not be encoded or decoded."""


class UnknownSchemaError(CodecError):
    """A message names a writer schema (fingerprint) that is not in the schema folder."""


class ConnectorError(StoremlError):
    """Talking to an external system (Kafka, Redis, MLflow, filesystem) failed."""


class StackError(ConnectorError):
    """The local development stack could not be started or reached."""


class FencedError(ConnectorError):
    """A transactional Kafka producer was fenced (a newer producer took its transactional id).

    The producer is unusable: drop it and build a new one, which fences the other in turn.
    """


class StateError(StoremlError):
    """The profile state store is missing a version or is inconsistent."""


class ModelError(StoremlError):
    """A model could not be loaded or failed to score."""


class ArtifactUnavailableError(ModelError):
    """A model version's files could not be fetched: the artifact store did not answer.

    Unlike a file that fails its digest or cannot be unpickled, this may pass: the stream waits
    for the store (bounded) instead of publishing the version's rows unscored, so that a replay
    publishes what the first attempt would have.
    """
