"""uvicorn's server, ending the open event streams first when it shuts down: a stream never
completes by itself, and uvicorn waits for every response in progress before it stops."""

from __future__ import annotations

import socket

import uvicorn

from sidecar.core.dependencies import services_of
from sidecar.events.hub import EventHub


class Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        hub = services_of(self.config.app).find(EventHub)
        if hub is not None:
            hub.close_streams()
        await super().shutdown(sockets)
