"""The service's JSON log lines (LOG_FORMAT=json), read as a log store reads them: line by line,
each one JSON object with the service's fields."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sidecar.core.logs import JsonFormatter

FIELDS = {"time", "level", "logger", "message", "node"}
OPTIONAL = {"requestId", "exception", "stack"}


def entries(text: str) -> list[dict[str, Any]]:
    """Each line of `text` (split on line feeds only, as log shippers do), parsed; fails on a
    line that is not one JSON object with the service's fields."""
    parsed: list[dict[str, Any]] = []
    for line in text.split("\n"):
        if not line:
            continue
        assert line.isascii(), line
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert FIELDS <= entry.keys() <= FIELDS | OPTIONAL, line
        assert all(isinstance(value, str) for value in entry.values()), line
        when = datetime.fromisoformat(entry["time"])
        assert entry["time"].endswith("Z") and when.utcoffset() == timedelta(0), line
        parsed.append(entry)
    return parsed


def decoded_lines(text: str) -> list[str]:
    """Each entry's values, decoded (escapes undone), as one line of text."""
    return [" ".join(entry.values()).replace("\n", " ") for entry in entries(text)]


class JsonCapture(logging.Handler):
    """Keeps every record's JSON line (the service's formatter) in memory."""

    def __init__(self, node: str = "capture-node") -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter(node))
        self._lines: list[str] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._guard:
            self._lines.append(line)

    @property
    def text(self) -> str:
        with self._guard:
            return "\n".join(self._lines) + "\n"

    def entries(self) -> list[dict[str, Any]]:
        return entries(self.text)

    def mark(self) -> int:
        """A position in the lines: `entries_since` reads what came after it."""
        with self._guard:
            return len(self._lines)

    def entries_since(self, mark: int) -> list[dict[str, Any]]:
        with self._guard:
            return entries("\n".join(self._lines[mark:]))


@contextmanager
def json_lines() -> Iterator[JsonCapture]:
    """The JSON lines of every record logged meanwhile (INFO and up), in this process."""
    capture = JsonCapture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
