"""The report an external analyzer writes of its findings, with highdicom as its documentation
shows: a Comprehensive SR holding a TID 1500 measurement report, the analyzer as the device
observer, a boxed finding as a planar ROI (a closed polyline on the image) with its algorithm,
its certainty and its severity. The sidecar reads it back (sidecar.analyses.structured_report)
into the findings an analysis records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

ANALYZER = "ACME nodule finder"
ALGORITHM = "NoduleNet"
ALGORITHM_VERSION = "3.2"


@dataclass(frozen=True)
class BoxedFinding:
    x: float
    y: float
    width: float
    height: float
    certainty: float  # 0 to 1


def nodule_report(
    images: Sequence[Dataset], image: Dataset, box: BoxedFinding, severity: Code = codes.SCT.Severe
) -> Dataset:
    """A measurement report of one nodule boxed on `image`, the study's images as evidence;
    `severity` one of SNOMED's (Mild, Moderate, Severe, Fatal)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=ANALYZER)
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    corners = np.array(
        [
            [box.x, box.y],
            [box.x + box.width, box.y],
            [box.x + box.width, box.y + box.height],
            [box.x, box.y + box.height],
            [box.x, box.y],
        ]
    )
    nodule = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Nodule 1"),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=corners,
            source_image=hd.sr.SourceImageForRegion.from_source_image(image),
        ),
        finding_type=codes.SCT.Nodule,
        algorithm_id=hd.sr.AlgorithmIdentification(name=ALGORITHM, version=ALGORITHM_VERSION),
        measurements=[
            hd.sr.Measurement(
                name=codes.DCM.CertaintyOfFinding, value=box.certainty, unit=codes.UCUM.Ratio
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.SCT.Severity, value=severity)
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[nodule],
    )
    return hd.sr.ComprehensiveSR(
        evidence=list(images),
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=77,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ACME",
    )
