"""ADT messages applied to the registry (sidecar.patients.service): what each event does, the
values checked against what will hold them (the worklist's DICOM, the columns) before the AA,
and the domain's refusals turned into AE with the field that caused them.

    A01 A04 A05  register: create the patient, or update the one known
    A08 A31      update: new demographics (an unknown patient is created: the HIS knows it)
    A40 A34 A39  merge MRG-1 (prior) into PID-3 (surviving). Into itself: AE 205. Sent again,
                 or with PID and MRG swapped: AA, nothing changes. A survivor itself merged:
                 its chain is followed. An unknown prior: AE 204.
    A47          change identifier MRG-1 to PID-3: the patient keeps its history. Sent again
                 after it was applied: AA, nothing changes. Taken by another patient: AE 205.

An event naming a merged-away identifier as the patient to update answers AE 204 naming the
surviving identifier (ERR-8), as an order does.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from hl7.adt import AdtAction, AdtMessage, PatientChange
from hl7.errors import (
    DataTypeError,
    DuplicateKeyIdentifier,
    ErrorLocation,
    UnknownKeyIdentifier,
)
from hl7.order_message import PatientIdentifier
from sidecar.core.dicom_text import LO, PN, TextRule, stored
from sidecar.orders.hl7_values import person_name
from sidecar.patients import service as patients
from sidecar.patients.models import Patient, PatientSource, PatientStatus

#: What each identifier part may hold: it goes to the worklist as DICOM LO.
_IDENTIFIER_PARTS: tuple[tuple[str, int, TextRule], ...] = (
    ("identifier", 1, LO),
    ("assigning authority", 4, LO),
)
_OTHER_IDENTIFIER = stored(64)
#: Other identifiers kept per patient (PID-3 repetitions); more are refused, not cut.
MAX_OTHER_IDENTIFIERS = 20


def apply_adt(session: Session, message: AdtMessage, *, actor: str) -> tuple[list[int], bool]:
    """Applies every PID (and MRG) of the message; returns the order ids whose copies changed
    (the worklist is to hear of them after the commit) and whether anything changed."""
    changed: list[int] = []
    applied = False
    for change in message.changes:
        values = _checked_values(change)
        if message.action in (AdtAction.REGISTER, AdtAction.UPDATE):
            ids, did = _register(session, change, values, actor=actor)
        elif message.action is AdtAction.MERGE:
            cause = f"HL7 {message.header.message_code} {message.header.control_id}"
            ids, did = _merge(session, change, values, actor=actor, cause=cause[:200])
        else:
            ids, did = _change_identifier(session, change, values, actor=actor)
        changed += ids
        applied = applied or did
    return changed, applied


def _register(
    session: Session, change: PatientChange, values: dict[str, Any], *, actor: str
) -> tuple[list[int], bool]:
    patient, created = patients.get_or_create(
        session,
        values["patient_id"],
        values["issuer_of_patient_id"],
        values,
        source=PatientSource.ADT,
        actor=actor,
    )
    _refuse_merged(session, patient, ErrorLocation("PID", change.pid.sequence, 3))
    applies = created or _changes(patient, values)
    return _update(session, patient, values, actor=actor), applies


def _merge(
    session: Session, change: PatientChange, values: dict[str, Any], *, actor: str, cause: str
) -> tuple[list[int], bool]:
    assert change.prior is not None and change.mrg is not None
    prior_id, prior_issuer = _prior_key(change, values)
    mrg_1 = ErrorLocation("MRG", change.mrg.sequence, 1)
    if (prior_id, patients.issuer_key(prior_issuer)) == (
        values["patient_id"],
        patients.issuer_key(values["issuer_of_patient_id"]),
    ):
        raise DuplicateKeyIdentifier(
            "MRG-1 names the patient of PID-3: a patient cannot be merged into itself", mrg_1
        )
    prior = patients.find(session, prior_id, prior_issuer)
    if prior is None:
        raise UnknownKeyIdentifier("MRG-1 prior patient identifier is not known", mrg_1)
    target, _ = patients.get_or_create(
        session,
        values["patient_id"],
        values["issuer_of_patient_id"],
        values,
        source=PatientSource.ADT,
        actor=actor,
    )
    try:
        outcome = patients.merge(session, prior, target, actor=actor, cause=cause)
    except patients.MergeRefused as refused:
        raise DuplicateKeyIdentifier(f"MRG-1: {refused.message}", mrg_1) from refused
    if not outcome.applied:
        return [], False  # applied before, or sent with PID and MRG swapped
    # The surviving patient's demographics as PID says them (its chain's end when PID-3 was
    # itself merged: then PID speaks of a retired record, and changes nothing).
    changed = outcome.order_ids
    if target.status == PatientStatus.ACTIVE:
        changed += _update(session, outcome.surviving, values, actor=actor)
    return changed, True


def _change_identifier(
    session: Session, change: PatientChange, values: dict[str, Any], *, actor: str
) -> tuple[list[int], bool]:
    assert change.prior is not None and change.mrg is not None
    prior_id, prior_issuer = _prior_key(change, values)
    mrg_1 = ErrorLocation("MRG", change.mrg.sequence, 1)
    patient = patients.find(session, prior_id, prior_issuer)
    current = patients.find(session, values["patient_id"], values["issuer_of_patient_id"])
    if patient is None:
        if current is not None:
            return [], False  # applied before: the prior identifier is gone, the new one known
        raise UnknownKeyIdentifier("MRG-1 prior patient identifier is not known", mrg_1)
    _refuse_merged(session, patient, mrg_1)
    try:
        changed = patients.change_identifier(
            session, patient, values["patient_id"], values["issuer_of_patient_id"], actor=actor
        )
    except patients.IdentifierTaken as taken:
        raise DuplicateKeyIdentifier(
            "PID-3 new identifier belongs to another patient: merge them (A40) instead",
            ErrorLocation("PID", change.pid.sequence, 3),
        ) from taken
    changed += _update(session, patient, values, actor=actor)
    return changed, True


def _update(session: Session, patient: Patient, values: dict[str, Any], *, actor: str) -> list[int]:
    """The demographics PID sends, and its other identifiers (an empty field changes nothing);
    returns the order ids whose copies changed."""
    return patients.update_demographics(session, patient, _sent(values), actor=actor)


def _changes(patient: Patient, values: dict[str, Any]) -> bool:
    """Whether PID says anything the patient's record does not hold (before _update)."""
    return bool(patients.changed_fields(patient, _sent(values)))


