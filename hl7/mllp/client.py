"""MLLP clients: send one message, wait for its ACK (tests, benchmarks, outbound ORU^R01).

Unlike a client that takes one `recv()` as the whole answer, both clients read through
`MllpFrameReader` until a complete frame has arrived: TCP may deliver an ACK in pieces, or glued
to bytes that follow it.

Matching: when the message's MSH-10 can be read, an answer whose MSA-2 names another control id
(a late ACK of an earlier, timed-out message) is skipped, not returned as this message's ACK.

Failures:
- the connection is broken (reset, closed before the ACK): reconnect and send again, `retries`
  times. Sending twice is safe with a receiver that deduplicates on MSH-10, as HL7 expects (a
  repeated control id gets the original ACK again);
- no ACK within `timeout`: `MllpTimeoutError`, and the connection is closed, because a late ACK
  still on its way would otherwise be read as the answer to the next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from types import TracebackType

from hl7.ack import parse_ack
from hl7.header import read_header
from hl7.mllp.framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MllpFrameReader,
    OversizedMessage,
    frame,
)

_READ_SIZE = 64 * 1024


class MllpError(Exception):
    """Base of the client's errors."""


class MllpConnectionError(MllpError):
    """Could not connect, or the connection broke and retries were used up."""


class MllpTimeoutError(MllpError):
    """No complete ACK within the timeout."""


def _as_bytes(message: bytes | str) -> bytes:
    # str is for tests and tools; real senders pass bytes in the MSH-18 character set.
    return message.encode("utf-8") if isinstance(message, str) else message


def _control_id(message: bytes) -> str:
    header = read_header(message)
    return header.control_id if header else ""


def _answers(ack: bytes, control_id: str) -> bool:
    """False only when the ACK clearly acknowledges another message."""
    if not control_id:
        return True
    try:
        acknowledged = parse_ack(ack).acknowledged_control_id
    except Exception:  # not an ACK we can read: let the caller judge it
        return True
    return acknowledged in ("", control_id)


def _take_ack(items: list[bytes | OversizedMessage], control_id: str) -> bytes | None:
    for item in items:
        if isinstance(item, OversizedMessage):
            raise MllpError(f"answer of {item.size} bytes is over the size limit")
        if _answers(item, control_id):
            return item
    return None


class MllpClient:
    """Blocking MLLP client, one message in flight. Use as a context manager or call close()."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        retries: int = 1,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.max_message_size = max_message_size
        self._socket: socket.socket | None = None
        self._frames = MllpFrameReader(max_message_size)

    def __enter__(self) -> MllpClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._socket is not None

    def connect(self) -> None:
        if self._socket is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise MllpConnectionError(f"cannot connect to {self.host}:{self.port}") from exc
        # Request/response on small messages: Nagle's algorithm would add up to 40 ms per ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = sock
        self._frames = MllpFrameReader(self.max_message_size)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def send(self, message: bytes | str) -> bytes:
        """Send one message (unframed) and return its ACK (unframed)."""
        data = _as_bytes(message)
        framed = frame(data)
        control_id = _control_id(data)
        for attempt in range(self.retries + 1):
            self.connect()
            try:
                return self._exchange(framed, control_id)
            except (ConnectionError, EOFError) as exc:
                self.close()
                if attempt == self.retries:
                    raise MllpConnectionError(
                        f"connection to {self.host}:{self.port} lost"
                    ) from exc
        raise AssertionError("unreachable")

    def _exchange(self, framed: bytes, control_id: str) -> bytes:
        sock = self._socket
        assert sock is not None
        deadline = time.monotonic() + self.timeout
        sock.settimeout(self.timeout)
        try:
            sock.sendall(framed)
        except TimeoutError as exc:
            self.close()
            raise MllpTimeoutError(f"could not send within {self.timeout} s") from exc
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise MllpTimeoutError(f"no ACK within {self.timeout} s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(_READ_SIZE)
            except TimeoutError:
                continue  # the deadline check above raises
            if not data:
                raise EOFError("connection closed before the ACK arrived")
            ack = _take_ack(self._frames.feed(data), control_id)
            if ack is not None:
                return ack


class AsyncMllpClient:
    """asyncio MLLP client with the same behaviour as MllpClient."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        retries: int = 1,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.max_message_size = max_message_size
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._frames = MllpFrameReader(max_message_size)

    async def __aenter__(self) -> AsyncMllpClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._streams is not None:
            return
        try:
            self._streams = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise MllpConnectionError(f"cannot connect to {self.host}:{self.port}") from exc
        self._frames = MllpFrameReader(self.max_message_size)

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            with contextlib.suppress(OSError):  # already broken: closing is all we wanted
                await writer.wait_closed()

    async def send(self, message: bytes | str) -> bytes:
        data = _as_bytes(message)
        framed = frame(data)
        control_id = _control_id(data)
        for attempt in range(self.retries + 1):
            await self.connect()
            try:
                return await asyncio.wait_for(self._exchange(framed, control_id), self.timeout)
            except TimeoutError as exc:
                await self.close()
                raise MllpTimeoutError(f"no ACK within {self.timeout} s") from exc
            except (ConnectionError, EOFError) as exc:
                await self.close()
                if attempt == self.retries:
                    raise MllpConnectionError(
                        f"connection to {self.host}:{self.port} lost"
                    ) from exc
        raise AssertionError("unreachable")

    async def _exchange(self, framed: bytes, control_id: str) -> bytes:
        assert self._streams is not None
        reader, writer = self._streams
        writer.write(framed)
        await writer.drain()
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                raise EOFError("connection closed before the ACK arrived")
            ack = _take_ack(self._frames.feed(data), control_id)
            if ack is not None:
                return ack
