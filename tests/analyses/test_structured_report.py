"""AI results as a DICOM Structured Report (issue 19, item 5): findings written as a TID 1500
measurement report with highdicom, written to bytes and read back with pydicom into the same
findings; a report another analyzer wrote with highdicom read as well; what is not a measurement
report refused with a message that says why. The document is checked by DCMTK's dsrdump (an
independent SR implementation that refuses relationships the Comprehensive SR IOD forbids), and
one round trip goes through a real Orthanc: the SR stored beside generated CR images, fetched
back as a file and as the DICOMweb metadata OHIF reads; and OHIF draws its box, through both
viewer fronts."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from pydicom import Dataset, config, dcmread, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from sidecar.analyses.findings import AnalyzerFinding, Box, ImageRef, Severity
from sidecar.analyses.structured_report import build_report, read_report
from sidecar.launcher.orthanc import OrthancProcess

from nginx_front import NginxFront, start_nginx_front
from stack import STACK_ADMIN_PASSWORD, Stack
from viewer_browser import open_study

pytestmark = pytest.mark.one_database

PATIENT_NAME = "DOE^JANE"


def image_header(
    study_uid: str,
    series_uid: str,
    number: int,
    *,
    patient_id: str,
    sop_class: UID = ComputedRadiographyImageStorage,
    frames: int | None = None,
    pixels: bool = False,
) -> Dataset:
    """A chest CR image as a modality writes it (a multi-frame ultrasound image when asked),
    with 128 x 128 pixels when `pixels`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality = "CR" if sop_class == ComputedRadiographyImageStorage else "US"
    ds.PatientName, ds.PatientID = PATIENT_NAME, patient_id
    ds.PatientBirthDate, ds.PatientSex = "19800808", "F"
    ds.StudyDate, ds.StudyTime = "20270302", "101500"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "ACC-SR-1", "1", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.Rows = ds.Columns = 128
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if pixels:
        ramp = np.add.outer(np.arange(128), np.arange(128)) * (number + 1)
        ds.PixelData = (ramp % 4096).astype(np.uint16).tobytes()
    return ds


def ref(image: Dataset, frame: int | None = None) -> ImageRef:
    return ImageRef(
        study_instance_uid=str(image.StudyInstanceUID),
        series_instance_uid=str(image.SeriesInstanceUID),
        sop_instance_uid=str(image.SOPInstanceUID),
        sop_class_uid=str(image.SOPClassUID),
        frame=frame,
    )


