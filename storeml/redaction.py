"""Keeping secrets out of what people read: settings prints, log lines, exception messages.

Two rules, used everywhere a value may reach a human or a Spark plan:

- :func:`redact_url` replaces the password in the userinfo of every URL inside a text
  (``redis://user:pw@host`` -> ``redis://user:***@host``; a lone ``redis://pw@host``, which Redis
  reads as a password, loses it too). Call it on any message built from a URI or a library error.
- :func:`is_secret_key` decides whether a configuration key (a librdkafka property such as
  ``sasl.password``, ``ssl.key.pem`` or ``sasl.oauthbearer.client.secret``, a setting name, a Spark
  option) holds a secret. Over-masking is the safe mistake: a public certificate in PEM is masked.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import SecretStr

__all__ = [
    "MASK",
    "SecretRedactingFilter",
    "is_secret_key",
    "mask_value",
    "redact_url",
    "redact_text",
]

MASK = "***"

#: Keys whose values are secrets: passwords, tokens, client secrets, private keys (inline PEM),
#: JAAS and OAUTHBEARER configs (which embed credentials), anything "credential".
_SECRET_KEY = re.compile(
    r"password|passwd|secret|token|credential|private|jaas|oauthbearer\.config|key\.pem"
    r"|api[._-]?key",
    re.IGNORECASE,
)

#: scheme://userinfo@ where userinfo is "user:password" or a bare password/token.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")


def is_secret_key(name: str) -> bool:
    """Whether a configuration key (setting, librdkafka property, option) holds a secret."""
    return bool(_SECRET_KEY.search(name))


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo = match.group("userinfo")
    user, sep, _ = userinfo.partition(":")
    # "user:pw" keeps the user; a bare "token@" (Redis reads it as a password) is all secret
    shown = f"{user}:{MASK}" if sep else MASK
    return f"{match.group('scheme')}{shown}@"


def redact_url(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it replaced by ***."""
    return _URL_USERINFO.sub(_mask_userinfo, text)


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """:func:`redact_url`, plus every literal of ``secrets`` (at least 4 characters) masked."""
    out = redact_url(text)
    for secret in secrets:
        if len(secret) >= 4:
            out = out.replace(secret, MASK)
    return out


def mask_value(key: str, value: Any) -> Any:
    """What to show for setting or property ``key``: secrets masked, URLs redacted, dicts walked."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    if value is not None and is_secret_key(key):
        return MASK
    if isinstance(value, str):
        return redact_url(value)
    return value


class SecretRedactingFilter(logging.Filter):
    """A logging filter that redacts URL passwords and the given secrets from every record.

    The CLI installs it on the root handlers, so a library that logs a URI with credentials (or
    an exception text quoting one) prints it masked.
    """

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:  # a traceback may quote a URI too
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.secrets)
        return True
