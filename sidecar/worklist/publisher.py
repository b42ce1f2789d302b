"""Keeps the DICOM Modality Worklist in step with the orders: SCHEDULED orders are offered to
modalities, every other status withdraws the item.

The worklist lives in files Orthanc's plugin serves from memory (sidecar.worklist.directory),
so a C-FIND never waits on the sidecar. Files are written after the database commit; a crash in
between is repaired on the next start by `reconcile`, which rewrites the directory from the
database.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from sidecar.core.database import make_engine
from sidecar.core.logs import configure_logging, logging_style
from sidecar.core.processes import exit_with_parent
from sidecar.orders.models import ImagingOrder, Modality, OrderStatus, Priority
from sidecar.worklist.directory import WorklistDirectory
from sidecar.worklist.items import WorklistItem

log = logging.getLogger(__name__)


def worklist_item(order: ImagingOrder) -> WorklistItem | None:
    """The scheduled procedure step an order offers, or None when it offers none."""
    if (
        OrderStatus(order.status) != OrderStatus.SCHEDULED
        or order.scheduled_at is None
        or order.id is None
    ):
        return None
    modality = Modality(order.modality)
    return WorklistItem(
        key=str(order.id),
        accession_number=order.accession_number,
        requested_procedure_id=order.requested_procedure_id or order.accession_number,
        requested_procedure_description=order.procedure_description or "",
        study_instance_uid=order.study_instance_uid,
        patient_id=order.patient_id,
        issuer_of_patient_id=order.issuer_of_patient_id or "",
        patient_name=order.patient_name or "",
        patient_birth_date=order.patient_birth_date,
        patient_sex=order.patient_sex or "",
        referring_physician=order.referring_physician or "",
        modality="PT" if modality == Modality.PET_CT else modality.value,
        scheduled_station_aet=order.scheduled_station_aet or "",
        scheduled_start=order.scheduled_at,
        step_description=order.procedure_description or "",
        step_id=order.accession_number,
        priority=Priority(order.priority).value,
        procedure_code=order.procedure_code or "",
        procedure_coding_system=order.procedure_coding_system or "",
        protocol_code=order.protocol_code or "",
        scheduled_station_name=order.scheduled_station_name or "",
    )


#: How much lower the worklist writer's CPU priority is than the sidecar's (nice(2) steps).
WRITER_NICENESS = 10


class WorklistPublisher:
    """An order listener: given the ids of orders that changed (committed), publishes or
    withdraws their worklist items, reading each order's committed state from the database.

    Only ids cross from the sidecar: reading the orders, building the items and encoding the
    files happen where the files are written. With `writer_process`, that is a child process
    with its own database connection. pydicom spends about 1 ms of CPU per item, and reading
    the orders back as ORM objects a few tenths more; in the sidecar's process that time holds
    the GIL, which the HL7 intake threads need between their database round trips (measured
    under HL7 load: 147 orders/s on one connection with the items built in the sidecar and
    only their encoding in a child, 199/s with no worklist at all).

    The last committed state of an order always wins: every change announces the order's id
    after its commit, and the writer reads the database after the announcement.
    """

    def __init__(
        self, directory: WorklistDirectory, database_url: str, *, writer_process: bool = False
    ) -> None:
        self.directory = directory
        self._database_url = database_url
        self._writer_process = writer_process
        self._writer: ProcessPoolExecutor | None = None
        self._local: _Worklist | None = None
        self._lock = threading.Lock()
        # Scheduled orders the worklist cannot hold (orders are checked before they are
        # accepted, so only orders older than those checks): for /health.
        self.unfit: set[int] = set()

    def publish_changes(self, order_ids: Sequence[int]) -> None:
        """Brings the worklist in line with these orders' committed state, in one directory
        update. Raises when the database or the directory cannot be used: OrderEvents then
        delivers the same ids again later. An order that cannot be offered (a value DICOM
        cannot hold) is logged, counted in `unfit` and left out; the others are written."""
        ids = list(dict.fromkeys(order_ids))
        outcome = self._run(_publish_orders, ids)
        with self._lock:
            self.unfit = (self.unfit - set(ids)) | set(outcome.unfit)

    def reconcile(self) -> int:
        """Rewrites the worklist from the database; returns how many items it offers."""
        outcome = self._run(_reconcile)
        with self._lock:
            self.unfit = set(outcome.unfit)
        return outcome.offered

    def close(self) -> None:
        """Stops the writer process, if one was started, and closes database connections."""
        with self._lock:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None
            if self._local is not None:
                self._local.engine.dispose()
                self._local = None

    def _run(self, task: Callable[..., Outcome], *arguments: Any) -> Outcome:
        directory = self.directory
        with self._lock:
            if not self._writer_process:
                if self._local is None:
                    self._local = _Worklist(directory, make_engine(self._database_url))
                return task(self._local, *arguments)
            for attempt in (1, 2):
                if self._writer is None:
                    self._writer = ProcessPoolExecutor(
                        max_workers=1,
                        mp_context=_writer_context(),
                        initializer=_background_priority,
                        initargs=logging_style(),  # its lines as the service's (LOG_FORMAT)
                    )
                where = (directory.path, directory.tz, directory.durable, self._database_url)
                try:
                    return self._writer.submit(_in_writer, where, task, *arguments).result()
                except BrokenProcessPool:
                    # The writer died (killed): a new one takes the same changes.
                    self._writer = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")


@dataclass(frozen=True)
class Outcome:
    """What a writer task did: items offered, and orders left out because unfit."""

    offered: int
    unfit: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Worklist:
    """Where a writer works: the directory and a database engine to read the orders from."""

    directory: WorklistDirectory
    engine: Engine


def _publish_orders(worklist: _Worklist, order_ids: list[int]) -> Outcome:
    """Writes the items of these orders as committed now."""
    if not order_ids:
        return Outcome(0)
    with Session(worklist.engine) as session:
        found = {
            order.id: order
            for order in session.exec(
                select(ImagingOrder).where(col(ImagingOrder.id).in_(order_ids))
            )
        }
    offered = _offered(found[order_id] for order_id in order_ids if order_id in found)
    publish = [item for item in offered.values() if item is not None]
    # Withdrawn: orders that no longer offer a step, and ids the database does not hold. An
    # order the worklist cannot hold (left out of `offered`) keeps what it had.
    withdraw = [
        str(order_id)
        for order_id in order_ids
        if order_id not in found or (order_id in offered and offered[order_id] is None)
    ]
    worklist.directory.update(publish, withdraw)
    return Outcome(len(publish), _unfit([i for i in order_ids if i in found], offered))


def _reconcile(worklist: _Worklist) -> Outcome:
    with Session(worklist.engine) as session:
        scheduled = session.exec(
            select(ImagingOrder).where(ImagingOrder.status == OrderStatus.SCHEDULED)
        ).all()
    offered = _offered(scheduled)
    items = [item for item in offered.values() if item is not None]
    worklist.directory.replace_all(items)
    return Outcome(len(items), _unfit([o.id for o in scheduled if o.id is not None], offered))


def _unfit(
    order_ids: Iterable[int], offered: dict[int | None, WorklistItem | None]
) -> tuple[int, ...]:
    """The orders of `order_ids` that _offered left out."""
    return tuple(order_id for order_id in order_ids if order_id not in offered)


def _offered(orders: Iterable[ImagingOrder]) -> dict[int | None, WorklistItem | None]:
    """Each order's scheduled procedure step by order id, None when it offers none. An order
    the worklist cannot hold (a value DICOM cannot take) is logged by id and left out, never
    failing the others: its change is committed."""
    offered: dict[int | None, WorklistItem | None] = {}
    for order in orders:
        try:
            offered[order.id] = worklist_item(order)
        except ValueError:
            log.exception("order %s cannot be offered on the worklist", order.id)
    return offered


def _writer_context() -> multiprocessing.context.BaseContext:
    """Writer processes are forked from a server process that has this module loaded: safe in
    a threaded parent (unlike a plain fork), and a new writer starts in milliseconds rather than
    a second of imports (spawn), which every start of the service paid."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _background_priority(log_format: str = "text", node: str = "") -> None:
    """Runs first in the writer process: when the CPUs are busy, the HL7 intake, the API and
    the database go first; the worklist catches up after (measured: one HL7 connection did
    160 orders/s with the writer at normal priority, against 205 with no worklist at all).

    Ctrl-C in a terminal reaches every process of the group: the writer leaves it to the
    sidecar, which finishes the batch in hand and stops it (close). A sidecar killed outright
    stops nothing: the writer then ends on its own (it would wait for work forever, keeping
    the forkserver alive with it); a batch cut short is redone from the database at start.
    Its warnings go to stderr as the sidecar's do, in its LOG_FORMAT, patient data withheld."""
    exit_with_parent()
    configure_logging("WARNING", log_format, node)
    os.nice(WRITER_NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@functools.cache
def _writer_worklist(path: Path, tz: tzinfo, durable: bool, database_url: str) -> _Worklist:
    """The writer process's directory (it caches the journal) and engine, kept between calls."""
    return _Worklist(WorklistDirectory(path, tz, durable=durable), make_engine(database_url))


def _in_writer(
    where: tuple[Path, tzinfo, bool, str], task: Callable[..., Outcome], *arguments: Any
) -> Outcome:
    """Runs in the writer process."""
    return task(_writer_worklist(*where), *arguments)


def zone_of(name: str) -> tzinfo:
    """The department's time zone: an IANA name, or this machine's when empty."""
    if name:
        return ZoneInfo(name)
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local
