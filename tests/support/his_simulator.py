"""A hospital information system on loopback that receives results (tests and the benchmark).

It listens for MLLP with the project's own server, in a thread with its own event loop, and
behaves as a careful HIS does: it answers every message (AA by default, or the AE/AR it is told
to give), files each control id once (a repeat gets the original answer again), and can be taken
down and brought back up on the same port to play an outage. Held (`hold`), it takes messages in
and answers none until released: the sender waits for an acknowledgement, as it does with a slow
HIS, and a sender that dies meanwhile never hears whether its message was filed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from hl7.ack import build_ack, new_control_id
from hl7.errors import AckCode, ErrorLocation, Hl7Error
from hl7.header import read_header
from hl7.mllp.server import MllpServer, Peer, local_now

from stack import free_port


@dataclass(frozen=True)
class Received:
    raw: str
    control_id: str
    at: float  # time.perf_counter() when it arrived


class HisSimulator:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[Received] = []  # every delivery, repeats included
        self._answers: dict[str, bytes] = {}  # control id -> the answer it got
        self._refuse: tuple[AckCode, str] | None = None
        self._released = threading.Event()
        self._released.set()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: MllpServer | None = None

    # --- what it answers --------------------------------------------------------------------

    def refuse_with(self, code: AckCode, text: str) -> None:
        """From now on, answer new messages with AE or AR and this text."""
        self._refuse = (code, text)

    def accept(self) -> None:
        self._refuse = None

    def hold(self) -> None:
        """From now on, take messages in (they count as received) and answer none of them until
        `release`; each is filed, or refused, when it is answered."""
        self._released.clear()

    def release(self) -> None:
        """Answer the held messages, and every message from now on, at once."""
        self._released.set()

    async def _handle(self, message: bytes, _: Peer) -> bytes:
        header = read_header(message)
        control_id = header.control_id if header else ""
        arrived = Received(message.decode("utf-8"), control_id, time.perf_counter())
        held = not self._released.is_set()
        if held:
            with self._changed:
                self.received.append(arrived)
                self._changed.notify_all()
            while not self._released.is_set():
                await asyncio.sleep(0.05)
        with self._changed:
            if not held:
                self.received.append(arrived)
            answer = self._answers.get(control_id)
            if answer is None:
                error = None
                if self._refuse is not None:
                    code, text = self._refuse
                    error = Hl7Error(text, ErrorLocation("OBR", 1, 3), ack_code=code)
                answer = build_ack(
                    header, error, control_id=new_control_id(), timestamp=local_now()
                ).encode()
                if error is None:  # filed: a repeat of it gets this answer again
                    self._answers[control_id] = answer
            self._changed.notify_all()
        return answer

    # --- what it got ------------------------------------------------------------------------

    def filed(self) -> list[Received]:
        """Messages as the HIS files them (accepted ones): one per control id, first arrival."""
        with self._changed:
            accepted = set(self._answers)
            seen: dict[str, Received] = {}
            for item in self.received:
                if item.control_id in accepted:
                    seen.setdefault(item.control_id, item)
        return list(seen.values())

    def wait_received(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Until `count` deliveries (accepted or refused, repeats included) have arrived."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"the HIS got {len(self.received)}, not {count}")
                self._changed.wait(remaining)
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Until `count` messages are filed (accepted); fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._answers) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"the HIS filed {len(self._answers)} messages, not {count}, in {timeout} s"
                    )
                self._changed.wait(remaining)
        return self.filed()

    # --- up and down ------------------------------------------------------------------------

    def start(self) -> HisSimulator:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = MllpServer(self._handle, "127.0.0.1", self.port)
            try:
                loop.run_until_complete(self._server.start())
            except BaseException as exc:  # the port is taken: report it to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._server.stop(grace_period=1.0))
            loop.close()

        self._thread = threading.Thread(target=run, name="his-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise AssertionError("the HIS simulator did not start within 10 s")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> HisSimulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
