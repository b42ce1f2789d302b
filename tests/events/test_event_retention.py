"""What the event table keeps: events older than EVENTS_RETENTION_HOURS are deleted, and a client
resuming after one of those gets a reset first; a client too slow for the stream gets a reset
too instead of an ever longer queue; a keepalive comment while nothing happens."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from sidecar.core.models import utcnow
from sidecar.events.hub import RESET, EventHub
from sidecar.events.models import LiveEvent
from sidecar.events.retention import EventRetention

from event_helpers import LiveApp, event_rows
from testapp import service_of


def _orders(live: LiveApp, headers: dict[str, str], count: int) -> list[int]:
    made = []
    for n in range(count):
        answer = live.http.post(
            "/api/imaging-orders",
            json={"patientId": f"RET-{n}", "modality": "CT", "procedureDescription": "CT head"},
            headers=headers,
        )
        assert answer.status_code == 201, answer.text
        made.append(int(answer.json()["id"]))
    return made


def _age(live: LiveApp, ids: list[int], hours: float) -> None:
    with Session(live.engine) as session:
        session.connection().execute(
            update(LiveEvent)
            .where(col(LiveEvent.id).in_(ids))
            .values(recorded_at=utcnow() - timedelta(hours=hours))
        )
        session.commit()


def test_old_events_are_pruned_and_a_client_resuming_after_them_gets_a_reset(
    live: LiveApp, admin: dict[str, str]
) -> None:
    _orders(live, admin, 4)
    rows = event_rows(live.engine)
    old, kept = rows[:2], rows[2:]
    _age(live, [r.id or 0 for r in old], hours=25)  # EVENTS_RETENTION_HOURS is 24
    _age(live, [r.id or 0 for r in kept], hours=23)
    assert service_of(live.app, EventRetention).prune() == 2
    assert [r.id for r in event_rows(live.engine)] == [r.id for r in kept]

    pruned_id = old[0].id
    resumed = live.stream(admin, last_id=pruned_id)
    reset = resumed.next()
    assert (reset.event, reset.data, reset.id) == ("reset", "{}", None)
    # The page reloads its lists: what is kept is not replayed, what comes next is told.
    assert resumed.quiet_for(1.0) == []
    (newer,) = _orders(live, admin, 1)
    assert resumed.next().json["id"] == newer
    resumed.close()

    current = live.stream(admin, last_id=event_rows(live.engine)[-1].id)
    assert current.quiet_for(1.0) == []
    # An id this database never handed out (a database restored to an earlier state): reset.
    future = live.stream(admin, last_id=(kept[-1].id or 0) + 1000)
    assert future.next().event == "reset"
    current.close()
    future.close()


def test_a_keepalive_comment_comes_while_nothing_happens(
    live: LiveApp, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sidecar.events.stream.KEEPALIVE_SECONDS", 0.3)
    reader = live.stream(admin)
    assert reader.quiet_for(1.5) == []
    assert "keepalive" in reader.comments
    reader.close()


def test_a_client_that_cannot_keep_up_gets_a_reset_and_goes_on_with_the_newest(
    live: LiveApp, admin: dict[str, str]
) -> None:
    hub = EventHub(live.engine, interval=0.05, queue_size=2)

    async def scenario() -> list[Any]:
        subscription = await hub.subscribe()
        try:
            for _ in range(4):  # four batches for a queue of two, none read
                before = hub.cursor
                await asyncio.to_thread(_orders, live, admin, 1)
                for _ in range(200):
                    if hub.cursor > before:
                        break
                    await asyncio.sleep(0.05)
            queued = []
            while not subscription.queue.empty():
                queued.append(subscription.queue.get_nowait())
            return queued
        finally:
            await hub.stop()

    queued = asyncio.run(scenario())
    assert queued[0] == RESET
    assert len(queued) <= 2
    newest = event_rows(live.engine)[-1].id
    assert queued[-1][-1].id == newest
