"""How storeml reaches Redis: address, ACL user, password and TLS, as one picklable value.

:class:`RedisTarget` travels from the settings to every executor (inside the job context). Its URL
never holds a password: :meth:`RedisTarget.parse` moves one found in ``redis://user:pw@host`` to
the ``password`` field (a :class:`~pydantic.SecretStr`), so the URL can go into messages, logs and
Spark plans as it is. :meth:`RedisTarget.connect` hands the credentials to redis-py, which sends
``AUTH <username> <password>`` (``AUTH <password>`` without a user) on every new connection.

TLS is the ``rediss://`` scheme; the CA, client certificate and key files are options of the target
(mutual TLS when both certificate and key are set). :data:`STREAM_ACL`, :data:`LOOKUP_ACL`,
:data:`MONITOR_ACL` and :data:`MONITOR_READ_ACL` list the Redis commands the stream, the lookups,
the monitor and the monitor's readers send, for ACL users of their own (``docs/security.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import SecretStr

from storeml.errors import ConfigError, ConnectorError
from storeml.redaction import redact_url

__all__ = [
    "RedisTarget",
    "STREAM_ACL",
    "LOOKUP_ACL",
    "MONITOR_ACL",
    "MONITOR_READ_ACL",
    "redis_error",
]

#: ACL rules (after ``user <name> on >password``) for the stream's user: the profile keys under
#: ``{prefix}`` only, and the commands of the guarded writes (Lua: EVALSHA/EVAL, which run
#: HGET/HMGET/DEL/HSET and ZADD/ZREM on the score index), expiry deletes, lookups (HGETALL, SCAN)
#: and the health PING.
STREAM_ACL = (
    "resetkeys ~{prefix}:* resetchannels -@all +ping +hello +auth +select"
    " +script|load +evalsha +eval +hget +hmget +hset +del +zadd +zrem +hgetall +scan"
)
#: ACL rules for a read-only lookup user (``storeml lookup``, ``storeml segments export``,
#: services reading profiles); ZRANGE reads the score index.
LOOKUP_ACL = (
    "resetkeys ~{prefix}:* resetchannels -@all +ping +hello +auth +select +hgetall +scan +zrange"
)
#: The read commands of the monitor's read plans (``connectors/monitor_queries.py``: the
#: dashboard, ``storeml monitor status``, ``storeml models compare --live``).
_MONITOR_READS = "+smembers +hgetall +hget +hvals +hmget +zrevrange"
#: ACL rules for the monitor's user (``storeml monitor run``): the keys under
#: ``{prefix}:monitor:`` only. Its writes are SADD and the Lua scripts of
#: ``connectors/monitor_scripts.py`` (EVALSHA; redis-py's pipelines check them with SCRIPT EXISTS
#: and load them with SCRIPT LOAD), whose HSET/HGET/HDEL/ZADD/ZCARD/ZRANGE/ZREMRANGEBYRANK are
#: checked against these rules too; plus the reads, so ``storeml monitor status`` runs as it.
MONITOR_ACL = (
    "resetkeys ~{prefix}:monitor:* resetchannels -@all +ping +hello +auth +select"
    " +script|exists +script|load +evalsha +sadd +hset +hdel +zadd +zcard +zrange"
    " +zremrangebyrank " + _MONITOR_READS
)
#: ACL rules for a user that only reads the monitor's results (``storeml monitor status``,
#: ``storeml models compare --live``). The API's user (``+@read`` on ``{prefix}:*``,
#: docs/serving.md) already has these commands, which the dashboard sends.
MONITOR_READ_ACL = (
    "resetkeys ~{prefix}:monitor:* resetchannels -@all +ping +hello +auth +select " + _MONITOR_READS
)


@dataclass(frozen=True)
class RedisTarget:
    """A Redis to connect to: ``url`` (no password in it) plus credentials and TLS files."""

    url: str
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    ssl_check_hostname: bool = True

    @classmethod
    def parse(cls, url: str, **options: Any) -> RedisTarget:
        """A target from ``url``; a user or password inside it moves to the fields.

        Raises :class:`ConfigError` (without the password) when the URL and ``options`` both
        name a user or a password, or TLS files are given for a ``redis://`` URL.
        """
        url, user, password = split_userinfo(url)
        if user and options.get("username") and options["username"] != user:
            raise ConfigError(
                f"redis_url {url} names user {user!r} and redis_username is"
                f" {options['username']!r}; keep one of them"
            )
        if password is not None and options.get("password") is not None:
            raise ConfigError(
                f"redis_url {url} carries a password and redis_password is set too; keep one"
                " (STOREML_REDIS_PASSWORD is the one kept out of the URL)"
            )
        if user:
            options["username"] = user
        if password is not None:
            options["password"] = SecretStr(password)
        target = cls(url=url, **options)
        target.check()
        return target

    def check(self) -> None:
        """Raise :class:`ConfigError` when the URL and the TLS options do not fit together."""
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"redis_url {self.url}: scheme {scheme!r} is not redis://, rediss:// (TLS) or"
                " unix://"
            )
        tls_files = [self.ssl_ca_certs, self.ssl_certfile, self.ssl_keyfile]
        if scheme != "rediss" and any(tls_files):
            raise ConfigError(
                f"redis_url {self.url}: TLS files (redis_ssl_*) are set but the URL is not"
                " rediss://; use rediss://host:port/db for TLS, or unset them"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ConfigError(
                "redis_ssl_certfile and redis_ssl_keyfile go together (the client certificate"
                " and its private key, for mutual TLS); set both or neither"
            )

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

    def describe(self) -> str:
        """The address for messages: the URL (no password) and the ACL user, if any."""
        shown = redact_url(self.url)
        return f"{shown} as user {self.username!r}" if self.username else shown

    def public(self) -> RedisTarget:
        """This target without its password (for copies that must not carry one)."""
        return replace(self, password=None)

    def client_options(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments of ``redis.Redis.from_url(self.url, ...)`` (secrets unwrapped)."""
        options: dict[str, Any] = {}
        if self.username:
            options["username"] = self.username
        if self.password is not None:
            options["password"] = self.password.get_secret_value()
        if self.tls:
            options.update(
                ssl_cert_reqs=self.ssl_cert_reqs,
                ssl_check_hostname=self.ssl_check_hostname and self.ssl_cert_reqs != "none",
            )
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name):
                    options[name] = getattr(self, name)
        options.update(overrides)
        return options

    def connect(self, **overrides: Any) -> Any:
        """A ``redis.Redis`` client (connects on first command, authenticating then)."""
        import redis

        return redis.Redis.from_url(self.url, **self.client_options(**overrides))

    def __str__(self) -> str:
        return self.describe()


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, user, password)``; ``redis://pw@host`` is a password alone."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    if not sep:  # redis://secret@host: Redis (and redis-py) read a lone userinfo as the password
        user, password = "", user
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return clean, unquote(user) or None, unquote(password) if password else None


def redis_error(action: str, target: RedisTarget, exc: BaseException) -> ConnectorError:
    """A :class:`ConnectorError` for a failed ``action``, naming the address and the fix.

    Authentication failures say which settings to check; the password never appears (the URL
    holds none, and redis-py's own messages quote none).
    """
    text = redact_url(str(exc))
    lowered = text.lower()
    if "auth" in lowered or "wrongpass" in lowered or "username-password" in lowered:
        hint = (
            "Redis refused the credentials; check STOREML_REDIS_USERNAME and"
            " STOREML_REDIS_PASSWORD (and the server's ACL, docs/security.md)"
        )
    elif "noperm" in lowered or "no permissions" in lowered:
        hint = (
            "the ACL user lacks a command or key pattern; grant the rules in"
            " docs/security.md (storeml.connectors.redis_client: STREAM_ACL, MONITOR_ACL, ...)"
        )
    else:
        hint = "check STOREML_REDIS_URL (and the redis_ssl_* files for rediss://)"
    return ConnectorError(f"cannot {action} Redis at {target.describe()}: {text}; {hint}")
