"""Authentication, roles, user administration, the first administrator and the secrets' checks."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlmodel import Session, col, func, select

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import create_access_token, decode_access_token
from sidecar.core.settings import Settings
from sidecar.main import create_app

from testapp import (
    ADMIN_PASSWORD,
    PHYSICIAN_PROVIDER_ID,
    TEST_JWT_SECRET,
    TEST_PLUGIN_TOKEN,
    USER_PASSWORD,
    engine_of,
    flat_routes,
    login,
)

HeadersFor = Callable[[Role], dict[str, str]]

NEW_PASSWORD = "a-brand-new-password"
NON_ADMIN_ROLES = [Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.PHYSICIAN, Role.INTEGRATION]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error format: {"error": {"code", "message", "details"}}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    error: dict[str, Any] = body["error"]
    return error


def assert_unauthorized(response: httpx.Response) -> None:
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_for(
    user_id: int,
    role: Role,
    *,
    secret: str = TEST_JWT_SECRET,
    lifetime: timedelta = timedelta(minutes=5),
) -> str:
    token, _ = create_access_token(
        user_id=user_id, username="someone", role=role, secret=secret, lifetime=lifetime
    )
    return token


def create_user(
    client: TestClient,
    admin_headers: dict[str, str],
    username: str,
    role: str = "technologist",
    password: str = USER_PASSWORD,
) -> dict[str, object]:
    response = client.post(
        "/api/users",
        headers=admin_headers,
        json={"username": username, "password": password, "role": role},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def login_response(client: TestClient, username: str, password: str) -> httpx.Response:
    response: httpx.Response = client.post(
        "/api/auth/login", json={"username": username, "password": password}
    )
    return response


def my_id(client: TestClient, headers: dict[str, str]) -> int:
    response = client.get("/api/auth/me", headers=headers)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


# -- login ------------------------------------------------------------------------------------


def test_login_returns_a_bearer_token_for_the_user(client: TestClient) -> None:
    response = client.post(
        "/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"accessToken", "tokenType", "expiresIn", "refreshToken", "scope"}
    assert body["tokenType"] == "bearer"
    assert body["expiresIn"] == 15 * 60  # short: the refresh token keeps the session
    assert body["scope"] == "full"
    assert isinstance(body["refreshToken"], str) and len(body["refreshToken"]) >= 40
    claims = decode_access_token(body["accessToken"], TEST_JWT_SECRET)
    assert claims.username == "admin"
    assert claims.role is Role.ADMIN
    me = client.get("/api/auth/me", headers=bearer(body["accessToken"]))
    assert me.status_code == 200
    assert me.json()["username"] == "admin"
    assert "passwordHash" not in me.json()


@pytest.mark.parametrize(
    ("username", "password"),
    [("admin", "wrong-password-entirely"), ("nobody", ADMIN_PASSWORD)],
    ids=["wrong-password", "unknown-user"],
)
def test_login_refuses_bad_credentials_with_the_same_answer(
    client: TestClient, username: str, password: str
) -> None:
    error = assert_error(login_response(client, username, password), 401, "unauthorized")
    # The message must not tell which of username or password was wrong.
    assert error["message"] == "unknown username, wrong password or disabled account"


def test_login_refuses_a_disabled_user(client: TestClient, admin_headers: dict[str, str]) -> None:
    user = create_user(client, admin_headers, "tech.one")
    assert client.post(f"/api/users/{user['id']}/disable", headers=admin_headers).status_code == 200

    assert_error(login_response(client, "tech.one", USER_PASSWORD), 401, "unauthorized")


def test_login_body_is_validated(client: TestClient) -> None:
    response = client.post("/api/auth/login", json={"username": "admin"})
    error = assert_error(response, 422, "validation_error")
    assert {"location": "body.password", "message": "Field required"} in error["details"]


# -- tokens -----------------------------------------------------------------------------------


def test_missing_token_is_refused(client: TestClient) -> None:
    assert_unauthorized(client.get("/api/studies"))


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-a-jwt", "Bearer ", "Basic YWRtaW46YWRtaW4=", "bearer a.b.c", "Token abc"],
)
def test_malformed_authorization_is_refused(client: TestClient, authorization: str) -> None:
    assert_unauthorized(client.get("/api/studies", headers={"Authorization": authorization}))


def test_token_signed_with_another_secret_is_refused(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    forged = token_for(
        my_id(client, admin_headers), Role.ADMIN, secret="another-secret-" + "z" * 40
    )
    assert_unauthorized(client.get("/api/studies", headers=bearer(forged)))


def test_unsigned_token_is_refused(client: TestClient, admin_headers: dict[str, str]) -> None:
    payload = {"sub": str(my_id(client, admin_headers)), "role": "admin", "exp": 4102444800}
    unsigned = jwt.encode(payload, key=None, algorithm="none")
    assert_unauthorized(client.get("/api/studies", headers=bearer(unsigned)))


def test_expired_token_is_refused(client: TestClient, admin_headers: dict[str, str]) -> None:
    expired = token_for(my_id(client, admin_headers), Role.ADMIN, lifetime=timedelta(minutes=-1))
    assert_unauthorized(client.get("/api/studies", headers=bearer(expired)))


def test_token_of_a_user_that_does_not_exist_is_refused(client: TestClient) -> None:
    assert_unauthorized(client.get("/api/studies", headers=bearer(token_for(9999, Role.ADMIN))))


def test_role_comes_from_the_database_not_from_the_token(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    user = create_user(client, admin_headers, "physician.one", role="physician")
    # A validly signed token that claims admin for a physician grants nothing more.
    claimed = token_for(int(str(user["id"])), Role.ADMIN)
    assert_error(client.get("/api/users", headers=bearer(claimed)), 403, "forbidden")


_ORTHANC_ID = "6b9e19d9-62094390-5f9ddb01-4a191ae7-9766b715"

# -- every /api route needs a token -----------------------------------------------------------

# Routes with their own credential or none by design (a refresh token is the credential of
# refresh and logout; a signed image link's signature is its own: tests/studies/
# test_image_access.py refuses it altered, for another image or format, or expired; so is a
# de-identified copy's archive link: tests/studies/test_deidentify.py; the Orthanc plugin's
# notices carry the plugin's shared secret, refused below without it).
PUBLIC_API_ROUTES = {
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("POST", "/api/auth/logout"),
    ("POST", "/api/orthanc/stable-studies"),
    ("POST", "/api/orthanc/deletions"),
    ("GET", "/api/images/{image_id}/file"),
    ("GET", "/api/deidentified/{copy_id}/archive"),
}


def api_routes(app: FastAPI) -> list[tuple[str, str]]:
    found = []
    for route in flat_routes(app):
        path = getattr(route, "path", None) or ""
        if not path.startswith("/api"):
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            if method in ("HEAD", "OPTIONS") or (method, path) in PUBLIC_API_ROUTES:
                continue
            found.append((method, path))
    return found


def with_dummy_params(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


@pytest.fixture
def any_user_study(client: TestClient, admin_headers: dict[str, str]) -> None:
    """Study 1 and user 1 exist, so `1` in a path names real rows: a route that forgot
    authentication would answer 200 rather than 404."""
    response = client.post("/api/studies", headers=admin_headers, json={"patientId": "P1"})
    assert response.status_code == 201


@pytest.mark.parametrize(
    "authorization",
    [None, f"Bearer {TEST_PLUGIN_TOKEN}"],
    ids=["no-token", "plugin-token-as-user-token"],
)
def test_every_api_route_needs_a_user_token(
    app: FastAPI, client: TestClient, any_user_study: None, authorization: str | None
) -> None:
    routes = api_routes(app)
    # The walk must really see the API (a broken walk would pass vacuously).
    assert ("GET", "/api/studies") in routes
    assert ("PATCH", "/api/studies/{study_id}/status") in routes
    assert ("POST", "/api/users/{user_id}/disable") in routes
    assert ("GET", "/api/audit") in routes
    assert ("DELETE", "/api/images/{image_id}") in routes
    assert ("DELETE", "/api/studies/{study_id}/series/{series_uid}") in routes
    assert ("GET", "/api/studies/{study_id}/removals") in routes
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if path.startswith("/api")
    }
    assert documented - PUBLIC_API_ROUTES <= set(routes)
    headers = {"Authorization": authorization} if authorization else {}
    unprotected = []
    for method, path in routes:
        body: dict[str, Any] | None = {} if method in ("POST", "PUT", "PATCH") else None
        response = client.request(method, with_dummy_params(path), headers=headers, json=body)
        if response.status_code != 401 or response.headers.get("WWW-Authenticate") != "Bearer":
            unprotected.append((method, path, response.status_code))
        else:
            assert_unauthorized(response)
    assert unprotected == []


@pytest.mark.parametrize(
    ("url", "notice"),
    [
        ("/api/orthanc/stable-studies", {"orthancStudyId": _ORTHANC_ID}),
        ("/api/orthanc/deletions", {"resourceType": "Study", "orthancId": _ORTHANC_ID}),
        (
            "/api/orthanc/deletions",
            {"deletions": [{"resourceType": "Study", "orthancId": _ORTHANC_ID}]},
        ),
    ],
)
def test_plugin_route_is_refused_without_the_plugin_credential(
    client: TestClient, admin_headers: dict[str, str], url: str, notice: dict[str, str]
) -> None:
    assert_unauthorized(client.post(url, json=notice))
    assert_unauthorized(client.post(url, json=notice, headers=bearer("wrong-" + TEST_PLUGIN_TOKEN)))
    # A user's token is not the plugin's credential, not even an administrator's.
    assert_unauthorized(client.post(url, json=notice, headers=admin_headers))


# -- roles ------------------------------------------------------------------------------------


def test_physician_can_read_studies_but_not_change_them(
    client: TestClient, admin_headers: dict[str, str], headers_for: HeadersFor
) -> None:
    study = client.post("/api/studies", headers=admin_headers, json={"patientId": "P1"}).json()
    order = {"patientId": "P1", "modality": "CT", "providerId": PHYSICIAN_PROVIDER_ID}
    assert client.post("/api/imaging-orders", headers=admin_headers, json=order).status_code == 201
    physician = headers_for(Role.PHYSICIAN)

    assert client.get(f"/api/studies/{study['id']}", headers=physician).status_code == 200
    response = client.patch(
        f"/api/studies/{study['id']}", headers=physician, json={"studyDescription": "CHEST"}
    )
    assert_error(response, 403, "forbidden")
    response = client.patch(
        f"/api/studies/{study['id']}/status", headers=physician, json={"status": "ARRIVED"}
    )
    assert_error(response, 403, "forbidden")
    unchanged = client.get(f"/api/studies/{study['id']}", headers=physician).json()
    assert unchanged["studyDescription"] is None
    assert unchanged["status"] == "SCHEDULED"


def test_technologist_can_change_a_study_and_its_status(
    client: TestClient, admin_headers: dict[str, str], headers_for: HeadersFor
) -> None:
    study = client.post("/api/studies", headers=admin_headers, json={"patientId": "P1"}).json()
    technologist = headers_for(Role.TECHNOLOGIST)

    response = client.patch(
        f"/api/studies/{study['id']}", headers=technologist, json={"studyDescription": "CHEST"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["studyDescription"] == "CHEST"
    response = client.patch(
        f"/api/studies/{study['id']}/status", headers=technologist, json={"status": "ARRIVED"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ARRIVED"


@pytest.mark.parametrize("role", NON_ADMIN_ROLES, ids=[r.value for r in NON_ADMIN_ROLES])
def test_only_admins_manage_users_and_read_the_audit_trail(
    client: TestClient, headers_for: HeadersFor, role: Role
) -> None:
    headers = headers_for(role)
    new_user = {"username": "intruder", "password": USER_PASSWORD, "role": "admin"}

    assert_error(client.get("/api/users", headers=headers), 403, "forbidden")
    assert_error(client.post("/api/users", headers=headers, json=new_user), 403, "forbidden")
    assert_error(
        client.patch("/api/users/1", headers=headers, json={"role": role.value}), 403, "forbidden"
    )
    assert_error(client.post("/api/users/1/disable", headers=headers), 403, "forbidden")
    assert_error(client.get("/api/audit", headers=headers), 403, "forbidden")
    assert login_response(client, "intruder", USER_PASSWORD).status_code == 401


# -- users API --------------------------------------------------------------------------------


def test_admin_creates_a_user_who_can_log_in(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    response = client.post(
        "/api/users",
        headers=admin_headers,
        json={"username": "rad.smith", "password": USER_PASSWORD, "role": "radiologist"},
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "id",
        "username",
        "role",
        "isActive",
        "providerId",
        "facilities",
        "createdAt",
        "mustChangePassword",
        "totpEnabled",
        "available",
        "maxOpen",
    }
    assert (body["mustChangePassword"], body["totpEnabled"]) == (False, False)
    assert (body["username"], body["role"], body["isActive"]) == ("rad.smith", "radiologist", True)
    headers = login(client, "rad.smith", USER_PASSWORD)
    assert client.get("/api/auth/me", headers=headers).json()["role"] == "radiologist"
    listed = client.get("/api/users", headers=admin_headers).json()
    assert listed["total"] == 2
    assert [u["username"] for u in listed["items"]] == ["admin", "rad.smith"]


def test_duplicate_username_is_a_conflict(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    create_user(client, admin_headers, "tech.one")
    response = client.post(
        "/api/users",
        headers=admin_headers,
        json={"username": "tech.one", "password": NEW_PASSWORD, "role": "physician"},
    )
    assert_error(response, 409, "conflict")
    assert client.get("/api/users", headers=admin_headers).json()["total"] == 2


@pytest.mark.parametrize(
    ("body", "location"),
    [
        (
            {"username": "tech.one", "password": "short-11chr", "role": "technologist"},
            "body.password",
        ),
        (
            {"username": "has space", "password": USER_PASSWORD, "role": "technologist"},
            "body.username",
        ),
        ({"username": "ab", "password": USER_PASSWORD, "role": "technologist"}, "body.username"),
        ({"username": "tech.one", "password": USER_PASSWORD, "role": "superuser"}, "body.role"),
        (
            {"username": "tech.one", "password": USER_PASSWORD, "role": "admin", "isActive": False},
            "body.isActive",
        ),
    ],
    ids=["short-password", "space-in-username", "short-username", "unknown-role", "extra-field"],
)
def test_invalid_new_user_is_rejected_and_not_created(
    client: TestClient, admin_headers: dict[str, str], body: dict[str, object], location: str
) -> None:
    error = assert_error(
        client.post("/api/users", headers=admin_headers, json=body), 422, "validation_error"
    )
    assert location in [d["location"] for d in error["details"]]
    assert client.get("/api/users", headers=admin_headers).json()["total"] == 1


def test_role_change_ends_existing_sessions_and_the_new_role_applies(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    user = create_user(client, admin_headers, "tech.one", role="technologist")
    headers = login(client, "tech.one", USER_PASSWORD)
    study = client.post("/api/studies", headers=headers, json={"patientId": "P1"})
    assert study.status_code == 201

    response = client.patch(
        f"/api/users/{user['id']}", headers=admin_headers, json={"role": "physician"}
    )

    assert response.status_code == 200, response.text
    assert response.json()["role"] == "physician"
    # The old token carried the old role: it is refused, the user logs in again.
    response = client.post("/api/studies", headers=headers, json={"patientId": "P2"})
    assert_error(response, 401, "unauthorized")
    headers = login(client, "tech.one", USER_PASSWORD)
    response = client.post("/api/studies", headers=headers, json={"patientId": "P2"})
    assert_error(response, 403, "forbidden")


def test_password_change_ends_existing_sessions(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    user = create_user(client, admin_headers, "tech.two")
    headers = login(client, "tech.two", USER_PASSWORD)
    assert client.get("/api/auth/me", headers=headers).status_code == 200
    new_password = "a-new-password-for-tech-two"
    response = client.patch(
        f"/api/users/{user['id']}", headers=admin_headers, json={"password": new_password}
    )
    assert response.status_code == 200, response.text
    assert_error(client.get("/api/auth/me", headers=headers), 401, "unauthorized")
    fresh = login(client, "tech.two", new_password)
    assert client.get("/api/auth/me", headers=fresh).json()["username"] == "tech.two"


def test_admin_deactivates_and_reactivates_a_user(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    user = create_user(client, admin_headers, "tech.one")
    headers = login(client, "tech.one", USER_PASSWORD)

    response = client.patch(
        f"/api/users/{user['id']}", headers=admin_headers, json={"isActive": False}
    )
    assert response.status_code == 200
    assert response.json()["isActive"] is False
    assert_unauthorized(client.get("/api/studies", headers=headers))
    assert login_response(client, "tech.one", USER_PASSWORD).status_code == 401

    response = client.patch(
        f"/api/users/{user['id']}", headers=admin_headers, json={"isActive": True}
    )
    assert response.json()["isActive"] is True
    assert client.get("/api/studies", headers=headers).status_code == 200


def test_admin_resets_a_password(client: TestClient, admin_headers: dict[str, str]) -> None:
    user = create_user(client, admin_headers, "tech.one")

    response = client.patch(
        f"/api/users/{user['id']}", headers=admin_headers, json={"password": NEW_PASSWORD}
    )

    assert response.status_code == 200
    shown = dict(response.json())
    assert shown.pop("mustChangePassword") is True  # a reset: the user must choose their own
    assert "password" not in json.dumps(shown).lower()
    assert NEW_PASSWORD not in response.text
    assert login_response(client, "tech.one", USER_PASSWORD).status_code == 401
    login(client, "tech.one", NEW_PASSWORD)


def test_user_update_validates_its_body(client: TestClient, admin_headers: dict[str, str]) -> None:
    user = create_user(client, admin_headers, "tech.one")
    url = f"/api/users/{user['id']}"

    assert_error(
        client.patch(url, headers=admin_headers, json={"password": "short"}),
        422,
        "validation_error",
    )
    assert_error(
        client.patch(url, headers=admin_headers, json={"username": "renamed"}),
        422,
        "validation_error",
    )
    assert_error(
        client.patch(url, headers=admin_headers, json={"role": "root"}), 422, "validation_error"
    )
    login(client, "tech.one", USER_PASSWORD)


def test_disabling_a_user_revokes_their_token_and_login(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    user = create_user(client, admin_headers, "tech.one")
    headers = login(client, "tech.one", USER_PASSWORD)
    assert client.get("/api/studies", headers=headers).status_code == 200

    response = client.post(f"/api/users/{user['id']}/disable", headers=admin_headers)

    assert response.status_code == 200, response.text
    assert response.json()["isActive"] is False
    assert_unauthorized(client.get("/api/studies", headers=headers))
    assert_error(login_response(client, "tech.one", USER_PASSWORD), 401, "unauthorized")


def test_admin_cannot_disable_their_own_account(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    own_id = my_id(client, admin_headers)

    assert_error(
        client.post(f"/api/users/{own_id}/disable", headers=admin_headers), 409, "conflict"
    )
    assert client.get("/api/users", headers=admin_headers).status_code == 200


@pytest.mark.parametrize(
    "body", [{"isActive": False}, {"role": "technologist"}], ids=["deactivate", "demote"]
)
def test_admin_cannot_deactivate_or_demote_their_own_account_through_patch(
    client: TestClient, admin_headers: dict[str, str], body: dict[str, Any]
) -> None:
    own_id = my_id(client, admin_headers)

    response = client.patch(f"/api/users/{own_id}", headers=admin_headers, json=body)

    assert_error(response, 409, "conflict")
    me = client.get("/api/auth/me", headers=admin_headers)
    assert me.status_code == 200
    assert (me.json()["role"], me.json()["isActive"]) == ("admin", True)


def test_admin_may_change_their_own_password(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    own_id = my_id(client, admin_headers)

    response = client.patch(
        f"/api/users/{own_id}", headers=admin_headers, json={"password": NEW_PASSWORD}
    )

    assert response.status_code == 200, response.text
    login(client, "admin", NEW_PASSWORD)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/api/users/9999", {"role": "physician"}),
        ("POST", "/api/users/9999/disable", None),
    ],
    ids=["patch", "disable"],
)
def test_unknown_user_is_not_found(
    client: TestClient,
    admin_headers: dict[str, str],
    method: str,
    path: str,
    body: dict[str, str] | None,
) -> None:
    error = assert_error(
        client.request(method, path, headers=admin_headers, json=body), 404, "not_found"
    )
    assert "9999" in str(error["message"])


def test_every_user_change_is_audited_without_secrets(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    user = create_user(client, admin_headers, "tech.one")
    url = f"/api/users/{user['id']}"
    assert client.patch(url, headers=admin_headers, json={"role": "radiologist"}).status_code == 200
    assert (
        client.patch(url, headers=admin_headers, json={"password": NEW_PASSWORD}).status_code == 200
    )
    assert client.patch(url, headers=admin_headers, json={"isActive": False}).status_code == 200
    assert client.post(f"{url}/disable", headers=admin_headers).status_code == 200

    response = client.get(
        "/api/audit",
        headers=admin_headers,
        params={"entityType": "user", "entityId": str(user["id"])},
    )

    assert response.status_code == 200, response.text
    events = list(reversed(response.json()["items"]))  # the API lists newest first
    assert [e["action"] for e in events] == [
        "user.created",
        "user.updated",
        "user.updated",
        "user.updated",
        "user.disabled",
    ]
    assert all(e["actor"] == "admin" and e["entityType"] == "user" for e in events)
    assert events[0]["detail"] == {"role": "technologist"}
    assert events[1]["detail"] == {"role": "radiologist"}
    assert events[2]["detail"] == {"password_changed": True, "must_change_password": True}
    assert events[3]["detail"] == {"is_active": False}
    rendered = json.dumps([e["detail"] for e in events])
    for secret in (USER_PASSWORD, NEW_PASSWORD, "$argon2", "password_hash", '"password"'):
        assert secret not in rendered


def test_audit_trail_is_paginated_and_filterable(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    for name in ("user.one", "user.two", "user.three"):
        create_user(client, admin_headers, name)

    response = client.get(
        "/api/audit",
        headers=admin_headers,
        params={"action": "user.created", "limit": 2, "offset": 1},
    )

    body = response.json()
    assert (body["total"], body["offset"], body["limit"]) == (4, 1, 2)  # bootstrap admin too
    assert [e["entityId"] for e in body["items"]] == ["3", "2"]
    assert_error(
        client.get("/api/audit", headers=admin_headers, params={"limit": 0}),
        422,
        "validation_error",
    )


# -- the first administrator ------------------------------------------------------------------


def user_rows(app: FastAPI) -> list[User]:
    with Session(engine_of(app)) as session:
        return list(session.exec(select(User).order_by(col(User.id))).all())


def test_first_start_creates_admin_from_admin_password(app: FastAPI, client: TestClient) -> None:
    users = user_rows(app)
    assert [(u.username, u.role, u.is_active) for u in users] == [("admin", Role.ADMIN, True)]
    assert ADMIN_PASSWORD not in users[0].password_hash
    login(client, "admin", ADMIN_PASSWORD)


def test_second_start_with_another_admin_password_changes_nothing(
    settings: Settings, app: FastAPI, client: TestClient
) -> None:
    before = [(u.id, u.username, u.password_hash) for u in user_rows(app)]

    client.__exit__(None, None, None)  # stopped, then started again
    restarted = create_app(settings.model_copy(update={"admin_password": "another-admin-password"}))
    with TestClient(restarted) as second:
        after = [(u.id, u.username, u.password_hash) for u in user_rows(restarted)]
        assert after == before
        assert login_response(second, "admin", "another-admin-password").status_code == 401
        login(second, "admin", ADMIN_PASSWORD)


def test_start_without_admin_password_creates_no_user(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"admin_password": ""}))
    with TestClient(app) as client:
        with Session(engine_of(app)) as session:
            assert session.exec(select(func.count()).select_from(User)).one() == 0
        assert login_response(client, "admin", "").status_code == 422
        assert login_response(client, "admin", ADMIN_PASSWORD).status_code == 401


# -- settings ---------------------------------------------------------------------------------

SECRET_VARIABLES = ("JWT_SECRET", "SIDECAR_PLUGIN_TOKEN", "ENVIRONMENT", "ADMIN_PASSWORD")
GOOD_JWT_SECRET = secrets.token_urlsafe(48)
GOOD_PLUGIN_TOKEN = secrets.token_urlsafe(48)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SECRET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


BAD_SECRETS = ["", "changeme", "change-me", "secret", "  CHANGETHIS  ", "x" * 31]
BAD_SECRET_IDS = ["missing", "changeme", "change-me", "secret", "changethis", "31-chars"]


@pytest.mark.parametrize("bad", BAD_SECRETS, ids=BAD_SECRET_IDS)
def test_production_refuses_a_weak_jwt_secret(
    clean_environment: pytest.MonkeyPatch, bad: str
) -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(environment="production", jwt_secret=bad, sidecar_plugin_token=GOOD_PLUGIN_TOKEN)


@pytest.mark.parametrize("bad", BAD_SECRETS, ids=BAD_SECRET_IDS)
def test_production_refuses_a_weak_plugin_token(
    clean_environment: pytest.MonkeyPatch, bad: str
) -> None:
    with pytest.raises(ValidationError, match="SIDECAR_PLUGIN_TOKEN") as raised:
        Settings(environment="production", jwt_secret=GOOD_JWT_SECRET, sidecar_plugin_token=bad)
    assert "JWT_SECRET must" not in str(raised.value)


def test_production_reads_secrets_from_the_environment(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("ENVIRONMENT", "production")
    clean_environment.setenv("SIDECAR_PLUGIN_TOKEN", GOOD_PLUGIN_TOKEN)
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings()

    clean_environment.setenv("JWT_SECRET", GOOD_JWT_SECRET)
    settings = Settings()
    assert settings.environment == "production"
    assert settings.jwt_secret == GOOD_JWT_SECRET
    assert settings.sidecar_plugin_token == GOOD_PLUGIN_TOKEN


def test_development_without_jwt_secret_generates_a_random_one(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    first, second = Settings(environment="development"), Settings(environment="development")
    assert len(first.jwt_secret) >= 32
    assert first.jwt_secret != second.jwt_secret
    assert Settings(environment="development", jwt_secret="dev-secret").jwt_secret == "dev-secret"
