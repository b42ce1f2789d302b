"""An analyzer account reaches its work items and the study of the one it holds, and nothing else:
every route of the app is walked with its token, and none answers it 2xx but the work items, its
own account (/api/auth) and what answers anyone (the login page, /health, the viewer's
published files). Its DICOMweb reads of the held study: tests/analyses/test_workitems_e2e.py."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import User
from sidecar.core.models import utcnow
from sidecar.studies.models import Study

from testapp import engine_of, flat_routes, login
from workitem_rows import ANALYZER_PASSWORD, analyzer_account, schedule, study_row

STUDY_UID = "1.2.826.0.1.3680043.8.498.19101"
HELD = "2.25.1900001"
# Its own account, and its work items.
ALLOWED = re.compile(r"^(/api/auth/|/dicom-web/workitems)")
# Streams (no end to wait for); the event stream's scope for analyzers:
# tests/analyses/test_workitem_events.py.
NOT_WALKED = {("GET", "/api/events")}


def _filled(path: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[0]
        if name.endswith("uid") or name == "uid":
            return values["uid"]
        if "id" in name:
            return values["id"]
        return "x"

    return re.sub(r"\{([^}]+)\}", value, path)


def test_an_analyzer_holding_a_work_item_reaches_nothing_but_it(
    app: FastAPI, client: TestClient
) -> None:
    engine = engine_of(app)
    study_id = study_row(engine, STUDY_UID)
    item = schedule(engine, STUDY_UID)
    analyzer_account(engine, "ai-walker")
    headers = login(client, "ai-walker", ANALYZER_PASSWORD)
    claim = {
        "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
        "00081195": {"vr": "UI", "Value": [HELD]},
    }
    claimed = client.put(f"/dicom-web/workitems/{item.uid}/state", json=claim, headers=headers)
    assert claimed.status_code == 200, claimed.text
    # It holds the study: the care scope the fronts ask says so (a walk that passes because the
    # analyzer holds nothing would prove nothing).
    with Session(engine) as session:
        user = session.exec(select(User).where(User.username == "ai-walker")).one()
        held = session.exec(select(Study.id).where(*CareScope(user, utcnow()).studies())).all()
    assert held == [study_id]

    values = {"id": str(study_id), "uid": STUDY_UID}
    walked, reached = 0, []
    for route in flat_routes(app):
        path = getattr(route, "path", None)
        for method in sorted(getattr(route, "methods", None) or ()):
            if path is None or method in ("HEAD", "OPTIONS") or (method, path) in NOT_WALKED:
                continue
            target = _filled(path, values)
            body: dict[str, str] | None = {} if method in ("POST", "PUT", "PATCH") else None
            answer = client.request(method, target, headers=headers, json=body)
            walked += 1
            if not 200 <= answer.status_code < 300 or ALLOWED.match(path):
                continue
            anonymous = client.request(method, target, json=body)
            if 200 <= anonymous.status_code < 300:
                continue  # answers anyone: the login page, /health, published files
            reached.append((method, path, answer.status_code))
    assert walked > 150  # the walk saw the app
    assert reached == []


def test_the_api_tells_an_analyzer_why_it_is_refused(app: FastAPI, client: TestClient) -> None:
    analyzer_account(engine_of(app), "ai-curious")
    headers = login(client, "ai-curious", ANALYZER_PASSWORD)
    for path in ("/api/studies", "/api/imaging-orders", "/api/patients", "/api/reports"):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 403, (path, answer.text)
        assert "/dicom-web/workitems" in answer.json()["error"]["message"]
    assert client.get("/api/auth/me", headers=headers).json()["role"] == "analyzer"
    # No page, no viewer: neither with its token nor through the login form.
    assert client.get("/app/", headers=headers).status_code == 403
    form = client.post(
        "/login",
        data={"username": "ai-curious", "password": ANALYZER_PASSWORD},
        follow_redirects=False,
    )
    assert form.status_code == 403


def test_what_the_walk_counts_as_reached(client: TestClient) -> None:
    """The walk would see a route that answered an analyzer: another token reaches the study
    list the analyzer is refused, and an anonymous request does not."""
    admin = login(client, "admin", "admin-password-for-tests")
    assert client.get("/api/studies", headers=admin).status_code == 200
    assert client.get("/api/studies").status_code == 401
