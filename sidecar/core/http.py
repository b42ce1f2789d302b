"""ASGI middleware every request goes through: the access log (route templates only) and the
request's id, the refusal of NUL characters in paths and query strings, and the security
headers."""

from __future__ import annotations

import functools
import logging
import ssl
import time
from collections.abc import Callable, Sequence

import httpx
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar.core import correlation
from sidecar.core.api_errors import error_body

log = logging.getLogger("sidecar.http")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one TLS context of the process's HTTP clients (httpx's defaults: its CA bundle, or
    SSL_CERT_FILE / SSL_CERT_DIR). httpx builds one per client otherwise, reading and parsing
    the whole CA bundle each time: tens of milliseconds for every client made (an app's Orthanc
    client, its DICOMweb proxy, each readiness probe of Orthanc), whatever its URL's scheme."""
    return httpx.create_ssl_context()


REQUEST_ID_HEADER = b"x-request-id"
#: The route of a request no route matched (a 404, a refusal before routing).
UNMATCHED = "<unmatched>"

#: Told of each request once it ends: route template, method, status, seconds to the end of the
#: body (the metrics' HTTP histogram: sidecar.operations.metrics).
RequestObserver = Callable[[str, str, int, float], None]


class AccessLog:
    """Access log without patient data: the route template, never the path or query string
    (they carry accession numbers and patient ids).

    Plain ASGI rather than `app.middleware("http")`: that wrapper relays every body chunk
    through an in-memory stream, a cost each proxied DICOMweb answer would pay. The time
    logged runs to the end of the body.

    Every request gets an id (sidecar.core.correlation): its X-Request-ID when that is an
    acceptable one, else a new one. Every line the request causes carries it, the access line
    included, and every answer says it in X-Request-ID: refusals and errors too, as this is the
    outermost of the service's middleware (the answer to an unhandled error, made outside it,
    adds it itself: sidecar.core.api_errors).

    The same measure goes to each of `observers`, so that what is timed for the log is not timed
    again by another wrapper of every request."""

    def __init__(self, app: ASGIApp, observers: Sequence[RequestObserver] = ()) -> None:
        self.app = app
        self.observers = tuple(observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id, token = correlation.bind(header_value(scope, REQUEST_ID_HEADER))
        echoed = (REQUEST_ID_HEADER, request_id.encode())

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                message["headers"] = [
                    *(h for h in headers if bytes(h[0]).lower() != REQUEST_ID_HEADER),
                    echoed,
                ]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", UNMATCHED)
            log.info("%s %s -> %d in %.1f ms", scope["method"], route, status, seconds * 1000)
            for observe in self.observers:
                observe(route, scope["method"], status, seconds)
        # Only when the request ended well: an unhandled error is logged and answered after
        # this (by Starlette's ServerErrorMiddleware, then the server), under the same id. The
        # context is the request's own task's, gone with it.
        correlation.unbind(token)


def header_value(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the request header `name` (lower case), if any."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class RefuseNul:
    """Answers 400 to a request whose path or query string holds a NUL character (%00), before
    any route sees it: no record can hold one (PostgreSQL refuses it in text, so a lookup with
    it would fail rather than find nothing). Request bodies are checked by sidecar.core.models.
    ApiInput."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")
        ):
            refusal = JSONResponse(
                error_body("bad_request", "the path or query string holds a NUL character"), 400
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds `headers` to every answer that does not set them itself, whatever its status or
    type: the viewer's pages, DICOMweb answers, API JSON, refusals. Plain ASGI, as AccessLog,
    so that streamed answers are not relayed."""

    def __init__(self, app: ASGIApp, headers: Sequence[tuple[str, str]]) -> None:
        self.app = app
        self.headers = [(name.lower().encode(), value.encode()) for name, value in headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in self.headers if name not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, add_headers)
