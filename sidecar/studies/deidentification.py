"""De-identified copies of a study (seed 001 "DICOM de-identification support", seed 004
anonymisation): for teaching, research or a second opinion outside the care relationship.

Orthanc makes the copy (its anonymization, the DICOM PS3.15 Basic Application Level
Confidentiality Profile of DICOM 2021b, the newest edition Orthanc 1.10 implements): new UIDs
for the study, every series and instance, private tags dropped, the profile's attributes emptied
or removed (name, birth date, accession number, institution, physicians, dates, ...), and the
patient named by a pseudonym of its own, DEID- and random letters, one per copy, so two copies of
one patient cannot be linked to each other.

The copy is not a clinical study. The sidecar does not register it (no study row, no patient,
no order, no reading worklist entry, no result to the HIS): before Orthanc writes anything, the
copy is recorded here under the Study Instance UID the sidecar chose for it, and the
registration of stable studies (sidecar.ingest.sync) passes over every UID of this table, so
neither the plugin's notice nor the change log can file it under a patient. The one link back
to the source study is this table, kept by the department (with who made the copy and why), as
the profile's "re-identification key" held by the data controller; nothing in the copy's files
names the source.
"""

from __future__ import annotations

import secrets
import string
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from pydantic import Field as PydanticField
from pydantic import field_validator
from sqlalchemy import Column, Text
from sqlmodel import Field, Session, SQLModel, col, select

from sidecar.core import signed_links
from sidecar.core.models import ApiInput, ApiModel, EnumText, UTCDateTime

PURPOSE_MAX_LENGTH = 500
#: Orthanc 1.10's newest edition of the confidentiality profile.
DICOM_VERSION = "2021b"
PSEUDONYM_PREFIX = "DEID-"
_PSEUDONYM_ALPHABET = string.ascii_uppercase + string.digits
_LINK_KIND = "deidentified-archive"
# What the copy's files say about how they were made (PS3.15 E.1.1, PS3.16 CID 7050).
_METHOD = f"Basic Application Confidentiality Profile (PS3.15 {DICOM_VERSION})"
_METHOD_CODE = {
    "CodeValue": "113100",
    "CodingSchemeDesignator": "DCM",
    "CodeMeaning": "Basic Application Confidentiality Profile",
}


#: How long the sidecar waits for Orthanc's job making a copy before it gives up on it.
ANONYMIZE_TIMEOUT = 600.0
#: A copy still "creating" this long after it was recorded was abandoned (the sidecar stopped,
#: or gave up waiting): the sweep (sidecar.studies.deidentify_sweep) deletes what Orthanc holds
#: of it once Orthanc's job is over, and marks it failed.
ABANDONED_AFTER = timedelta(seconds=ANONYMIZE_TIMEOUT + 300)


class CopyStatus(StrEnum):
    CREATING = "creating"  # recorded, Orthanc is making it (or it was abandoned: swept later)
    READY = "ready"
    FAILED = "failed"  # not made; whatever Orthanc wrote was deleted, and is never registered


class DeidentifiedCopy(SQLModel, table=True):
    __tablename__ = "deidentified_copy"

    id: int | None = Field(default=None, primary_key=True)
    # No foreign key: the record of a copy outlives the deletion of its source study.
    source_study_id: int = Field(index=True)
    study_instance_uid: str = Field(max_length=64, unique=True, index=True)
    orthanc_id: str | None = Field(default=None, max_length=64)
    pseudonym: str = Field(max_length=64)
    purpose: str = Field(sa_column=Column(Text, nullable=False))
    created_by: str = Field(max_length=64)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    status: CopyStatus = Field(sa_column=Column(EnumText(CopyStatus, 16), nullable=False))
    instance_count: int | None = None
    # Orthanc's job making the copy, while it is "creating": the sweep waits for it to end.
    orthanc_job_id: str | None = Field(default=None, max_length=64)
    # The node whose Orthanc runs that job (NODE_NAME): jobs are each Orthanc's own, so only
    # that node can follow it, or any node once that node is gone.
    orthanc_node: str | None = Field(default=None, max_length=64)
    # Why a failed copy was not made (no patient data: a cause, never Orthanc's content).
    failure_reason: str | None = Field(default=None, max_length=200)


class DeidentifyRequest(ApiInput):
    purpose: str = PydanticField(min_length=1, max_length=PURPOSE_MAX_LENGTH)

    @field_validator("purpose")
    @classmethod
    def _says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a purpose is required: say what the de-identified copy is for")
        if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
            raise ValueError("must not contain control characters")
        return value.strip()


class DeidentifiedCopyPublic(ApiModel):
    id: int
    source_study_id: int
    orthanc_id: str | None
    study_instance_uid: str
    status: CopyStatus
    instance_count: int | None
    purpose: str
    created_by: str
    created_at: datetime
    # The copy's PatientID and PatientName (random, one per copy): how Orthanc lists it.
    pseudonym: str
    # A link to the copy as a ZIP of its DICOM files, working without a token until it expires.
    archive_url: str
    archive_expires_at: datetime


