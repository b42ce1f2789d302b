"""Ids are handed out at insert and seen at commit: on PostgreSQL, concurrent transactions commit
in any order. The hub never moves past an id a running transaction may still commit, and skips
one that was rolled back once no transaction could hold it any more."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from sidecar.events.hub import EventHub
from sidecar.orders.service import insert_order

from event_helpers import event_rows

_patients = iter(range(1, 10_000))


def _order(session: Session) -> int:
    values = {
        "patient_id": f"GAP-{next(_patients)}",
        "modality": "CT",
        "procedure_description": "x",
    }
    return insert_order(session, values, actor="test", source="test")


@pytest.fixture
def hub(engine: Engine) -> Iterator[EventHub]:
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer at a time: ids commit in order")
    yield EventHub(engine)


def test_a_later_commit_waits_for_an_earlier_id_still_in_a_transaction(
    engine: Engine, hub: EventHub
) -> None:
    hub.read_new()  # the cursor at the newest
    with Session(engine) as slow, Session(engine) as quick:
        slow_order = _order(slow)
        slow.flush()  # its event holds the lower id, not committed
        quick_order = _order(quick)
        quick.commit()
        assert hub.read_new() == []
        assert hub.read_new() == []
        slow.commit()
    delivered = [(event.kind, event.entity_id) for event in hub.read_new()]
    assert delivered == [("order", slow_order), ("order", quick_order)]


def test_an_id_rolled_back_is_skipped_once_no_transaction_can_hold_it(
    engine: Engine, hub: EventHub
) -> None:
    hub.read_new()
    with Session(engine) as abandoned, Session(engine) as kept:
        _order(abandoned)
        abandoned.flush()
        kept_order = _order(kept)
        kept.commit()
        assert hub.read_new() == []
        abandoned.rollback()
    delivered = hub.read_new() or hub.read_new()  # the gap is seen closed on the next read
    assert [(event.kind, event.entity_id) for event in delivered] == [("order", kept_order)]
    assert delivered[-1].id == event_rows(engine)[-1].id
