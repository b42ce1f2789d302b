"""Orthanc's DICOMweb (/dicom-web) and WADO-URI (/wado), forwarded for the viewer front.

Answers are streamed: a series' frames can be hundreds of megabytes, and the viewer starts
drawing on the first part of a multipart answer. DICOMweb 1.7 writes absolute URLs
(RetrieveURL, BulkDataURI) from the request's Host header, or from a `Forwarded` header when one
is present (seen on 1.7: `proto=https;host=...` wins over Host), so the browser's Host and
scheme are passed on in both: the URLs then point at this front, not at Orthanc's loopback port.
A `Forwarded` header from the client is replaced, never trusted.

Only reads go through (GET, HEAD): the viewer never stores or deletes, so the front offers
neither. The user's cookie and bearer token stay here; Orthanc gets the sidecar's own
credentials, when it has any.
"""

from __future__ import annotations

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

# Request headers worth passing to Orthanc; everything else (cookies, the user's
# Authorization, hop-by-hop headers) stays on this side.
_FORWARDED_REQUEST_HEADERS = (
    "accept",
    "accept-encoding",
    "if-none-match",
    "if-modified-since",
    "range",
    "user-agent",
)
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class OrthancUnavailable(Exception):
    pass


class DicomWebProxy:
    def __init__(
        self,
        orthanc_url: str,
        *,
        username: str = "",
        password: str = "",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=orthanc_url,
            auth=(username, password) if username else None,
            # Connect fast or fail; a large series may legitimately take long to stream.
            timeout=httpx.Timeout(60.0, connect=5.0),
            # Orthanc closes idle keep-alive connections after 1 s (its answers say timeout=1):
            # reusing one older than that could hit a closed socket.
            limits=httpx.Limits(max_keepalive_connections=20, keepalive_expiry=0.8),
            transport=transport,
        )

    async def forward(self, request: Request, path: str) -> Response:
        """`path` is the Orthanc path (/dicom-web/..., /wado); the query string goes along."""
        host = request.headers.get("host") or request.url.netloc
        headers = {
            name: value
            for name in _FORWARDED_REQUEST_HEADERS
            if (value := request.headers.get(name)) is not None
        }
        headers["host"] = host
        headers["forwarded"] = f"proto={request.url.scheme};host={host}"
        upstream = self._client.build_request(
            request.method,
            path,
            params=httpx.QueryParams(request.url.query),
            headers=headers,
        )
        try:
            answer = await self._client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"Orthanc did not answer: {type(exc).__name__}") from exc
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers={k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP},
            background=BackgroundTask(answer.aclose),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
