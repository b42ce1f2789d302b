"""The live event table: one row per change to a study, an order, a report, a critical finding
or a UPS work item, written by database triggers (migrations 0020, 0022) in the transaction of
the change.

Triggers rather than ORM session hooks: every writer is covered alike, the ORM, Core statements
(the HL7 intake inserts orders without the ORM; a patient merge rewrites orders and studies in
bulk UPDATEs), other processes and other nodes of a cluster.

A row holds ids only. `patient_id`, `issuer_of_patient_id` and `facility_id` are filled for a
removed study or order alone: the record is gone, and they are what says who could see it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import BigInteger, Integer
from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import UTCDateTime

#: A big integer; SQLite autoincrements only an INTEGER PRIMARY KEY.
EVENT_ID = BigInteger().with_variant(Integer(), "sqlite")


class EventKind(StrEnum):
    STUDY = "study"
    ORDER = "order"
    REPORT = "report"
    FINDING = "finding"
    WORKITEM = "workitem"  # a UPS work item (sidecar.analyses), migration 0022


class EventAction(StrEnum):
    CREATED = "created"
    CHANGED = "changed"
    REMOVED = "removed"


class LiveEvent(SQLModel, table=True):
    __tablename__ = "live_event"
    # SQLite: ids never reused, even once the retention job has emptied the table.
    __table_args__: ClassVar[Any] = {"sqlite_autoincrement": True}

    id: int | None = Field(
        default=None, sa_column=Column(EVENT_ID, primary_key=True, autoincrement=True)
    )
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    kind: str = Field(max_length=16)
    action: str = Field(max_length=16)
    entity_id: int
    study_id: int | None = None
    patient_id: str | None = Field(default=None, max_length=64)
    issuer_of_patient_id: str | None = Field(default=None, max_length=64)
    facility_id: str | None = Field(default=None, max_length=64)

    def message(self) -> dict[str, Any]:
        """What the stream says of it: ids only."""
        return {
            "kind": self.kind,
            "action": self.action,
            "id": self.entity_id,
            "studyId": self.study_id,
        }
