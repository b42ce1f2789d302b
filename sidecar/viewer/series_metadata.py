"""A report's series metadata in full, through both viewer fronts.

A viewer reads a series' instances from WADO-RS series metadata
(`/dicom-web/studies/{study}/series/{series}/metadata`); OHIF 3.12 reads a Structured Report's
whole content tree there (sidecar.analyses.structured_report). Orthanc's DICOMweb 1.7 is set to
`Extrapolate` series metadata (orthanc/orthanc.json): a few main tags of each instance, and the
tags listed there, taken from a few of them, never a sequence. That keeps a CT series of a
thousand slices quick to open (`Full` reads every file of the series for each request; 1.7 keeps
no cache), and leaves a report's series with a title and no content: OHIF lists the series and
draws none of its boxes, neither the AI results' (sidecar.analyses) nor OHIF's own saved
measurements.

So the fronts answer the series metadata of a report themselves, in full, and pass every other
series' metadata on from Orthanc unchanged. A report here is a series whose modality is one of
DOCUMENT_MODALITIES: SR (structured reports), KO (key object selections, the key images a
reader flags) and PR (presentation states: a reader's annotations, zoom and window). Their
meaning is all in sequences, and their series hold a few small instances, so reading them whole
costs next to nothing. OHIF 3.12 reads only SR this way (it has no KO or PR display); KO and PR
are whole for any other DICOMweb client that reads them from series metadata. SEG, RTSTRUCT and
parametric maps are left out: OHIF reads those from the instance's file (its
dicomLoaderService), not from metadata, and a segmentation's file can be large.

The modality is the sidecar's own record of the series (sidecar.studies); a series it has not
registered yet (just stored, by STOW-RS or an analyzer) is asked of Orthanc's QIDO. The full
answer is what `Full` would give: the array of the series' instances' metadata, each as
Orthanc's instance-level metadata serves it (always whole), with the BulkDataURIs Orthanc writes
for the front the browser used (the Host and scheme of its request, or of nginx's `Forwarded`).
Only JSON is answered this way (no Accept, or application/dicom+json, application/json, */*, as
the plugin reads Accept); a request for XML metadata is passed on, as is a HEAD.

The session, a physician's care and the quarantine are checked before any of this, as for every
DICOMweb read (sidecar.viewer.router), and the view is audited there.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Final

from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.requests import Request
from starlette.responses import Response

from sidecar.studies.models import Series, Study
from sidecar.viewer.paths import HOST, UID
from sidecar.viewer.proxy import DicomWebProxy, FrontAddress

DOCUMENT_MODALITIES: Final = frozenset({"SR", "KO", "PR"})
# Where nginx's front hands a series' metadata request (viewer/nginx.conf): this prefix, then the
# request target as the browser sent it.
METADATA_PREFIX: Final = "/api/viewer/metadata"
METADATA_ROUTE: Final = f"{METADATA_PREFIX}/dicom-web/studies/{{study}}/series/{{series}}/metadata"
_SERIES_METADATA: Final = re.compile(f"^/dicom-web/studies/({UID})/series/({UID})/metadata$")
_SOP_INSTANCE: Final = re.compile(f"^{UID}$")
_FORWARDED: Final = re.compile(f"^proto=(https?);host=({HOST[1:-1]})$")
_JSON_TYPES: Final = frozenset({"application/dicom+json", "application/json", "*/*"})
_MODALITY, _SOP_INSTANCE_UID = "00080060", "00080018"
# Instances read from Orthanc at once for one answer (Orthanc serves 50 requests at a time).
_CONCURRENT_READS: Final = 4


def series_metadata_of(target: str) -> tuple[str, str] | None:
    """(study, series) when a raw request target asks for a series' metadata."""
    match = _SERIES_METADATA.match(target.partition("?")[0])
    return (match.group(1), match.group(2)) if match else None


