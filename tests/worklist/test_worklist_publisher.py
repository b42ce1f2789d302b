"""Orders to worklist files: ids announced in batches, the orders read back and written by a
child process."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlmodel import Session

from sidecar.core.database import make_engine, migrate
from sidecar.orders.events import OrderEvents
from sidecar.orders.models import ImagingOrder, Modality, OrderStatus
from sidecar.tables import metadata
from sidecar.worklist.directory import WorklistDirectory
from sidecar.worklist.publisher import WRITER_NICENESS, WorklistPublisher

from stack import wait_for

BRUSSELS = ZoneInfo("Europe/Brussels")


def make_order(order_id: int, status: OrderStatus = OrderStatus.SCHEDULED) -> ImagingOrder:
    return ImagingOrder(
        id=order_id,
        accession_number=f"ACC{order_id}",
        study_instance_uid=f"1.2.826.0.1.3680043.10.2.{order_id}",
        patient_id=f"PAT{order_id}",
        modality=Modality.CT,
        status=status,
        scheduled_at=datetime(2024, 3, 30, 8, 30, tzinfo=UTC),
    )


def wl_files(path: Path) -> set[str]:
    return {p.name for p in path.glob("*.wl")}


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    url = f"sqlite:///{tmp_path / 'sidecar.db'}"
    engine = make_engine(url)
    migrate(engine, metadata)
    yield url, engine
    engine.dispose()


def commit(engine: Engine, *orders: ImagingOrder) -> list[int]:
    """Saves the orders as they are (new or changed); returns their ids."""
    with Session(engine) as session:
        for order in orders:
            session.merge(order)
        session.commit()
    return [order.id for order in orders if order.id is not None]


def test_changes_queued_meanwhile_reach_the_listener_in_one_call() -> None:
    events = OrderEvents()
    calls: list[list[int]] = []
    busy, release = threading.Event(), threading.Event()

    def listener(order_ids: Sequence[int]) -> None:
        calls.append(list(order_ids))
        busy.set()
        release.wait(10)

    events.listeners.append(listener)
    events.start()
    try:
        events.announce(make_order(1))
        assert busy.wait(10)  # the first change is being written
        events.announce(make_order(2))
        events.announce(make_order(3))
        events.announce(make_order(2, OrderStatus.CANCELLED))
        release.set()
        assert events.wait_idle()
    finally:
        events.stop()

    assert calls == [[1], [2, 3]]  # an order changed twice meanwhile is read once


def test_an_order_is_announced_with_its_id() -> None:
    with pytest.raises(ValueError, match="after its commit"):
        OrderEvents().announce(make_order(1).model_copy(update={"id": None}))


def test_the_worklist_follows_the_committed_state(
    tmp_path: Path, database: tuple[str, Engine]
) -> None:
    url, engine = database
    path = tmp_path / "worklist"
    publisher = WorklistPublisher(WorklistDirectory(path, BRUSSELS), url)
    try:
        publisher.publish_changes(commit(engine, make_order(1), make_order(2), make_order(3)))
        assert publisher.directory.keys() == {"1", "2", "3"}

        # Announced twice, read once: the state committed last is what the worklist shows.
        commit(engine, make_order(1, OrderStatus.CANCELLED), make_order(3, OrderStatus.ON_HOLD))
        publisher.publish_changes([1, 3, 1])
        publisher.publish_changes([404])  # no such order: nothing to offer
    finally:
        publisher.close()

    assert wl_files(path) == {"2.wl"}
    assert publisher.directory.keys() == {"2"}


def test_an_order_the_worklist_cannot_offer_does_not_stop_the_others(
    tmp_path: Path, database: tuple[str, Engine]
) -> None:
    url, engine = database
    unfit = make_order(1)
    unfit.patient_id = "PAT\\1"  # a backslash cannot be written into a DICOM value
    publisher = WorklistPublisher(WorklistDirectory(tmp_path / "worklist", BRUSSELS), url)
    try:
        publisher.publish_changes(commit(engine, unfit, make_order(2)))
    finally:
        publisher.close()

    assert wl_files(tmp_path / "worklist") == {"2.wl"}


@pytest.fixture
def writer(tmp_path: Path, database: tuple[str, Engine]) -> Iterator[WorklistPublisher]:
    publisher = WorklistPublisher(
        WorklistDirectory(tmp_path / "worklist", BRUSSELS, durable=False),
        database[0],
        writer_process=True,
    )
    yield publisher
    publisher.close()


def test_a_writer_process_reads_the_orders_and_writes_the_files(
    writer: WorklistPublisher, database: tuple[str, Engine]
) -> None:
    engine = database[1]
    before = set(multiprocessing.active_children())
    writer.publish_changes(commit(engine, make_order(1), make_order(2)))
    writer.publish_changes(commit(engine, make_order(2, OrderStatus.COMPLETED)))

    assert wl_files(writer.directory.path) == {"1.wl"}
    assert writer.directory.keys() == {"1"}  # this process reads what the writer wrote
    assert set(multiprocessing.active_children()) - before  # written elsewhere
    writer.close()
    assert not set(multiprocessing.active_children()) - before


def test_the_writer_process_yields_the_cpu_to_the_sidecar(
    writer: WorklistPublisher, database: tuple[str, Engine]
) -> None:
    before = set(multiprocessing.active_children())
    writer.publish_changes(commit(database[1], make_order(1)))
    (child,) = set(multiprocessing.active_children()) - before
    assert child.pid is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(19, ours + WRITER_NICENESS)


def test_a_writer_process_that_died_is_replaced(
    writer: WorklistPublisher, database: tuple[str, Engine]
) -> None:
    engine = database[1]
    before = set(multiprocessing.active_children())
    writer.publish_changes(commit(engine, make_order(1)))
    for child in set(multiprocessing.active_children()) - before:
        child.kill()
        child.join(10)

    writer.publish_changes(commit(engine, make_order(2)))

    assert wl_files(writer.directory.path) == {"1.wl", "2.wl"}


def test_a_database_the_writer_cannot_read_is_an_error_and_the_worklist_stays(
    tmp_path: Path, database: tuple[str, Engine]
) -> None:
    url, engine = database
    path = tmp_path / "worklist"
    publisher = WorklistPublisher(WorklistDirectory(path, BRUSSELS), url)
    try:
        publisher.publish_changes(commit(engine, make_order(1)))
        (tmp_path / "sidecar.db").unlink()
        (tmp_path / "sidecar.db").mkdir()  # the file is gone; its place cannot be opened
        publisher.close()  # no pooled connection to the old file
        with pytest.raises(sa.exc.OperationalError):
            publisher.publish_changes([2])  # raised: OrderEvents delivers it again later
    finally:
        publisher.close()

    assert wl_files(path) == {"1.wl"}


def test_ids_a_listener_failed_on_are_delivered_again_with_the_later_ones() -> None:
    events = OrderEvents(linger=0, retry_min=0.01)
    calls: list[tuple[list[int], bool]] = []  # ids, delivered
    down = threading.Event()
    down.set()

    def listener(order_ids: Sequence[int]) -> None:
        failing = down.is_set()
        calls.append((list(order_ids), not failing))
        if failing:
            raise RuntimeError("database unavailable")

    events.listeners.append(listener)
    events.start()
    try:
        events.announce(make_order(1))
        wait_for(lambda: len(calls) >= 2, timeout=10, what="a second try")
        events.announce(make_order(2))
        wait_for(lambda: calls[-1][0] == [1, 2], timeout=10, what="the later id joining")
        down.clear()
        wait_for(lambda: calls[-1][1], timeout=10, what="a delivery")
        events.announce(make_order(3))
        assert events.wait_idle()
    finally:
        events.stop()

    assert calls[:2] == [([1], False), ([1], False)]
    assert calls[-2:] == [([1, 2], True), ([3], True)]  # delivered ids are not sent again


def test_reconcile_through_the_writer_process(
    writer: WorklistPublisher, database: tuple[str, Engine]
) -> None:
    commit(database[1], make_order(1), make_order(2, OrderStatus.CANCELLED), make_order(3))
    path = writer.directory.path
    path.mkdir()
    (path / "9.wl").write_bytes(b"left by a crash")

    assert writer.reconcile() == 2
    assert wl_files(path) == {"1.wl", "3.wl"}


def test_a_scheduled_order_the_worklist_cannot_hold_is_counted_not_hidden(
    database: tuple[str, Engine], tmp_path: Path
) -> None:
    """Orders are checked before they are accepted, but a database may hold older ones: each
    is counted (by id, for /health) rather than silently left off the worklist."""
    url, engine = database
    fit, unfit = make_order(1), make_order(2)
    unfit.patient_name = "DOE\\ROE^JOHN"  # written before the intake refused backslashes
    commit(engine, fit, unfit)
    publisher = WorklistPublisher(WorklistDirectory(tmp_path / "worklist", BRUSSELS), url)
    try:
        assert publisher.reconcile() == 1
        assert publisher.unfit == {2}
        publisher.publish_changes([1, 2])
        assert publisher.unfit == {2}

        unfit.patient_name = "DOE^JOHN"  # corrected
        commit(engine, unfit)
        publisher.publish_changes([2])
        assert publisher.unfit == set()
        assert wl_files(tmp_path / "worklist") == {"1.wl", "2.wl"}
    finally:
        publisher.close()


def test_a_scheduled_time_no_zone_can_show_leaves_the_other_orders_on_the_worklist(
    tmp_path: Path, database: tuple[str, Engine]
) -> None:
    """Stored before the API and the intake refused such times: 23:30 UTC on 31 December 9999
    is year 10000 in Brussels. Once it failed every batch it was in, and the start-up rewrite
    too, so the sidecar did not start."""
    url, engine = database
    fit, unfit, after = make_order(1), make_order(2), make_order(3)
    unfit.scheduled_at = datetime(9999, 12, 31, 23, 30, tzinfo=UTC)
    publisher = WorklistPublisher(WorklistDirectory(tmp_path / "worklist", BRUSSELS), url)
    try:
        publisher.publish_changes(commit(engine, fit, unfit))
        publisher.publish_changes(commit(engine, after))
        assert wl_files(tmp_path / "worklist") == {"1.wl", "3.wl"}
        assert publisher.unfit == {2}
        assert publisher.reconcile() == 2
        assert publisher.unfit == {2}
    finally:
        publisher.close()
