"""Process-wide logging: one line per event, no patient data (see sidecar.core.http.AccessLog).

LOG_FORMAT chooses the lines: `text` (the default: time, level, logger, message) or `json`, one
JSON object per line for a log store (Loki, Elasticsearch): `time` (ISO 8601, UTC), `level`,
`logger`, `message`, `node` (NODE_NAME), `requestId` when the line was logged for an API
request, an HL7 message, a registration or an outbox delivery (sidecar.core.correlation), and
`exception`, the traceback, formatted as below. JSON lines are pure ASCII, every other character
escaped: nothing in a message can break a line or a reader's decoding.

Tracebacks are where patient data leaks: a database driver's error quotes the failing row
(PostgreSQL's `DETAIL: Failing row contains (...)`), SQLAlchemy appends the statement's
parameters, pydantic quotes the input it refused, an HTTP client the URL with its query string.
So a logged traceback keeps every frame but withholds the message of any exception raised
outside this project; the project's own exceptions (hl7.errors, sidecar.core.errors, Orthanc client
errors ...) are written never to quote patient data, and keep theirs.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from sidecar.core import correlation

#: Packages whose exception messages are written for logs (ids, codes, field positions).
OWN_PACKAGES = frozenset({"sidecar", "hl7"})
WITHHELD = "(message withheld: it may quote patient data)"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class PatientSafeFormatter(logging.Formatter):
    def formatException(self, ei: ExcInfo | tuple[None, None, None]) -> str:
        _, value, _ = ei
        if value is None:
            return ""
        return "".join(format_exception(value)).rstrip("\n")

    def format(self, record: logging.LogRecord) -> str:
        # logging caches a record's formatted traceback (exc_text) for the next handler: one
        # formatted by another formatter (a test harness's, say) must not be reused here.
        cached = record.exc_text
        record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached


def format_exception(exc: BaseException, _seen: set[int] | None = None) -> list[str]:
    """As traceback.format_exception, chained causes included, with foreign messages withheld."""
    seen = _seen if _seen is not None else set()
    seen.add(id(exc))
    lines: list[str] = []
    cause, context = exc.__cause__, exc.__context__
    if cause is not None and id(cause) not in seen:
        lines += format_exception(cause, seen)
        lines.append("\nThe above exception was the direct cause of the following exception:\n\n")
    elif context is not None and not exc.__suppress_context__ and id(context) not in seen:
        lines += format_exception(context, seen)
        lines.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    if exc.__traceback__ is not None:
        lines.append("Traceback (most recent call last):\n")
        lines += traceback.format_list(traceback.extract_tb(exc.__traceback__))
    kind = type(exc)
    name = f"{kind.__module__}.{kind.__qualname__}"
    message = str(exc) if _is_own(kind) else WITHHELD
    lines.append(f"{name}: {message}\n" if message else f"{name}\n")
    return lines


def _is_own(kind: type[BaseException]) -> bool:
    return kind.__module__.split(".", 1)[0] in OWN_PACKAGES


class JsonFormatter(PatientSafeFormatter):
    """One JSON object per line (see the module's docstring); `node` is this node's name."""

    def __init__(self, node: str = "") -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "node": self.node,
        }
        request_id = correlation.current()
        if request_id is not None:
            entry["requestId"] = request_id
        if record.exc_info and record.exc_info[1] is not None:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def formatter_for(log_format: str, node: str = "") -> logging.Formatter:
    """The service's formatter for LOG_FORMAT `log_format`."""
    if log_format == "json":
        return JsonFormatter(node)
    if log_format == "text":
        return PatientSafeFormatter(TEXT_FORMAT)
    raise ValueError(f"LOG_FORMAT is one of {', '.join(LOG_FORMATS)}, not {log_format!r}")


# What configure_logging last set up: the worklist writer process logs the same way.
_style = ("text", "")


def configure_logging(level: str, log_format: str = "text", node: str = "") -> None:
    global _style
    handler = logging.StreamHandler()
    handler.setFormatter(formatter_for(log_format, node))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    _style = (log_format, node)
    quiet_loggers_that_print_urls()


def logging_style() -> tuple[str, str]:
    """The LOG_FORMAT and node name configure_logging was last given, for a child process's."""
    return _style


def quiet_loggers_that_print_urls() -> None:
    """Paths and query strings carry patient identifiers (QIDO searches by name and id)."""
    # uvicorn's access log prints the raw request line.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request's URL at INFO (the DICOMweb proxy's, the Orthanc client's).
    logging.getLogger("httpx").setLevel(logging.WARNING)