def asks_for_json(accept: str | None) -> bool:
    """Whether Orthanc's DICOMweb 1.7 would answer this Accept header with JSON."""
    if not accept:
        return True
    media_types = (token.partition(";")[0].strip().lower() for token in accept.split(","))
    return not _JSON_TYPES.isdisjoint(media_types)


def front_of(request: Request, *, behind_nginx: bool) -> FrontAddress:
    """Where the browser sent the request: nginx's `Forwarded: proto=..;host=..` for what it
    hands over, else this request's own scheme and Host (checked by the caller)."""
    if behind_nginx:
        forwarded = _FORWARDED.fullmatch(request.headers.get("forwarded", ""))
        if forwarded:
            return FrontAddress(forwarded.group(1), forwarded.group(2))
    return FrontAddress(request.url.scheme, request.headers.get("host", ""))


class FullSeriesMetadata:
    def __init__(self, engine: Engine, proxy: DicomWebProxy) -> None:
        self._engine = engine
        self._proxy = proxy

    async def answer(self, request: Request, target: str, front: FrontAddress) -> Response | None:
        """The metadata of a report's series in full, when `target` (allowed and checked by
        the caller) asks for it in JSON; None when Orthanc's own answer is to be passed on: any
        other request, another series, a series Orthanc does not have. Raises
        OrthancUnavailable."""
        asked = series_metadata_of(target)
        if asked is None or request.method != "GET":
            return None
        if not asks_for_json(request.headers.get("accept")):
            return None
        study, series = asked
        if not await self.is_report(study, series, front):
            return None
        instances = await self._instances(study, series, front)
        if not instances:
            return None
        limit = asyncio.Semaphore(_CONCURRENT_READS)

        async def metadata(sop: str) -> Any:
            async with limit:
                path = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata"
                return await self._proxy.read_json(path, front)

        answers = await asyncio.gather(*(metadata(sop) for sop in instances))
        # An instance deleted since the series was listed is left out, as `Full` would.
        whole = [item for answer in answers if isinstance(answer, list) for item in answer]
        body = json.dumps(whole, ensure_ascii=False, separators=(",", ":"))
        return Response(body.encode("utf-8"), media_type="application/dicom+json")

    async def is_report(self, study: str, series: str, front: FrontAddress) -> bool:
        """Whether the series is of DOCUMENT_MODALITIES: the sidecar's record, else Orthanc's."""
        registered = await asyncio.to_thread(self._registered_modality, study, series)
        if registered is None:
            search = f"/dicom-web/studies/{study}/series?SeriesInstanceUID={series}"
            found = await self._proxy.read_json(search, front)
            registered = _first_value(found[0], _MODALITY).upper() if found else ""
        return registered in DOCUMENT_MODALITIES

    def _registered_modality(self, study: str, series: str) -> str | None:
        """The series' modality as registered ("" when it has none); None when the sidecar has
        not registered the series in that study."""
        with Session(self._engine) as session:
            row = session.exec(
                select(Series.id, Series.modality)
                .join(Study, col(Study.id) == col(Series.study_id))
                .where(Series.series_instance_uid == series, Study.study_instance_uid == study)
            ).first()
        if row is None:
            return None
        return (row[1] or "").upper()

    async def _instances(self, study: str, series: str, front: FrontAddress) -> list[str]:
        """The SOP Instance UIDs of the series, as Orthanc lists them (QIDO-RS)."""
        listed = await self._proxy.read_json(
            f"/dicom-web/studies/{study}/series/{series}/instances", front
        )
        sops = [_first_value(item, _SOP_INSTANCE_UID) for item in listed or ()]
        # Orthanc's values, made into paths: only UIDs (sidecar.viewer.paths checks them too).
        return [sop for sop in sops if _SOP_INSTANCE.match(sop)]


def _first_value(item: Any, tag: str) -> str:
    try:
        return str(item[tag]["Value"][0])
    except (KeyError, IndexError, TypeError):
        return ""
