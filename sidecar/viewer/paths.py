"""What the viewer fronts pass on to Orthanc: the DICOMweb and WADO-URI reads a viewer makes,
and nothing else. One definition for both fronts: the sidecar's proxy checks every request with
`verdict()`, and viewer/nginx.conf holds the text of `nginx_maps()` verbatim (a test
compares them), so nginx applies the same regular expressions, in the same order.

Why this is strict. Orthanc serves DICOMweb on the same port as its whole REST API, and it
decodes the path and removes dot segments itself: `/dicom-web/%2e%2e/studies/{id}` and
`/dicom-web/..%2fstudies/{id}` are Orthanc's `/studies/{id}`. Orthanc 1.10 also turns a GET
into a DELETE or PUT when the query has `_method=DELETE` or the request an
`X-HTTP-Method-Override` header (HttpServer.cpp, ExtractMethod). So each request is checked as
received (the raw request target: path and query string, before any decoding), against an
allow-list, and what goes to Orthanc is exactly what was checked.

The allow-list: the read routes the DICOMweb plugin 1.7 registers (Plugin/Plugin.cpp of
orthanc-dicomweb, release OrthancDicomWeb-1.7) that a viewer or a DICOMweb client uses:

- QIDO-RS: studies, series, instances; studies/{study}/series, studies/{study}/instances,
  studies/{study}/series/{series}/instances;
- WADO-RS: a study, series or instance (the DICOM files), their `metadata`, an instance's
  `frames/{list}` (`1` or `1,2,3`), and `rendered` for a study, series, instance or frame;
- WADO-RS bulk data, in the shape the plugin writes into metadata (WadoRs.cpp,
  DicomWebFormatter.cpp): `.../instances/{sop}/bulk/{tag}`, with `/{index}/{tag}` pairs for
  items of sequences; tags are eight hexadecimal digits, indexes count from 1;
- WADO-URI: `/wado`.

UPS-RS, `/dicom-web/workitems[/{uid}[/state|/cancelrequest|/subscribers/{aet}[/suspend]]]`,
is not Orthanc's: both fronts hand it to the sidecar (sidecar.analyses.workitems_router), as
received, after the same checks of the raw target.

Not `/dicom-web/servers...` (the plugin's DICOMweb client: it sends studies to, and deletes
from, other servers), `/dicom-web/info`, `/dicom-web/app/...`, nor anything outside /dicom-web
and /wado. 1.7 has no `thumbnail` route. A UID is digits and dots, at most 64 characters,
starting with a digit (so never a `.` or `..` segment).

A raw path with a percent-escape, a `#`, a backslash, an empty segment or a `.`/`..` segment is
malformed (400): whatever a server would make of it is not what was checked. A query parameter
whose name is not letters, digits and dots (`_method`, `%5Fmethod`) is malformed too; values are
free (QIDO searches by patient name). A well-formed path not in the list is refused with 404.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

# Regular expressions common to Python's `re` and nginx's PCRE. No backslash escapes but
# \x5c: nginx's configuration parser would rewrite \\, \t, \r, \n inside the quoted map keys.
UID: Final = "[0-9][0-9.]{0,63}"
_FRAME: Final = "[1-9][0-9]{0,8}"
_FRAMES: Final = f"{_FRAME}(?:,{_FRAME})*"
_TAG: Final = "[0-9A-Fa-f]{8}"
_BULK: Final = f"{_TAG}(?:/[1-9][0-9]{{0,8}}/{_TAG})*"

_STUDY: Final = f"/dicom-web/studies/{UID}"
_SERIES: Final = f"{_STUDY}/series/{UID}"
_INSTANCE: Final = f"{_SERIES}/instances/{UID}"

# Each alternative is one level of the DICOMweb hierarchy and what may follow it.
ALLOWED_PATH: Final = (
    "(?:"
    + "|".join(
        (
            "/dicom-web/(?:studies|series|instances)",  # QIDO-RS
            f"{_STUDY}(?:/(?:series|instances|metadata|rendered))?",
            f"{_SERIES}(?:/(?:instances|metadata|rendered))?",
            f"{_INSTANCE}(?:/(?:metadata|rendered|frames/{_FRAMES}(?:/rendered)?|bulk/{_BULK}))?",
            "/wado",  # WADO-URI
        )
    )
    + ")"
)
# STOW-RS (sidecar.viewer.stow): a POST of exactly this target, no query, which both fronts
# hand to the sidecar's checks; every other POST, and every other method, is refused.
STOW_TARGET: Final = f"^/dicom-web/studies(?:/{UID})?$"
# UPS-RS (sidecar.analyses.workitems_router): the work items, each one's state, its cancel
# request and its subscriptions (an AE title of letters, digits, dot, hyphen, underscore), which
# both fronts hand to the sidecar as received, for every method; the sidecar decides.
WORKITEMS_PATH: Final = (
    f"/dicom-web/workitems(?:/{UID}(?:/(?:state|cancelrequest"
    "|subscribers/[A-Za-z0-9._-]{1,16}(?:/suspend)?))?)?"
)
_NAME: Final = "[A-Za-z0-9.]+"
_PARAMETER: Final = f"{_NAME}(?:=[^&]*)?"
ALLOWED_QUERY: Final = f"(?:{_PARAMETER}(?:&{_PARAMETER})*)?"

# What a Host header may hold: a name or an IPv4 address, or a bracketed IPv6 one, and a port.
# Both fronts copy it into the Forwarded header Orthanc writes absolute URLs from (RetrieveURL,
# BulkDataURI), so separators (; , " =) must not get through: `a.test";host=x` would add a host.
HOST: Final = "^(?:[A-Za-z0-9.-]+|\\x5b[0-9A-Fa-f:.]+\\x5d)(?::[0-9]{1,5})?$"
# Headers that would make Orthanc 1.10 run another method than the request's (it honours the
# first; the others are refused as well, in case a later version or a proxy honours them).
METHOD_OVERRIDE_HEADERS: Final = ("x-http-method-override", "x-http-method", "x-method-override")
# The request headers passed on to Orthanc, besides Host, Forwarded and Orthanc's own
# Authorization, which the fronts set themselves; every other header stays at the front.
FORWARDED_REQUEST_HEADERS: Final = (
    "accept",
    "accept-encoding",
    "if-none-match",
    "if-modified-since",
    "range",
    "user-agent",
)


class Verdict(StrEnum):
    """A front's decision on one request; the values are the nginx map's."""

    FORWARD = "forward"  # an allowed DICOMweb or WADO-URI read: passed on as received
    WORKITEMS = "workitems"  # UPS-RS: handed to the sidecar as received
    MALFORMED = "400"
    NOT_ALLOWED = "404"  # names /dicom-web or /wado (any case), but is not in the list
    ELSEWHERE = ""  # not for Orthanc: the front's other routes (login, the viewer's files)


@dataclass(frozen=True)
class Rule:
    verdict: Verdict
    pattern: str
    ignore_case: bool = False


# In order, the first that matches decides (as nginx's map does with regular expressions).
RULES: Final = (
    Rule(Verdict.FORWARD, f"^{ALLOWED_PATH}(?:[?]{ALLOWED_QUERY})?$"),
    Rule(Verdict.WORKITEMS, f"^{WORKITEMS_PATH}(?:[?]{ALLOWED_QUERY})?$"),
    # On every route, so that no location is chosen from a path nginx rewrote first.
    Rule(Verdict.MALFORMED, "^(?:[^/]|[^?]*(?:[%#\\x5c]|//|/[.][.]?(?:[/?]|$)))"),
    Rule(Verdict.MALFORMED, f"^{ALLOWED_PATH}[?]"),  # a parameter name outside the list
    Rule(Verdict.MALFORMED, f"^{WORKITEMS_PATH}[?]"),
    Rule(Verdict.NOT_ALLOWED, "^/(?:dicom-web|wado)", ignore_case=True),
)
_COMPILED: Final = tuple(
    (rule.verdict, re.compile(rule.pattern, re.IGNORECASE if rule.ignore_case else 0))
    for rule in RULES
)
_PRINTABLE_ASCII: Final = re.compile("^[\x21-\x7e]+$")


def verdict(target: str) -> Verdict:
    """The decision for a raw request target: the path as received (not decoded) and, after a
    `?`, the raw query string; what nginx calls $request_uri."""
    if not _PRINTABLE_ASCII.fullmatch(target):
        return Verdict.MALFORMED
    for decided, pattern in _COMPILED:
        if pattern.search(target):
            return decided
    return Verdict.ELSEWHERE


def request_target(raw_path: bytes, query_string: bytes) -> str:
    """An ASGI request's raw target (its scope's raw_path and query_string)."""
    path = raw_path.decode("latin-1")
    return f"{path}?{query_string.decode('latin-1')}" if query_string else path


def nginx_maps() -> str:
    """The nginx configuration's part that decides: viewer/nginx.conf holds it verbatim
    (print it to update the file after changing a rule)."""
    overrides = "".join(f"$http_{_variable(h)}" for h in METHOD_OVERRIDE_HEADERS)
    lines = [
        "map $request_uri $dicomweb_verdict {",
        *(
            f'    "{"~*" if rule.ignore_case else "~"}{rule.pattern}" "{rule.verdict.value}";'
            for rule in RULES
        ),
        '    default "";',
        "}",
        "",
        f'map "{overrides}" $dicomweb_method_override {{',
        '    "" "";',
        '    default "400";',
        "}",
        "",
        'map "$request_method $request_uri" $dicomweb_stow {',
        f'    "~^POST {STOW_TARGET[1:]}" "1";',
        '    default "";',
        "}",
        "",
        "map $http_host $dicomweb_host_verdict {",
        f'    "~{HOST}" "";',
        '    default "400";',
        "}",
    ]
    for line in lines:
        if any(escape in line for escape in ("\\\\", "\\t", "\\r", "\\n", "\\'", '\\"')):
            raise ValueError(f"nginx would rewrite an escape in {line!r}")
    return "\n".join(lines) + "\n"


def _variable(header: str) -> str:
    return header.lower().replace("-", "_")


if __name__ == "__main__":
    print(nginx_maps(), end="")
