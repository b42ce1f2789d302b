"""Following deletions made in Orthanc (its REST API or Explorer): the sidecar drops what
Orthanc no longer holds, and nothing else.

Orthanc's ids are not what is compared. The sidecar itself deletes instances when it rewrites a
patient's images (sidecar.patients.image_rewrite: a new copy under a new Orthanc id, then the
original deleted, same Study, Series and SOP Instance UIDs), so "this Orthanc id is gone" says
nothing on its own. What Orthanc holds is asked by Study Instance UID (every Orthanc study of
that UID, whatever patient id it is filed under, so a rewrite half done still counts), and an
image goes only when Orthanc holds no instance of its SOP Instance UID. Orthanc not answering,
or answering an error, is never taken for a deletion: `held_instances` raises and the caller
tries again later.

A study Orthanc holds nothing of any more is kept as a record marked "images deleted" when a
report, a critical finding or an order refers to it (what was reported, flagged or done for the
HIS must stay readable), else removed from the sidecar's lists and answers. Its row stays either
way, marked: audit events, emergency-access grants and notifications name it, and its
reading assignment goes with it out of every list. Images that come back re-open it
(sidecar.studies.registry).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, exists
from sqlmodel import Session, col, select

from sidecar.core import audit
from sidecar.findings.models import CriticalFinding
from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.patients.image_rewrite import holding_id
from sidecar.reports.models import RadiologyReport
from sidecar.studies.image_rows import drop_image_rows
from sidecar.studies.models import Image, Series, Study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldInstance:
    """One instance Orthanc holds under the study's UID."""

    orthanc_id: str
    orthanc_study_id: str
    series_instance_uid: str
    series_orthanc_id: str


@dataclass(frozen=True)
class Holdings:
    """What Orthanc holds of one Study Instance UID: its instances by SOP Instance UID, and the
    Orthanc studies it is filed under (Orthanc id -> PatientID)."""

    instances: Mapping[str, HeldInstance]
    orthanc_studies: Mapping[str, str]

    @property
    def empty(self) -> bool:
        return not self.orthanc_studies and not self.instances


def held_instances(orthanc: OrthancClient, study_instance_uid: str) -> Holdings:
    """Asks Orthanc what it holds under this UID. Raises OrthancUnavailable when it cannot tell,
    and OrthancNotFound when a study vanishes while it is read (ask again): neither means
    "deleted"."""
    studies = orthanc.studies_with_uid(study_instance_uid)
    instances: dict[str, HeldInstance] = {}
    for orthanc_study_id in sorted(studies):
        series_uids = {
            str(series["ID"]): str(series.get("MainDicomTags", {}).get("SeriesInstanceUID", ""))
            for series in orthanc.study_series(orthanc_study_id)
        }
        for instance in orthanc.study_instances(orthanc_study_id):
            sop_uid = str(instance.get("MainDicomTags", {}).get("SOPInstanceUID", "")).strip()
            series_id = str(instance.get("ParentSeries", ""))
            if not sop_uid:
                continue
            instances.setdefault(
                sop_uid,
                HeldInstance(
                    orthanc_id=str(instance["ID"]),
                    orthanc_study_id=orthanc_study_id,
                    series_instance_uid=series_uids.get(series_id, "").strip(),
                    series_orthanc_id=series_id,
                ),
            )
    return Holdings(instances=instances, orthanc_studies=studies)


@dataclass
class Followed:
    """What following Orthanc changed in one study."""

    images_dropped: int = 0
    series_dropped: int = 0
    images_deleted: bool = False  # Orthanc holds nothing of the study any more
    kept: bool = False  # ... and it stays listed for its report, finding or order
    kept_for: list[str] = field(default_factory=list)
    orthanc_id_changed: bool = False

    @property
    def changed(self) -> bool:
        return (
            bool(self.images_dropped or self.series_dropped or self.images_deleted)
            or self.orthanc_id_changed
        )


def follow_orthanc(
    session: Session, study: Study, holdings: Holdings, *, now: datetime
) -> Followed:
    """Brings the study's rows to what Orthanc holds; audited; the caller commits."""
    if study.images_deleted_at is not None:
        # Marked already; images that came back are registration's to re-open.
        return Followed()
    if holdings.empty:
        return _study_gone(session, study, now=now)
    assert study.id is not None
    followed = Followed()
    dropped_uids = [
        image.sop_instance_uid
        for image in session.exec(select(Image).where(Image.study_id == study.id))
        if image.sop_instance_uid not in holdings.instances
    ]
    # The rows go (sidecar.studies.image_rows, with a series they empty); the counts are then
    # Orthanc's (_follow_series).
    dropped = drop_image_rows(session, study.id, sop_instance_uids=dropped_uids)
    followed.images_dropped = dropped.images
    _follow_image_ids(session, study.id, holdings)
    followed.series_dropped = len(dropped.series) + _follow_series(session, study, holdings)
    new_orthanc_id = _orthanc_study_of(study, holdings)
    before = study.orthanc_id
    if new_orthanc_id != before:
        study.orthanc_id = new_orthanc_id
        followed.orthanc_id_changed = True
    if followed.changed:
        study.updated_at = now
        session.add(study)
        session.flush()
        audit.record(
            session,
            actor=audit.ORTHANC_SYNC_ACTOR,
            action=(
                "study.images_deleted_in_orthanc"
                if followed.images_dropped or followed.series_dropped
                else "study.orthanc_id_changed"
            ),
            entity_type="study",
            entity_id=study.id,
            orthanc_id=study.orthanc_id,
            former_orthanc_id=before,
            sop_instance_uids=dropped_uids[:200],
            images_dropped=followed.images_dropped,
            series_dropped=followed.series_dropped,
            series_count=study.series_count,
            instance_count=study.instance_count,
        )
    return followed