def _sent(values: dict[str, Any]) -> dict[str, Any]:
    sent = {name: values[name] for name in patients.DEMOGRAPHICS if values.get(name) is not None}
    if values["other_identifiers"]:
        sent["other_identifiers"] = values["other_identifiers"]
    return sent


def _refuse_merged(session: Session, patient: Patient, where: ErrorLocation) -> None:
    if patient.status != PatientStatus.MERGED:
        return
    survivor = patients.surviving(session, patient)
    raise UnknownKeyIdentifier(
        f"{where} was merged into {survivor.patient_id}^^^{survivor.issuer_of_patient_id}",
        where,
    )


def _prior_key(change: PatientChange, values: dict[str, Any]) -> tuple[str, str | None]:
    """MRG-1's identifier and issuer; without an issuer, that of PID-3 (the same authority)."""
    assert change.prior is not None and change.mrg is not None
    prior = _checked_identifier(change.prior, "MRG", change.mrg.sequence, 1)
    return prior[0], prior[1] or values["issuer_of_patient_id"]


def _checked_values(change: PatientChange) -> dict[str, Any]:
    """The patient values of one PID, refused AE 102 naming the field when they do not fit."""
    patient = change.patient
    where = change.pid.sequence
    patient_id, issuer = _checked_identifier(patient.identifier, "PID", where, 3)
    name = person_name(patient.name)
    if name is not None and (problem := PN.problem(name)) is not None:
        raise DataTypeError(f"PID-5 patient name {problem}", ErrorLocation("PID", where, 5))
    if len(change.other_identifiers) > MAX_OTHER_IDENTIFIERS:
        raise DataTypeError(
            f"PID-3 has more than {MAX_OTHER_IDENTIFIERS} identifiers",
            ErrorLocation("PID", where, 3),
        )
    others = []
    for other_id, other_issuer, kind in change.other_identifiers:
        for text in (other_id, other_issuer, kind):
            if (problem := _OTHER_IDENTIFIER.problem(text)) is not None:
                raise DataTypeError(
                    f"PID-3 other identifier {problem}", ErrorLocation("PID", where, 3)
                )
        others.append({"id": other_id, "issuer": other_issuer, "type": kind})
    sex = patient.sex.value if patient.sex and patient.sex.value in "MFO" else None
    return {
        "patient_id": patient_id,
        "issuer_of_patient_id": issuer,
        "patient_name": name,
        "patient_birth_date": patient.birth_date,
        "patient_sex": sex,
        "other_identifiers": others,
    }


def _checked_identifier(
    identifier: PatientIdentifier, segment: str, sequence: int, field: int
) -> tuple[str, str | None]:
    """(id, issuer or None) of a CX, refused AE 102 when a part cannot be held."""
    parts = {1: identifier.id, 4: identifier.assigning_authority.name}
    location = ErrorLocation(segment, sequence, field)
    if not identifier.id.strip(" "):
        raise DataTypeError(f"{location} identifier is blank (only spaces)", location)
    for label, component, rule in _IDENTIFIER_PARTS:
        if (problem := rule.problem(parts[component])) is not None:
            raise DataTypeError(f"{location} {label} {problem}", location)
    return identifier.id, identifier.assigning_authority.name or None
