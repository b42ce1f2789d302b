"""asyncio MLLP listener: frames in, one handler call per message, one ACK out, in order.

Contract with the application (`Handler`): `await handler(message, peer)` gets one complete HL7
message (bytes, unframed, as received) and returns the ACK to send (bytes, unframed: normally
`hl7.ack.build_ack(...).encode()`). Messages of one connection are handled strictly one after the
other: the HIS waits for each ACK before it sends the next message, and order matters (an XO must
not overtake its NW). Connections are independent of each other.

The server always answers a complete message, whatever happens:
- the handler raises an `Hl7Error`: AE/AR built from that error;
- it raises anything else, or returns no bytes: AR 207 (application internal error), so the sender
  retries later; the log line names the message type and control id only, never content;
- the frame exceeded `max_message_size`: AR 207, echoing MSH-10 when the first segment was kept.
A connection dropped mid-message loses only that partial message (the sender resends it).

`message_scope(header)`, when given, is entered around each message's handling, the log lines
about it included (the sidecar makes its control id the id of every line it causes).

`stop()` stops accepting, closes idle connections at once, lets messages being handled finish
(their ACKs are sent) for up to `grace_period` seconds, then cancels what is left: a cancelled
handler has not sent AA, so the sender resends and nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType

from hl7.ack import build_ack, new_control_id, prepare_templates
from hl7.errors import ApplicationInternalError, Hl7Error, MessageTooLarge
from hl7.header import MessageHeader, read_header
from hl7.mllp.framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MllpFrameReader,
    OversizedMessage,
    frame,
)

logger = logging.getLogger(__name__)

DEFAULT_MLLP_PORT = 2575
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class Peer:
    """The remote end of a connection (for logs and the message log's sender address)."""

    host: str
    port: int


Handler = Callable[[bytes, Peer], Awaitable[bytes]]
MessageScope = Callable[[MessageHeader | None], contextlib.AbstractContextManager[object]]


def local_now() -> datetime:
    return datetime.now().astimezone()


@dataclass(eq=False)
class _Connection:
    task: asyncio.Task[None]
    peer: Peer
    idle: bool = field(default=True)


class MllpServer:
    """MLLP over TCP. `port=0` binds an ephemeral port, readable from `port` after `start()`."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = DEFAULT_MLLP_PORT,
        *,
        idle_timeout: float | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Callable[[], datetime] = local_now,
        control_ids: Callable[[], str] = new_control_id,
        message_scope: MessageScope | None = None,
    ) -> None:
        self._handler = handler
        self._host = host
        self._requested_port = port
        # None keeps connections open for ever: MLLP peers usually hold one connection for days.
        self._idle_timeout = idle_timeout
        self._max_message_size = max_message_size
        self._clock = clock
        self._control_ids = control_ids
        self._message_scope = message_scope
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._server is None:
            raise RuntimeError("the MLLP server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        """Bind and listen; returns once connections are accepted."""
        if self._server is not None:
            raise RuntimeError("the MLLP server is already started")
        self._stopping = False
        prepare_templates()  # no hl7apy template building on the first messages' path
        self._server = await asyncio.start_server(
            self._serve_connection, self._host, self._requested_port
        )
        logger.info("MLLP listening on %s:%d", self._host, self.port)

    async def stop(self, grace_period: float = 5.0) -> None:
        """Stop accepting, finish in-flight messages for up to `grace_period` s, close all."""
        server = self._server
        if server is None:
            return
        self._stopping = True
        server.close()
        for connection in list(self._connections):
            if connection.idle:
                connection.task.cancel()
        busy = {connection.task for connection in self._connections}
        if busy:
            _, unfinished = await asyncio.wait(busy, timeout=grace_period)
            for task in unfinished:
                task.cancel()
            if unfinished:
                logger.warning("MLLP stop: %d message(s) cancelled after grace", len(unfinished))
                await asyncio.wait(unfinished)
        await server.wait_closed()
        self._server = None
        logger.info("MLLP listener stopped")

    async def __aenter__(self) -> MllpServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        address = writer.get_extra_info("peername") or ("?", 0)
        connection = _Connection(task, Peer(str(address[0]), int(address[1])))
        self._connections.add(connection)
        frames = MllpFrameReader(self._max_message_size)
        logger.info("MLLP connection from %s:%d", connection.peer.host, connection.peer.port)
        try:
            await self._converse(reader, writer, frames, connection)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        except TimeoutError:
            logger.info("MLLP connection from %s idle, closed", connection.peer.host)
        except OSError as exc:  # reset by peer, broken pipe
            logger.info(
                "MLLP connection from %s lost: %s", connection.peer.host, type(exc).__name__
            )
        finally:
            if frames.in_frame:
                dropped = frames.discard_partial()
                logger.warning(
                    "MLLP connection from %s ended mid-message: %d bytes discarded",
                    connection.peer.host,
                    dropped,
                )
            self._connections.discard(connection)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        frames: MllpFrameReader,
        connection: _Connection,
    ) -> None:
        while not self._stopping:
            connection.idle = True
            try:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), self._idle_timeout)
            finally:
                connection.idle = False
            if not data:
                return
            for item in frames.feed(data):
                if self._stopping:
                    return  # unanswered: the sender resends after reconnecting
                if self._message_scope is None:
                    answer = await self._answer(item, connection.peer)
                else:
                    # The first segment (MSH) is all a header needs: no second decoding of it all.
                    head = (
                        item.head if isinstance(item, OversizedMessage) else item.split(b"\r", 1)[0]
                    )
                    with self._message_scope(read_header(head)):
                        answer = await self._answer(item, connection.peer)
                writer.write(frame(answer))
                await writer.drain()

    async def _answer(self, message: bytes | OversizedMessage, peer: Peer) -> bytes:
        if isinstance(message, OversizedMessage):
            header = read_header(message.head)
            logger.warning(
                "MLLP %s control id %r: %d bytes, over the %d-byte limit, answered AR",
                *_log_identity(header),
                message.size,
                self._max_message_size,
            )
            limit = self._max_message_size
            return self._ack(
                header, MessageTooLarge(f"message over the size limit ({limit} bytes)")
            )
        try:
            answer = await self._handler(message, peer)
        except Hl7Error as error:
            header = read_header(message)
            logger.info(
                "MLLP %s control id %r answered %s %d",
                *_log_identity(header),
                error.ack_code.value,
                int(error.error_code),
            )
            return self._ack(header, error)
        except Exception as exc:
            # The exception text can quote message content (e.g. SQL parameters): log its type
            # and the code path, not its message.
            header = read_header(message)
            logger.error(
                "MLLP %s control id %r: handler failed (%s), answered AR\n%s",
                *_log_identity(header),
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            return self._ack(header, ApplicationInternalError("internal error, retry later"))
        if not isinstance(answer, bytes) or not answer:
            header = read_header(message)
            logger.error(
                "MLLP %s control id %r: handler gave no ACK, answered AR", *_log_identity(header)
            )
            return self._ack(header, ApplicationInternalError("internal error, retry later"))
        return answer

    def _ack(self, header: MessageHeader | None, error: Hl7Error) -> bytes:
        ack = build_ack(header, error, control_id=self._control_ids(), timestamp=self._clock())
        return ack.encode()


def _log_identity(header: MessageHeader | None) -> tuple[str, str]:
    """Message type and control id: all a log line may say about a message (no patient data)."""
    if header is None:
        return "(no MSH)", ""
    return header.message_code, header.control_id
