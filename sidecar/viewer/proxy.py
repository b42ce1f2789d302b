"""Orthanc's DICOMweb (/dicom-web) and WADO-URI (/wado), forwarded for the viewer front.

Answers are streamed: a series' frames can be hundreds of megabytes, and the viewer starts
drawing on the first part of a multipart answer. DICOMweb 1.7 writes absolute URLs
(RetrieveURL, BulkDataURI) from the request's Host header, or from a `Forwarded` header when one
is present (seen on 1.7: `proto=https;host=...` wins over Host), so the browser's Host and
scheme are passed on in both: the URLs then point at this front, not at Orthanc's loopback port.
A `Forwarded` header from the client is replaced, never trusted.

Only reads go through (GET, HEAD), and STOW-RS (`store`), whose every instance
sidecar.viewer.stow has checked first; nothing deletes. Only requests sidecar.viewer.paths
allows reach this proxy, and it sends Orthanc the request target exactly as it was checked:
the raw path and query string, never decoded nor re-encoded (httpx would remove dot segments
from a path, and decode and re-encode a query parsed into parameters); what httpx is about to
send is checked again. The user's cookie and bearer token stay here; Orthanc gets the
sidecar's own credentials, when it has any.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from sidecar.core.http import tls_context
from sidecar.ingest.orthanc_client import OrthancUnavailable
from sidecar.viewer.paths import FORWARDED_REQUEST_HEADERS, Verdict, verdict

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


@dataclass(frozen=True)
class FrontAddress:
    """The scheme and Host the browser used: Orthanc writes its URLs from them."""

    scheme: str
    host: str  # checked by the fronts (sidecar.viewer.paths.HOST): no Forwarded separators

    @property
    def forwarded(self) -> str:
        return f"proto={self.scheme};host={self.host}"


class NotForwardable(Exception):
    """The request target would not reach Orthanc as it was checked."""


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
            verify=tls_context(),
        )

    async def forward(
        self, request: Request, target: str, *, front: FrontAddress | None = None
    ) -> Response:
        """`target` is the request's raw path and query string, allowed by
        sidecar.viewer.paths.verdict(); it goes to Orthanc unchanged. Request headers other
        than FORWARDED_REQUEST_HEADERS (cookies, the user's Authorization, method overrides,
        hop-by-hop headers) stay on this side. `front`: where the browser sent the request
        when a front before this one says so (nginx's Forwarded), else the request's own."""
        front = front or FrontAddress(
            request.url.scheme, request.headers.get("host") or request.url.netloc
        )
        headers = {
            name: value
            for name in FORWARDED_REQUEST_HEADERS
            if (value := request.headers.get(name)) is not None
        }
        headers["host"] = front.host
        headers["forwarded"] = front.forwarded
        upstream = self._client.build_request(request.method, target, headers=headers)
        self._check_sent_as_checked(upstream.url, target)
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

    async def store(
        self,
        body: AsyncIterator[bytes],
        size: int,
        boundary: str,
        *,
        study: str | None,
        host: str,
        scheme: str,
    ) -> tuple[int, dict[str, Any]]:
        """Sends a STOW-RS body to Orthanc's DICOMweb (sidecar.viewer.stow checked each of its
        instances); Orthanc's status and DICOM JSON answer. Host and Forwarded as for a read,
        so the answer's RetrieveURLs point at the front."""
        path = f"/dicom-web/studies/{study}" if study else "/dicom-web/studies"
        headers = {
            "content-type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "content-length": str(size),
            "accept": "application/dicom+json",
            "host": host,
            "forwarded": f"proto={scheme};host={host}",
        }
        try:
            answer = await self._client.post(path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"Orthanc did not answer: {type(exc).__name__}") from exc
        if answer.status_code >= 500 or answer.status_code in (401, 403, 404):
            raise OrthancUnavailable(f"Orthanc's STOW-RS answered HTTP {answer.status_code}")
        try:
            parsed = answer.json()
        except ValueError as exc:
            raise OrthancUnavailable("Orthanc's STOW-RS answer is not JSON") from exc
        return answer.status_code, parsed if isinstance(parsed, dict) else {}

    async def read_json(self, target: str, front: FrontAddress) -> Any:
        """Orthanc's DICOM JSON answer to a read the sidecar makes itself (`target` as for
        forward()), its URLs written for `front`; None when Orthanc has no such resource (404).
        Raises OrthancUnavailable for any other failure."""
        headers = {"accept": "application/dicom+json", "host": front.host}
        headers["forwarded"] = front.forwarded
        request = self._client.build_request("GET", target, headers=headers)
        self._check_sent_as_checked(request.url, target)
        try:
            answer = await self._client.send(request)
        except httpx.HTTPError as exc:
            raise OrthancUnavailable(f"Orthanc did not answer: {type(exc).__name__}") from exc
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise OrthancUnavailable(f"Orthanc's DICOMweb answered HTTP {answer.status_code}")
        try:
            return answer.json()
        except ValueError as exc:
            raise OrthancUnavailable("Orthanc's DICOMweb answer is not JSON") from exc

    def _check_sent_as_checked(self, url: httpx.URL, target: str) -> None:
        """httpx percent-encodes a few characters of a query that a client sent raw (a space,
        a quote) and nothing else here (the allowed paths hold no dot segments nor escapes);
        whatever it sends must still be allowed, with the very path that was checked."""
        base = self._client.base_url.raw_path.decode("ascii").rstrip("/")
        sent = url.raw_path.decode("ascii")
        if not sent.startswith(base):
            raise NotForwardable("the request would leave Orthanc's base URL")
        sent = sent[len(base) :]
        if verdict(sent) is not Verdict.FORWARD or _path(sent) != _path(target):
            raise NotForwardable("the request cannot be passed on as it was sent")

    async def aclose(self) -> None:
        await self._client.aclose()


def _path(target: str) -> str:
    return target.partition("?")[0]
