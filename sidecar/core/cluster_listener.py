"""How a node hears the others (PostgreSQL LISTEN/NOTIFY): one connection of its own, kept open,
replaced when it breaks, and replaced too when it stays open but carries nothing any more (a
firewall that dropped its state): the node's heartbeat notifies the node itself, and an echo
not heard for a while means the connection is dead. After any replacement, what was notified
meanwhile is lost: the node catches up from the database (`caught_up`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


class NodeListener:
    def __init__(
        self,
        database_url: str,
        node_name: str,
        *,
        channels: Callable[[], Iterable[str]],
        deliver: Callable[[str, str], None],
        caught_up: Callable[[], None],
        echo_timeout: float,
    ) -> None:
        self._conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(False)
        self._node_name = node_name
        self._channels = channels
        self._deliver = deliver
        self._caught_up = caught_up
        self._echo_timeout = echo_timeout
        self._last_echo = 0.0  # monotonic
        #: Set while the node's heartbeat runs (and so echoes): only then is silence a sign.
        self.expect_echoes = False
        self.listening = False

    def heard_echo(self) -> None:
        self._last_echo = time.monotonic()

    def expect_echoes_from_now(self) -> None:
        self._last_echo = time.monotonic()
        self.expect_echoes = True

    def run(self, stopping: threading.Event) -> None:
        import psycopg

        first = True
        while not stopping.is_set():
            try:
                # TCP keepalives: a connection whose peer vanished (the network cut) is noticed
                # within seconds, not hours.
                with psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    keepalives=1,
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=3,
                ) as connection:
                    for channel in self._channels():
                        connection.execute(f'LISTEN "{channel}"')  # the code's own names
                    self.listening = True
                    self._last_echo = time.monotonic()
                    if not first:
                        self._caught_up()
                    first = False
                    while not stopping.is_set():
                        # A short wait: a stopping node is not held up by its listener.
                        for notice in connection.notifies(timeout=0.2):
                            self._deliver(notice.channel, notice.payload)
                        silent_for = time.monotonic() - self._last_echo
                        if self.expect_echoes and silent_for > self._echo_timeout:
                            raise ConnectionError("the node's own heartbeat was not heard")
            except Exception as exc:
                self.listening = False
                if stopping.is_set():
                    return
                log.warning(
                    "node %s: notifications from other nodes interrupted (%s); reconnecting",
                    self._node_name,
                    type(exc).__name__,
                )
                first = False
                stopping.wait(1.0)
        self.listening = False
