"""Durable state of the Orthanc -> sidecar synchronisation.

The cursor is the last /changes sequence number whose studies have been queued; a pending study is
one Orthanc told us about (plugin or change log) that is not yet registered in its latest form.
Both live in the database so that nothing Orthanc stored is forgotten across restarts.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Column, Field, SQLModel

from sidecar.core.models import UTCDateTime, utcnow


class ChangesCursor(SQLModel, table=True):
    __tablename__ = "orthanc_changes_cursor"

    id: int = Field(default=1, primary_key=True)
    last_seq: int = 0
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


class PendingStudy(SQLModel, table=True):
    __tablename__ = "pending_study"

    orthanc_id: str = Field(primary_key=True, max_length=64)
    source: str = Field(max_length=16)  # "plugin" or "changes"
    queued_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    attempts: int = 0
    next_attempt_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False, index=True)
    )
    last_error: str | None = Field(default=None, max_length=500)


class DeletionCheck(SQLModel, table=True):
    """A study to compare with what Orthanc holds, because Orthanc said it deleted some of it
    (the plugin's notice) or the reconciliation found its Orthanc study gone: the durable queue
    of sidecar.ingest.deletion_watch. One row per study; a new notice makes it due again."""

    __tablename__ = "orthanc_deletion_check"

    study_id: int = Field(primary_key=True, foreign_key="study.id")
    cause: str = Field(max_length=16)  # "plugin" or "reconcile"
    queued_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    last_error: str | None = Field(default=None, max_length=500)
