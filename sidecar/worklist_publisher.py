"""Keeps the DICOM Modality Worklist in step with the orders: SCHEDULED orders are offered to
modalities, every other status withdraws the item.

The worklist lives in files Orthanc's plugin serves from memory (sidecar.worklist), so a C-FIND
never waits on the sidecar. Files are written after the database commit; a crash in between is
repaired on the next start by `reconcile`, which rewrites the directory from the database.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import Session, select

from sidecar.models.orders import ImagingOrder, Modality, OrderStatus, Priority
from sidecar.worklist import WorklistDirectory, WorklistItem

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
    )


#: How much lower the worklist writer's CPU priority is than the sidecar's (nice(2) steps).
WRITER_NICENESS = 10


class WorklistPublisher:
    """An order listener: publishes or withdraws the orders' worklist items.

    With `writer_process`, the files are encoded and written by a child process. pydicom spends
    about 1 ms of CPU per item; in this process that time holds the GIL, which the HL7 intake
    threads need between their database round trips (measured under HL7 load: ACK p99 rose from
    13 ms to 175 ms when batches of items were encoded in a thread here).
    """

    def __init__(self, directory: WorklistDirectory, *, writer_process: bool = False) -> None:
        self.directory = directory
        self._writer_process = writer_process
        self._writer: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self, order: ImagingOrder) -> None:
        self.publish_changes([order])

    def publish_changes(self, orders: Sequence[ImagingOrder]) -> None:
        """Brings the worklist in line with orders changed in this order (the last state of an
        order wins), in one directory update."""
        latest = {order.id: order for order in orders}
        publish: list[WorklistItem] = []
        withdraw: list[str] = []
        for order in latest.values():
            try:
                item = worklist_item(order)
            except ValueError:
                # Never fail the change: it is committed. The log names the order id only.
                log.exception("order %s cannot be offered on the worklist", order.id)
                continue
            if item is None:
                withdraw.append(str(order.id))
            else:
                publish.append(item)
        try:
            self._write(publish, withdraw)
        except Exception:
            # The next start's reconcile retries; the log names the order ids only.
            log.exception("worklist not updated for orders %s", sorted(map(str, latest)))

    def reconcile(self, engine: Engine) -> int:
        """Rewrites the worklist from the database; returns how many items it offers."""
        with Session(engine) as session:
            scheduled = session.exec(
                select(ImagingOrder).where(ImagingOrder.status == OrderStatus.SCHEDULED)
            ).all()
        items = []
        for order in scheduled:
            try:
                item = worklist_item(order)
            except ValueError:
                log.exception("order %s cannot be offered on the worklist", order.id)
                continue
            if item is not None:
                items.append(item)
        self._write(items, replace_all=True)
        return len(items)

    def close(self) -> None:
        """Stops the writer process, if one was started."""
        with self._lock:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def _write(
        self,
        publish: list[WorklistItem],
        withdraw: Sequence[str] = (),
        *,
        replace_all: bool = False,
    ) -> None:
        directory = self.directory
        with self._lock:
            if not self._writer_process:
                _write_directory(directory, publish, withdraw, replace_all)
                return
            for attempt in (1, 2):
                if self._writer is None:
                    self._writer = ProcessPoolExecutor(
                        max_workers=1,
                        mp_context=_writer_context(),
                        initializer=_background_priority,
                    )
                arguments = (directory.path, directory.tz, directory.durable)
                try:
                    self._writer.submit(
                        _write_in_writer, arguments, publish, withdraw, replace_all
                    ).result()
                    return
                except BrokenProcessPool:
                    # The writer died (killed): a new one takes the same changes.
                    self._writer = None
                    if attempt == 2:
                        raise


def _write_directory(
    directory: WorklistDirectory,
    publish: list[WorklistItem],
    withdraw: Sequence[str],
    replace_all: bool,
) -> None:
    if replace_all:
        directory.replace_all(publish)
    else:
        directory.update(publish, withdraw)


def _writer_context() -> multiprocessing.context.BaseContext:
    """Writer processes are forked from a server process that has this module loaded: safe in
    a threaded parent (unlike a plain fork), and a new writer starts in milliseconds rather than
    a second of imports (spawn), which every start of the service paid."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _background_priority() -> None:
    """Runs first in the writer process: when the CPUs are busy, the HL7 intake, the API and
    the database go first; the worklist catches up after (measured: one HL7 connection did
    160 orders/s with the writer at normal priority, against 205 with no worklist at all).

    Ctrl-C in a terminal reaches every process of the group: the writer leaves it to the
    sidecar, which finishes the batch in hand and stops it (close)."""
    os.nice(WRITER_NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@functools.cache
def _directory(path: Path, tz: tzinfo, durable: bool) -> WorklistDirectory:
    """The writer process's directory object, kept between calls (it caches the journal)."""
    return WorklistDirectory(path, tz, durable=durable)


def _write_in_writer(
    arguments: tuple[Path, tzinfo, bool],
    publish: list[WorklistItem],
    withdraw: Sequence[str],
    replace_all: bool,
) -> None:
    """Runs in the writer process."""
    _write_directory(_directory(*arguments), publish, withdraw, replace_all)


def zone_of(name: str) -> tzinfo:
    """The department's time zone: an IANA name, or this machine's when empty."""
    if name:
        return ZoneInfo(name)
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local
