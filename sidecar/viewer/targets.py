"""Which studies a viewer request targets: one definition for both fronts. The sidecar's proxy
asks it of each request it passes on; nginx sends its session check the request target as it
was received ($request_uri: path and query) and the sidecar answers from it. A targeted study
that is quarantined is refused (403), and a targeted study is audited as viewed
(sidecar.viewer.access), whether the request reads its images, its metadata or searches it.

A request targets the studies it names:

- in its path: /dicom-web/studies/{study}/... (a study's series and instances, WADO-RS);
- in its query: QIDO's StudyInstanceUID filter, under its keyword or its tag 0020000D (the
  DICOMweb plugin takes either), holding one UID or a list of them separated by commas or
  backslashes, raw or percent-encoded; and WADO-URI's studyUID.

Names are compared in any case, and every occurrence counts, on every route: Orthanc keeps the
last of a repeated parameter, and a study in the path rather than a QIDO filter, so the union is
never less than what Orthanc uses. A list is read both ways: DICOM separates values with
backslashes, while the plugin (1.7 and later) removes them, then splits at commas (`1.2\\3`
searches for 1.23): either reading's studies count.

A value that is not UIDs is refused (400), not interpreted: Orthanc decodes percent-escapes, and
what it makes of a wildcard in a UID is up to its release (1.7 refuses `1.2.3*`), so a study
named any other way is not one the front could check. An empty QIDO filter is a universal match:
it names no study.

WADO-URI. The plugin (Plugin/WadoUri.cpp, LocateInstanceWadoUri, release 1.7) finds the instance
by objectUID alone; the studyUID and seriesUID, when given and not empty, are then checked to be
the instance's (else a 404). Without a studyUID it serves any instance, in whatever study. So a
WADO-URI request must give one, spelt `studyUID` (Orthanc reads no other spelling), and no study
parameter may be empty: the instance Orthanc serves is then one of the study it compared, which
the front checked. That relies on Orthanc's check, which tests/viewer/test_viewer_quarantine.py
holds the installed plugin to; resolving objectUID to its study by asking Orthanc
(/tools/lookup, then the instance's study) would cost two more round trips per image for the
same answer.

Not covered, and accepted: a QIDO search not scoped to a study (`/dicom-web/studies?PatientID=X`,
or by SeriesInstanceUID or SOPInstanceUID) may list a quarantined study, its series or its
instances: their main DICOM tags in a list, never the study opened in the viewer nor its images.
"""

from __future__ import annotations

import re
from typing import Final

from sidecar.viewer.paths import UID, Verdict, verdict

# Query parameters naming a study, lower case: QIDO's filter (keyword, tag) and WADO-URI's.
_STUDY_PARAMETERS: Final = frozenset({"studyinstanceuid", "0020000d", "studyuid"})
WADO_URI_STUDY: Final = "studyUID"
_SEPARATOR: Final = "(?:,|%2[Cc]|\\\\|%5[Cc])"
_UID_LIST: Final = re.compile(f"{UID}(?:{_SEPARATOR}{UID})*")
_ESCAPED_SEPARATORS: Final = (("%2C", ","), ("%2c", ","), ("%5C", "\\"), ("%5c", "\\"))
# The fronts pass on only paths sidecar.viewer.paths allows, whose UIDs are this UID.
_STUDY_IN_PATH: Final = re.compile(f"^/dicom-web/studies/({UID})(?:/|$)")


class UncheckableTarget(ValueError):
    """The request names a study in a way the fronts cannot check: refused with 400."""


def study_in_path(path: str) -> str | None:
    match = _STUDY_IN_PATH.match(path)
    return match.group(1) if match else None


def targeted_studies(target: str) -> frozenset[str]:
    """The StudyInstanceUIDs a raw request target (path and query, not decoded) names; none for
    the front's own pages and files. Raises UncheckableTarget for a study named other than by
    UIDs, a WADO-URI request without its study, and a target the fronts do not pass on."""
    decided = verdict(target)
    if decided is Verdict.ELSEWHERE:
        return frozenset()
    if decided is not Verdict.FORWARD:
        raise UncheckableTarget("not a DICOMweb or WADO-URI read the viewer front passes on")
    path, _, query = target.partition("?")
    wado_uri = path == "/wado"
    studies: set[str] = set()
    if (in_path := study_in_path(path)) is not None:
        studies.add(in_path)
    named_as_orthanc_reads = False
    for parameter in query.split("&") if query else ():
        name, _, value = parameter.partition("=")
        if name.lower() not in _STUDY_PARAMETERS:
            continue
        named_as_orthanc_reads |= name == WADO_URI_STUDY
        if not value and not wado_uri:
            continue  # a universal match
        if not _UID_LIST.fullmatch(value):
            raise UncheckableTarget(
                "StudyInstanceUID, 0020000D and studyUID take UIDs (digits and dots), separated"
                " by commas or backslashes"
            )
        studies |= _uids(value)
    if wado_uri and not named_as_orthanc_reads:
        raise UncheckableTarget("a WADO-URI request must name the instance's study (studyUID)")
    return frozenset(studies)


def _uids(value: str) -> set[str]:
    for escaped, separator in _ESCAPED_SEPARATORS:
        value = value.replace(escaped, separator)
    return {*re.split("[,\\\\]", value), *value.replace("\\", "").split(",")}