def as_file(dataset: Dataset) -> bytes:
    """Written as a Part 10 file, pydicom refusing any value its VR does not allow."""
    buffer = io.BytesIO()
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.RAISE
    try:
        dcmwrite(buffer, dataset, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = mode
    return buffer.getvalue()


def round_trip(dataset: Dataset) -> Dataset:
    return dcmread(io.BytesIO(as_file(dataset)))


@pytest.fixture
def study() -> list[Dataset]:
    """Three CR images of one study (two series) and a four-frame ultrasound clip."""
    study_uid, series_uids = generate_uid(), (generate_uid(), generate_uid())
    patient = f"MRN{np.random.default_rng().integers(10**9):09d}"
    images = [
        image_header(study_uid, series_uids[0], 1, patient_id=patient),
        image_header(study_uid, series_uids[0], 2, patient_id=patient),
        image_header(study_uid, series_uids[1], 1, patient_id=patient),
    ]
    clip = image_header(
        study_uid, series_uids[1], 2, patient_id=patient, sop_class=UltrasoundMultiFrameImageStorage
    )
    clip.NumberOfFrames = 4
    return [*images, clip]


def findings_of(images: Sequence[Dataset]) -> list[AnalyzerFinding]:
    """One of each kind: boxes (one on a frame), a finding about a whole image, one about the
    whole study; every severity; words beyond ASCII and beyond 64 characters."""
    return [
        AnalyzerFinding(
            model="quality",
            finding="clipped image",
            confidence=0.8374629184736251,  # a float's every digit, beyond a DS's 16 characters
            severity=Severity.HIGH,
            recommendation="Repeat the exposure with a lower tube current.",
            image=ref(images[0]),
            box=Box(x=10, y=20.5, width=30, height=40),
        ),
        AnalyzerFinding(
            model="chest-opacity",
            finding="Verschattung im rechten Unterfeld, Ødem möglich: " + "x" * 40,
            confidence=0.5,
            severity=Severity.CRITICAL,
            recommendation="",
            image=ref(images[3], frame=3),
            box=Box(x=0, y=0, width=127.5, height=64),
        ),
        AnalyzerFinding(
            model="quality",
            finding="blank or uniform image",
            confidence=1.0,
            severity=Severity.MODERATE,
            recommendation="Check the detector.",
            image=ref(images[2]),
        ),
        AnalyzerFinding(
            model="quality",
            finding="fewer images than the modality reported in MPPS",
            confidence=0.25,
            severity=Severity.LOW,
            recommendation="Ask the technologist for the missing images.",
        ),
    ]


def test_the_findings_come_back_as_they_went_in(study: list[Dataset]) -> None:
    findings = findings_of(study)
    report = build_report(findings, study, analyzer_name="quality", analyzer_version="1.4.2")
    read = read_report(round_trip(report))

    assert read.analyzer_name == "quality"
    assert read.analyzer_version == "1.4.2"
    # Boxed findings first (the measurement groups), then the others, each in its order.
    assert read.findings == findings


def test_the_report_is_a_measurement_report_in_the_images_study(
    study: list[Dataset], tmp_path: Path
) -> None:
    now = dt.datetime(2027, 3, 2, 10, 31, 7)
    report = round_trip(
        build_report(
            findings_of(study),
            study,
            analyzer_name="quality",
            analyzer_version="1.4.2",
            series_number=9001,
            manufacturer="Example Hospital IT",
            institution_name="Example Hospital",
            now=now,
        )
    )
    image = study[0]

    assert report.SOPClassUID == ComprehensiveSRStorage
    assert report.Modality == "SR"
    assert report.StudyInstanceUID == image.StudyInstanceUID
    assert report.SeriesInstanceUID not in {i.SeriesInstanceUID for i in study}
    assert report.SOPInstanceUID not in {i.SOPInstanceUID for i in study}
    assert (report.PatientName, report.PatientID) == (image.PatientName, image.PatientID)
    assert report.AccessionNumber == image.AccessionNumber
    assert report.SeriesNumber == 9001
    assert report.Manufacturer == "Example Hospital IT"
    assert report.InstitutionName == "Example Hospital"
    assert (report.ManufacturerModelName, report.SoftwareVersions) == ("quality", "1.4.2")
    assert (report.ContentDate, report.ContentTime[:6]) == ("20270302", "103107")
    assert (report.PreliminaryFlag, report.VerificationFlag) == ("PRELIMINARY", "UNVERIFIED")
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    title = report.ConceptNameCodeSequence[0]
    assert (title.CodingSchemeDesignator, title.CodeValue) == ("DCM", "126000")
    evidence = {
        instance.ReferencedSOPInstanceUID
        for series in report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert evidence == {i.SOPInstanceUID for i in study}

    # What OHIF draws: in "Imaging Measurements", groups keyed by their tracking identifiers,
    # each with a closed five-point POLYLINE on its image.
    [measurements] = [i for i in report.ContentSequence if code_of(i) == ("DCM", "126010")]
    groups = measurements.ContentSequence
    assert [code_of(g) for g in groups] == [("DCM", "125007")] * 2
    for group, finding in zip(groups, findings_of(study), strict=False):
        by_code = {code_of(i): i for i in group.ContentSequence}
        assert by_code[("DCM", "112039")].TextValue == finding.finding
        assert by_code[("DCM", "112040")].UID
        region = by_code[("DCM", "111030")]
        assert region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE"
        points = list(region.GraphicData)
        assert len(points) == 10 and points[:2] == points[-2:]
        [source] = region.ContentSequence
        assert source.RelationshipType == "SELECTED FROM"
        assert finding.image is not None
        assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            finding.image.sop_instance_uid
        )

    path = tmp_path / "report.dcm"
    path.write_bytes(as_file(report))
    assert_dsrdump_accepts(path)
    # highdicom reads its own kind of document back, the groups as planar ROI groups.
    content = hd.sr.ComprehensiveSR.from_dataset(report).content
    assert isinstance(content, hd.sr.MeasurementReport)
    assert len(content.get_planar_roi_measurement_groups()) == 2


def code_of(item: Dataset) -> tuple[str, str]:
    name = item.ConceptNameCodeSequence[0]
    return str(name.CodingSchemeDesignator), str(name.CodeValue)


def assert_dsrdump_accepts(path: Path) -> None:
    dumped = subprocess.run(
        ["dsrdump", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    errors = [line for line in dumped.stderr.splitlines() if line.startswith(("E:", "F:"))]
    assert dumped.returncode == 0 and not errors, dumped.stderr
    assert "Imaging Measurement Report" in dumped.stdout


def test_a_study_where_nothing_was_found_has_a_report_that_says_so(
    study: list[Dataset], tmp_path: Path
) -> None:
    report = round_trip(build_report([], study, analyzer_name="quality", analyzer_version="1.4.2"))

    assert read_report(report).findings == []
    [evaluations] = [i for i in report.ContentSequence if code_of(i) == ("UMLS", "C0034375")]
    [summary] = evaluations.ContentSequence
    assert (
        summary.ConceptCodeSequence[0].CodeMeaning == "All algorithms succeeded; without findings"
    )
    path = tmp_path / "empty.dcm"
    path.write_bytes(as_file(report))
    assert_dsrdump_accepts(path)


def test_a_header_without_some_type_2_attributes_still_gives_a_report_and_stays_as_it_was(
    study: list[Dataset],
) -> None:
    del study[0].PatientBirthDate, study[0].StudyID, study[0].ReferringPhysicianName
    report = round_trip(
        build_report(findings_of(study), study, analyzer_name="quality", analyzer_version="1")
    )
    assert (report.PatientBirthDate, report.StudyID, report.ReferringPhysicianName) == ("", "", "")
    assert report.PatientID == study[0].PatientID
    assert not {"PatientBirthDate", "StudyID", "ReferringPhysicianName"} & set(study[0].dir())


def test_each_report_has_uids_of_its_own(study: list[Dataset]) -> None:
    first, second = (
        build_report(findings_of(study), study, analyzer_name="quality", analyzer_version="1")
        for _ in range(2)
    )
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID


def external_report(images: Sequence[Dataset]) -> Dataset:
    """A report as an external analyzer would write it with highdicom, by its documentation:
    a Comprehensive 3D SR, coded findings, an irregular polygon, a circle, a percentage."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="ACME chest server")
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    nodule = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Nodule 1"),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array([[30, 40], [70, 42], [66, 90], [28, 85], [30, 40]]),
            source_image=hd.sr.SourceImageForRegion.from_source_image(images[0]),
        ),
        finding_type=codes.SCT.Nodule,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)],
        algorithm_id=hd.sr.AlgorithmIdentification(name="LungNet", version="2.1"),
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Area, value=1530.0, unit=codes.UCUM.SquareMillimeter),
            hd.sr.Measurement(
                name=codes.DCM.CertaintyOfFinding, value=87.0, unit=codes.UCUM.Percent
            ),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.SCT.Severity, value=codes.SCT.Severe)
        ],
    )
    mass = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Mass 1"),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
            graphic_data=np.array([[50.0, 60.0], [50.0, 70.0]]),
            source_image=hd.sr.SourceImageForRegion.from_source_image(images[1]),
        ),
        finding_type=codes.SCT.Mass,
    )
    effusion = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Effusion 1"),
        finding_type=codes.SCT.PleuralEffusion,
        algorithm_id=hd.sr.AlgorithmIdentification(name="LungNet", version="2.1"),
        measurements=[
            hd.sr.Measurement(
                name=codes.DCM.CertaintyOfFinding,
                value=0.4,
                unit=codes.UCUM.Ratio,
                referenced_images=[hd.sr.SourceImageForMeasurement.from_source_image(images[2])],
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.SCT.Severity, value=codes.SCT.Mild)
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[nodule, mass, effusion],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=images,
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=50,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ACME",
    )


def test_a_report_another_analyzer_wrote_with_highdicom_is_read(study: list[Dataset]) -> None:
    read = read_report(round_trip(external_report(study[:3])))

    assert read.analyzer_name == "ACME chest server"
    assert read.analyzer_version == "2.1"
    assert read.findings == [
        AnalyzerFinding(
            model="LungNet",
            finding="Nodule",
            confidence=0.87,
            severity=Severity.HIGH,  # SNOMED CT's "Severe"
            recommendation="",
            image=ref(study[0]),
            box=Box(x=28, y=40, width=42, height=50),  # the polygon's bounding box
        ),
        AnalyzerFinding(
            model="ACME chest server",  # no algorithm named: the analyzer's
            finding="Mass",
            confidence=1.0,  # none given
            severity=Severity.MODERATE,  # none given: read_report's default
            recommendation="",
            image=ref(study[1]),
            box=Box(x=40, y=50, width=20, height=20),  # the circle's square
        ),
        AnalyzerFinding(
            model="LungNet",
            finding="Pleural effusion",
            confidence=0.4,
            severity=Severity.LOW,  # "Mild"
            recommendation="",
            image=ref(study[2]),  # the measurement's source image; no region
        ),
    ]


def plain_text_report(image: Dataset) -> Dataset:
    """A basic diagnostic imaging report: an SR, not a measurement report."""
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport)
    root.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Finding,
                value="No acute cardiopulmonary process.",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return hd.sr.EnhancedSR(
        evidence=[image],
        content=root,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ACME",
    )


def test_what_is_not_a_measurement_report_is_refused_with_the_reason(
    study: list[Dataset],
) -> None:
    with pytest.raises(ValueError, match="not a DICOM Structured Report"):
        read_report(round_trip(study[0]))
    with pytest.raises(
        ValueError, match=r"not a TID 1500 measurement report.*Diagnostic Imaging Report"
    ):
        read_report(round_trip(plain_text_report(study[0])))

    # An SR's header alone, as DICOMweb metadata that leaves out sequences gives it.
    header = round_trip(plain_text_report(study[0]))
    del header.ContentSequence
    with pytest.raises(ValueError, match="holds no content"):
        read_report(header)

    # A measurement report whose image is missing from its evidence: its series is unknown.
    report = round_trip(
        build_report(findings_of(study)[:1], study, analyzer_name="q", analyzer_version="1")
    )
    del report.CurrentRequestedProcedureEvidenceSequence
    with pytest.raises(ValueError, match="does not list: its series is unknown"):
        read_report(report)


def test_findings_that_cannot_be_written_are_refused(study: list[Dataset]) -> None:
    boxed = findings_of(study)[0]
    other_study = image_header(generate_uid(), generate_uid(), 1, patient_id="MRN000000001")
    cases = {
        "has a box but no image": replace(boxed, image=None),
        "not between 0 and 1": replace(boxed, confidence=1.5),
        "another study": replace(boxed, image=ref(other_study)),
        "has no words": replace(boxed, finding="  "),
    }
    for message, finding in cases.items():
        with pytest.raises(ValueError, match=message):
            build_report([finding], study, analyzer_name="quality", analyzer_version="1")
    with pytest.raises(ValueError, match="2 studies"):
        build_report([], [*study, other_study], analyzer_name="quality", analyzer_version="1")


# --- A real Orthanc -------------------------------------------------------------------------


@pytest.fixture
def orthanc_images(plain_orthanc: OrthancProcess) -> Iterator[list[Dataset]]:
    """Three generated CR images stored in the run's Orthanc over its REST API, and their
    headers as Orthanc serves them back (the images an analyzer would have read)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    patient = f"MRN{np.random.default_rng().integers(10**9):09d}"
    headers: list[Dataset] = []
    for number in (1, 2, 3):
        image = image_header(study_uid, series_uid, number, patient_id=patient, pixels=True)
        stored = post_instance(plain_orthanc, as_file(image))
        content = httpx.get(f"{plain_orthanc.url}/instances/{stored['ID']}/file").content
        headers.append(dcmread(io.BytesIO(content), stop_before_pixels=True))
    yield headers


def post_instance(orthanc: OrthancProcess, content: bytes) -> dict[str, Any]:
    answer = httpx.post(f"{orthanc.url}/instances", content=content, timeout=30)
    answer.raise_for_status()
    stored: dict[str, Any] = answer.json()
    assert stored["Status"] == "Success", stored
    return stored


@pytest.mark.orthanc
def test_the_report_stored_in_orthanc_reads_back_as_its_findings(
    plain_orthanc: OrthancProcess, orthanc_images: list[Dataset]
) -> None:
    images = orthanc_images
    findings = [
        AnalyzerFinding(
            model="quality",
            finding="clipped image",
            confidence=0.93,
            severity=Severity.HIGH,
            recommendation="Repeat the exposure.",
            image=ref(images[0]),
            box=Box(x=12, y=16, width=40, height=24),
        ),
        AnalyzerFinding(
            model="quality",
            finding="clipped image",
            confidence=0.71,
            severity=Severity.MODERATE,
            recommendation="",
            image=ref(images[1]),
            box=Box(x=64.5, y=0, width=63.5, height=127),
        ),
        AnalyzerFinding(
            model="quality",
            finding="duplicate image",
            confidence=1.0,
            severity=Severity.LOW,
            recommendation="Delete one of the copies.",
            image=ref(images[2]),
        ),
        AnalyzerFinding(
            model="quality",
            finding="fewer images than the modality reported in MPPS",
            confidence=0.5,
            severity=Severity.CRITICAL,
            recommendation="Ask the technologist for the missing images.",
        ),
    ]
    report = build_report(findings, images, analyzer_name="quality", analyzer_version="1.4.2")

    stored = post_instance(plain_orthanc, as_file(report))
    image_study = httpx.get(f"{plain_orthanc.url}/instances/{stored['ID']}/study").json()
    assert image_study["MainDicomTags"]["StudyInstanceUID"] == images[0].StudyInstanceUID
    assert len(image_study["Series"]) == 2  # the images' series and the report's own

    content = httpx.get(f"{plain_orthanc.url}/instances/{stored['ID']}/file").content
    read = read_report(dcmread(io.BytesIO(content)))
    assert (read.analyzer_name, read.analyzer_version) == ("quality", "1.4.2")
    assert read.findings == findings

    # What OHIF loads: the SR's DICOMweb metadata, the whole content tree in DICOM JSON.
    metadata = httpx.get(
        f"{plain_orthanc.url}/dicom-web/studies/{report.StudyInstanceUID}"
        f"/series/{report.SeriesInstanceUID}/instances/{report.SOPInstanceUID}/metadata"
    )
    metadata.raise_for_status()
    [instance] = metadata.json()
    assert read_report(pydicom.Dataset.from_json(instance)).findings == findings


@pytest.mark.orthanc
@pytest.mark.parametrize("front", ["nginx", "sidecar"])
def test_ohif_draws_the_box_of_a_stored_report(stack: Stack, tmp_path: Path, front: str) -> None:
    """The radiologist's view, in headless Chromium through either viewer front, with the
    repository's own Orthanc configuration (series metadata `Extrapolate`: the fronts answer a
    report's series metadata whole themselves, sidecar.viewer.series_metadata): the study
    opened from its viewer link, the report's series opened from the study browser, its box
    drawn where it is on the image, with the confidence beside it; the finding without a box
    (kept out of OHIF's reach) breaks nothing."""
    study_uid, series_uid = generate_uid(), generate_uid()
    patient = f"MRN{np.random.default_rng().integers(10**9):09d}"
    images = [
        image_header(study_uid, series_uid, n, patient_id=patient, pixels=True) for n in (1, 2)
    ]
    for image in images:
        post_instance(stack.orthanc, as_file(image))
    box = Box(x=32, y=48, width=64, height=32)  # on a 128 x 128 image
    findings = [
        AnalyzerFinding(
            model="quality",
            finding="clipped image",
            confidence=0.93,
            severity=Severity.HIGH,
            recommendation="Repeat the exposure.",
            image=ref(images[0]),
            box=box,
        ),
        AnalyzerFinding(
            model="quality",
            finding="fewer images than the modality reported in MPPS",
            confidence=0.5,
            severity=Severity.LOW,
            recommendation="",
        ),
    ]
    report = build_report(findings, images, analyzer_name="quality", analyzer_version="1.4.2")
    post_instance(stack.orthanc, as_file(report))
    study = stack.wait_for_study(study_uid, instances=3)
    link = stack.api("GET", f"/api/studies/{study['id']}").json()["viewerUrl"]
    nginx: NginxFront | None = None
    if front == "nginx":
        assert stack.sidecar is not None
        nginx = start_nginx_front(
            tmp_path / "nginx",
            orthanc=f"127.0.0.1:{stack.layout.http_port}",
            sidecar=f"127.0.0.1:{stack.sidecar_port}",
        )
        link = link.replace(stack.sidecar.url, nginx.url, 1)

    try:
        shown = open_study(
            {
                "viewerUrl": link,
                "username": "admin",
                "password": STACK_ADMIN_PASSWORD,
                "openSeries": "AI results: quality",
                "screenshot": str(tmp_path / "report.png"),
                "timeoutMs": 60_000,
            }
        )
    finally:
        if nginx is not None:
            nginx.stop()

    assert shown["ok"], shown.get("error")
    assert not [e for e in shown["consoleErrors"] if e.startswith("uncaught")], shown
    overlay = shown["overlay"]
    [drawn] = overlay["polylines"]
    points = [float(v) for v in drawn["points"].replace(",", " ").split()]
    assert len(points) == 10 and points[:2] == points[-2:]  # the closed rectangle
    # The image fills the viewport's height, centred: from the drawn rectangle's scale and
    # place, the image's centre falls on the viewport's centre, and its proportions are kept.
    scale = drawn["box"]["width"] / box.width
    assert drawn["box"]["height"] / scale == pytest.approx(box.height, rel=0.02)
    canvas = overlay["canvas"]
    image_centre_x = drawn["box"]["x"] + (64 - box.x) * scale
    image_centre_y = drawn["box"]["y"] + (64 - box.y) * scale
    assert image_centre_x == pytest.approx(
        canvas["x"] + canvas["width"] / 2, abs=canvas["width"] * 0.02
    )
    assert image_centre_y == pytest.approx(
        canvas["y"] + canvas["height"] / 2, abs=canvas["height"] * 0.02
    )
    assert "Certainty of Finding: 0.93 {ratio}" in overlay["texts"]
