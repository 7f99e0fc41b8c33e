"""The storeml exception tree. Every error we raise on purpose derives from ``StoremlError``.

    StoremlError
    ├── ConfigError          a setting, config file or model package is invalid (names key and file)
    ├── CodecError           a message could not be encoded or decoded
    │   └── UnknownSchemaError   the message names a writer schema we do not know
    ├── ConnectorError       talking to Kafka, Redis, MLflow or the filesystem failed
    │   ├── StackError       the local stack (broker, Redis, MLflow, Java) could not be started
    │   └── FencedError      a transactional producer was fenced by a newer one with its id
    ├── StateError           the profile state store is missing a version or is inconsistent
    ├── ModelError           a model could not be loaded or failed to score
    │   └── ArtifactUnavailableError  the artifact store did not answer (worth retrying)
    └── ApiError             the serving API refused a request (SDK, ``storeml.client``)
        ├── ApiUnauthorizedError  401: no key, or an unknown or revoked one
        ├── ApiForbiddenError     403: the key lacks the scope the route needs
        ├── ApiNotFoundError      404: no such profile (or a store the key cannot see)
        ├── ApiInvalidError       400/422: the request is malformed (names the field)
        ├── ApiRateLimitedError   429: the key's rate limit; ``retry_after`` seconds
        └── ApiUnavailableError   503 or no answer: Redis, the registry or the API is down

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
    "ApiError",
    "ApiUnauthorizedError",
    "ApiForbiddenError",
    "ApiNotFoundError",
    "ApiInvalidError",
    "ApiRateLimitedError",
    "ApiUnavailableError",
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


class ApiError(StoremlError):
    """The serving API answered with an error (or not at all).

    ``status`` is the HTTP status (0 when the server could not be reached), ``code`` the error
    body's code (``not_found``, ``forbidden``, ...), ``details`` the body's details, if any.
    """

    def __init__(
        self, message: str, *, status: int = 0, code: str = "", details: object = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details


class ApiUnauthorizedError(ApiError):
    """401: the request had no API key, or an unknown or revoked one."""


class ApiForbiddenError(ApiError):
    """403: the key is valid but lacks the scope this route needs."""


class ApiNotFoundError(ApiError):
    """404: no such profile, or a store the key may not see (the two are not told apart)."""


class ApiInvalidError(ApiError):
    """400/422: the request is malformed; the message names the field."""


class ApiRateLimitedError(ApiError):
    """429: the key's rate limit; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ApiUnavailableError(ApiError):
    """503, or no answer: Redis, the registry or the API itself is unavailable."""
