"""Rewriting a study's stored instances in Orthanc to its patient's values (IHE PIR), for the
image-update queue (sidecar.patients.image_updates).

How one instance is rewritten (Orthanc 1.10 refuses a PatientID change at study level):
- Orthanc writes the new file (`/instances/{id}/modify` keeping Study, Series and SOP Instance
  UIDs: Orthanc knows the file's character set); it is stored, and only then is the original
  deleted, so a copy of every instance exists at every moment.
- Another PatientID gives another Orthanc id. The study the instances leave is first marked with
  the new id (user metadata PatientReassignment), which the ingress filter (dicom_ingress.lua)
  requires before it accepts that Study Instance UID under a second patient id (over REST only).
- The same PatientID (demographics only) would give the original's Orthanc id, and Orthanc
  keeps an instance it holds when it is sent again (OverwriteInstances stays off, so that a
  modality re-sending its old images never undoes a correction): the instance steps aside under
  a holding id (`holding_id`), then comes back with the new values.
- Orthanc's index of the study (C-FIND, QIDO-RS) is rebuilt from the files (`reconstruct`)
  whenever it disagrees, and files and index are read back: values Orthanc did not keep are
  reported (the update fails, naming the attributes) rather than written again forever.
A crash or an Orthanc failure anywhere leaves work the next attempt finishes: an instance
already right is skipped. IssuerOfPatientID is removed when the patient has none (it is part of
the identifier); another value the registry lacks is left as the images have it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sidecar.ingest.orthanc_client import OrthancClient
from sidecar.studies.models import Study

#: The Orthanc user metadata (orthanc/orthanc.json) naming the patient id a study is re-filed
#: under; read by orthanc/dicom_ingress.lua.
REASSIGNMENT_METADATA = "PatientReassignment"

#: What Orthanc's index holds of a study's patient (IssuerOfPatientID is not indexed in 1.10).
_INDEXED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
#: Instances of one study rewritten at once (measured: bench/patient_merge.py).
_CONCURRENT_INSTANCES = 4

#: The patient-level attributes written, as Orthanc's short tags name them.
PATIENT_TAGS = {
    "PatientID": "0010,0020",
    "IssuerOfPatientID": "0010,0021",
    "PatientName": "0010,0010",
    "PatientBirthDate": "0010,0030",
    "PatientSex": "0010,0040",
}


def patient_values(study: Study) -> dict[str, str]:
    """The patient-level attributes the study's images must carry (its patient's copies)."""
    values = {"PatientID": study.patient_id or ""}
    if study.issuer_of_patient_id:
        values["IssuerOfPatientID"] = study.issuer_of_patient_id
    if study.patient_name:
        values["PatientName"] = study.patient_name
    if study.patient_birth_date:
        values["PatientBirthDate"] = study.patient_birth_date.strftime("%Y%m%d")
    if study.patient_sex:
        values["PatientSex"] = study.patient_sex
    return values


def _normal(name: str, value: Any) -> str:
    text = str(value or "").strip(" \x00")
    if name == "PatientName":
        # Empty trailing components are the same name ("DOE^JOHN^^" is "DOE^JOHN").
        text = "=".join(group.rstrip("^ ") for group in text.split("=")).rstrip("=")
    return text


def differing(values: Mapping[str, str], tags: Mapping[str, Any]) -> list[str]:
    """The attributes (by keyword) whose value in an instance's tags (Orthanc's short form) is
    not the one wanted. An issuer the patient does not have is one too: it is part of the
    identifier, so the images must not name one."""
    wrong = [
        name
        for name, value in values.items()
        if _normal(name, tags.get(PATIENT_TAGS[name])) != _normal(name, value)
    ]
    issuer = PATIENT_TAGS["IssuerOfPatientID"]
    if "IssuerOfPatientID" not in values and issuer in tags and _normal("", tags[issuer]):
        wrong.append("IssuerOfPatientID")
    return wrong


@dataclass(frozen=True)
class Rewritten:
    instances: int  # instances stored again with the new values
    orthanc_ids: tuple[str, ...]  # the Orthanc studies holding the UID afterwards
    not_kept: tuple[str, ...]  # attributes Orthanc's files still disagree on


def holding_id(study_instance_uid: str) -> str:
    """The PatientID an instance steps aside under while it is rewritten under its own
    PatientID (see `rewrite_study`): no patient's, fixed per study so a retry finds it."""
    return "PIR-HOLD-" + hashlib.sha256(study_instance_uid.encode()).hexdigest()[:24]


