"""The Orthanc plugin glue: pure logic with a recording session, then the entry script run with the
fake ``orthanc`` module against real HTTP on loopback."""

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import requests

import stable_study_notifier as ssn

import fake_orthanc  # also puts plugin/ on sys.path for stable_study_notifier
from fake_orthanc import ChangeType, FakeOrthanc, ResourceType
from sidecar_stub import SidecarStub

STUDY_ID = "6b9e19d9-62094390-5f9ddb01-4a191ae7-9766b715"
TOKEN = "plugin-secret"
SIDECAR = "http://sidecar.test:3006"


class RecordingResponse:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.closed = False

    def close(self) -> None:
        self.closed = True


class RecordingSession:
    """Answers every POST with ``status``, or raises ``error``; remembers each call."""

    def __init__(self, status: int = 204, error: Exception | None = None) -> None:
        self.status = status
        self.error = error
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.responses: list[RecordingResponse] = []

    def post(self, url: str, **kwargs: Any) -> RecordingResponse:
        self.calls.append((url, kwargs))
        if self.error is not None:
            raise self.error
        response = RecordingResponse(self.status)
        self.responses.append(response)
        return response


def make_notifier(
    session: RecordingSession, warnings: list[str], url: str = SIDECAR
) -> ssn.SidecarNotifier:
    return ssn.SidecarNotifier(url, TOKEN, session, log=warnings.append)


def make_handler(session: RecordingSession, warnings: list[str]) -> ssn.ChangeHandler:
    return ssn.ChangeHandler(
        make_notifier(session, warnings).notify_stable_study,
        stable_study=ChangeType.STABLE_STUDY,
        orthanc_stopped=ChangeType.ORTHANC_STOPPED,
    )


# --- dispatcher and notifier, no I/O -------------------------------------------------------------


def test_stable_study_posts_once_with_id_and_bearer_token() -> None:
    session, warnings = RecordingSession(), list[str]()
    make_handler(session, warnings)(int(ChangeType.STABLE_STUDY), int(ResourceType.STUDY), STUDY_ID)

    assert session.calls == [
        (
            f"{SIDECAR}/api/orthanc/stable-studies",
            {
                "json": {"orthancStudyId": STUDY_ID},
                "headers": {"Authorization": f"Bearer {TOKEN}"},
                "timeout": (1.0, 3.0),
                "allow_redirects": False,
            },
        )
    ]
    assert session.responses[0].closed
    assert warnings == []


def test_trailing_slash_in_sidecar_url_is_not_doubled() -> None:
    session = RecordingSession()
    make_notifier(session, [], url=SIDECAR + "/").notify_stable_study(STUDY_ID)
    assert session.calls[0][0] == f"{SIDECAR}/api/orthanc/stable-studies"


@pytest.mark.parametrize(
    "change_type", [c for c in ChangeType if c is not ChangeType.STABLE_STUDY], ids=str
)
def test_other_change_types_post_nothing(change_type: ChangeType) -> None:
    session = RecordingSession()
    make_handler(session, [])(int(change_type), int(ResourceType.STUDY), STUDY_ID)
    assert session.calls == []


def test_events_after_orthanc_stopped_are_ignored() -> None:
    session = RecordingSession()
    handler = make_handler(session, [])
    assert not handler.stopped

    handler(int(ChangeType.ORTHANC_STOPPED), int(ResourceType.NONE), "")
    handler(int(ChangeType.STABLE_STUDY), int(ResourceType.STUDY), STUDY_ID)

    assert handler.stopped
    assert session.calls == []


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_any_2xx_is_success(status: int) -> None:
    warnings: list[str] = []
    assert make_notifier(RecordingSession(status), warnings).notify_stable_study(STUDY_ID)
    assert warnings == []


@pytest.mark.parametrize("status", [199, 301, 401, 404, 500, 503])
def test_non_2xx_returns_false_with_one_warning(status: int) -> None:
    session, warnings = RecordingSession(status), list[str]()

    assert make_notifier(session, warnings).notify_stable_study(STUDY_ID) is False

    assert len(session.calls) == 1  # no retry
    assert session.responses[0].closed
    assert len(warnings) == 1
    assert STUDY_ID in warnings[0]
    assert f"HTTP {status}" in warnings[0]
    assert TOKEN not in warnings[0]


