"""Integrity of model bundles: SHA-256 digests of their files, and the private download cache.

Store files are unpickled (``joblib``) and package code inside them is executed, so a bundle is
code. Its files are chained by digests (the trust model is in ``docs/model-packages.md``)::

    model-version tag storeml.bundle_sha256 ──▶ index.json ──▶ "sha256" of every file it lists

:func:`storeml.models.store_models.write_bundle` records each file's digest in ``index.json``;
registration records the digest of ``index.json`` itself as the model-version tag
``storeml.bundle_sha256`` (:func:`bundle_digest`;
:data:`storeml.connectors.mlflow_registry.DIGEST_TAG`). Loading reads each file once into memory, checks it
(:func:`read_verified`) and unpickles those same bytes, so a file swapped between the check and
the load is never used.

Downloads of remote versions land in a per-user folder (:func:`default_cache_dir`) that
:func:`private_dir` creates with mode 0700 and refuses when another user owns it or others may
write to it: a shared, predictable ``/tmp`` path would let another local user pre-seed it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from storeml.errors import ConfigError, ModelError

__all__ = [
    "CACHE_DIR_ENV",
    "sha256_hex",
    "file_sha256",
    "bundle_digest",
    "read_verified",
    "default_cache_dir",
    "private_dir",
]

#: Environment variable (the ``model_cache_dir`` setting) that executors read for the cache.
CACHE_DIR_ENV = "STOREML_MODEL_CACHE_DIR"

_INDEX_FILE = "index.json"  # store_models.INDEX_FILE (not imported: it imports this module)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_digest(folder: str | Path) -> str:
    """The digest registration records for a bundle folder: SHA-256 of its ``index.json``."""
    return file_sha256(Path(folder) / _INDEX_FILE)


def read_verified(path: Path, expected: str | None, what: str) -> bytes:
    """The bytes of ``path``, checked against ``expected`` (hex SHA-256; None: not checked).

    ``what`` names the model and version in the error. A mismatch raises :class:`ModelError`
    naming the file, both digests and what to do; the bytes are never returned then.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(
            f"{what}: cannot read model file {path}: {exc}; the bundle is incomplete"
        ) from exc
    if expected is not None:
        actual = sha256_hex(data)
        if actual != expected:
            raise ModelError(
                f"{what}: file {path} has SHA-256 {actual}, but the version recorded {expected};"
                " the file was changed after registration (or damaged): do not serve it; restore"
                " the artifact store's copy or register a new version"
            )
    return data


def default_cache_dir() -> Path:
    """Where downloaded versions go when ``model_cache_dir`` is not set.

    ``$STOREML_MODEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/storeml/models``, else
    ``~/.cache/storeml/models``: per user, never a shared temporary folder.
    """
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser().absolute() / "storeml" / "models"


def private_dir(path: str | Path) -> Path:
    """``path`` as a folder only this user can write: created with mode 0700, else checked.

    Refuses (:class:`ConfigError`) a path that is not a folder, a folder owned by another user,
    and one that the group or others may write to: whoever can write there can plant a model
    file that this process would unpickle. Symbolic links are followed and the target is checked.
    """
    folder = Path(path)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as exc:
        raise ConfigError(
            f"model cache folder {folder}: cannot create it ({exc}); set"
            f" {CACHE_DIR_ENV} (setting model_cache_dir) to a folder this user can write"
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"model cache folder {folder} is not a folder; set {CACHE_DIR_ENV} elsewhere"
        )
    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is not None and info.st_uid != uid:
        raise ConfigError(
            f"model cache folder {folder} is owned by uid {info.st_uid}, not by this user (uid"
            f" {uid}): another user could plant model files there; remove it or set"
            f" {CACHE_DIR_ENV} (setting model_cache_dir) to a folder of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"model cache folder {folder} is writable by its group or by others (mode"
            f" {stat.S_IMODE(info.st_mode):o}): they could plant model files there; run"
            f" `chmod 700 {folder}` or set {CACHE_DIR_ENV} to a private folder"
        )
    return folder
