"""MLLP: framing by feeding bytes, then the asyncio server and both clients on loopback.

Async scenarios run with plain `asyncio.run` (no pytest plugin). The blocking client cannot share
an event loop with the server, so `running_server` runs the server's loop in a thread and waits
for `start()` to return: the port is bound before any client connects, no sleeping involved.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from hl7.ack import AckSummary, build_ack, parse_ack
from hl7.errors import ErrorLocation, UnknownKeyIdentifier
from hl7.header import read_header
from hl7.mllp.client import (
    AsyncMllpClient,
    MllpClient,
    MllpConnectionError,
    MllpTimeoutError,
)
from hl7.mllp.framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FRAME_END,
    START_BLOCK,
    MllpFrameReader,
    OversizedMessage,
    frame,
)
from hl7.mllp.server import MllpServer, Peer
from hl7.orders import parse_order_message

import hl7_samples as samples

T = TypeVar("T")
FIXED_TIME = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
M1 = b"MSH|^~\\&|HIS|H|RIS|R|20240301||ORM^O01|ID1|P|2.5.1\rPID|1||1\r"
M2 = b"MSH|^~\\&|HIS|H|RIS|R|20240301||ORM^O01|ID2|P|2.5.1\rPID|1||2\r"


def numbered(control_id: str, text: str = samples.ORM_NW_251) -> bytes:
    return samples.with_field(text, "MSH", 10, control_id).encode()


def control_id_of(message: bytes) -> str:
    header = read_header(message)
    assert header is not None
    return header.control_id


def control_id_acknowledged(answer: bytes | OversizedMessage) -> str:
    assert isinstance(answer, bytes)
    return parse_ack(answer).acknowledged_control_id


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.005)


# --- framing: MllpFrameReader fed by hand ---------------------------------------------------


def test_one_frame_gives_its_message() -> None:
    assert MllpFrameReader().feed(frame(M1)) == [M1]


def test_frames_split_byte_by_byte_complete_only_on_their_last_byte() -> None:
    reader = MllpFrameReader()
    stream = frame(M1) + frame(M2)
    results = [reader.feed(stream[i : i + 1]) for i in range(len(stream))]
    first_end = len(frame(M1)) - 1
    assert results[first_end] == [M1]
    assert results[-1] == [M2]
    assert sum(len(result) for result in results) == 2
    assert reader.skipped_bytes == 0


def test_several_frames_in_one_read() -> None:
    assert MllpFrameReader().feed(frame(M1) + frame(M2) + frame(M1)) == [M1, M2, M1]


def test_bytes_between_frames_are_skipped_and_counted() -> None:
    reader = MllpFrameReader()
    assert reader.feed(b"junk" + frame(M1) + b"\r\n" + frame(M2) + b"tail") == [M1, M2]
    assert reader.skipped_bytes == len(b"junk") + 2 + len(b"tail")
    assert not reader.in_frame


def test_start_block_inside_a_frame_abandons_the_partial_message() -> None:
    reader = MllpFrameReader()
    assert reader.feed(START_BLOCK + b"MSH|half a mess") == []
    assert reader.feed(frame(M1)) == [M1]
    assert reader.restarted_frames == 1
    assert reader.skipped_bytes == len(b"MSH|half a mess")


def test_end_block_split_across_reads() -> None:
    reader = MllpFrameReader()
    framed = frame(M1)
    assert reader.feed(framed[:-1]) == []
    assert reader.feed(framed[-1:]) == [M1]


def test_end_block_without_carriage_return_is_content() -> None:
    reader = MllpFrameReader()
    assert reader.feed(START_BLOCK + b"a\x1c") == []
    assert reader.feed(b"b" + FRAME_END) == [b"a\x1cb"]


def test_oversized_frame_is_dropped_while_it_arrives_and_reported_at_its_end() -> None:
    reader = MllpFrameReader(max_message_size=1000)
    big = M1 + b"OBX|" + b"x" * 100_000 + b"\r"
    framed = frame(big)
    reported: list[bytes | OversizedMessage] = []
    for start in range(0, len(framed), 512):
        reported += reader.feed(framed[start : start + 512])
        assert reader.buffered_bytes <= 1000 + 512
    assert reported == [OversizedMessage(size=len(big), head=M1.split(b"\r")[0])]
    assert reader.oversized_frames == 1
    assert reader.feed(frame(M2)) == [M2]


def test_oversized_frame_in_one_read_is_reported() -> None:
    reader = MllpFrameReader(max_message_size=10)
    result = reader.feed(frame(M1) + frame(b"short\r"))
    assert result == [OversizedMessage(size=len(M1), head=M1.split(b"\r")[0]), b"short\r"]


def test_oversized_frame_abandoned_by_a_new_start_block_is_not_reported() -> None:
    reader = MllpFrameReader(max_message_size=10)
    assert reader.feed(START_BLOCK + b"x" * 50) == []
    assert reader.feed(frame(b"ok\r")) == [b"ok\r"]
    assert reader.oversized_frames == 0
    assert reader.restarted_frames == 1


def test_discard_partial_forgets_the_frame_in_progress() -> None:
    reader = MllpFrameReader()
    reader.feed(START_BLOCK + b"MSH|12345")
    assert reader.in_frame
    assert reader.discard_partial() == len(b"MSH|12345")
    assert not reader.in_frame
    assert reader.feed(b"67" + FRAME_END) == []  # no start block: outside a frame now


def test_frame_refuses_messages_containing_block_bytes() -> None:
    with pytest.raises(ValueError):
        frame(b"MSH|\x0b|")
    with pytest.raises(ValueError):
        frame(b"MSH|\x1c|")


# --- server and clients on loopback ---------------------------------------------------------


class RecordingHandler:
    """Acknowledges AA (or what `answer` decides) and records what it received, in order."""

    def __init__(self, answer: Callable[[bytes], Awaitable[bytes]] | None = None) -> None:
        self.received: list[bytes] = []
        self.peers: list[Peer] = []
        self._answer = answer

    async def __call__(self, message: bytes, peer: Peer) -> bytes:
        self.received.append(message)
        self.peers.append(peer)
        if self._answer is not None:
            return await self._answer(message)
        ack = build_ack(read_header(message), control_id="ACK1", timestamp=FIXED_TIME)
        return ack.encode()


async def order_handler(message: bytes, peer: Peer) -> bytes:
    """What the sidecar will do, minus the database: parse, then AA (errors become AE/AR)."""
    order = parse_order_message(message)
    return build_ack(order.header, control_id="ACK2", timestamp=FIXED_TIME).encode()


@contextmanager
def running_server(
    handler: Callable[[bytes, Peer], Awaitable[bytes]],
    *,
    idle_timeout: float | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> Iterator[MllpServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine: Awaitable[T]) -> T:
        async def wrapper() -> T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(timeout=10)

    server = MllpServer(
        handler, "127.0.0.1", 0, idle_timeout=idle_timeout, max_message_size=max_message_size
    )
    run(server.start())
    try:
        yield server
    finally:
        run(server.stop(grace_period=2))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


def test_one_message_gets_its_ack() -> None:
    handler = RecordingHandler()
    with running_server(handler) as server, MllpClient("127.0.0.1", server.port) as client:
        ack = parse_ack(client.send(samples.ORM_NW_251.encode()))
    assert (ack.code, ack.acknowledged_control_id) == ("AA", "MSG-NW-0001")
    assert handler.received == [samples.ORM_NW_251.encode()]
    assert handler.peers[0].host == "127.0.0.1"


def test_many_messages_in_a_row_on_one_connection_are_answered_in_order() -> None:
    handler = RecordingHandler()
    control_ids = [f"MSG-{n:04d}" for n in range(60)]
    with running_server(handler) as server, MllpClient("127.0.0.1", server.port) as client:
        acks = [parse_ack(client.send(numbered(control_id))) for control_id in control_ids]
    assert [ack.acknowledged_control_id for ack in acks] == control_ids
    assert [control_id_of(message) for message in handler.received] == control_ids


def test_peer_dropping_mid_message_is_survived(caplog: pytest.LogCaptureFixture) -> None:
    handler = RecordingHandler()
    caplog.set_level(logging.INFO, logger="hl7.mllp.server")
    with running_server(handler) as server:
        half = frame(samples.ORM_NW_251.encode())[:200]
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(half)
        wait_until(lambda: server.connection_count == 0)
        with MllpClient("127.0.0.1", server.port) as client:
            ack = parse_ack(client.send(samples.ORM_XO_251.encode()))
    assert ack.code == "AA"
    assert handler.received == [samples.ORM_XO_251.encode()]  # the half message never reached it
    assert "ended mid-message: 199 bytes discarded" in caplog.text


def test_handler_failure_is_answered_ar_and_logged_without_patient_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail(message: bytes) -> bytes:
        order = parse_order_message(message)
        raise RuntimeError(f"database said no to {order.patient.identifier.id}")

    with (
        running_server(RecordingHandler(fail)) as server,
        MllpClient("127.0.0.1", server.port) as client,
    ):
        ack = parse_ack(client.send(samples.ORM_NW_251.encode()))
    assert (ack.code, ack.error_code) == ("AR", 207)
    assert ack.acknowledged_control_id == "MSG-NW-0001"
    assert "handler failed (RuntimeError)" in caplog.text
    assert "MSG-NW-0001" in caplog.text and "ORM^O01" in caplog.text
    assert "4711-0815" not in caplog.text  # the exception's text quoted the patient id


def test_handler_hl7_error_is_answered_with_its_code_and_location() -> None:
    async def unknown(message: bytes) -> bytes:
        raise UnknownKeyIdentifier("no order PLC-1001 to change", ErrorLocation("ORC", 1, 2))

    with (
        running_server(RecordingHandler(unknown)) as server,
        MllpClient("127.0.0.1", server.port) as client,
    ):
        ack = parse_ack(client.send(samples.ORM_XO_251.encode()))
    assert (ack.code, ack.error_code, ack.error_location) == ("AE", 204, "ORC^1^2")
    assert ack.text == "no order PLC-1001 to change"


def test_handler_returning_nothing_is_answered_ar() -> None:
    async def nothing(message: bytes) -> bytes:
        return b""

    with (
        running_server(RecordingHandler(nothing)) as server,
        MllpClient("127.0.0.1", server.port) as client,
    ):
        ack = parse_ack(client.send(samples.ORM_NW_251.encode()))
    assert (ack.code, ack.error_code) == ("AR", 207)


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (samples.NOT_HL7, ("AR", 100, "", "")),
        (samples.ADT_A01, ("AR", 200, "MSG-ADT-1", "MSH^1^9^1^1")),
        (samples.ORM_V26, ("AR", 203, "MSG-NW-0001", "MSH^1^12")),
        (samples.NO_PATIENT_ID, ("AE", 101, "MSG-NW-0001", "PID^1^3")),
        (samples.UNKNOWN_ORDER_CONTROL, ("AE", 103, "MSG-NW-0001", "ORC^1^1")),
    ],
)
def test_malformed_messages_are_answered_over_mllp(
    sample: str, expected: tuple[str, int, str, str]
) -> None:
    with running_server(order_handler) as server, MllpClient("127.0.0.1", server.port) as client:
        ack = parse_ack(client.send(sample.encode()))
        follow_up = parse_ack(client.send(samples.ORM_SC_251.encode()))
    assert (ack.code, ack.error_code, ack.acknowledged_control_id, ack.error_location) == expected
    assert follow_up.code == "AA"  # the connection stays usable


def test_oversized_message_is_answered_ar_and_the_connection_goes_on() -> None:
    handler = RecordingHandler()
    big = samples.with_field(samples.ORM_NW_251, "OBR", 13, "x" * 5000).encode()
    with (
        running_server(handler, max_message_size=2000) as server,
        MllpClient("127.0.0.1", server.port) as client,
    ):
        rejected = parse_ack(client.send(big))
        accepted = parse_ack(client.send(samples.ORM_SC_251.encode()))
    assert (rejected.code, rejected.error_code) == ("AR", 207)
    assert rejected.acknowledged_control_id == "MSG-NW-0001"
    assert accepted.code == "AA"
    assert handler.received == [samples.ORM_SC_251.encode()]


def test_pipelined_messages_are_handled_one_after_the_other() -> None:
    events: list[str] = []

    async def slow(message: bytes) -> bytes:
        header = read_header(message)
        assert header is not None
        events.append(f"start {header.control_id}")
        for _ in range(20):
            await asyncio.sleep(0)  # give a concurrent handler every chance to start
        events.append(f"end {header.control_id}")
        return build_ack(header, control_id="A", timestamp=FIXED_TIME).encode()

    with (
        running_server(RecordingHandler(slow)) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
    ):
        raw.sendall(frame(M1) + frame(M2))  # both at once, without waiting for the ACK
        reader = MllpFrameReader()
        acks: list[bytes | OversizedMessage] = []
        while len(acks) < 2:
            acks += reader.feed(raw.recv(4096))
    assert events == ["start ID1", "end ID1", "start ID2", "end ID2"]
    assert [control_id_acknowledged(ack) for ack in acks] == ["ID1", "ID2"]


def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    with (
        running_server(RecordingHandler(), idle_timeout=0.2) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
    ):
        started = time.monotonic()
        assert raw.recv(10) == b""  # closed by the server
        assert time.monotonic() - started < 4


def test_concurrent_connections_are_served_at_the_same_time() -> None:
    connections = 8

    async def scenario() -> list[list[AckSummary]]:
        all_in_flight = asyncio.Event()
        in_flight = 0

        async def barrier(message: bytes) -> bytes:
            # Each connection's first message waits until every connection has one in flight:
            # a server serving connections one by one would time out here.
            nonlocal in_flight
            in_flight += 1
            if in_flight == connections:
                all_in_flight.set()
            await asyncio.wait_for(all_in_flight.wait(), 5)
            ack = build_ack(read_header(message), control_id="A", timestamp=FIXED_TIME)
            return ack.encode()

        async with MllpServer(RecordingHandler(barrier), "127.0.0.1", 0) as server:

            async def one_client(number: int) -> list[AckSummary]:
                async with AsyncMllpClient("127.0.0.1", server.port) as client:
                    return [
                        parse_ack(await client.send(numbered(f"C{number}-M{sequence}")))
                        for sequence in range(10)
                    ]

            return await asyncio.gather(*(one_client(n) for n in range(connections)))

    results = asyncio.run(scenario())
    for number, acks in enumerate(results):
        assert [ack.acknowledged_control_id for ack in acks] == [
            f"C{number}-M{sequence}" for sequence in range(10)
        ]
        assert {ack.code for ack in acks} == {"AA"}


def test_stop_lets_the_message_in_flight_finish_and_closes_idle_connections() -> None:
    async def scenario() -> tuple[AckSummary, bytes]:
        handler_started = asyncio.Event()
        release = asyncio.Event()

        async def held(message: bytes) -> bytes:
            handler_started.set()
            await release.wait()
            return build_ack(read_header(message), control_id="A", timestamp=FIXED_TIME).encode()

        server = MllpServer(RecordingHandler(held), "127.0.0.1", 0)
        await server.start()
        port = server.port
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        client = AsyncMllpClient("127.0.0.1", port, retries=0)
        sending = asyncio.create_task(client.send(samples.ORM_NW_251))
        await handler_started.wait()
        stopping = asyncio.create_task(server.stop(grace_period=5))
        idle_end = await asyncio.wait_for(idle_reader.read(10), 5)  # idle: closed at once
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)  # no longer accepting
        assert not stopping.done()  # still waiting for the message in flight
        release.set()
        ack = parse_ack(await asyncio.wait_for(sending, 5))
        await asyncio.wait_for(stopping, 5)
        await client.close()
        idle_writer.close()
        return ack, idle_end

    ack, idle_end = asyncio.run(scenario())
    assert ack.code == "AA"
    assert idle_end == b""


def test_stop_cancels_handlers_that_outlive_the_grace_period() -> None:
    async def scenario() -> None:
        handler_started = asyncio.Event()

        async def stuck(message: bytes) -> bytes:
            handler_started.set()
            await asyncio.Event().wait()  # never set
            raise AssertionError("unreachable")

        server = MllpServer(RecordingHandler(stuck), "127.0.0.1", 0)
        await server.start()
        client = AsyncMllpClient("127.0.0.1", server.port, retries=0)
        sending = asyncio.create_task(client.send(samples.ORM_NW_251))
        await handler_started.wait()
        await asyncio.wait_for(server.stop(grace_period=0.1), 5)
        with pytest.raises(MllpConnectionError):
            await asyncio.wait_for(sending, 5)  # no ACK: the sender will resend
        await client.close()

    asyncio.run(scenario())


# --- the blocking client against scripted peers ---------------------------------------------


@contextmanager
def scripted_peer(
    script: Callable[[socket.socket, int], None],
) -> Iterator[tuple[int, list[int]]]:
    """A TCP peer running `script(connection, number)` for each accepted connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        number = 0
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            number += 1
            accepted.append(number)
            with connection:
                script(connection, number)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        listener.close()
        thread.join(timeout=5)


