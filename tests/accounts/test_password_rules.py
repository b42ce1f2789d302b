"""Password rules on every new password (creation, reset, one's own change), and the reset that
forces the user to choose their own password before anything else."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from pwdlib import PasswordHash

from sidecar.accounts import security
from sidecar.accounts.passwords import common_passwords

from account_helpers import attempt, audit_events, bearer, error_message, new_user
from testapp import ADMIN_PASSWORD, USER_PASSWORD, login

TEMPORARY = "temporary-lantern-41"
CHOSEN = "my-own-quiet-harbour"

WEAK = [
    ("Tech.One-is-my-name", "must not contain the user name"),
    ("tech.one", "at least 12 characters"),
    ("Password1234", "too common"),
    ("iloveyou2024!!", "too common"),
    ("QWERTYUIOP12", "too common"),
    ("passwordpassword", "too common"),
    ("abcabcabcabc", "too common"),
    ("aaaaaaaaaaaaaaaa", "too common"),
    ("123456789012", "too common"),
    ("!!!!2024####", "too common"),
    ("Radiology2026!", "too common"),
]
WEAK_IDS = [
    "username",
    "short",
    "common-plus-digits",
    "common-plus-year",
    "keyboard",
    "doubled",
    "repeated-run",
    "one-letter",
    "digits",
    "symbols",
    "department-word",
]


def field_errors(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    return {d["location"]: d["message"] for d in error["details"]}


def test_the_list_is_shipped_and_large() -> None:
    assert len(common_passwords()) > 8000
    assert "password" in common_passwords()


@pytest.mark.parametrize(("password", "rule"), WEAK, ids=WEAK_IDS)
def test_a_weak_password_is_refused_on_creation_naming_the_rule(
    client: TestClient, admin_headers: dict[str, str], password: str, rule: str
) -> None:
    response = client.post(
        "/api/users",
        headers=admin_headers,
        json={"username": "tech.one", "password": password, "role": "technologist"},
    )
    assert rule in field_errors(response)["body.password"]
    assert client.get("/api/users", headers=admin_headers).json()["total"] == 1


@pytest.mark.parametrize(("password", "rule"), WEAK[:5], ids=WEAK_IDS[:5])
def test_a_weak_password_is_refused_on_reset_and_on_change(
    client: TestClient, admin_headers: dict[str, str], password: str, rule: str
) -> None:
    user_id = new_user(client, admin_headers, "tech.one")
    reset = client.patch(
        f"/api/users/{user_id}", headers=admin_headers, json={"password": password}
    )
    assert rule in field_errors(reset)["body.password"]
    own = login(client, "tech.one", USER_PASSWORD)
    change = client.post(
        "/api/auth/password",
        headers=own,
        json={"currentPassword": USER_PASSWORD, "newPassword": password},
    )
    assert rule in field_errors(change)["body.newPassword"]
    login(client, "tech.one", USER_PASSWORD)


def test_an_account_an_administrator_creates_is_not_forced_to_change(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    new_user(client, admin_headers, "tech.one")
    tokens = attempt(client, "tech.one", USER_PASSWORD).json()
    assert tokens["scope"] == "full"
    assert client.get("/api/studies", headers=bearer(tokens["accessToken"])).status_code == 200


def test_a_reset_forces_a_change_before_anything_else(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    user_id = new_user(client, admin_headers, "tech.one")
    reset = client.patch(
        f"/api/users/{user_id}", headers=admin_headers, json={"password": TEMPORARY}
    )
    assert reset.json()["mustChangePassword"] is True

    tokens = attempt(client, "tech.one", TEMPORARY).json()

    assert (tokens["scope"], tokens["refreshToken"]) == ("password_change", None)
    restricted = bearer(tokens["accessToken"])
    refused = client.get("/api/studies", headers=restricted)
    assert refused.status_code == 403
    assert "password must be changed" in error_message(refused)
    assert client.post("/api/auth/totp/enroll", headers=restricted).status_code == 403
    assert client.get("/api/auth/me", headers=restricted).json()["mustChangePassword"] is True
    wrong = client.post(
        "/api/auth/password",
        headers=restricted,
        json={"currentPassword": "not-the-temporary", "newPassword": CHOSEN},
    )
    assert "current password is wrong" in field_errors(wrong)["body.currentPassword"]
    same = client.post(
        "/api/auth/password",
        headers=restricted,
        json={"currentPassword": TEMPORARY, "newPassword": TEMPORARY},
    )
    assert "must differ" in field_errors(same)["body.newPassword"]

    changed = client.post(
        "/api/auth/password",
        headers=restricted,
        json={"currentPassword": TEMPORARY, "newPassword": CHOSEN},
    )

    assert changed.status_code == 200, changed.text
    assert changed.json()["scope"] == "full" and changed.json()["refreshToken"]
    full = bearer(changed.json()["accessToken"])
    assert client.get("/api/studies", headers=full).status_code == 200
    assert client.get("/api/studies", headers=restricted).status_code == 401
    assert attempt(client, "tech.one", TEMPORARY).status_code == 401
    assert attempt(client, "tech.one", CHOSEN).json()["scope"] == "full"
    actions = [e["action"] for e in audit_events(client, admin_headers, entityId=str(user_id))]
    assert "user.password_change_refused" in actions
    assert "user.password_changed" in actions


def test_a_user_changes_their_own_password(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    new_user(client, admin_headers, "tech.one")
    before = login(client, "tech.one", USER_PASSWORD)
    other_device = login(client, "tech.one", USER_PASSWORD)

    changed = client.post(
        "/api/auth/password",
        headers=before,
        json={"currentPassword": USER_PASSWORD, "newPassword": CHOSEN},
    )

    assert changed.status_code == 200, changed.text
    assert client.get("/api/auth/me", headers=other_device).status_code == 401
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 401
    login(client, "tech.one", CHOSEN)


def test_an_administrator_changing_their_own_password_is_not_forced_again(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    own = client.get("/api/auth/me", headers=admin_headers).json()["id"]
    response = client.patch(f"/api/users/{own}", headers=admin_headers, json={"password": CHOSEN})
    assert response.json()["mustChangePassword"] is False
    assert attempt(client, "admin", CHOSEN).json()["scope"] == "full"
    assert attempt(client, "admin", ADMIN_PASSWORD).status_code == 401


def test_wrong_current_passwords_count_towards_the_lockout(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    new_user(client, admin_headers, "tech.one")
    own = login(client, "tech.one", USER_PASSWORD)
    for _ in range(4):  # the login above cleared the count; 4 + 1 failures lock
        body = {"currentPassword": "guess-guess-guess", "newPassword": CHOSEN}
        assert client.post("/api/auth/password", headers=own, json=body).status_code == 422
    assert attempt(client, "tech.one", "another-wrong-guess").status_code == 401
    locked = client.post(
        "/api/auth/password",
        headers=own,
        json={"currentPassword": USER_PASSWORD, "newPassword": CHOSEN},
    )
    assert locked.status_code == 429
    assert attempt(client, "tech.one", USER_PASSWORD).status_code == 429


def test_the_service_hashes_passwords_with_argon2id_at_the_recommended_cost(
    service_password_hash: PasswordHash,
) -> None:
    """The run hashes at a lower cost (tests/conftest.py): the service's own hasher is this."""
    stored = service_password_hash.hash(USER_PASSWORD)
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert service_password_hash.verify(USER_PASSWORD, stored)
    assert not service_password_hash.verify(USER_PASSWORD + "x", stored)
    # A hash made at the run's cost still verifies with the service's hasher, and the other way:
    # the cost travels in the hash.
    assert service_password_hash.verify(USER_PASSWORD, security.hash_password(USER_PASSWORD))
    assert security.verify_password(USER_PASSWORD, stored)
