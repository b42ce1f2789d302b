"""A stand-in sidecar for the plugin's tests: a real HTTP server on an ephemeral loopback port that
records each POST with the status it answered, and can hold its answers until a test lets them go.
"""

import http.server
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class ReceivedPost:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the stub answered


class SidecarStub:
    def __init__(self) -> None:
        self.status = 204
        self.received: queue.Queue[ReceivedPost] = queue.Queue()
        # Cleared: every answer waits until it is set again (the POST is recorded first).
        self.answering = threading.Event()
        self.answering.set()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = stub.status
                # Recorded before answering, so the post is here once the client returns.
                stub.received.put(ReceivedPost(self.path, dict(self.headers), body, status))
                stub.answering.wait(timeout=30)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def next_post(self) -> ReceivedPost:
        return self.received.get(timeout=5)


@contextmanager
def running_stub() -> Iterator[SidecarStub]:
    stub = SidecarStub()
    stub.thread.start()
    try:
        yield stub
    finally:
        stub.answering.set()
        stub.server.shutdown()
        stub.server.server_close()
        stub.thread.join(timeout=5)