def _follow_image_ids(session: Session, study_id: int, holdings: Holdings) -> None:
    """Images Orthanc holds under another id now (rewritten): their id follows."""
    for image in session.exec(select(Image).where(Image.study_id == study_id)):
        held = holdings.instances.get(image.sop_instance_uid)
        if held is not None and image.orthanc_id != held.orthanc_id:
            image.orthanc_id = held.orthanc_id
            session.add(image)


def _follow_series(session: Session, study: Study, holdings: Holdings) -> int:
    """Counts per series from what Orthanc holds; a series Orthanc holds nothing of, with no
    image row left, goes. Returns how many went; the study's counts follow."""
    per_series: dict[str, list[HeldInstance]] = {}
    for held in holdings.instances.values():
        per_series.setdefault(held.series_instance_uid, []).append(held)
    dropped = 0
    series_count = instance_count = 0
    for series in session.exec(select(Series).where(Series.study_id == study.id)).all():
        held_here = per_series.get(series.series_instance_uid, [])
        if not held_here:
            remaining = session.exec(select(Image.id).where(Image.series_id == series.id)).first()
            if remaining is None:
                session.delete(series)
                dropped += 1
                continue
        series.instance_count = len(held_here)
        if held_here and series.orthanc_id not in {h.series_orthanc_id for h in held_here}:
            series.orthanc_id = held_here[0].series_orthanc_id
        session.add(series)
        series_count += 1
        instance_count += series.instance_count
    session.flush()
    study.series_count, study.instance_count = series_count, instance_count
    return dropped


def _orthanc_study_of(study: Study, holdings: Holdings) -> str | None:
    """The study's Orthanc id: its own while Orthanc still has it, else the Orthanc study now
    holding most of its instances, preferring the study's own patient id (a rewrite's copy)."""
    if study.orthanc_id in holdings.orthanc_studies:
        return study.orthanc_id
    # Only an Orthanc study filed under the study's own patient id (a rewrite's copy), or the
    # rewrite's holding id, is the study's: the same UID under another patient id is a conflict
    # (sidecar.studies.registry), another patient's images, never re-pointed to.
    own = (study.patient_id or "").strip()
    ours = {own, holding_id(study.study_instance_uid)}
    counts: dict[str, int] = {
        oid: 0 for oid, patient_id in holdings.orthanc_studies.items() if patient_id in ours
    }
    for held in holdings.instances.values():
        if held.orthanc_study_id in counts:
            counts[held.orthanc_study_id] += 1
    if not counts:
        return study.orthanc_id
    return max(
        sorted(counts),
        key=lambda oid: (holdings.orthanc_studies.get(oid, "") == own, counts[oid]),
    )


def clinical_references(session: Session, study: Study) -> list[str]:
    """Why the study must stay listed once its images are gone: "report" (any not discarded),
    "critical_finding", "order"."""
    reasons = []
    has_report = session.exec(
        select(
            exists().where(
                col(RadiologyReport.study_id) == study.id,
                col(RadiologyReport.deleted_at).is_(None),
            )
        )
    ).one()
    if has_report:
        reasons.append("report")
    if session.exec(select(exists().where(col(CriticalFinding.study_id) == study.id))).one():
        reasons.append("critical_finding")
    if study.order_id is not None:
        reasons.append("order")
    return reasons


def _study_gone(session: Session, study: Study, *, now: datetime) -> Followed:
    assert study.id is not None
    images = session.execute(delete(Image).where(col(Image.study_id) == study.id))
    series = session.execute(delete(Series).where(col(Series.study_id) == study.id))
    followed = Followed(
        images_dropped=int(images.rowcount or 0),  # type: ignore[attr-defined]
        series_dropped=int(series.rowcount or 0),  # type: ignore[attr-defined]
        images_deleted=True,
        kept_for=clinical_references(session, study),
    )
    followed.kept = bool(followed.kept_for)
    former = study.orthanc_id
    study.images_deleted_at = now
    study.removed_at = None if followed.kept else now
    study.orthanc_id = None
    study.series_count = study.instance_count = 0
    study.updated_at = now
    session.add(study)
    session.flush()
    audit.record(
        session,
        actor=audit.ORTHANC_SYNC_ACTOR,
        action="study.images_deleted_in_orthanc",
        entity_type="study",
        entity_id=study.id,
        former_orthanc_id=former,
        images_dropped=followed.images_dropped,
        series_dropped=followed.series_dropped,
        whole_study=True,
        kept_for=followed.kept_for,
        removed=not followed.kept,
    )
    log.warning(
        "study %s: Orthanc holds none of its images any more; %s",
        study.id,
        f"kept as a record ({', '.join(followed.kept_for)})" if followed.kept else "removed",
    )
    return followed
