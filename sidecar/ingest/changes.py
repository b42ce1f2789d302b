"""Orthanc's durable change log (`GET /changes`), read from a cursor kept in the database: the
studies it mentions past the cursor are queued, in the same transaction that moves the cursor.
It covers what the plugin's notice cannot: studies stored while the sidecar was down, and
studies whose StableStudy never fired because Orthanc restarted within StableAge."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session

from sidecar.ingest.models import ChangesCursor
from sidecar.ingest.orthanc_client import OrthancClient, OrthancNotFound
from sidecar.ingest.queue import queue_studies

_STUDY_CHANGES = {"NewStudy", "StableStudy"}


class ChangeLog:
    def __init__(self, engine: Engine, orthanc: OrthancClient, *, page_size: int) -> None:
        self._engine = engine
        self._orthanc = orthanc
        self._page_size = page_size
        self.cursor = 0
        self.orthanc_last_seq: int | None = None

    def read(self, now: datetime, stopping: Callable[[], bool]) -> int:
        """Queues every study the log mentions past the cursor; returns how many."""
        queued = 0
        while not stopping():
            with Session(self._engine) as session:
                cursor = session.get(ChangesCursor, 1) or ChangesCursor(id=1, last_seq=0)
                page = self._orthanc.changes(cursor.last_seq, self._page_size)
                study_ids = self._studies_in(page.get("Changes", []))
                queue_studies(session, study_ids, "changes", now=now)
                cursor.last_seq = int(page.get("Last", cursor.last_seq))
                cursor.updated_at = now
                session.add(cursor)
                session.commit()  # cursor and queue move together, or not at all
                self.cursor = cursor.last_seq
                self.orthanc_last_seq = int(page.get("Last", cursor.last_seq))
            queued += len(study_ids)
            if page.get("Done", True):
                return queued
        return queued

    def _studies_in(self, changes: list[dict[str, object]]) -> list[str]:
        studies: dict[str, None] = {}
        series_ids: list[str] = []
        instance_ids: list[str] = []
        for change in changes:
            kind, resource = change.get("ChangeType"), str(change.get("ID"))
            if kind in _STUDY_CHANGES:
                studies[resource] = None
            elif kind == "NewSeries":
                series_ids.append(resource)
            elif kind == "NewInstance":
                instance_ids.append(resource)

        for series_id in series_ids:
            try:
                studies[self._orthanc.parent_study_of_series(series_id)] = None
            except OrthancNotFound:
                continue
        # Late instances into an existing series leave only NewInstance rows. Resolving each one
        # would cost a request per instance; one study's instance list covers all of its rows.
        covered: set[str] = set()
        for study_id in list(studies):
            if instance_ids:
                covered.update(self._instance_ids_or_empty(study_id))
        for instance_id in instance_ids:
            if instance_id in covered:
                continue
            try:
                study_id = self._orthanc.parent_study_of_instance(instance_id)
            except OrthancNotFound:
                continue
            studies[study_id] = None
            covered.update(self._instance_ids_or_empty(study_id))
        return list(studies)

    def _instance_ids_or_empty(self, study_id: str) -> list[str]:
        try:
            return self._orthanc.study_instance_ids(study_id)
        except OrthancNotFound:
            return []
