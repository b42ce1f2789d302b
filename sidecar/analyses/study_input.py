"""What an analyzer is given of a study: its images as Orthanc stores them, read one at a time,
and what the study was ordered and reported as (StudyContext)."""

from __future__ import annotations

import io
from collections.abc import Callable, Generator

import pydicom
from pydicom import Dataset
from sqlmodel import Session

from sidecar.analyses.findings import StudyContext
from sidecar.ingest.orthanc_client import OrthancClient, OrthancNotFound
from sidecar.mpps.service import instances_announced
from sidecar.orders.models import ImagingOrder
from sidecar.studies.models import Study

#: Series that hold no images to analyse: reports (the analyses' own among them), key object
#: selections, presentation states, documents, registrations, segmentations, value maps.
NOT_IMAGES = frozenset({"SR", "KO", "PR", "DOC", "REG", "SEG", "RWV"})


def study_context(session: Session, study: Study) -> StudyContext:
    """What the study was ordered as (its order's modality and body part) and how many images
    the modality reported in MPPS (its completed steps)."""
    order = session.get(ImagingOrder, study.order_id) if study.order_id else None
    return StudyContext(
        study_instance_uid=study.study_instance_uid,
        ordered_modality=order.modality.value if order else None,
        ordered_body_part=order.body_part if order else None,
        performed_image_count=instances_announced(session, study.study_instance_uid),
    )


def study_images(
    orthanc: OrthancClient,
    orthanc_id: str,
    headers: list[Dataset],
    before_each: Callable[[], object] = lambda: None,
) -> Generator[Dataset, None, None]:
    """The images of the Orthanc study, pixel data included, read one at a time (a study may
    hold thousands: none is kept); each one's header, without its pixels, is appended to
    `headers` (the report's evidence). Series of non-images are passed over, as are instances
    without pixel data and instances deleted meanwhile. `before_each` runs before each image is
    read (the runner renews its hold there, and stops). OrthancNotFound: the study is gone."""
    for series in orthanc.study_series(orthanc_id):
        modality = str(series.get("MainDicomTags", {}).get("Modality", "")).upper()
        if modality in NOT_IMAGES:
            continue
        for instance_id in series.get("Instances", []):
            before_each()
            try:
                content = b"".join(orthanc.instance_file(str(instance_id)))
            except OrthancNotFound:
                continue  # deleted meanwhile: the others are analysed
            image = pydicom.dcmread(io.BytesIO(content))
            if "PixelData" not in image:
                continue
            headers.append(pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True))
            yield image
