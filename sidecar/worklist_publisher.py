"""Keeps the DICOM Modality Worklist in step with the orders: SCHEDULED orders are offered to
modalities, every other status withdraws the item.

The worklist lives in files Orthanc's plugin serves from memory (sidecar.worklist), so a C-FIND
never waits on the sidecar. Files are written after the database commit; a crash in between is
repaired on the next start by `reconcile`, which rewrites the directory from the database.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, tzinfo
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


class WorklistPublisher:
    """An order listener: publishes or withdraws the order's worklist item."""

    def __init__(self, directory: WorklistDirectory) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    def __call__(self, order: ImagingOrder) -> None:
        try:
            item = worklist_item(order)
            with self._lock:
                if item is None:
                    self.directory.withdraw(str(order.id))
                else:
                    self.directory.publish(item)
        except Exception:
            # Never fail the request that changed the order: it is committed. The next start's
            # reconcile retries; the log names the order id only.
            log.exception("worklist not updated for order %s", order.id)

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
        with self._lock:
            self.directory.replace_all(items)
        return len(items)


def zone_of(name: str) -> tzinfo:
    """The department's time zone: an IANA name, or this machine's when empty."""
    if name:
        return ZoneInfo(name)
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local
