"""A Server-Sent Events client over a plain socket, read incrementally with deadlines: what
arrives while the response is still open is seen at once (an HTTP client that buffers, or a proxy
that does, would hold it back), and the test decides when to stop without a thread.

`SseReader.open(url, headers)` sends the GET; `.status` and `.headers` are the answer's; `.next()`
returns the next event (a `SseEvent`) or fails after the deadline; comments are collected in
`.comments`. HTTP/1.1, chunked or close-delimited bodies.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseReader:
    sock: socket.socket
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body_prefix: bytes = b""
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    _raw: bytes = b""
    _text: str = ""
    _chunked: bool = False
    _ended: bool = False

    @classmethod
    def open(
        cls, url: str, headers: dict[str, str] | None = None, timeout: float = 10.0
    ) -> SseReader:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reader = cls(sock)
        reader._read_head(time.monotonic() + timeout)
        return reader

    def _receive(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            self._ended = True
            return False
        self._raw += data
        return True

    def _read_head(self, deadline: float) -> None:
        while b"\r\n\r\n" not in self._raw:
            if not self._receive(deadline):
                raise AssertionError(f"no HTTP answer head: {self._raw!r}")
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"

    def _decode(self) -> None:
        """Moves what complete chunks hold from the raw bytes to the text."""
        if not self._chunked:
            self._text += self._raw.decode()
            self._raw = b""
            return
        while b"\r\n" in self._raw:
            size_line, rest = self._raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self._ended = True
                self._raw = b""
                return
            if len(rest) < size + 2:
                return
            self._text += rest[:size].decode()
            self._raw = rest[size + 2 :]

    def wait_ready(self, timeout: float = 10.0) -> SseReader:
        """Reads until the `retry:` line the stream opens with: the server is listening now."""
        deadline = time.monotonic() + timeout
        while self.retry is None:
            self._decode()
            if "\n\n" in self._text:
                block, self._text = self._text.split("\n\n", 1)
                if self._parse(block) is not None:
                    raise AssertionError(f"an event before retry: {block!r}")
                continue
            if self._ended or not self._receive(deadline):
                raise AssertionError(f"no retry line (status {self.status}): {self._text!r}")
        return self

    def body(self, timeout: float = 10.0) -> str:
        """The whole body of an answer that ends (a refusal)."""
        deadline = time.monotonic() + timeout
        while not self._ended and self._receive(deadline):
            self._decode()
        self._decode()
        return self._text

    def next(self, timeout: float = 10.0) -> SseEvent:
        deadline = time.monotonic() + timeout
        while True:
            self._decode()
            while "\n\n" in self._text:
                block, self._text = self._text.split("\n\n", 1)
                event = self._parse(block)
                if event is not None:
                    return event
            if self._ended:
                raise AssertionError("the stream ended")
            if not self._receive(deadline):
                raise AssertionError(f"no event within {timeout} s (buffered: {self._text!r})")

    def _parse(self, block: str) -> SseEvent | None:
        event = SseEvent()
        has_data = False
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                self.retry = int(value)
            elif name == "event":
                event.event = value
            elif name == "id":
                event.id = value
            elif name == "data":
                event.data = value if not has_data else event.data + "\n" + value
                has_data = True
        return event if has_data else None

    def until(self, predicate: Any, timeout: float = 15.0) -> list[SseEvent]:
        """Every event up to and including the first `predicate` accepts."""
        deadline = time.monotonic() + timeout
        seen: list[SseEvent] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event within {timeout} s; saw {seen!r}")
            event = self.next(remaining)
            seen.append(event)
            if predicate(event):
                return seen

    def quiet_for(self, seconds: float) -> list[SseEvent]:
        """The events that come within `seconds` (none expected, usually)."""
        seen: list[SseEvent] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                seen.append(self.next(max(0.01, deadline - time.monotonic())))
            except AssertionError:
                break
        return seen

    def close(self) -> None:
        self.sock.close()
