"""The Python SDK of the serving API (``storeml serve``): ``Client`` (sync) and ``AsyncClient``.

::

    from storeml.client import Client

    with Client("http://127.0.0.1:8000", api_key="sml_...") as api:
        profile = api.customer("s1", "c1")           # Profile; profile["propensity"], .freshness
        batch = api.customers("s1", ids)              # any number of ids, chunked transparently
        scores = api.predict("s1", "customer", ids=["c1"], alias="challenger")
        for item in api.iter_segment("s1", "customer", min=0.8):
            ...

Both clients take the same arguments and return the same frozen dataclasses
(``storeml.client_models``); ``AsyncClient``'s methods are coroutines, its ``iter_segment`` and
``export_segment`` async iterators. The API's error answers raise the ``storeml.errors.ApiError``
subclass of their code (401 ``ApiUnauthorizedError``, 403 ``ApiForbiddenError``, 404
``ApiNotFoundError``, 422 ``ApiInvalidError``, 429 ``ApiRateLimitedError`` with ``retry_after``,
503 ``ApiUnavailableError``); a server that does not answer (refused, timed out, cut off mid-way)
raises ``ApiUnavailableError`` too, with ``status`` 0 and the transport error as ``__cause__``.
Nothing is retried: a caller that wants to retry a 429 waits ``retry_after`` seconds.

The key travels in ``Authorization: Bearer``; the client keeps it only in that header (which
httpx masks when printed), and ``repr`` shows the key id, never the key.

Batch lookups and predict by id split their ids into requests of ``batch_limit`` (the server's
``serve_batch_limit``, 100 by default) and return one merged result in request order; an empty
list of ids sends nothing (an empty predict is sent, and refused: its answer needs a model).
``export_segment`` and the ``iter_*`` methods send their first request
when iteration starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from storeml import __version__
from storeml.client_models import (
    BatchResult,
    ExportParser,
    Health,
    PredictResult,
    Profile,
    SegmentItem,
    SegmentPage,
    error_for,
    merge_batches,
    merge_predictions,
    parse_batch,
    parse_health,
    parse_predict,
    parse_profile,
    parse_segment_page,
    unreachable,
)
from storeml.client_requests import (
    ApiRequest,
    batch_request,
    chunks,
    export_request,
    health_request,
    id_list,
    key_id_of,
    predict_request,
    profile_request,
    ready_request,
    segment_request,
)
from storeml.errors import ApiError
from storeml.redaction import redact_url

__all__ = ["AsyncClient", "Client"]

Fields = str | Iterable[str] | None
Rows = Sequence[Mapping[str, Any]]


class _Base:
    """What both clients share: headers, repr, turning an answer into a result or an error."""

    def __init__(
        self, base_url: str, api_key: str | None, timeout: float, batch_limit: int
    ) -> None:
        if batch_limit < 1:
            raise ValueError(f"batch_limit must be at least 1, got {batch_limit}")
        self.base_url = base_url.rstrip("/")
        self.batch_limit = batch_limit
        self.timeout = timeout
        self.key_id = key_id_of(api_key)
        if api_key is not None and not _header_safe(api_key):
            # said without the key: httpx's own error would quote the header value
            raise ValueError(
                f"the API key (key id {self.key_id}) is empty or holds spaces, line breaks or"
                " non-ASCII characters; copy it again from `storeml keys create`"
            )
        self._headers = {"User-Agent": f"storeml-client/{__version__}"}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={redact_url(self.base_url)!r}, key_id={self.key_id!r})"
        )

    def _failed(self, request: ApiRequest, exc: httpx.RequestError) -> ApiError:
        """No answer (``ApiUnavailableError``), or one httpx could not read (``ApiError``)."""
        if isinstance(exc, httpx.TransportError):
            return unreachable(self.base_url, request, exc)
        return ApiError(
            f"{request}: the answer of the storeml API at {redact_url(self.base_url)} could not"
            f" be read ({type(exc).__name__}: {exc})",
            code="bad_response",
        )

    @staticmethod
    def _raise_for(request: ApiRequest, response: httpx.Response) -> None:
        """Raise the ApiError of an error answer (its body read already)."""
        if response.status_code >= 400:
            raise error_for(
                request, response.status_code, response.content, response.headers.get("retry-after")
            )

    @classmethod
    def _checked(cls, request: ApiRequest, response: httpx.Response) -> Any:
        """The decoded JSON of a successful answer; raises the ApiError of an error answer."""
        cls._raise_for(request, response)
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                f"{request}: the API answered {response.status_code} with a body that is not"
                f" JSON ({response.text[:200]!r})",
                status=response.status_code,
                code="bad_response",
            ) from exc


class Client(_Base):
    """A synchronous client of one storeml API (one connection pool: make one, reuse it)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        *,
        batch_limit: int = 100,
    ) -> None:
        super().__init__(base_url, api_key, timeout, batch_limit)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (the client cannot be used afterwards)."""
        self._http.close()

    def _send(self, request: ApiRequest) -> httpx.Response:
        try:
            return self._http.request(
                request.method, request.path, params=request.params or None, json=request.json
            )
        except httpx.RequestError as exc:
            raise self._failed(request, exc) from exc

    def _call(self, request: ApiRequest) -> Any:
        return self._checked(request, self._send(request))

    # --- lookups -------------------------------------------------------------------------------
    def customer(self, store: str, id: str, fields: Fields = None) -> Profile:
        """One customer's profile; ``ApiNotFoundError`` when the store has none of that id."""
        request = profile_request("customer", store, id, fields)
        return parse_profile(self._call(request), str(request))

    def product(self, store: str, id: str, fields: Fields = None) -> Profile:
        """One product's profile; ``ApiNotFoundError`` when the store has none of that id."""
        request = profile_request("product", store, id, fields)
        return parse_profile(self._call(request), str(request))

    def customers(self, store: str, ids: Iterable[str], fields: Fields = None) -> BatchResult:
        """Customer profiles of ``ids`` (request order); the ones not found in ``missing``."""
        return self._batch("customer", store, ids, fields)

    def products(self, store: str, ids: Iterable[str], fields: Fields = None) -> BatchResult:
        """Product profiles of ``ids`` (request order); the ones not found in ``missing``."""
        return self._batch("product", store, ids, fields)

    def _batch(self, kind: str, store: str, ids: Iterable[str], fields: Fields) -> BatchResult:
        results = []
        for chunk in chunks(id_list(ids), self.batch_limit):
            request = batch_request(kind, store, chunk, fields)
            results.append(parse_batch(self._call(request), str(request)))
        return merge_batches(results)

    # --- predict -------------------------------------------------------------------------------
    def predict(
        self,
        store: str,
        kind: str,
        ids: Iterable[str] | None = None,
        rows: Rows | None = None,
        alias: str | None = None,
    ) -> PredictResult:
        """Score stored profiles (``ids``) or posted ones (``rows``, in ``Profile.fields`` form)
        with the store's model under ``alias`` (the server's serving alias by default)."""
        results = [
            parse_predict(self._call(request), str(request))
            for request in _predict_requests(store, kind, ids, rows, alias, self.batch_limit)
        ]
        return merge_predictions(results)

    # --- segments ------------------------------------------------------------------------------
    def segment(
        self,
        store: str,
        kind: str,
        field: str | None = None,
        min: float | None = None,
        max: float | None = None,
        category: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: str | None = None,
    ) -> SegmentPage:
        """One page of the segment ``min <= score <= max`` (bounds inclusive).

        ``field`` is what to segment on: ``propensity`` for customers, ``category`` for products
        (then ``category`` names the predicted category); None is the kind's default.
        ``order``: "id" (the server's default: ids ascending, consistent while the stream
        writes) or "score" (highest first).
        """
        request = segment_request(store, kind, field, min, max, category, limit, cursor, order)
        return parse_segment_page(self._call(request), str(request))

    def iter_segment(
        self,
        store: str,
        kind: str,
        field: str | None = None,
        min: float | None = None,
        max: float | None = None,
        category: str | None = None,
        limit: int | None = None,
        order: str | None = None,
    ) -> Iterator[SegmentItem]:
        """Every member of the segment, following the cursors (``limit`` is the page size)."""
        cursor: str | None = None
        while True:
            page = self.segment(store, kind, field, min, max, category, limit, cursor, order)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def export_segment(
        self,
        store: str,
        kind: str,
        field: str | None = None,
        min: float | None = None,
        max: float | None = None,
        category: str | None = None,
        format: str = "ndjson",
    ) -> Iterator[SegmentItem]:
        """Every member of the segment from one streamed export (NDJSON or CSV on the wire)."""
        request = export_request(store, kind, field, min, max, category, format)
        parser = ExportParser(format, str(request))
        try:
            with self._http.stream(request.method, request.path, params=request.params) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    self._raise_for(request, answer)
                for line in answer.iter_lines():
                    item = parser.feed(line)
                    if item is not None:
                        yield item
        except httpx.RequestError as exc:
            raise self._failed(request, exc) from exc

    # --- health --------------------------------------------------------------------------------
    def health(self) -> Health:
        """``/healthz``: the process is up (raises ``ApiUnavailableError`` when it does not
        answer)."""
        return self._health(health_request())

    def ready(self) -> Health:
        """``/readyz``: Redis and the registry reachable. A 503 is an answer, not an error:
        ``ok`` is False and ``checks`` says what failed."""
        return self._health(ready_request())

    def _health(self, request: ApiRequest) -> Health:
        response = self._send(request)
        if response.status_code >= 400 and response.status_code != 503:
            self._raise_for(request, response)
        return parse_health(response.status_code, _json_or_text(response))


