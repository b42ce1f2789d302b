"""The MLLP listener orders arrive on (HL7 from the HIS), started and stopped with the service."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

from hl7.header import MessageHeader
from hl7.mllp.server import Handler, MllpServer
from sidecar.core import correlation
from sidecar.orders.intake import OrderIntake

log = logging.getLogger(__name__)


class OrderListener:
    """The intake's MLLP server, when MLLP_ENABLED; `server` is None until started."""

    def __init__(self, intake: OrderIntake, *, enabled: bool, host: str, port: int) -> None:
        self.intake = intake
        self.handler: Handler = intake  # wrapped to count (sidecar.operations.metrics)
        self.enabled = enabled
        self.host = host
        self._port = port
        self.server: MllpServer | None = None

    async def start(self) -> None:
        if not self.enabled:
            return
        self.server = MllpServer(
            self.handler, host=self.host, port=self._port, message_scope=message_scope
        )
        await self.server.start()
        log.info("HL7 MLLP listener on %s:%d", self.host, self.server.port)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


def message_scope(header: MessageHeader | None) -> AbstractContextManager[str]:
    """Every line a message causes carries its control id (MSH-10: not patient data), or a
    generated id when it has none or an unacceptable one (sidecar.core.correlation)."""
    return correlation.bound(header.control_id if header is not None else None)
