"""Receiving a STOW-RS request's body (PS3.18 10.5): `multipart/related; type="application/dicom"`,
one DICOM file (Part 10) per part, each spooled as it arrives (in memory up to 1 MB, on disk
past it). The whole body is bounded by UPLOAD_MAX_MB: a Content-Length over it is refused before
anything is read, a body that grows past it is refused as soon as it does.

Refusals here are of the whole request (nothing is stored): 415 for another media type, 413 for
a body too large, 400 for a body that is not a multipart body of DICOM parts. Parts are named by
their index, never by what they hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from sidecar.core.errors import Refusal
from sidecar.studies.upload_body import MAX_FILES, UploadRefused, spooled

#: The media type of a part; parameters (transfer-syntax) are allowed.
PART_TYPE = "application/dicom"
_MAX_PART_HEADERS = 16
#: How much of a body refused as too large is still read (and dropped); past it, the
#: connection is closed.
_DISCARD = 64 * 1024 * 1024


class StowRefused(UploadRefused):
    """The whole STOW-RS request refused, before anything reached Orthanc."""


@dataclass
class StowPart:
    index: int
    content: IO[bytes] = field(default_factory=lambda: spooled())
    size: int = 0
    media_type: str | None = None

    def close(self) -> None:
        self.content.close()


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary, when the Content-Type is STOW-RS's; else 415."""
    media, options = parse_options_header(content_type or "")
    kind = options.get(b"type", b"").decode("latin-1").strip().lower()
    boundary = options.get(b"boundary", b"")
    if media.decode("latin-1").lower() != "multipart/related" or kind != PART_TYPE:
        raise StowRefused(
            'send DICOM instances as multipart/related; type="application/dicom" (STOW-RS)',
            status_code=415,
        )
    if not boundary or len(boundary) > 70:
        raise StowRefused("the multipart body has no valid boundary parameter", status_code=400)
    return boundary


async def check_declared_size(request: Request, limit: int, limit_mb: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await _discard(request.stream())
        raise _too_large(limit_mb)


async def _discard(stream: AsyncIterator[bytes]) -> None:
    """Reads and drops what is left of a refused body, up to _DISCARD bytes: a proxy still
    sending it (nginx's front streams the body) would otherwise answer 502 for the refusal."""
    dropped = 0
    async for chunk in stream:
        dropped += len(chunk)
        if dropped > _DISCARD:
            return


def _too_large(limit_mb: int) -> Refusal:
    return StowRefused(
        f"the request is larger than the upload limit (UPLOAD_MAX_MB, {limit_mb} MB)",
        status_code=413,
    )


class _Parts:
    """The parser's callbacks: the parts, their content spooled, their media type."""

    def __init__(self) -> None:
        self.parts: list[StowPart] = []
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[str, str] = {}
        self.too_many = False
        self.too_many_headers = False

    def on_part_begin(self) -> None:
        if len(self.parts) >= MAX_FILES:
            self.too_many = True
        self.parts.append(StowPart(index=len(self.parts)))
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if len(self._headers) >= _MAX_PART_HEADERS:
            self.too_many_headers = True
        name = self._header_name.decode("latin-1").strip().lower()
        self._headers[name] = self._header_value.decode("latin-1").strip()
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        declared = self._headers.get("content-type")
        if declared is not None:
            self.parts[-1].media_type = parse_options_header(declared)[0].decode("latin-1")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.too_many:
            return
        part = self.parts[-1]
        part.content.write(data[start:end])
        part.size += end - start

    def close(self) -> None:
        for part in self.parts:
            part.close()


async def receive(request: Request, limit: int, limit_mb: int) -> list[StowPart]:
    """The parts, in the order sent; the caller closes them. Refuses (StowRefused) what the
    module docstring says."""
    boundary = boundary_of(request.headers.get("content-type"))
    await check_declared_size(request, limit, limit_mb)
    collected = _Parts()
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": collected.on_part_begin,
            "on_part_data": collected.on_part_data,
            "on_header_field": collected.on_header_field,
            "on_header_value": collected.on_header_value,
            "on_header_end": collected.on_header_end,
            "on_headers_finished": collected.on_headers_finished,
        },
    )
    received = 0
    try:
        stream = request.stream()
        async for chunk in stream:
            received += len(chunk)
            if received > limit:
                await _discard(stream)
                raise _too_large(limit_mb)
            parser.write(chunk)
            if collected.too_many or collected.too_many_headers:
                break
        parser.finalize()
    except MultipartParseError as exc:
        collected.close()
        raise StowRefused(f"the multipart body cannot be read: {exc}", status_code=400) from None
    except BaseException:
        collected.close()
        raise
    try:
        _check(collected)
    except StowRefused:
        collected.close()
        raise
    return collected.parts


def _check(collected: _Parts) -> None:
    if collected.too_many:
        raise StowRefused(
            f"at most {MAX_FILES} instances per request: send the rest in another",
            status_code=413,
        )
    if collected.too_many_headers:
        raise StowRefused("a part has too many headers", status_code=400)
    if not collected.parts:
        raise StowRefused("the multipart body holds no instance", status_code=400)
    for part in collected.parts:
        if part.media_type is not None and part.media_type.lower() != PART_TYPE:
            raise StowRefused(
                f"part {part.index}: each part is one application/dicom instance",
                status_code=415,
            )
        if part.size == 0:
            raise StowRefused(f"part {part.index} is empty", status_code=400)