class AsyncClient(_Base):
    """An asyncio client of one storeml API: the methods of :class:`Client`, awaited."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        batch_limit: int = 100,
    ) -> None:
        super().__init__(base_url, api_key, timeout, batch_limit)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool (the client cannot be used afterwards)."""
        await self._http.aclose()

    async def _send(self, request: ApiRequest) -> httpx.Response:
        try:
            return await self._http.request(
                request.method, request.path, params=request.params or None, json=request.json
            )
        except httpx.RequestError as exc:
            raise self._failed(request, exc) from exc

    async def _call(self, request: ApiRequest) -> Any:
        return self._checked(request, await self._send(request))

    async def customer(self, store: str, id: str, fields: Fields = None) -> Profile:
        """See :meth:`Client.customer`."""
        request = profile_request("customer", store, id, fields)
        return parse_profile(await self._call(request), str(request))

    async def product(self, store: str, id: str, fields: Fields = None) -> Profile:
        """See :meth:`Client.product`."""
        request = profile_request("product", store, id, fields)
        return parse_profile(await self._call(request), str(request))

    async def customers(self, store: str, ids: Iterable[str], fields: Fields = None) -> BatchResult:
        """See :meth:`Client.customers` (chunks are sent one after the other)."""
        return await self._batch("customer", store, ids, fields)

    async def products(self, store: str, ids: Iterable[str], fields: Fields = None) -> BatchResult:
        """See :meth:`Client.products`."""
        return await self._batch("product", store, ids, fields)

    async def _batch(
        self, kind: str, store: str, ids: Iterable[str], fields: Fields
    ) -> BatchResult:
        results = []
        for chunk in chunks(id_list(ids), self.batch_limit):
            request = batch_request(kind, store, chunk, fields)
            results.append(parse_batch(await self._call(request), str(request)))
        return merge_batches(results)

    async def predict(
        self,
        store: str,
        kind: str,
        ids: Iterable[str] | None = None,
        rows: Rows | None = None,
        alias: str | None = None,
    ) -> PredictResult:
        """See :meth:`Client.predict`."""
        results = [
            parse_predict(await self._call(request), str(request))
            for request in _predict_requests(store, kind, ids, rows, alias, self.batch_limit)
        ]
        return merge_predictions(results)

    async def segment(
        self,
        store: str,
        kind: str,
        field: str | None = None,
        min: float | None = None,
        max: float | None = None,
        category: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: str | None = None,
    ) -> SegmentPage:
        """See :meth:`Client.segment`."""
        request = segment_request(store, kind, field, min, max, category, limit, cursor, order)
        return parse_segment_page(await self._call(request), str(request))

    async def iter_segment(
        self,
        store: str,
        kind: str,
        field: str | None = None,
        min: float | None = None,
        max: float | None = None,
        category: str | None = None,
        limit: int | None = None,
        order: str | None = None,
    ) -> AsyncIterator[SegmentItem]:
        """See :meth:`Client.iter_segment`."""
        cursor: str | None = None
        while True:
            page = await self.segment(store, kind, field, min, max, category, limit, cursor, order)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def export_segment(
        self,
        store: str,
        kind: str,
        field: str | None = None,
        min: float | None = None,
        max: float | None = None,
        category: str | None = None,
        format: str = "ndjson",
    ) -> AsyncIterator[SegmentItem]:
        """See :meth:`Client.export_segment`."""
        request = export_request(store, kind, field, min, max, category, format)
        parser = ExportParser(format, str(request))
        try:
            async with self._http.stream(
                request.method, request.path, params=request.params
            ) as answer:
                if answer.status_code >= 400:
                    await answer.aread()
                    self._raise_for(request, answer)
                async for line in answer.aiter_lines():
                    item = parser.feed(line)
                    if item is not None:
                        yield item
        except httpx.RequestError as exc:
            raise self._failed(request, exc) from exc

    async def health(self) -> Health:
        """See :meth:`Client.health`."""
        return await self._health(health_request())

    async def ready(self) -> Health:
        """See :meth:`Client.ready`."""
        return await self._health(ready_request())

    async def _health(self, request: ApiRequest) -> Health:
        response = await self._send(request)
        if response.status_code >= 400 and response.status_code != 503:
            self._raise_for(request, response)
        return parse_health(response.status_code, _json_or_text(response))


def _predict_requests(
    store: str,
    kind: str,
    ids: Iterable[str] | None,
    rows: Rows | None,
    alias: str | None,
    size: int,
) -> list[ApiRequest]:
    """One request per chunk of ids or rows (at least one, so that an empty call is refused by
    the server rather than answered with no model)."""
    if (ids is None) == (rows is None):
        raise ValueError("predict takes ids (stored profiles) or rows (posted profiles), not both")
    if ids is not None:
        id_chunks = list(chunks(id_list(ids), size)) or [[]]
        return [predict_request(store, kind, ids=c, alias=alias) for c in id_chunks]
    row_chunks = list(chunks(list(rows or ()), size)) or [[]]
    return [predict_request(store, kind, rows=c, alias=alias) for c in row_chunks]


def _header_safe(value: str) -> bool:
    return bool(value) and all(33 <= ord(c) <= 126 for c in value)


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
