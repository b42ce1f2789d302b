"""The alarms /health raises beyond reachability: disks filling up, and work left waiting.

- Disk: the free space of Orthanc's storage (ORTHANC_STORAGE_DIR) and of the data directory
  (DATA_DIR). Below DISK_MIN_FREE_PERCENT on either, or unreadable (a dead network mount),
  /health answers 503 with the reason: a full disk refuses C-STORE and stops the database, and a
  monitor must page someone before it.
- Backlogs: the oldest item still waiting in each queue the service works through (results to
  the HIS, critical finding notifications, patient updates and removals to write to Orthanc,
  studies waiting to be registered). Older than BACKLOG_WARN_SECONDS, /health answers 200
  `degraded` with a warning naming the queue: the service works, but something downstream
  (the HIS, the notification service, Orthanc) does not take what it is given.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement
from sqlmodel import Session, col, func, select

from sidecar.findings.models import DeliveryStatus, FindingNotification
from sidecar.ingest.models import PendingStudy
from sidecar.patients.models import ImageUpdate, ImageUpdateStatus
from sidecar.results.message_log import Hl7Direction, Hl7Message, Hl7MessageStatus
from sidecar.studies.removal_models import WAITING_STATES, ImageRemoval


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


FreeSpaceReader = Callable[[Path], DiskUsage]


def read_free_space(path: Path) -> DiskUsage:
    total, used, free = shutil.disk_usage(path)
    return DiskUsage(total, used, free)


@dataclass
class DiskWatch:
    """The folders whose filesystems must keep room, by the name /health gives them.

    `free` is what an unprivileged process may still write (statvfs f_bavail), the figure that
    matters to Orthanc and the database; `reader` is replaced by tests that fake a full disk."""

    places: Mapping[str, Path | None]
    min_free_percent: float
    reader: FreeSpaceReader = read_free_space

    def check(self) -> tuple[dict[str, Any], list[str]]:
        """The `disk` check for /health, and the reasons it is down (none: up)."""
        body: dict[str, Any] = {"minFreePercent": self.min_free_percent}
        reasons: list[str] = []
        for name, path in self.places.items():
            if path is None:
                continue
            try:
                usage = self.reader(path)
            except FileNotFoundError:
                # Not mounted here (a sidecar in its own container without Orthanc's volume),
                # or not created yet: nothing to measure, which is not an alarm.
                body[name] = {"status": "unknown", "error": "not found"}
                continue
            except OSError as exc:
                # There but unreadable (a dead NFS mount: ESTALE, EIO; a permission): what
                # cannot be measured here cannot be written to by Orthanc either.
                error = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                body[name] = {"status": "unknown", "error": error}
                reasons.append(f"disk: {name} cannot be measured ({error})")
                continue
            percent = 100.0 * usage.free / usage.total if usage.total else 0.0
            low = percent < self.min_free_percent
            body[name] = {
                "status": "low" if low else "ok",
                "freeBytes": usage.free,
                "totalBytes": usage.total,
                "freePercent": round(percent, 1),
            }
            if low:
                reasons.append(
                    f"disk: {name} has {percent:.1f}% free, below DISK_MIN_FREE_PERCENT"
                    f" ({self.min_free_percent:g}%)"
                )
        body["status"] = "down" if reasons else "up"
        return body, reasons


#: The queues whose oldest waiting item /health reports: what is waiting, since when.
QUEUES: dict[str, tuple[Any, tuple[ColumnElement[bool], ...]]] = {
    "results": (
        Hl7Message.received_at,
        (
            col(Hl7Message.direction) == Hl7Direction.OUTBOUND,
            col(Hl7Message.status) == Hl7MessageStatus.PENDING,
        ),
    ),
    "notifications": (
        FindingNotification.created_at,
        (col(FindingNotification.status) == DeliveryStatus.PENDING,),
    ),
    "imageUpdates": (
        ImageUpdate.queued_at,
        (col(ImageUpdate.status) == ImageUpdateStatus.PENDING,),
    ),
    "imageRemovals": (
        ImageRemoval.requested_at,
        (col(ImageRemoval.state).in_(WAITING_STATES),),
    ),
    "registrations": (PendingStudy.queued_at, ()),
}


def oldest_waiting(session: Session) -> dict[str, datetime | None]:
    """Each queue's oldest waiting item's time (None: the queue is empty), cluster-wide."""
    return {
        name: session.exec(select(func.min(since)).where(*conditions)).one()
        for name, (since, conditions) in QUEUES.items()
    }


def backlog_ages(
    oldest: Mapping[str, datetime | None], now: datetime, warn_seconds: float
) -> tuple[dict[str, Any], list[str]]:
    """The `backlogs` object of /health (each queue's oldest item's age in seconds), and a
    warning for each queue whose oldest item waited longer than `warn_seconds`."""
    body: dict[str, Any] = {"warnSeconds": warn_seconds}
    warnings: list[str] = []
    for name, since in oldest.items():
        age = max(0, round((now - since).total_seconds())) if since is not None else None
        body[name] = {"oldestSeconds": age}
        if age is not None and age > warn_seconds:
            warnings.append(
                f"backlog: the oldest of {name} has waited {age} s, more than"
                f" BACKLOG_WARN_SECONDS ({warn_seconds:g} s)"
            )
    return body, warnings
