"""What a text value may hold where the sidecar stores or writes it: a DICOM value
representation (PS3.5 6.2) for what goes into the Modality Worklist, else a database column.

Checked at the door (the API's request bodies, the HL7 intake before its AA), so that nothing is
accepted that cannot be written later: an order acknowledged AA whose worklist item cannot be
written is an order lost to the modality.

- A backslash separates the values of a multi-valued DICOM element and has no escape.
- Control characters are not in the repertoire of these VRs (ESC only switches character sets,
  which the sidecar never does: it declares UTF-8 instead), and PostgreSQL cannot store NUL.
  That is C0, DEL and C1 (U+0080-U+009F: Orthanc converts the worklist to Latin-1 for a
  modality that asks, where they become raw control bytes), and the Unicode line and paragraph
  separators, which break lines on screens as CR and LF do.
- A person name (PN) is at most three component groups (alphabetic, ideographic, phonetic,
  separated by `=`) of at most 64 characters each, each of at most five `^`-separated parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, time

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_EXCEPT_LINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z")

PN_GROUP_LENGTH = 64
PN_MAX_LENGTH = 3 * PN_GROUP_LENGTH + 2


@dataclass(frozen=True)
class TextRule:
    """`kind` names the rule in refusals ("DICOM LO", "a database column")."""

    kind: str
    max_length: int
    dicom: bool = True  # written into DICOM: no backslash
    multiline: bool = False  # line breaks and tabs allowed (free text)
    person_name: bool = False
    uid: bool = False

    def problem(self, value: str) -> str | None:
        """Why `value` cannot be held, in words that quote nothing of it; None when it can."""
        if "\x00" in value:
            return "contains a NUL character"
        control = _CONTROL_EXCEPT_LINES if self.multiline else _CONTROL
        if control.search(value):
            return "contains a control character"
        if self.dicom and "\\" in value:
            return "contains a backslash, which DICOM cannot hold (it separates values)"
        if self.person_name:
            return _person_name_problem(value)
        if len(value) > self.max_length:
            return f"is longer than {self.max_length} characters ({self.kind})"
        if self.uid and value and not _UID.match(value):
            return "is not a DICOM UID (digits and dots, no leading zeros)"
        return None


def stored(max_length: int, *, multiline: bool = False) -> TextRule:
    """A value kept in a database column of `max_length` characters, never written to DICOM."""
    return TextRule(
        f"at most {max_length} characters stored", max_length, dicom=False, multiline=multiline
    )


LO = TextRule("DICOM LO", 64)
SH = TextRule("DICOM SH", 16)
AE = TextRule("DICOM AE", 16)
UI = TextRule("DICOM UI", 64, uid=True)
PN = TextRule("DICOM PN", PN_MAX_LENGTH, person_name=True)


def _person_name_problem(value: str) -> str | None:
    groups = value.split("=")
    if len(groups) > 3:
        return "has more than three component groups (DICOM PN)"
    for group in groups:
        if len(group) > PN_GROUP_LENGTH:
            return f"is longer than {PN_GROUP_LENGTH} characters (DICOM PN)"
        if group.count("^") > 4:
            return "has more than five name components (DICOM PN)"
    return None


def parse_da(value: str | None) -> date | None:
    text = (value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def parse_tm(value: str | None) -> time | None:
    text = (value or "").strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return None
    hour, minute, second = int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    micro = int((fraction + "000000")[:6]) if fraction else 0
    if hour > 23 or minute > 59 or second > 60:
        return None
    return time(hour, minute, min(second, 59), micro)
