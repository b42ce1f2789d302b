"""Receiving uploaded DICOM files (POST /api/studies/{id}/images): a multipart body or one
application/dicom body, each file spooled as it arrives and refused past UPLOAD_MAX_MB
(sidecar.studies.uploads checks and stores them)."""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from typing import IO, Any

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from sidecar.core.errors import Refusal

log = logging.getLogger(__name__)

#: Files per request (a series of a few hundred slices fits; a larger one is sent in parts).
MAX_FILES = 1000
#: What a file may hold in memory before it is spooled to disk.
_IN_MEMORY = 1024 * 1024
_FILENAME_LENGTH = 255
#: The request body as the OpenAPI document describes it (the route reads the stream itself).
REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "DICOM files (Part 10), each at most UPLOAD_MAX_MB",
                    }
                },
            }
        },
        "application/dicom": {"schema": {"type": "string", "format": "binary"}},
    },
}


class UploadRefused(Refusal):
    """The whole request refused: nothing stored. Its status is the one its files share."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.status_code = status_code
        self.code = _CODES.get(status_code, "bad_request")


_CODES = {
    400: "bad_request",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


# -- receiving ----------------------------------------------------------------------------------


@dataclass
class ReceivedFile:
    """One uploaded file as received: at most the limit of it kept."""

    index: int
    filename: str | None
    content: IO[bytes] = field(default_factory=lambda: spooled())
    size: int = 0
    oversize: bool = False

    def close(self) -> None:
        self.content.close()


def spooled() -> IO[bytes]:
    """A file in memory up to 1 MB, on disk past it; the caller closes it."""
    return SpooledTemporaryFile(max_size=_IN_MEMORY)


def clean_filename(name: str | None) -> str | None:
    """The name the uploader gave, fit to echo back: no directory, no control characters."""
    if not name:
        return None
    base = re.split(r"[\\/]", name)[-1]
    shown = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    return shown[:_FILENAME_LENGTH] or None


class _LimitedMultiPartParser(MultiPartParser):
    """Starlette's parser, keeping at most `limit` bytes of each file: the rest of a larger file
    is dropped as it streams by, and the file is marked oversize."""

    def __init__(
        self, headers: Headers, stream: AsyncIterator[bytes], *, limit: int, max_files: int
    ) -> None:
        super().__init__(headers, stream, max_files=max_files, max_fields=16)  # type: ignore[arg-type]
        self.limit = limit
        self.sizes: dict[int, int] = {}
        self.oversize: set[int] = set()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self._current_part.file
        if upload is None:
            super().on_part_data(data, start, end)
            return
        seen = self.sizes.get(id(upload), 0) + (end - start)
        self.sizes[id(upload)] = seen
        if seen > self.limit:
            self.oversize.add(id(upload))
            return
        super().on_part_data(data, start, end)


async def receive(request: Request, limit: int) -> list[ReceivedFile]:
    """The uploaded files, in the order sent. Refuses (4xx) a body of another type, a malformed
    multipart body, one without files or with files under another field than `files`."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/dicom":
        return [await _receive_body(request, limit)]
    if media == "multipart/form-data":
        return await _receive_multipart(request, limit)
    raise UploadRefused(
        "send DICOM files as multipart/form-data (field `files`) or one application/dicom body",
        status_code=415,
    )


async def _receive_body(request: Request, limit: int) -> ReceivedFile:
    received = ReceivedFile(index=0, filename=None)
    # Written as Starlette writes multipart files: off the event loop once spooled to disk.
    writer = UploadFile(received.content)  # type: ignore[arg-type]
    async for chunk in request.stream():
        received.size += len(chunk)
        if received.size > limit:
            received.oversize = True
            break  # the rest is not read
        await writer.write(chunk)
    return received


async def _receive_multipart(request: Request, limit: int) -> list[ReceivedFile]:
    parser = _LimitedMultiPartParser(
        request.headers, request.stream(), limit=limit, max_files=MAX_FILES
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise UploadRefused(
            f"the multipart body cannot be read: {exc.message}", status_code=400
        ) from None
    files: list[ReceivedFile] = []
    unexpected: set[str] = set()
    try:
        for name, value in form.multi_items():
            if not isinstance(value, UploadFile):
                continue
            if name != "files":
                unexpected.add(name)
                continue
            files.append(
                ReceivedFile(
                    index=len(files),
                    filename=clean_filename(value.filename),
                    content=value.file,
                    size=parser.sizes.get(id(value), 0),
                    oversize=id(value) in parser.oversize,
                )
            )
    finally:
        if unexpected or not files:
            await form.close()
    if unexpected:
        raise UploadRefused(
            "files go in the multipart field `files`; refused: "
            + ", ".join(sorted(repr(clean_filename(n) or "") for n in unexpected)),
            status_code=400,
        )
    if not files:
        raise UploadRefused(
            "no file: send DICOM files in the multipart field `files`", status_code=400
        )
    return files
