"""Work item changes on the live event stream (migration 0022's triggers), in place of UPS-RS
subscriptions: an analyzer is told of the work items it may claim and of those it performs, and
of nothing else (not even the study it holds); a radiologist is told of every one."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlmodel import Session, select

from sidecar.access.care_scope import CareScope
from sidecar.accounts.models import Role, User
from sidecar.core.models import utcnow
from sidecar.events.scope import ScopeFilter

from event_helpers import event_rows, live_app, newest_event_id, summary
from sse_reader import SseEvent, SseReader
from workitem_rows import ANALYZER_PASSWORD, analyzer_account, schedule, study_row

STUDY_UID = "1.2.826.0.1.3680043.8.498.19301"


def _claim(url: str, uid: str, token: str, txn: str) -> None:
    body = {
        "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
        "00081195": {"vr": "UI", "Value": [txn]},
    }
    answer = httpx.put(
        f"{url}/dicom-web/workitems/{uid}/state",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def _workitem(event: SseEvent) -> tuple[str, str, int]:
    return event.event, event.json["action"], event.json["id"]


def test_the_stream_tells_an_analyzer_of_its_work_items_and_nothing_else(
    database_url: str, tmp_path: Path
) -> None:
    with live_app(database_url, tmp_path) as live:
        engine = live.engine
        study_id = study_row(engine, STUDY_UID)
        for name in ("ai-one", "ai-two"):
            analyzer_account(engine, name)
        one, two = (live.token(name, ANALYZER_PASSWORD) for name in ("ai-one", "ai-two"))
        radiologist = live.user("rad-events", Role.RADIOLOGIST)
        held = schedule(engine, STUDY_UID)
        _claim(live.url, held.uid, one, "2.25.1930001")
        first = live.stream({"Authorization": f"Bearer {one}"})
        follower = live.stream(radiologist)
        after = newest_event_id(engine)

        # The study changes: the analyzer holding it is not told; the radiologist is.
        changed = live.http.patch(
            f"/api/studies/{study_id}",
            json={"studyDescription": "CT HEAD"},
            headers={"Authorization": f"Bearer {live.token('admin', 'admin-password-for-tests')}"},
        )
        assert changed.status_code == 200, changed.text
        # A new work item: the first analyzer may claim it, and is told.
        other = schedule(engine, STUDY_UID)
        assert _workitem(first.next()) == ("workitem", "created", other.workitem_id)
        # Another analyzer claims it (the first may be told it changed, within the stream's
        # few seconds' memory of what it was shown); its own work item changes; a new one is
        # scheduled: told of these, never of the study.
        _claim(live.url, other.uid, two, "2.25.1930002")
        progress = {"00741002": {"vr": "SQ", "Value": [{"00741004": {"vr": "DS", "Value": [5]}}]}}
        updated = httpx.post(
            f"{live.url}/dicom-web/workitems/{held.uid}?2.25.1930001",
            json=progress,
            headers={"Authorization": f"Bearer {one}"},
            timeout=10,
        )
        assert updated.status_code == 200, updated.text
        last = schedule(engine, STUDY_UID)
        told: list[tuple[str, str, int]] = []
        while ("workitem", "created", last.workitem_id) not in told:
            told.append(_workitem(first.next()))
        assert ("workitem", "changed", held.workitem_id) in told
        assert {kind for kind, _, _ in told} == {"workitem"}
        rows = event_rows(engine, after)
        assert ("study", "changed", study_id) in summary(rows)
        # Asked afresh, another analyzer's work item is not the first one's to be told of.
        with Session(engine) as session:
            user = session.exec(select(User).where(User.username == "ai-one")).one()
            shown = ScopeFilter(CareScope(user, utcnow())).visible(session, rows)
        assert {(event.kind, event.entity_id) for event in shown} == {
            ("workitem", held.workitem_id),
            ("workitem", last.workitem_id),
        }
        seen = [_workitem(follower.next()) for _ in range(5)]
        assert ("study", "changed", study_id) in seen
        assert ("workitem", "changed", other.workitem_id) in seen
        first.sock.close()
        follower.sock.close()


def test_an_integration_account_is_refused_the_stream(database_url: str, tmp_path: Path) -> None:
    """The stream's roles: clinicians and analyzers; an integration account is refused."""
    with live_app(database_url, tmp_path) as live:
        integration = live.user("integration-events", Role.INTEGRATION)
        reader = SseReader.open(f"{live.url}/api/events", integration)
        assert reader.status == 403
        assert "analyzer" in reader.body()
