"""The facilities an account is limited to: set by administrators on creation and change,
checked, audited; an empty list opens every facility."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from builders import audit_events
from testapp import USER_PASSWORD, engine_of

Headers = dict[str, str]


def _create(client: TestClient, admin: Headers, **extra: Any) -> Any:
    body = {"username": "tech.north", "password": USER_PASSWORD, "role": "technologist", **extra}
    return client.post("/api/users", json=body, headers=admin)


@pytest.mark.parametrize(
    "facilities",
    [[""], ["NORTH,SOUTH"], ["N" * 65], ["NORTH\n"], [f"F{n}" for n in range(101)], "NORTH", [1]],
)
def test_facilities_that_are_not_a_list_of_ids_are_refused(
    client: TestClient, admin_headers: Headers, facilities: object
) -> None:
    refused = _create(client, admin_headers, facilities=facilities)
    assert refused.status_code == 422, refused.text
    assert "facilities" in refused.text


def test_facilities_are_set_changed_and_audited(
    app: FastAPI, client: TestClient, admin_headers: Headers
) -> None:
    created = _create(client, admin_headers, facilities=["SOUTH", "NORTH", "NORTH"])
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["facilities"] == ["NORTH", "SOUTH"]
    assert _create(client, admin_headers, username="tech.all").json()["facilities"] == []

    path = f"/api/users/{user['id']}"
    assert client.patch(path, json={"facilities": None}, headers=admin_headers).status_code == 422
    changed = client.patch(path, json={"facilities": ["EAST"]}, headers=admin_headers)
    assert changed.status_code == 200, changed.text
    assert changed.json()["facilities"] == ["EAST"]
    opened = client.patch(path, json={"facilities": []}, headers=admin_headers)
    assert opened.json()["facilities"] == []
    # Changing something else leaves them.
    client.patch(path, json={"facilities": ["EAST"]}, headers=admin_headers)
    kept = client.patch(path, json={"providerId": "T-1"}, headers=admin_headers)
    assert kept.json()["facilities"] == ["EAST"]

    events = audit_events(engine_of(app))
    assert [e.detail.get("facilities") for e in events if e.action == "user.created"][-2:] == [
        ["NORTH", "SOUTH"],
        None,  # all facilities, as before facilities existed
    ]
    assert [e.detail.get("facilities") for e in events if e.action == "user.updated"] == [
        ["EAST"],
        [],
        ["EAST"],
        None,
    ]