def _move(
    orthanc: OrthancClient, instance_id: str, values: dict[str, str], remove: list[str]
) -> tuple[str, str]:
    """Stores the instance rewritten with `values` under its new Orthanc id, then deletes the
    original: a copy exists at every moment. The copy's Orthanc id and its study's."""
    stored = orthanc.store_instance(orthanc.modified_instance(instance_id, values, remove))
    if stored[0] != instance_id:
        orthanc.delete_instance(instance_id)
    return stored


def rewrite_study(
    orthanc: OrthancClient, study_instance_uid: str, values: dict[str, str]
) -> Rewritten:
    """Brings every stored instance of the study, and Orthanc's index of it, to `values`;
    raises OrthancError when Orthanc fails (the work already done stays done, and the next
    attempt finishes it: an instance already right is skipped).

    Under another PatientID an instance gets another Orthanc id: its copy is stored, then the
    original deleted. Under the same PatientID the copy would have the original's id, and
    Orthanc keeps an instance it holds when the same one is sent again (OverwriteInstances is
    off, so that a modality re-sending old images never undoes a correction): the instance
    first steps aside under a holding id, then comes back with the new values."""
    target = values["PatientID"]
    remove = [] if "IssuerOfPatientID" in values else ["IssuerOfPatientID"]
    holding = holding_id(study_instance_uid)
    rewritten = 0
    for orthanc_id, stored_patient_id in orthanc.studies_with_uid(study_instance_uid).items():
        stale = [
            instance_id
            for instance_id, tags in orthanc.study_instances_tags(orthanc_id).items()
            if differing(values, tags)
        ]
        if not stale:
            continue
        in_place = stored_patient_id == target
        orthanc.mark_study(orthanc_id, REASSIGNMENT_METADATA, holding if in_place else target)

        def rewrite(instance_id: str, in_place: bool = in_place) -> None:
            if not in_place:
                _move(orthanc, instance_id, values, remove)
                return
            held, held_study = _move(orthanc, instance_id, {"PatientID": holding}, [])
            orthanc.mark_study(held_study, REASSIGNMENT_METADATA, target)
            _move(orthanc, held, values, remove)

        # A few instances at a time keep Orthanc's threads busy while one waits on its disk.
        # The first failure is raised once the others end.
        with ThreadPoolExecutor(max_workers=_CONCURRENT_INSTANCES) as pool:
            for done in [pool.submit(rewrite, instance_id) for instance_id in stale]:
                done.result()
        rewritten += len(stale)
    holders = tuple(orthanc.studies_with_uid(study_instance_uid))
    not_kept: set[str] = set()
    for orthanc_id in holders:
        # Orthanc's index (its C-FIND, DICOMweb's QIDO) keeps the patient tags of the first
        # instance it filed: re-read from the files whenever it disagrees.
        if rewritten or _index_differs(orthanc, orthanc_id, values):
            orthanc.reconstruct_study(orthanc_id)
            not_kept.update(_index_differs(orthanc, orthanc_id, values))
        for tags in orthanc.study_instances_tags(orthanc_id).values():
            not_kept.update(differing(values, tags))
    return Rewritten(rewritten, holders, tuple(sorted(not_kept)))


def _index_differs(orthanc: OrthancClient, orthanc_id: str, values: dict[str, str]) -> list[str]:
    """The attributes Orthanc's index of the study holds other values for."""
    indexed = orthanc.study(orthanc_id).get("PatientMainDicomTags", {})
    shown = {PATIENT_TAGS[name]: indexed.get(name, "") for name in _INDEXED}
    return differing({name: values[name] for name in _INDEXED if name in values}, shown)