@pytest.mark.parametrize(
    "error",
    [
        requests.ConnectionError("refused by http://sidecar.test:3006 for PATIENT^NAME"),
        requests.ReadTimeout("read timed out"),
        ValueError("a bug in the session"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_exception_returns_false_with_one_warning_naming_only_its_class(error: Exception) -> None:
    session, warnings = RecordingSession(error=error), list[str]()

    assert make_notifier(session, warnings).notify_stable_study(STUDY_ID) is False

    assert len(session.calls) == 1  # no retry
    assert len(warnings) == 1
    assert STUDY_ID in warnings[0]
    assert type(error).__name__ in warnings[0]
    assert str(error) not in warnings[0]  # messages may carry URLs or data; the class is enough
    assert TOKEN not in warnings[0]


# --- configuration ----------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = ssn.config_from_env({"SIDECAR_PLUGIN_TOKEN": TOKEN})
    assert config == ssn.BridgeConfig(
        sidecar_url="http://127.0.0.1:3006", token=TOKEN, timeout_seconds=3.0
    )
    assert config.timeout == (1.0, 3.0)


def test_config_reads_url_and_timeout() -> None:
    config = ssn.config_from_env(
        {
            "SIDECAR_URL": "https://sidecar:3006/",
            "SIDECAR_PLUGIN_TOKEN": TOKEN,
            "SIDECAR_NOTIFY_TIMEOUT": "0.5",
        }
    )
    assert config.sidecar_url == "https://sidecar:3006"
    assert config.timeout_seconds == 0.5
    assert config.timeout == (0.5, 0.5)  # connect never waits longer than the whole budget


def test_config_is_frozen_and_its_repr_hides_the_token() -> None:
    config = ssn.config_from_env({"SIDECAR_PLUGIN_TOKEN": TOKEN})
    assert TOKEN not in repr(config)
    with pytest.raises(AttributeError):
        config.token = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "environ", [{}, {"SIDECAR_PLUGIN_TOKEN": ""}, {"SIDECAR_PLUGIN_TOKEN": " "}]
)
def test_config_without_token_is_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ssn.ConfigError, match="SIDECAR_PLUGIN_TOKEN"):
        ssn.config_from_env(environ)


def test_config_reads_the_token_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    config = ssn.config_from_env({"SIDECAR_PLUGIN_TOKEN_FILE": str(secret)})
    assert config.token == TOKEN


def test_config_refuses_a_token_given_twice_or_an_unusable_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    both = {"SIDECAR_PLUGIN_TOKEN": TOKEN, "SIDECAR_PLUGIN_TOKEN_FILE": str(secret)}
    with pytest.raises(ssn.ConfigError, match="both set") as refused:
        ssn.config_from_env(both)
    assert TOKEN not in str(refused.value)
    with pytest.raises(ssn.ConfigError, match="SIDECAR_PLUGIN_TOKEN_FILE: cannot read"):
        ssn.config_from_env({"SIDECAR_PLUGIN_TOKEN_FILE": str(tmp_path / "absent")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ssn.ConfigError, match=r"SIDECAR_PLUGIN_TOKEN_FILE: .* is empty"):
        ssn.config_from_env({"SIDECAR_PLUGIN_TOKEN_FILE": str(tmp_path / "empty")})


@pytest.mark.parametrize("timeout", ["abc", "0", "-1", "nan", "inf", "3s"])
def test_config_with_bad_timeout_is_refused(timeout: str) -> None:
    with pytest.raises(ssn.ConfigError, match="SIDECAR_NOTIFY_TIMEOUT"):
        ssn.config_from_env({"SIDECAR_PLUGIN_TOKEN": TOKEN, "SIDECAR_NOTIFY_TIMEOUT": timeout})


def test_config_with_url_without_scheme_is_refused() -> None:
    with pytest.raises(ssn.ConfigError, match="SIDECAR_URL"):
        ssn.config_from_env({"SIDECAR_URL": "sidecar:3006", "SIDECAR_PLUGIN_TOKEN": TOKEN})


# --- the entry script under the fake orthanc module, real HTTP on loopback ----------------------


def bridge_env(url: str, **extra: str) -> dict[str, str]:
    return {"SIDECAR_URL": url, "SIDECAR_PLUGIN_TOKEN": TOKEN, **extra}


def test_entry_script_registers_one_change_callback() -> None:
    fake = FakeOrthanc()
    fake_orthanc.load_bridge(fake, bridge_env("http://127.0.0.1:3006"))

    # A second registration would have raised in the fake, as in the real plugin.
    assert callable(fake.change_callback)
    assert fake.messages("error") == []
    assert any("http://127.0.0.1:3006" in message for message in fake.messages("info"))


@pytest.mark.parametrize("environ", [{}, {"SIDECAR_PLUGIN_TOKEN": ""}])
def test_entry_script_without_token_registers_nothing_and_logs_an_error(
    environ: dict[str, str],
) -> None:
    fake = FakeOrthanc()
    fake_orthanc.load_bridge(fake, environ)

    assert fake.change_callback is None
    errors = fake.messages("error")
    assert len(errors) == 1
    assert "SIDECAR_PLUGIN_TOKEN" in errors[0]
    assert "DISABLED" in errors[0]


def test_stable_study_reaches_a_real_http_server(sidecar: SidecarStub) -> None:
    fake = FakeOrthanc()
    fake_orthanc.load_bridge(fake, bridge_env(sidecar.url))

    fake.on_change(ChangeType.STABLE_STUDY, ResourceType.STUDY, STUDY_ID)

    post = sidecar.next_post()
    assert post.path == "/api/orthanc/stable-studies"
    assert post.headers["Authorization"] == f"Bearer {TOKEN}"
    assert post.headers["Content-Type"] == "application/json"
    assert json.loads(post.body) == {"orthancStudyId": STUDY_ID}
    assert fake.messages("warning") == []


def test_only_stable_study_is_posted_and_nothing_after_orthanc_stopped(
    sidecar: SidecarStub,
) -> None:
    fake = FakeOrthanc()
    fake_orthanc.load_bridge(fake, bridge_env(sidecar.url))

    fake.on_change(ChangeType.NEW_INSTANCE, ResourceType.INSTANCE, "instance-id")
    fake.on_change(ChangeType.STABLE_SERIES, ResourceType.SERIES, "series-id")
    fake.on_change(ChangeType.ORTHANC_STOPPED, ResourceType.NONE, "")
    fake.on_change(ChangeType.STABLE_STUDY, ResourceType.STUDY, STUDY_ID)

    # on_change is synchronous: any post would already be in the queue.
    assert sidecar.received.empty()


def test_sidecar_error_status_is_one_warning(sidecar: SidecarStub) -> None:
    sidecar.status = 503
    fake = FakeOrthanc()
    fake_orthanc.load_bridge(fake, bridge_env(sidecar.url))

    fake.on_change(ChangeType.STABLE_STUDY, ResourceType.STUDY, STUDY_ID)

    assert sidecar.next_post().path == "/api/orthanc/stable-studies"
    assert sidecar.received.empty()  # no retry
    warnings = fake.messages("warning")
    assert len(warnings) == 1
    assert "HTTP 503" in warnings[0]


def test_closed_port_returns_promptly_without_raising() -> None:
    # Bound but not listening: connections are refused, and no other test can take the port.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        fake = FakeOrthanc()
        fake_orthanc.load_bridge(fake, bridge_env(f"http://127.0.0.1:{closed.getsockname()[1]}"))

        started = time.monotonic()
        fake.on_change(ChangeType.STABLE_STUDY, ResourceType.STUDY, STUDY_ID)
        elapsed = time.monotonic() - started

    assert elapsed < 1.0
    warnings = fake.messages("warning")
    assert len(warnings) == 1
    assert "ConnectionError" in warnings[0]
    assert STUDY_ID in warnings[0]


def test_silent_sidecar_is_cut_off_by_the_configured_timeout() -> None:
    # Listening but never accepting: the kernel completes the handshake, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        fake = FakeOrthanc()
        fake_orthanc.load_bridge(fake, bridge_env(url, SIDECAR_NOTIFY_TIMEOUT="0.3"))

        started = time.monotonic()
        fake.on_change(ChangeType.STABLE_STUDY, ResourceType.STUDY, STUDY_ID)
        elapsed = time.monotonic() - started

    assert 0.25 <= elapsed < 2.0
    warnings = fake.messages("warning")
    assert len(warnings) == 1
    assert "ReadTimeout" in warnings[0]