def read_one_frame(connection: socket.socket) -> bytes:
    reader = MllpFrameReader()
    while True:
        data = connection.recv(65536)
        if not data:
            return b""
        messages = reader.feed(data)
        if messages:
            message = messages[0]
            assert isinstance(message, bytes)
            return message


def ack_for(message: bytes, code: str = "AA") -> bytes:
    header = read_header(message)
    text = build_ack(header, control_id="X", timestamp=FIXED_TIME).text
    return text.replace("MSA|AA|", f"MSA|{code}|").encode()


def test_client_reads_an_ack_delivered_in_pieces() -> None:
    def trickle(connection: socket.socket, number: int) -> None:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answer = frame(ack_for(read_one_frame(connection)))
        for index in range(len(answer)):
            connection.sendall(answer[index : index + 1])

    with scripted_peer(trickle) as (port, _), MllpClient("127.0.0.1", port) as client:
        ack = parse_ack(client.send(M1))
    assert (ack.code, ack.acknowledged_control_id) == ("AA", "ID1")


def test_client_skips_a_late_ack_of_another_message() -> None:
    def late_then_right(connection: socket.socket, number: int) -> None:
        message = read_one_frame(connection)
        connection.sendall(frame(ack_for(M2, "AE")) + frame(ack_for(message)))

    with scripted_peer(late_then_right) as (port, _), MllpClient("127.0.0.1", port) as client:
        ack = parse_ack(client.send(M1))
    assert (ack.code, ack.acknowledged_control_id) == ("AA", "ID1")


