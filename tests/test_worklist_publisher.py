"""Orders to worklist files: changes delivered in batches, written by a child process."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session

from sidecar.database import make_engine, migrate
from sidecar.models.orders import ImagingOrder, Modality, OrderStatus
from sidecar.order_events import OrderEvents
from sidecar.worklist import WorklistDirectory
from sidecar.worklist_publisher import WRITER_NICENESS, WorklistPublisher

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


def test_changes_queued_meanwhile_reach_a_batch_listener_in_one_call() -> None:
    events = OrderEvents()
    calls: list[list[tuple[Any, str]]] = []
    heard: list[Any] = []
    busy, release = threading.Event(), threading.Event()

    def batch_listener(orders: Sequence[ImagingOrder]) -> None:
        calls.append([(order.id, order.status.value) for order in orders])
        busy.set()
        release.wait(10)

    events.batch_listeners.append(batch_listener)
    events.listeners.append(lambda order: heard.append(order.id))
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

    assert calls == [
        [(1, "SCHEDULED")],
        [(2, "SCHEDULED"), (3, "SCHEDULED"), (2, "CANCELLED")],
    ]
    assert heard == [1, 2, 3, 2]  # one-order listeners still hear every change


def test_the_last_state_of_an_order_in_a_batch_wins(tmp_path: Path) -> None:
    publisher = WorklistPublisher(WorklistDirectory(tmp_path, BRUSSELS))
    publisher.publish_changes([make_order(1), make_order(2)])

    publisher.publish_changes(
        [make_order(1, OrderStatus.CANCELLED), make_order(3), make_order(1), make_order(2)]
    )
    publisher.publish_changes([make_order(3), make_order(3, OrderStatus.IN_PROGRESS)])

    assert wl_files(tmp_path) == {"1.wl", "2.wl"}
    assert publisher.directory.keys() == {"1", "2"}


def test_an_order_the_worklist_cannot_offer_does_not_stop_the_others(tmp_path: Path) -> None:
    publisher = WorklistPublisher(WorklistDirectory(tmp_path, BRUSSELS))
    unfit = make_order(1)
    unfit.patient_id = "PAT\\1"  # a backslash cannot be written into a DICOM value

    publisher.publish_changes([unfit, make_order(2)])

    assert wl_files(tmp_path) == {"2.wl"}


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[WorklistPublisher]:
    publisher = WorklistPublisher(
        WorklistDirectory(tmp_path, BRUSSELS, durable=False), writer_process=True
    )
    yield publisher
    publisher.close()


def test_a_writer_process_writes_the_files(writer: WorklistPublisher, tmp_path: Path) -> None:
    before = set(multiprocessing.active_children())
    writer.publish_changes([make_order(1), make_order(2)])
    writer.publish_changes([make_order(2, OrderStatus.COMPLETED)])

    assert wl_files(tmp_path) == {"1.wl"}
    assert writer.directory.keys() == {"1"}  # this process reads what the writer wrote
    assert set(multiprocessing.active_children()) - before  # written elsewhere
    writer.close()
    assert not set(multiprocessing.active_children()) - before


def test_the_writer_process_yields_the_cpu_to_the_sidecar(
    writer: WorklistPublisher, tmp_path: Path
) -> None:
    before = set(multiprocessing.active_children())
    writer.publish_changes([make_order(1)])
    (child,) = set(multiprocessing.active_children()) - before
    assert child.pid is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(19, ours + WRITER_NICENESS)


def test_a_writer_process_that_died_is_replaced(writer: WorklistPublisher, tmp_path: Path) -> None:
    before = set(multiprocessing.active_children())
    writer.publish_changes([make_order(1)])
    for child in set(multiprocessing.active_children()) - before:
        child.kill()
        child.join(10)

    writer.publish_changes([make_order(2)])

    assert wl_files(tmp_path) == {"1.wl", "2.wl"}


def test_reconcile_through_the_writer_process(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sidecar.db'}")
    migrate(engine)
    with Session(engine) as session:
        for order in (make_order(1), make_order(2, OrderStatus.CANCELLED), make_order(3)):
            session.add(order)
        session.commit()
    path = tmp_path / "worklist"
    path.mkdir()
    (path / "9.wl").write_bytes(b"left by a crash")
    publisher = WorklistPublisher(
        WorklistDirectory(path, BRUSSELS, durable=False), writer_process=True
    )
    try:
        assert publisher.reconcile(engine) == 2
    finally:
        publisher.close()
        engine.dispose()
    assert wl_files(path) == {"1.wl", "3.wl"}
