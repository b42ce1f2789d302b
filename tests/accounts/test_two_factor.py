"""Two-factor authentication (TOTP): enrolment, login with a code the test computes with pyotp,
replays refused, the code's failures counted, administrators required to enrol when
REQUIRE_ADMIN_2FA, and the viewer's login form following the same rules."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.accounts.models import User
from sidecar.core.settings import Settings

from account_helpers import (
    attempt,
    audit_events,
    bearer,
    clocked_app,
    error_message,
    new_user,
    now_clock,
)
from finding_helpers import FakeClock
from testapp import ADMIN_PASSWORD, USER_PASSWORD, engine_of, login


@pytest.fixture
def clock() -> FakeClock:
    return now_clock()


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return clocked_app(settings, clock)


def code(secret: str, clock: FakeClock) -> str:
    return pyotp.TOTP(secret).at(clock.now)


def enrol(
    client: TestClient, headers: dict[str, str], clock: FakeClock
) -> tuple[str, httpx.Response]:
    started = client.post("/api/auth/totp/enroll", headers=headers)
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    verified = client.post(
        "/api/auth/totp/verify", headers=headers, json={"code": code(secret, clock)}
    )
    assert verified.status_code == 200, verified.text
    clock.advance(seconds=30)  # the verifying code is used: the next one is a new step's
    return secret, verified


def test_enrolment_then_login_needs_a_code_once(
    app: FastAPI, client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    user_id = new_user(client, admin_headers, "tech.one")
    own = login(client, "tech.one", USER_PASSWORD)
    started = client.post("/api/auth/totp/enroll", headers=own).json()
    uri = urlsplit(started["provisioningUri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert parse_qs(uri.query)["secret"] == [started["secret"]]
    # Not in force until verified.
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 200
    wrong = client.post("/api/auth/totp/verify", headers=own, json={"code": "000000"})
    assert wrong.status_code == 422
    secret = started["secret"]
    verified = client.post("/api/auth/totp/verify", headers=own, json={"code": code(secret, clock)})
    assert verified.status_code == 200
    clock.advance(seconds=30)

    missing = attempt(client, "tech.one", USER_PASSWORD)
    assert missing.status_code == 401
    assert "two-factor code is required" in error_message(missing)
    assert missing.json()["error"]["details"][0]["location"] == "body.totpCode"
    bad = attempt(client, "tech.one", USER_PASSWORD, totpCode="123456")
    assert bad.status_code == 401
    good = code(secret, clock)
    assert attempt(client, "tech.one", USER_PASSWORD, totpCode=good).status_code == 200
    replayed = attempt(client, "tech.one", USER_PASSWORD, totpCode=good)
    assert replayed.status_code == 401
    assert "already used" in error_message(replayed)
    # The code of the step before is within the drift allowed, but used: still refused.
    clock.advance(seconds=30)
    assert attempt(client, "tech.one", USER_PASSWORD, totpCode=good).status_code == 401
    # A code of the next step (a phone slightly ahead) is accepted.
    ahead = pyotp.TOTP(secret).at(clock.now + timedelta(seconds=30))
    assert attempt(client, "tech.one", USER_PASSWORD, totpCode=ahead).status_code == 200
    reasons = [
        e["detail"].get("reason")
        for e in audit_events(client, admin_headers, entityId=str(user_id))
        if e["action"].startswith("auth.login")
    ]
    assert reasons[-6:] == ["totp_missing", "totp_wrong", None, "totp_wrong", "totp_wrong", None]
    with Session(engine_of(app)) as session:
        user = session.exec(select(User).where(User.username == "tech.one")).one()
        assert user.totp_enabled and user.totp_secret and secret not in user.totp_secret
    listed = client.get("/api/users", headers=admin_headers).text
    assert secret not in listed
    assert '"totpEnabled":true' in listed.replace(" ", "")
    clock.advance(seconds=30)
    again = client.post("/api/auth/totp/enroll", headers=login_with(client, secret, clock))
    assert again.status_code == 409


def login_with(client: TestClient, secret: str, clock: FakeClock) -> dict[str, str]:
    clock.advance(seconds=30)
    response = attempt(client, "tech.one", USER_PASSWORD, totpCode=code(secret, clock))
    assert response.status_code == 200, response.text
    return bearer(response.json()["accessToken"])


def test_missing_and_wrong_codes_count_towards_the_lockout(
    client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    new_user(client, admin_headers, "tech.one")
    secret, _ = enrol(client, login(client, "tech.one", USER_PASSWORD), clock)
    for n in range(5):
        clock.advance(seconds=1)
        extra = {"totpCode": "999999"} if n % 2 else {}
        assert attempt(client, "tech.one", USER_PASSWORD, **extra).status_code == 401
    locked = attempt(client, "tech.one", USER_PASSWORD, totpCode=code(secret, clock))
    assert locked.status_code == 429


@pytest.mark.parametrize("value", ["12345a", "12345", "1234567", "١٢٣٤٥٦", " 123456", ""])
def test_a_code_that_is_not_six_digits_is_refused_before_anything(
    client: TestClient, value: str
) -> None:
    response = attempt(client, "admin", ADMIN_PASSWORD, totpCode=value)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["location"] == "body.totpCode"


def test_an_administrator_resets_a_lost_second_factor(
    client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    user_id = new_user(client, admin_headers, "tech.one")
    enrol(client, login(client, "tech.one", USER_PASSWORD), clock)
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 401

    reset = client.delete(f"/api/users/{user_id}/totp", headers=admin_headers)

    assert reset.status_code == 200 and reset.json()["totpEnabled"] is False
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 200
    assert [e["action"] for e in audit_events(client, admin_headers, action="user.totp_reset")]


def test_the_secret_is_unreadable_under_another_jwt_secret(
    settings: Settings, client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    new_user(client, admin_headers, "tech.one")
    secret, _ = enrol(client, login(client, "tech.one", USER_PASSWORD), clock)
    other = settings.model_copy(update={"jwt_secret": "another-secret-" + "q" * 40})
    client.__exit__(None, None, None)  # the service stopped, then started with another secret
    with TestClient(clocked_app(other, clock)) as moved:
        answer = attempt(moved, "tech.one", USER_PASSWORD, totpCode=code(secret, clock))
        assert answer.status_code == 401


# --- administrators must enrol ------------------------------------------------------------------


def test_require_admin_2fa_defaults_on_in_production_only() -> None:
    secret = "s" * 48
    production = Settings(environment="production", jwt_secret=secret, sidecar_plugin_token=secret)
    assert production.require_admin_2fa is True
    assert Settings(environment="development").require_admin_2fa is False
    assert Settings(environment="development", require_admin_2fa=True).require_admin_2fa is True


@pytest.fixture
def strict_app(settings: Settings, clock: FakeClock) -> FastAPI:
    return clocked_app(settings.model_copy(update={"require_admin_2fa": True}), clock)


def test_an_administrator_without_totp_may_only_enrol(
    strict_app: FastAPI, clock: FakeClock
) -> None:
    with TestClient(strict_app) as client:
        first = attempt(client, "admin", ADMIN_PASSWORD).json()
        assert (first["scope"], first["refreshToken"]) == ("totp_enrolment", None)
        restricted = bearer(first["accessToken"])
        refused = client.get("/api/users", headers=restricted)
        assert refused.status_code == 403
        assert "two-factor authentication" in error_message(refused)
        assert client.get("/api/studies", headers=restricted).status_code == 403

        secret, verified = enrol(client, restricted, clock)

        assert verified.json()["scope"] == "full" and verified.json()["refreshToken"]
        full = bearer(verified.json()["accessToken"])
        assert client.get("/api/users", headers=full).status_code == 200
        assert attempt(client, "admin", ADMIN_PASSWORD).status_code == 401
        with_code = attempt(client, "admin", ADMIN_PASSWORD, totpCode=code(secret, clock))
        assert with_code.json()["scope"] == "full"
        # Other roles are not required to enrol.
        new_user(client, full, "tech.one")
        assert attempt(client, "tech.one", USER_PASSWORD).json()["scope"] == "full"


# --- the viewer's login form ------------------------------------------------------------------


def form(client: TestClient, **fields: str) -> httpx.Response:
    response: httpx.Response = client.post(
        "/login", data={"next": "/viewer", **fields}, follow_redirects=False
    )
    return response


def test_the_viewer_form_asks_for_the_code_and_accepts_it(
    client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    new_user(client, admin_headers, "rad.one", role="radiologist")
    secret, _ = enrol(client, login(client, "rad.one", USER_PASSWORD), clock)

    asked = form(client, username="rad.one", password=USER_PASSWORD)
    assert asked.status_code == 401
    assert 'name="totp_code"' in asked.text
    assert "authenticator" in asked.text
    assert 'name="totp_code"' not in client.get("/login").text
    wrong = form(client, username="rad.one", password=USER_PASSWORD, totp_code="000000")
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    letters = form(client, username="rad.one", password=USER_PASSWORD, totp_code="abcdef")
    assert letters.status_code == 400
    good = form(client, username="rad.one", password=USER_PASSWORD, totp_code=code(secret, clock))
    assert good.status_code == 303, good.text
    assert good.headers["set-cookie"].startswith("viewer_session=")
    channels = {
        e["detail"]["channel"]
        for e in audit_events(client, admin_headers, actor="rad.one")
        if e["action"].startswith("auth.login")
    }
    assert channels == {"api", "viewer"}


def test_the_viewer_form_locks_like_the_api(
    client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    new_user(client, admin_headers, "rad.one", role="radiologist")
    for _ in range(5):
        clock.advance(seconds=1)
        assert form(client, username="rad.one", password="wrong-wrong-wrong").status_code == 401
    locked = form(client, username="rad.one", password=USER_PASSWORD)
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0
    assert "too many failed logins" in locked.text
    assert attempt(client, "rad.one", USER_PASSWORD).status_code == 429
    over_long = form(client, username="r" * 65, password=USER_PASSWORD)
    assert over_long.status_code == 400


def test_the_viewer_refuses_an_account_that_must_change_its_password(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    user_id = new_user(client, admin_headers, "rad.one", role="radiologist")
    temporary = "temporary-lantern-41"
    reset = client.patch(
        f"/api/users/{user_id}", headers=admin_headers, json={"password": temporary}
    )
    assert reset.status_code == 200

    refused = form(client, username="rad.one", password=temporary)

    assert refused.status_code == 403
    assert "choose a new one" in refused.text
    assert "set-cookie" not in refused.headers
    token = attempt(client, "rad.one", temporary).json()["accessToken"]
    assert client.get("/api/viewer/authorize", headers=bearer(token)).status_code == 403


def test_the_viewer_session_outlives_the_short_access_token(settings: Settings) -> None:
    assert (settings.jwt_expire_minutes, settings.viewer_session_minutes) == (15, 480)