def new_pseudonym() -> str:
    return PSEUDONYM_PREFIX + "".join(secrets.choice(_PSEUDONYM_ALPHABET) for _ in range(12))


def new_study_instance_uid() -> str:
    """A UID under the 2.25 root (a UUID as a decimal integer: PS3.5 B.2), at most 64 chars."""
    return f"2.25.{uuid.uuid4().int}"


def record_copy(
    session: Session, source_study_id: int, purpose: str, actor: str, now: datetime
) -> DeidentifiedCopy:
    """The copy about to be made, committed before Orthanc writes any of it: from then on the
    registration of stable studies passes over its Study Instance UID."""
    copy = DeidentifiedCopy(
        source_study_id=source_study_id,
        study_instance_uid=new_study_instance_uid(),
        pseudonym=new_pseudonym(),
        purpose=purpose,
        created_by=actor,
        created_at=now,
        status=CopyStatus.CREATING,
    )
    session.add(copy)
    session.commit()
    session.refresh(copy)
    return copy


# What `Replace` sets at the top level: Orthanc (1.10) replaces those there only, and leaves the
# same attributes inside sequences as they were (the profile's other attributes it clears or
# removes at any depth). PatientName and PatientID, hex as Orthanc's short tags name them.
_REPLACED_TOP_LEVEL_ONLY = ("0010,0010", "0010,0020")


def nested_identity_paths(instances_tags: dict[str, dict[str, Any]]) -> list[str]:
    """Orthanc's paths ("0008,2112[*].0010,0010") to every PatientName and PatientID inside a
    sequence of the study's instances (tags in Orthanc's short form): removed from the copy."""
    paths: set[str] = set()

    def walk(tags: dict[str, Any], prefix: str) -> None:
        for tag, value in tags.items():
            if prefix and tag.lower() in _REPLACED_TOP_LEVEL_ONLY:
                paths.add(prefix + tag)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        walk(item, f"{prefix}{tag}[*].")

    for tags in instances_tags.values():
        walk(tags, "")
    return sorted(paths)


def orthanc_options(
    copy: DeidentifiedCopy, nested_identity: list[str] | None = None
) -> dict[str, Any]:
    """Orthanc's anonymization options for this copy. Force lets the sidecar choose the Study
    Instance UID (every other UID is Orthanc's new one); `nested_identity` (nested_identity_
    paths) are removed."""
    return {
        "DicomVersion": DICOM_VERSION,
        "KeepPrivateTags": False,
        "Force": True,
        "Remove": list(nested_identity or []),
        "Replace": {
            "PatientName": copy.pseudonym,
            "PatientID": copy.pseudonym,
            "StudyInstanceUID": copy.study_instance_uid,
            "DeidentificationMethod": _METHOD,
            "DeidentificationMethodCodeSequence": [_METHOD_CODE],
        },
    }


def is_deidentified_copy(session: Session, study_instance_uid: str) -> bool:
    """Whether Orthanc's study of this UID is a de-identified copy (never a clinical study)."""
    found = session.exec(
        select(col(DeidentifiedCopy.id)).where(
            DeidentifiedCopy.study_instance_uid == study_instance_uid
        )
    ).first()
    return found is not None


# -- the link to a copy's ZIP archive --------------------------------------------------------


@dataclass(frozen=True)
class ArchiveLink:
    url: str
    expires_at: datetime


def archive_link(
    key: bytes, public_url: str, copy_id: int, *, now: datetime, minutes: int
) -> ArchiveLink:
    expires = signed_links.expiry(now, minutes)
    query = urlencode(
        {"expires": expires, "signature": signed_links.sign(key, _LINK_KIND, (copy_id,), expires)}
    )
    return ArchiveLink(
        url=f"{public_url}/api/deidentified/{copy_id}/archive?{query}",
        expires_at=signed_links.expires_at(expires),
    )


def check_archive_link(
    key: bytes, copy_id: int, *, expires: str | None, signature: str | None, now: datetime
) -> None:
    """Returns when the link is intact and current; InvalidLink (403) otherwise."""
    signed_links.check(
        key,
        _LINK_KIND,
        (copy_id,),
        given={"expires": expires, "signature": signature},
        now=now,
        what="this archive link",
        renew=f"ask for a new one with GET /api/deidentified/{copy_id}/url",
    )


def public_copy(copy: DeidentifiedCopy, link: ArchiveLink) -> DeidentifiedCopyPublic:
    shown = {
        name: getattr(copy, name)
        for name in DeidentifiedCopyPublic.model_fields
        if name not in ("archive_url", "archive_expires_at")
    }
    return DeidentifiedCopyPublic.model_validate(
        {**shown, "archive_url": link.url, "archive_expires_at": link.expires_at}
    )