def test_client_times_out_and_closes_the_connection() -> None:
    def silent(connection: socket.socket, number: int) -> None:
        read_one_frame(connection)
        read_one_frame(connection)  # wait for the client to go away

    with scripted_peer(silent) as (port, _):
        client = MllpClient("127.0.0.1", port, timeout=0.3)
        with pytest.raises(MllpTimeoutError):
            client.send(M1)
        assert not client.connected  # a late ACK must not answer the next message


def test_client_reconnects_and_resends_when_the_connection_breaks() -> None:
    def drop_first(connection: socket.socket, number: int) -> None:
        message = read_one_frame(connection)
        if number > 1:
            connection.sendall(frame(ack_for(message)))

    with (
        scripted_peer(drop_first) as (port, accepted),
        MllpClient("127.0.0.1", port, retries=1) as client,
    ):
        ack = parse_ack(client.send(M1))
    assert ack.code == "AA"
    assert accepted == [1, 2]


def test_client_gives_up_when_retries_are_used_up() -> None:
    def always_drop(connection: socket.socket, number: int) -> None:
        read_one_frame(connection)

    with scripted_peer(always_drop) as (port, accepted):
        client = MllpClient("127.0.0.1", port, retries=2)
        with pytest.raises(MllpConnectionError):
            client.send(M1)
    assert accepted == [1, 2, 3]


def test_client_reports_a_refused_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with pytest.raises(MllpConnectionError):
        MllpClient("127.0.0.1", port, connect_timeout=2).send(M1)
