"""DICOM JSON (PS3.18 Annex F) as UPS-RS request bodies carry it, checked before anything reads
it: one dataset, as pydicom's `Dataset.to_json_dict()` writes it, sent as a JSON object or as an
array holding one.

pydicom's own reader is lenient (a number where a code string belongs only warns), and a
performer's mistake must come back as a 400 that names the attribute, not as a value stored and
misread later. So every element is checked here against the rules of its value representation:
its VR is the dictionary's, strings are strings of the VR's length and characters, UIDs are
UIDs, numbers are numbers, sequences hold datasets, binary values are inline (a BulkDataURI
would make the sidecar fetch from an address the client chose). Bounded: nesting, elements and
body size, so a body cannot cost more than reading it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from typing import Any, Final

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from sidecar.core.errors import InvalidRequest

#: The largest request body a work item's change may have (a progress note, the output
#: information): far above any real one, far below what would cost memory.
MAX_BODY_BYTES: Final = 256 * 1024
MAX_DEPTH: Final = 8  # sequences within sequences
MAX_ELEMENTS: Final = 5000
MEDIA_TYPES: Final = ("application/dicom+json", "application/json")

_TAG: Final = re.compile(r"[0-9A-Fa-f]{8}\Z")
_UID: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z")
_NUMBER_TEXT: Final = re.compile(r"[ ]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ ]*\Z")
_CONTROL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAKS: Final = re.compile("[\r\n\t]")
_PN_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")

# Maximum lengths (characters) of the string VRs (PS3.5 Table 6.2-1); None: unbounded here.
_STRING_VRS: Final[dict[str, int | None]] = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 18,  # a range in a query
    "DT": 54,
    "LO": 64,
    "LT": 10240,
    "SH": 16,
    "ST": 1024,
    "TM": 28,
    "UC": None,
    "UI": 64,
    "UR": None,
    "UT": None,
}
_TEXT_VRS: Final = frozenset({"LT", "ST", "UT"})  # free text: line breaks allowed
_INTEGER_VRS: Final = frozenset({"SL", "SS", "UL", "US", "SV", "UV"})
_FLOAT_VRS: Final = frozenset({"FL", "FD"})
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DECIMAL_STRING_VRS: Final = frozenset({"DS", "IS"})
_ALL_VRS: Final = frozenset(
    {*_STRING_VRS, *_INTEGER_VRS, *_FLOAT_VRS, *_BINARY_VRS, *_DECIMAL_STRING_VRS, "AT", "PN", "SQ"}
)
# Longest value of a string VR this reads at all (UC, UR, UT may be longer in DICOM).
_LONGEST_TEXT: Final = 65536


class DicomJsonError(InvalidRequest):
    """400: the body is not one DICOM JSON dataset; the message names the attribute."""


def name_of(tag: str) -> str:
    """(gggg,eeee) and the keyword, as messages name an attribute."""
    tag = tag.upper()
    keyword = keyword_for_tag(int(tag, 16)) if _TAG.match(tag) else ""
    return f"({tag[:4]},{tag[4:]}){' ' + keyword if keyword else ''}"


def is_uid(text: str) -> bool:
    return len(text) <= 64 and _UID.match(text) is not None


def tag_of(name: str) -> str | None:
    """A keyword (ProcedureStepState) or a tag (00741000) as 8 upper-case hex digits; None when
    it is neither."""
    if _TAG.match(name):
        return name.upper()
    number = tag_for_keyword(name)
    return f"{number:08X}" if number is not None else None


def read_dataset(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The dataset a request body holds, checked (DicomJsonError otherwise), its tags in upper
    case. An empty body is an empty dataset."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if body.strip() and media_type not in MEDIA_TYPES:
        raise DicomJsonError(
            f"the body must be DICOM JSON ({' or '.join(MEDIA_TYPES)}),"
            f" not {media_type or 'unnamed'}"
        )
    if len(body) > MAX_BODY_BYTES:
        raise DicomJsonError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body, object_pairs_hook=_refuse_duplicates)
    except RecursionError:
        raise DicomJsonError("the body is nested too deeply") from None
    except UnicodeDecodeError:
        raise DicomJsonError("the body is not UTF-8 text") from None
    except ValueError as exc:
        raise DicomJsonError(f"the body is not JSON: {exc}") from None
    if isinstance(parsed, list):
        if len(parsed) != 1:
            raise DicomJsonError(f"an array body must hold exactly one dataset, not {len(parsed)}")
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        raise DicomJsonError("the body must be one DICOM JSON dataset (a JSON object)")
    counter = [0]
    return _dataset(parsed, "", 0, counter)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} appears twice in one object")
        found[key] = value
    return found


def _dataset(raw: dict[str, Any], where: str, depth: int, counter: list[int]) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise DicomJsonError(
            f"{where or 'the dataset'}: sequences nested more than {MAX_DEPTH} deep"
        )
    checked: dict[str, Any] = {}
    for key, element in raw.items():
        if not isinstance(key, str) or not _TAG.match(key):
            raise DicomJsonError(
                f"{where}{key!r} is not an attribute tag (8 hexadecimal digits, as 00741000)"
            )
        tag = key.upper()
        if tag in checked:
            raise DicomJsonError(f"{where}{name_of(tag)} appears twice")
        counter[0] += 1
        if counter[0] > MAX_ELEMENTS:
            raise DicomJsonError(f"the dataset has more than {MAX_ELEMENTS} attributes")
        checked[tag] = _element(tag, element, f"{where}{name_of(tag)}", depth, counter)
    return checked


def _element(tag: str, element: Any, where: str, depth: int, counter: list[int]) -> dict[str, Any]:
    if not isinstance(element, dict):
        raise DicomJsonError(f'{where}: an attribute is an object with a "vr"')
    unknown = set(element) - {"vr", "Value", "InlineBinary"}
    if "BulkDataURI" in unknown:
        raise DicomJsonError(f"{where}: BulkDataURI is not followed; send the value inline")
    if unknown:
        raise DicomJsonError(f"{where}: unknown members {sorted(unknown)}")
    vr = element.get("vr")
    if not isinstance(vr, str) or vr not in _ALL_VRS:
        raise DicomJsonError(f'{where}: "vr" must be a DICOM value representation')
    _check_vr(tag, vr, where)
    if "InlineBinary" in element:
        return _binary(vr, element, where)
    if "Value" not in element:
        return {"vr": vr}
    values = element["Value"]
    if not isinstance(values, list):
        raise DicomJsonError(f'{where}: "Value" must be an array')
    if vr == "SQ":
        items = []
        for number, item in enumerate(values, 1):
            if not isinstance(item, dict):
                raise DicomJsonError(
                    f"{where} item {number}: a sequence item is a dataset (object)"
                )
            items.append(_dataset(item, f"{where} item {number} > ", depth + 1, counter))
        return {"vr": vr, "Value": items}
    if vr in _BINARY_VRS:
        raise DicomJsonError(f"{where}: a {vr} value goes in InlineBinary (base64)")
    counter[0] += len(values)
    if counter[0] > MAX_ELEMENTS:
        raise DicomJsonError(f"the dataset has more than {MAX_ELEMENTS} values")
    for value in values:
        _value(vr, value, where)
    return {"vr": vr, "Value": values}


def _check_vr(tag: str, vr: str, where: str) -> None:
    number = int(tag, 16)
    if (number >> 16) % 2:  # private: its VR is the sender's
        return
    try:
        expected = dictionary_VR(number)
    except KeyError:
        return  # not in this pydicom's dictionary: taken as sent
    allowed = {part.strip() for part in expected.replace(" or ", ",").split(",")}
    if vr not in allowed and not ({"OB", "OW", "UN"} & allowed and vr in _BINARY_VRS):
        raise DicomJsonError(f"{where}: its VR is {expected}, not {vr}")


def _binary(vr: str, element: dict[str, Any], where: str) -> dict[str, Any]:
    if vr not in _BINARY_VRS or "Value" in element:
        raise DicomJsonError(f"{where}: InlineBinary is for binary VRs alone, without Value")
    data = element["InlineBinary"]
    if not isinstance(data, str) or len(data) > 4 * _LONGEST_TEXT:
        raise DicomJsonError(f"{where}: InlineBinary must be base64 text of at most 256 KiB")
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error:
        raise DicomJsonError(f"{where}: InlineBinary is not base64") from None
    return {"vr": vr, "InlineBinary": data}


def _value(vr: str, value: Any, where: str) -> None:
    if value is None:  # an empty value among others
        return
    if vr in _STRING_VRS or vr == "AT":
        _string(vr, value, where)
    elif vr == "PN":
        _person_name(value, where)
    elif vr in _INTEGER_VRS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DicomJsonError(f"{where}: a {vr} value is an integer, not {_kind(value)}")
    elif vr in _FLOAT_VRS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DicomJsonError(f"{where}: a {vr} value is a number, not {_kind(value)}")
    elif vr in _DECIMAL_STRING_VRS:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise DicomJsonError(f"{where}: a {vr} value is a number, not {_kind(value)}")
        if isinstance(value, str) and not _NUMBER_TEXT.match(value):
            raise DicomJsonError(f"{where}: {value[:32]!r} is not a number")
        if vr == "IS" and isinstance(value, float) and not value.is_integer():
            raise DicomJsonError(f"{where}: an IS value is an integer")


def _string(vr: str, value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise DicomJsonError(f"{where}: a {vr} value is a string, not {_kind(value)}")
    if vr == "AT":
        if not _TAG.match(value):
            raise DicomJsonError(f"{where}: an AT value is a tag of 8 hexadecimal digits")
        return
    longest = _STRING_VRS[vr] or _LONGEST_TEXT
    if len(value) > longest:
        raise DicomJsonError(f"{where}: a {vr} value has at most {longest} characters")
    if _CONTROL.search(value) or (vr not in _TEXT_VRS and _LINE_BREAKS.search(value)):
        raise DicomJsonError(f"{where}: control characters are not allowed in a {vr} value")
    if "\\" in value and vr not in _TEXT_VRS:
        raise DicomJsonError(f"{where}: a backslash separates values: send a JSON array")
    if vr == "UI" and not _UID.match(value):
        raise DicomJsonError(f"{where}: {value[:64]!r} is not a UID (digits and dots)")


def _person_name(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not set(value) <= set(_PN_GROUPS):
        raise DicomJsonError(
            f"{where}: a PN value is an object with Alphabetic, Ideographic or Phonetic"
        )
    for group, text in value.items():
        if not isinstance(text, str) or len(text) > 64 or _CONTROL.search(text):
            raise DicomJsonError(f"{where}: {group} is a name of at most 64 characters")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


# --- reading what was checked ------------------------------------------------------------------


def values(dataset: dict[str, Any], tag: str) -> list[Any]:
    element = dataset.get(tag)
    if not isinstance(element, dict):
        return []
    found = element.get("Value")
    return found if isinstance(found, list) else []


def first_string(dataset: dict[str, Any], tag: str) -> str | None:
    """The attribute's first value as text (a person name's alphabetic group); None if empty."""
    for value in values(dataset, tag):
        if isinstance(value, dict):
            value = value.get("Alphabetic")
        if value is not None and value != "":
            return str(value)
    return None


def items(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    """The items of a sequence attribute (none when absent or empty)."""
    return [item for item in values(dataset, tag) if isinstance(item, dict)]


def walk(dataset: dict[str, Any], path: list[str]) -> Iterator[dict[str, Any]]:
    """The elements at a path of tags, through every item of the sequences on the way."""
    head, *rest = path
    if not rest:
        element = dataset.get(head)
        if isinstance(element, dict):
            yield element
        return
    for item in items(dataset, head):
        yield from walk(item, rest)


def string_element(vr: str, *texts: str) -> dict[str, Any]:
    return {"vr": vr, "Value": list(texts)} if texts else {"vr": vr}
