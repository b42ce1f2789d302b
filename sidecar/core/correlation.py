"""The id every log line of one piece of work carries (`requestId` in JSON logs,
sidecar.core.logs): an API request's (its X-Request-ID, sidecar.core.http), an HL7 message's
control id (MSH-10), a registration's Orthanc study id, an outbox delivery's message control id
or notification id. None of them is patient data.

The id lives in a context variable: asyncio tasks and the threads Starlette and
`asyncio.to_thread` hand work to copy it; a thread of our own (a background worker's, a pool's)
starts without it, so the work done there binds its own (`bound`), one id per item.

An id is a token of printable ASCII (letters, digits and `-._~:/+=@`), 1 to 128 characters:
whatever else a client or a sender puts in its header is replaced by a generated id, so that a
hostile value (line breaks, quotes, control or non-ASCII characters, a megabyte) never reaches a
log line.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

MAX_LENGTH = 128
_TOKEN = re.compile(rf"[A-Za-z0-9._~:/+=@-]{{1,{MAX_LENGTH}}}")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def new_id() -> str:
    return uuid.uuid4().hex


def valid(candidate: str | bytes | None) -> str | None:
    """`candidate` when it is an acceptable id, else None."""
    if isinstance(candidate, bytes):
        candidate = candidate.decode("latin-1")
    if candidate is None or len(candidate) > MAX_LENGTH or not _TOKEN.fullmatch(candidate):
        return None
    return candidate


def current() -> str | None:
    """The id of the work this code runs for, if any."""
    return _current.get()


def bind(candidate: str | bytes | None) -> tuple[str, contextvars.Token[str | None]]:
    """Makes `candidate` (a generated id when it is not acceptable) the current id; returns it
    and the token that `unbind` takes to restore the previous one."""
    request_id = valid(candidate) or new_id()
    return request_id, _current.set(request_id)


def unbind(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)


@contextmanager
def bound(candidate: str | bytes | None) -> Iterator[str]:
    """The lines logged inside carry `candidate` (or a generated id when it is not acceptable)."""
    request_id, token = bind(candidate)
    try:
        yield request_id
    finally:
        unbind(token)
