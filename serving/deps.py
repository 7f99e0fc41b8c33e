"""Dependencies every route shares: the app's state and the API-key check.

Authorisation is a dependency declared on each resource's router (``APIRouter(dependencies=
[Depends(authorized("read"))])``), so no route of a router can leave it out. The check, in order:

1. no key, a malformed, unknown or revoked key: **401** ``unauthorized``;
2. a store key on another store's path: **404** ``not_found``, with the body a missing profile
   gets, so that a key cannot probe which store ids exist;
3. a key without the route's scope: **403** ``forbidden``;
4. past the key's rate limit (``serve_rate_limit`` per second, bursts of twice that): **429**
   ``rate_limited`` with ``Retry-After``.

Keys are taken from ``Authorization: Bearer <key>`` or ``X-API-Key``, compared in constant time
(:class:`storeml.connectors.api_keys.KeyLookup`) and never logged: logs name the key id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from storeml.connectors.api_keys import ADMIN, SCOPES
from storeml.serving.errors import problem

if TYPE_CHECKING:
    from storeml.serving.app import Serving

__all__ = ["Caller", "State", "authorized", "serving", "RateLimiter", "not_found"]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key.")


@dataclass(frozen=True)
class Caller:
    """Who is asking: the key's id, its store (None for an admin key) and its scopes."""

    key_id: str
    store: str | None
    scopes: frozenset[str]


async def serving(request: Request) -> Serving:
    """The app's :class:`~storeml.serving.app.Serving` state.

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a thread
    hop per request that cost a quarter of a lookup's CPU.
    """
    return request.app.state.serving  # type: ignore[no-any-return]


#: A route's parameter ``state: State`` is the app's :class:`~storeml.serving.app.Serving`.
State = Annotated[Any, Depends(serving)]


def not_found(kind: str, store: str, entity: str | None = None) -> Exception:
    """The 404 of a missing profile, also given for a store the caller may not see."""
    what = f"no {kind} profile {entity!r} in store {store!r}" if entity else f"no store {store!r}"
    return problem(404, what)


class RateLimiter:
    """A token bucket per key id: ``rate`` tokens a second, at most ``2 * rate`` saved up."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(2.0 * rate, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key_id: str) -> float:
        """0 when the request may go on, else the seconds until a token is there."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        tokens, then = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key_id] = (tokens - 1.0, now)
        return 0.0


_ADMIN_CALLER = Caller("(auth off)", None, frozenset(SCOPES))


@cache
def authorized(scope: str) -> Callable[..., Awaitable[Caller]]:
    """The dependency that admits a caller with ``scope`` to the route's ``{store}``.

    Cached per scope, so a router's dependency and a handler's ``Depends(authorized(...))`` are
    one dependency, run once per request.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; scopes are {', '.join(SCOPES)}")

    async def check(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
    ) -> Caller:
        state: Serving = request.app.state.serving
        if not state.settings.serve_auth:
            caller = _ADMIN_CALLER
        else:
            presented = bearer.credentials if bearer is not None else header
            if not presented:
                raise problem(
                    401,
                    "an API key is required (Authorization: Bearer <key> or X-API-Key)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            record = await state.keys.check(presented)
            if record is None:
                raise problem(
                    401,
                    "the API key is unknown or revoked",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            caller = Caller(
                record.key_id, None if record.store == ADMIN else record.store, record.scopes
            )
        store = request.path_params.get("store")
        if caller.store is not None and store is not None and store != caller.store:
            raise not_found(_kind_of(request), store, request.path_params.get("entity_id"))
        if scope not in caller.scopes:
            raise problem(403, f"this API key lacks the {scope!r} scope")
        wait = state.limiter.take(caller.key_id)
        if wait > 0:
            raise problem(
                429,
                "rate limit of this API key reached",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        request.state.key_id = caller.key_id
        return caller

    check.__name__ = f"authorized_{scope}"
    return check


def _kind_of(request: Request) -> str:
    path = request.url.path
    return "product" if "/products" in path else "customer"
