"""LOG_FORMAT=json: one JSON object per line with the service's fields, whatever a message
holds; tracebacks in them withhold foreign messages as the text lines do; an acceptable
X-Request-ID is kept and echoed, anything else replaced before it can reach a line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from sidecar.core import correlation
from sidecar.core.logs import WITHHELD, JsonFormatter, formatter_for
from sidecar.core.settings import Settings

import json_log
from stack import free_port, wait_for
from testapp import ADMIN_PASSWORD, CLOSED_ORTHANC_URL, TEST_JWT_SECRET, TEST_PLUGIN_TOKEN

# Built, not written out: a traceback quotes the source lines of its frames.
PATIENT_ID = "-".join(("DOE", "4711"))

# A message no reader may split or misread: line breaks of every kind, quotes, braces, a NUL,
# non-ASCII letters, a lone surrogate (what a wrongly decoded byte becomes).
AWKWARD = 'one\ntwo\r\nthree\u2028four\x85five "quoted" {braces} \x00 Ærø \udcff end'


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("sidecar.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_a_line_is_one_json_object_with_the_fields_whatever_the_message_holds() -> None:
    line = JsonFormatter("node-7").format(record("got %s", AWKWARD))
    [entry] = json_log.entries(line)  # one line, ASCII, the fields, UTC time
    assert entry["message"] == "got " + AWKWARD
    assert (entry["level"], entry["logger"], entry["node"]) == ("WARNING", "sidecar.test", "node-7")
    assert "requestId" not in entry and "exception" not in entry


def test_a_line_carries_the_id_of_the_work_it_was_logged_for() -> None:
    formatter = JsonFormatter("n")
    with correlation.bound("req-42") as request_id:
        inside = json.loads(formatter.format(record("inside")))
    assert request_id == "req-42"
    assert inside["requestId"] == "req-42"
    assert "requestId" not in json.loads(formatter.format(record("after")))


def test_a_traceback_in_json_withholds_foreign_messages() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.connect() as connection:
        connection.execute(sa.text("CREATE TABLE patient (id TEXT UNIQUE)"))
        connection.execute(sa.text("INSERT INTO patient VALUES (:id)"), {"id": PATIENT_ID})
        with pytest.raises(IntegrityError) as failure:
            connection.execute(sa.text("INSERT INTO patient VALUES (:id)"), {"id": PATIENT_ID})
    logged = record("registering failed", exc=failure.value)
    logging.Formatter().format(logged)  # another handler caches the full traceback first
    line = JsonFormatter().format(logged)
    [entry] = json_log.entries(line)
    assert PATIENT_ID not in line and PATIENT_ID not in entry["exception"]
    assert "sqlalchemy.exc.IntegrityError: " + WITHHELD in entry["exception"]
    assert "test_json_logs.py" in entry["exception"]  # the frames are there


def test_log_format_is_text_or_json() -> None:
    assert Settings().log_format == "text"
    assert Settings(log_format="json").log_format == "json"
    with pytest.raises(ValidationError):
        Settings(log_format="xml")
    with pytest.raises(ValueError):
        formatter_for("xml")


@pytest.mark.parametrize(
    "hostile",
    [
        "abc\r\nX-Admin: yes",
        "x" * (correlation.MAX_LENGTH + 1),
        "caf\u00e9",
        'abc"} {"level": "CRITICAL',
        "two words",
        "",
    ],
    ids=["crlf", "over-long", "non-ascii", "json-quotes", "space", "empty"],
)
def test_an_unacceptable_id_is_replaced(hostile: str) -> None:
    assert correlation.valid(hostile) is None
    assert correlation.valid(hostile.encode("utf-8")) is None
    with correlation.bound(hostile) as replaced:
        assert len(replaced) == 32 and replaced != hostile
        assert correlation.current() == replaced


def test_an_acceptable_id_is_kept() -> None:
    for kept in ("0f8fad5b-d9cb-469f-a165-70867728950e", "MSG-NW-0001", "a" * 128, "ab+/=:@~_."):
        assert correlation.valid(kept) == kept


@pytest.fixture
def failing_app(app: FastAPI) -> FastAPI:
    """The service with one more route, first in line, that fails as a bug would."""

    def fail() -> None:
        raise ValueError(PATIENT_ID)

    app.add_api_route("/api/test-failure", fail)
    app.router.routes.insert(0, app.router.routes.pop())
    return app


@pytest.mark.parametrize(
    "hostile",
    [
        b"abc\r\nX-Admin: yes",
        b"x" * 129,
        "caf\u00e9".encode(),
        b"\xff\xfe",
        b'abc"} {"level": "CRITICAL',
    ],
    ids=["crlf", "over-long", "non-ascii", "not-utf8", "json-quotes"],
)
@pytest.mark.one_database
def test_a_hostile_request_id_never_reaches_a_line_nor_the_answer(
    client: TestClient, hostile: bytes
) -> None:
    # The test client hands the header to the app as sent: no HTTP parser in between to refuse
    # it, as a lenient proxy might not.
    with json_log.json_lines() as lines:
        answer = client.get("/health", headers={"X-Request-ID": hostile})
    replaced = answer.headers["X-Request-ID"]
    assert correlation.valid(replaced) == replaced and replaced.encode() != hostile
    access = [e for e in lines.entries() if e["logger"] == "sidecar.http"]
    assert [e["requestId"] for e in access] == [replaced]
    assert hostile.decode("latin-1") not in lines.text
    assert "X-Admin" not in lines.text and "CRITICAL" not in lines.text


@pytest.mark.one_database
def test_refusals_and_errors_say_their_request_id(failing_app: FastAPI) -> None:
    with (
        TestClient(failing_app, raise_server_exceptions=False) as client,
        json_log.json_lines() as lines,
    ):
        refused = client.get("/api/studies?q=%00", headers={"X-Request-ID": "nul-1"})
        unauthenticated = client.get("/api/studies", headers={"X-Request-ID": "anon-1"})
        failed = client.get("/api/test-failure", headers={"X-Request-ID": "bug-1"})
        unnamed = client.get("/api/test-failure")
    assert (refused.status_code, refused.headers["X-Request-ID"]) == (400, "nul-1")
    assert (unauthenticated.status_code, unauthenticated.headers["X-Request-ID"]) == (401, "anon-1")
    assert (failed.status_code, failed.headers["X-Request-ID"]) == (500, "bug-1")
    generated = unnamed.headers["X-Request-ID"]
    assert unnamed.status_code == 500 and correlation.valid(generated) == generated

    by_id = {
        request_id: [e for e in lines.entries() if e.get("requestId") == request_id]
        for request_id in ("nul-1", "anon-1", "bug-1", generated)
    }
    assert [e["message"].split(" in ")[0] for e in by_id["nul-1"]] == ["GET <unmatched> -> 400"]
    assert [e["message"].split(" in ")[0] for e in by_id["anon-1"]] == ["GET /api/studies -> 401"]
    for request_id in ("bug-1", generated):
        [error] = [e for e in by_id[request_id] if e["message"] == "unhandled error"]
        assert "builtins.ValueError: " + WITHHELD in error["exception"]
        assert any(e["logger"] == "sidecar.http" for e in by_id[request_id])
    assert PATIENT_ID not in lines.text
    # Every line of these requests was logged under an id: none without one.
    requests = [
        e for e in lines.entries() if e["logger"] in ("sidecar.http", "sidecar.core.api_errors")
    ]
    assert len(requests) == 6 and all("requestId" in e for e in requests), lines.text


# The lines' shape and ids are the process's, whichever database it has (as below).
@pytest.mark.one_database
def test_the_service_process_writes_json_lines(tmp_path: Path, database_url: str) -> None:
    """`python -m sidecar` with LOG_FORMAT=json: every line on stderr, from the start to the
    stop, is a JSON object; a request's lines carry its id."""
    port = free_port()
    environment = {
        **os.environ,
        "LOG_FORMAT": "json",
        "NODE_NAME": "json-node",
        "DATA_DIR": str(tmp_path / "var"),
        "DATABASE_URL": database_url,
        "JWT_SECRET": TEST_JWT_SECRET,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SIDECAR_PLUGIN_TOKEN": TEST_PLUGIN_TOKEN,
        "SIDECAR_PORT": str(port),
        "ORTHANC_URL": CLOSED_ORTHANC_URL,
        "RECONCILE_ENABLED": "false",
        "MLLP_ENABLED": "false",
        "MPPS_ENABLED": "false",
        "WORKLIST_DIR": str(tmp_path / "worklist"),
    }
    stderr = (tmp_path / "stderr").open("w+b")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:

        def answering() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code < 600
            except httpx.HTTPError:
                assert process.poll() is None, (tmp_path / "stderr").read_text()
                return False

        wait_for(answering, timeout=60, what="the sidecar answering")
        login = httpx.post(
            f"http://127.0.0.1:{port}/api/auth/login",
            json={"username": "admin", "password": "not the password"},
            headers={"X-Request-ID": "process-login-1"},
        )
        assert login.status_code == 401
        assert login.headers["X-Request-ID"] == "process-login-1"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
        stderr.close()
    text = (tmp_path / "stderr").read_text(encoding="ascii")
    entries = json_log.entries(text)
    assert {e["node"] for e in entries} == {"json-node"}
    assert any(e["logger"].startswith("uvicorn") for e in entries)  # the server's own lines too
    login_lines = [e for e in entries if e.get("requestId") == "process-login-1"]
    assert {e["message"] for e in login_lines} >= {"login refused"}
    assert any(e["message"].startswith("POST /api/auth/login -> 401") for e in login_lines)
