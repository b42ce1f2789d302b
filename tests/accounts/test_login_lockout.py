"""Login throttling: a user name locks after LOGIN_MAX_FAILURES failures in the window, even for
the right password, until the window passes or an administrator unlocks it; a client address
has a higher limit of its own; every attempt is audited, no password anywhere."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sidecar.core.settings import Settings

from account_helpers import attempt, audit_events, clocked_app, error_message, new_user, now_clock
from finding_helpers import FakeClock
from testapp import ADMIN_PASSWORD, USER_PASSWORD, login

WRONG = "not-the-right-password"


@pytest.fixture
def clock() -> FakeClock:
    return now_clock()


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> FastAPI:
    return clocked_app(settings, clock)


def fail(client: TestClient, clock: FakeClock, username: str, times: int) -> None:
    for _ in range(times):
        clock.advance(seconds=1)
        assert attempt(client, username, WRONG).status_code == 401


def test_the_failure_after_the_limit_locks_the_account_and_not_another(
    client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    new_user(client, admin_headers, "tech.one")
    fail(client, clock, "tech.one", 5)

    locked = attempt(client, "tech.one", USER_PASSWORD)

    assert locked.status_code == 429, locked.text
    assert locked.json()["error"]["code"] == "too_many_requests"
    # The first counted failure was 5 s ago: it leaves the 15-minute window in 895 s.
    assert int(locked.headers["Retry-After"]) == 15 * 60 - 5 + 1
    assert attempt(client, "admin", ADMIN_PASSWORD).status_code == 200
    assert attempt(client, "tech.one", WRONG).status_code == 429


def test_four_failures_do_not_lock_and_a_success_clears_the_count(
    client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    new_user(client, admin_headers, "tech.one")
    fail(client, clock, "tech.one", 4)
    clock.advance(seconds=1)
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 200
    fail(client, clock, "tech.one", 4)
    clock.advance(seconds=1)
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 200


def test_the_lock_ends_when_the_window_has_passed(
    client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    new_user(client, admin_headers, "tech.one")
    fail(client, clock, "tech.one", 5)
    locked = attempt(client, "tech.one", USER_PASSWORD)
    assert locked.status_code == 429

    clock.advance(seconds=int(locked.headers["Retry-After"]) - 2)
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 429
    clock.advance(seconds=2)
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 200


def test_an_administrator_unlocks_the_account_and_it_is_audited(
    client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    user_id = new_user(client, admin_headers, "tech.one")
    other = login(client, "tech.one", USER_PASSWORD)
    fail(client, clock, "tech.one", 5)
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 429
    # The account itself may not unlock itself, nor may any other non-administrator.
    assert client.post(f"/api/users/{user_id}/unlock", headers=other).status_code == 403

    unlocked = client.post(f"/api/users/{user_id}/unlock", headers=admin_headers)

    assert unlocked.status_code == 200, unlocked.text
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 200
    events = audit_events(client, admin_headers, action="user.unlocked")
    assert [(e["actor"], e["entityId"]) for e in events] == [("admin", str(user_id))]
    assert client.post("/api/users/9999/unlock", headers=admin_headers).status_code == 404


def test_unknown_names_lock_like_real_ones_and_every_refusal_reads_the_same(
    client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    user_id = new_user(client, admin_headers, "tech.gone")
    assert client.post(f"/api/users/{user_id}/disable", headers=admin_headers).status_code == 200
    messages = {
        error_message(attempt(client, "nobody.here", USER_PASSWORD)),
        error_message(attempt(client, "tech.gone", USER_PASSWORD)),
        error_message(attempt(client, "admin", WRONG)),
    }
    assert messages == {"unknown username, wrong password or disabled account"}

    fail(client, clock, "nobody.here", 4)
    # A name that does not exist locks too: whether one locks says nothing about the account.
    assert attempt(client, "nobody.here", USER_PASSWORD).status_code == 429


def test_the_lock_survives_a_restart(
    settings: Settings, client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    new_user(client, admin_headers, "tech.one")
    fail(client, clock, "tech.one", 5)

    client.__exit__(None, None, None)  # stopped, then started again
    with TestClient(clocked_app(settings, clock)) as restarted:
        assert attempt(restarted, "tech.one", USER_PASSWORD).status_code == 429


def test_an_address_is_locked_after_its_own_higher_limit_successes_aside(
    app: FastAPI, client: TestClient, clock: FakeClock
) -> None:
    for _ in range(3):  # successes from the address do not count
        assert attempt(client, "admin", ADMIN_PASSWORD).status_code == 200
    for n in range(20):  # 20 names, 1 failure each: no name reaches its own limit
        clock.advance(seconds=1)
        assert attempt(client, f"guess.{n}", WRONG).status_code == 401

    locked = attempt(client, "admin", ADMIN_PASSWORD)

    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) == 15 * 60 - 20 + 1
    elsewhere = TestClient(app, client=("192.0.2.7", 40000))  # the running app, another caller
    assert attempt(elsewhere, "admin", ADMIN_PASSWORD).status_code == 200


def test_every_attempt_is_audited_and_no_password_is_kept(
    client: TestClient, admin_headers: dict[str, str], clock: FakeClock
) -> None:
    user_id = new_user(client, admin_headers, "tech.one")
    fail(client, clock, "tech.one", 5)
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 429
    assert attempt(client, "my-secret-typed-as-name", WRONG).status_code == 401

    events = audit_events(client, admin_headers, entityType="user")
    logins = [e for e in events if e["action"].startswith("auth.login")]

    assert [(e["action"], e["actor"], e["detail"].get("reason")) for e in logins] == [
        ("auth.login_succeeded", "admin", None),  # the admin_headers fixture's login
        *[("auth.login_failed", "tech.one", "wrong_password")] * 5,
        ("auth.login_failed", "tech.one", "locked"),
        ("auth.login_failed", "unknown", "unknown_user"),
    ]
    assert {e["entityId"] for e in logins[1:7]} == {str(user_id)}
    assert all(e["detail"]["address"] == "testclient" for e in logins)
    assert all(e["detail"]["channel"] == "api" for e in logins)
    rendered = json.dumps(events)
    for secret in (USER_PASSWORD, WRONG, ADMIN_PASSWORD, "my-secret-typed-as-name"):
        assert secret not in rendered


def test_an_over_long_name_is_refused_unread_and_not_counted(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    new_user(client, admin_headers, "tech.one")
    for _ in range(6):
        assert attempt(client, "tech.one" + "x" * 60, WRONG).status_code == 422
        assert attempt(client, "tech.one", "p" * 257).status_code == 422
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 200
