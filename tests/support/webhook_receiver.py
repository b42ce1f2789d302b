"""A notification service on loopback for tests and the benchmark: records every POSTed JSON
body, answers the statuses it is told to (then 200), and can be stopped and started again on
the same port to play an outage. Held (`hold`), it answers nothing until released: a slow
service, which the sender waits for."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stack import free_port, wait_for

HOLD_LIMIT = 60.0  # seconds a held POST waits at most: a forgotten hold ends


class WebhookReceiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[dict[str, Any]] = []
        self.arrival_times: list[float] = []  # time.perf_counter() at each arrival
        self.authorizations: list[str | None] = []  # the Authorization header of each
        self.request_ids: list[str | None] = []  # the X-Request-ID header of each
        self.statuses: list[int] = []  # the status each was answered
        self.answers: list[int] = []  # statuses to answer in turn before 200s
        # Hold each POST until this many are in flight together (or 5 s pass): shows whether
        # the sender sends in parallel. most_in_flight is the largest number seen at once.
        self.gather = 1
        self.most_in_flight = 0
        self._in_flight = 0
        self._all_in = threading.Condition(threading.Lock())
        self._released = threading.Event()
        self._released.set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notifications"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._all_in:
                    receiver._in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver._in_flight)
                    receiver._all_in.notify_all()
                    receiver._all_in.wait_for(
                        lambda: receiver._in_flight >= receiver.gather, timeout=5
                    )
                receiver._released.wait(HOLD_LIMIT)
                with receiver._lock:
                    receiver.received.append(json.loads(body))
                    receiver.arrival_times.append(time.perf_counter())
                    receiver.authorizations.append(self.headers.get("Authorization"))
                    receiver.request_ids.append(self.headers.get("X-Request-ID"))
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.statuses.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with receiver._all_in:
                    receiver._in_flight -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet test output

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def hold(self) -> None:
        """From now on, keep each POST waiting (HOLD_LIMIT at most) until `release`; it is
        recorded when it is answered."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies it took (answered 2xx), in order of arrival, repeats included."""
        with self._lock:
            return [
                body
                for body, status in zip(self.received, self.statuses, strict=True)
                if 200 <= status < 300
            ]

    def wait_for_count(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            with self._lock:
                return list(self.received) if len(self.received) >= count else None

        return wait_for(enough, timeout=timeout, what=f"{count} webhook notifications")
