"""Synthetic but realistic DICOM studies for tests (pydicom only, no numpy).

`make_study` writes Part-10 files (file meta, Explicit VR Little Endian, CT or MR Image Storage)
carrying the patient, study, series, image-plane, image-pixel and VOI LUT attributes a PACS, a
viewer and the sidecar look at, and returns frozen dataclasses describing exactly what was
written, so tests can assert on them. Every call generates fresh UIDs (`generate_uid`), a fresh
accession number and a fresh patient ID unless they are passed in, so tests never collide.

`add_instances` writes "late" instances into an existing series (same study/series UIDs,
continuing instance numbers); `make_invalid_files` writes a non-DICOM file and DICOM files that
lack SOPInstanceUID or StudyInstanceUID, for negative tests.

The pixels are a disc phantom (air outside, a soft-tissue gradient inside) plus a bright marker
line whose position depends on the instance number, so a viewer shows something and every
instance has distinct pixel data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import random
import secrets
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

__all__ = [
    "SOP_CLASS_BY_MODALITY",
    "GeneratedInstance",
    "GeneratedSeries",
    "GeneratedStudy",
    "add_instances",
    "make_invalid_files",
    "make_study",
]

SOP_CLASS_BY_MODALITY: Final[dict[str, str]] = {
    "CT": str(CTImageStorage),
    "MR": str(MRImageStorage),
}

_MANUFACTURER: Final = "SYNTHETIC"
_IMPLEMENTATION_VERSION_NAME: Final = "RADTEST_1"
_BITS_STORED: Final = 12
_MAX_STORED: Final = (1 << _BITS_STORED) - 1

FAMILY_NAMES: Final = (
    "SMITH",
    "JOHNSON",
    "GARCIA",
    "MUELLER",
    "NGUYEN",
    "ROSSI",
    "KOWALSKI",
    "DUBOIS",
    "TANAKA",
    "OKAFOR",
)
_GIVEN_NAMES_F: Final = ("ANNA", "MARIA", "JANE", "SOFIA", "AMARA", "YUKI", "ELENA")
_GIVEN_NAMES_M: Final = ("JOHN", "LUCAS", "OMAR", "PIOTR", "KENJI", "MARCO", "DAVID")
_PHYSICIANS: Final = ("HOUSE^GREGORY^^DR", "GREY^MEREDITH^^DR", "WATSON^JOHN^^DR")
_SERIES_DESCRIPTIONS: Final[dict[str, tuple[str, ...]]] = {
    "CT": ("AXIAL 5MM STD", "AXIAL 1.25MM LUNG", "CORONAL 3MM", "SAGITTAL 3MM"),
    "MR": ("AX T1", "AX T2", "SAG T1", "AX FLAIR", "DWI B1000"),
}
_DEFAULT_BODY_PART: Final = {"CT": "CHEST", "MR": "HEAD"}
_DEFAULT_SLICE_THICKNESS: Final = {"CT": 5.0, "MR": 4.0}
# (window center, window width): CT soft tissue in HU, MR in stored values.
_DEFAULT_WINDOW: Final = {"CT": (40.0, 400.0), "MR": (600.0, 1200.0)}
_STATION: Final = {"CT": "CT01", "MR": "MR01"}
_MODEL: Final = {"CT": "SynthCT 64", "MR": "SynthMR 1.5T"}


@dataclass(frozen=True)
class GeneratedInstance:
    """One written instance (one Part-10 file)."""

    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    slice_thickness: float
    slice_location: float
    window_center: float
    window_width: float
    path: Path


@dataclass(frozen=True)
class GeneratedSeries:
    """One series; `instances` are in instance-number order."""

    series_instance_uid: str
    series_number: int
    modality: str
    description: str
    body_part: str
    frame_of_reference_uid: str
    instances: tuple[GeneratedInstance, ...]

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(i.sop_instance_uid for i in self.instances)


@dataclass(frozen=True)
class GeneratedStudy:
    """One study as written by `make_study`; `files` are in series then instance order."""

    study_instance_uid: str
    accession_number: str
    study_id: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    study_description: str
    referring_physician: str
    institution_name: str
    body_part: str
    modality: str
    series: tuple[GeneratedSeries, ...]
    files: tuple[Path, ...]
    issuer_of_patient_id: str | None = None  # written only when given

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)

    @property
    def instances(self) -> tuple[GeneratedInstance, ...]:
        return tuple(i for s in self.series for i in s.instances)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(i.sop_instance_uid for i in self.instances)

    def with_instances(
        self, series_index: int, new_instances: list[GeneratedInstance]
    ) -> GeneratedStudy:
        """A copy of this study with `new_instances` (from `add_instances`) appended to one
        series, so assertions about totals stay simple after late arrivals."""
        series = list(self.series)
        old = series[series_index]
        series[series_index] = dataclasses.replace(
            old, instances=old.instances + tuple(new_instances)
        )
        return dataclasses.replace(
            self,
            series=tuple(series),
            files=tuple(i.path for s in series for i in s.instances),
        )


def make_study(
    directory: Path,
    *,
    series_count: int = 2,
    instances_per_series: int = 3,
    modality: str = "CT",
    accession_number: str | None = None,
    patient_id: str | None = None,
    issuer_of_patient_id: str | None = None,
    patient_name: str | None = None,
    patient_birth_date: str | None = None,
    patient_sex: str | None = None,
    study_instance_uid: str | None = None,
    study_date: str | None = None,
    study_time: str | None = None,
    study_description: str | None = None,
    referring_physician: str | None = None,
    body_part: str | None = None,
    institution_name: str = "SYNTHETIC GENERAL HOSPITAL",
    rows: int = 64,
    columns: int = 64,
    pixel_spacing: tuple[float, float] = (0.7, 0.7),
    slice_thickness: float | None = None,
    seed: int | None = None,
) -> GeneratedStudy:
    """Write a study of `series_count` series x `instances_per_series` instances under
    `directory` (created if needed) and describe it.

    Arguments left as None are generated. `seed` makes the demographic choices (names, birth
    date, sex, physician) reproducible; UIDs, accession number and patient ID are always fresh
    unless passed in. Dates are "YYYYMMDD", times "HHMMSS".
    """
    sop_class = _sop_class_for(modality)
    if series_count < 1 or instances_per_series < 1:
        raise ValueError("series_count and instances_per_series must be >= 1")
    if not (1 <= rows <= 4096 and 1 <= columns <= 4096):
        raise ValueError("rows and columns must be in 1..4096")
    rng = random.Random(seed)

    sex = patient_sex if patient_sex is not None else rng.choice(("F", "M"))
    if patient_name is None:
        given = _GIVEN_NAMES_M if sex == "M" else _GIVEN_NAMES_F
        patient_name = f"{rng.choice(FAMILY_NAMES)}^{rng.choice(given)}"
    if patient_birth_date is None:
        birth = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(365 * 65))
        patient_birth_date = birth.strftime("%Y%m%d")
    now = dt.datetime.now()
    part = body_part if body_part is not None else _DEFAULT_BODY_PART[modality]
    study = GeneratedStudy(
        study_instance_uid=study_instance_uid or str(generate_uid()),
        accession_number=accession_number or f"A{secrets.randbelow(10**15):015d}",
        study_id=str(rng.randrange(1, 100_000)),
        patient_id=patient_id or f"MRN{secrets.randbelow(10**9):09d}",
        issuer_of_patient_id=issuer_of_patient_id,
        patient_name=patient_name,
        patient_birth_date=patient_birth_date,
        patient_sex=sex,
        study_date=study_date or now.strftime("%Y%m%d"),
        study_time=study_time or now.strftime("%H%M%S"),
        study_description=study_description or f"{modality} {part} W/O CONTRAST",
        referring_physician=(
            referring_physician if referring_physician is not None else rng.choice(_PHYSICIANS)
        ),
        institution_name=institution_name,
        body_part=part,
        modality=modality,
        series=(),
        files=(),
    )
    thickness = (
        slice_thickness if slice_thickness is not None else _DEFAULT_SLICE_THICKNESS[modality]
    )
    center, width = _DEFAULT_WINDOW[modality]
    descriptions = _SERIES_DESCRIPTIONS[modality]
    all_series: list[GeneratedSeries] = []
    for s in range(series_count):
        number = s + 1
        series = GeneratedSeries(
            series_instance_uid=str(generate_uid()),
            series_number=number,
            modality=modality,
            description=descriptions[s] if s < len(descriptions) else f"SERIES {number}",
            body_part=part,
            frame_of_reference_uid=str(generate_uid()),
            instances=(),
        )
        instances = tuple(
            _write_instance(
                directory,
                study,
                series,
                sop_class_uid=sop_class,
                instance_number=n,
                rows=rows,
                columns=columns,
                pixel_spacing=pixel_spacing,
                slice_thickness=thickness,
                window=(center, width),
            )
            for n in range(1, instances_per_series + 1)
        )
        all_series.append(dataclasses.replace(series, instances=instances))
    return dataclasses.replace(
        study,
        series=tuple(all_series),
        files=tuple(i.path for s in all_series for i in s.instances),
    )


def add_instances(
    study: GeneratedStudy, directory: Path, series_index: int, count: int
) -> list[GeneratedInstance]:
    """Write `count` late instances into `study.series[series_index]` (same study, series and
    frame-of-reference UIDs and patient data, image geometry copied from the series' last
    instance, instance numbers continuing after the highest one). Returns only the new instances;
    `study.with_instances(series_index, result)` gives the updated description."""
    if count < 1:
        raise ValueError("count must be >= 1")
    series = study.series[series_index]
    if not series.instances:
        raise ValueError("the series has no instance to copy the image geometry from")
    last = max(series.instances, key=lambda i: i.instance_number)
    return [
        _write_instance(
            directory,
            study,
            series,
            sop_class_uid=last.sop_class_uid,
            instance_number=last.instance_number + k,
            rows=last.rows,
            columns=last.columns,
            pixel_spacing=last.pixel_spacing,
            slice_thickness=last.slice_thickness,
            window=(last.window_center, last.window_width),
        )
        for k in range(1, count + 1)
    ]


def make_invalid_files(directory: Path) -> dict[str, Path]:
    """Write files for negative tests under `directory` and return them by kind:

    - "not_dicom": a plain text file.
    - "missing_sop_instance_uid": a Part-10 CT file whose data set lacks SOPInstanceUID
      (0008,0018); the file meta still carries MediaStorageSOPInstanceUID, as a broken modality
      would write it, so a sender that takes the UID from the file meta can put it on the wire.
    - "missing_study_instance_uid": a Part-10 CT file whose data set lacks StudyInstanceUID.
    """
    directory.mkdir(parents=True, exist_ok=True)
    not_dicom = directory / "not_dicom.dcm"
    not_dicom.write_text("This is not a DICOM file, whatever its name says.\n", encoding="ascii")
    result = {"not_dicom": not_dicom}
    for kind, keyword in (
        ("missing_sop_instance_uid", "SOPInstanceUID"),
        ("missing_study_instance_uid", "StudyInstanceUID"),
    ):
        generated = make_study(directory / kind, series_count=1, instances_per_series=1)
        path = generated.files[0]
        ds = dcmread(path)
        delattr(ds, keyword)
        ds.save_as(path, enforce_file_format=True)
        result[kind] = path
    return result


# --- internals ------------------------------------------------------------------------------


def _sop_class_for(modality: str) -> str:
    try:
        return SOP_CLASS_BY_MODALITY[modality]
    except KeyError:
        known = ", ".join(sorted(SOP_CLASS_BY_MODALITY))
        raise ValueError(f"unsupported modality {modality!r} (supported: {known})") from None


def _ds(value: float) -> str:
    """A DS value of at most 16 characters."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.4e}"


def _age(birth_date: str, on_date: str) -> str:
    try:
        born = dt.datetime.strptime(birth_date, "%Y%m%d").date()
        day = dt.datetime.strptime(on_date, "%Y%m%d").date()
    except ValueError:
        return ""
    years = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
    return f"{max(years, 0):03d}Y"


def _add_minutes(hhmmss: str, minutes: int) -> str:
    try:
        t = dt.datetime.strptime(hhmmss[:6], "%H%M%S")
    except ValueError:
        return hhmmss
    return (t + dt.timedelta(minutes=minutes)).strftime("%H%M%S")


def _charset(*texts: str) -> str:
    try:
        for text in texts:
            text.encode("latin-1")
    except UnicodeEncodeError:
        return "ISO_IR 192"
    return "ISO_IR 100"


@functools.lru_cache(maxsize=16)
def _base_pixels(modality: str, rows: int, columns: int) -> bytes:
    """Little-endian uint16 disc phantom: air outside, a diagonal gradient inside."""
    if modality == "CT":
        # Stored values; with RescaleIntercept -1024: air -1000 HU, inside -150..+250 HU.
        outside, low, high = 24, 874, 1274
    else:
        outside, low, high = 10, 200, 1000
    cy, cx = (rows - 1) / 2.0, (columns - 1) / 2.0
    radius2 = (0.45 * min(rows, columns)) ** 2
    span = max(rows + columns - 2, 1)
    values = array("H")
    for y in range(rows):
        dy2 = (y - cy) ** 2
        for x in range(columns):
            if dy2 + (x - cx) ** 2 <= radius2:
                values.append(low + (high - low) * (x + y) // span)
            else:
                values.append(outside)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def _pixels(modality: str, rows: int, columns: int, instance_number: int) -> bytes:
    """The phantom plus a bright marker line at a row chosen by the instance number."""
    data = bytearray(_base_pixels(modality, rows, columns))
    marker_row = (instance_number * 7) % rows
    bright = min(_MAX_STORED, 2000 if modality == "CT" else 1500)
    line = array("H", [bright]) * columns
    if sys.byteorder == "big":
        line.byteswap()
    start = marker_row * columns * 2
    data[start : start + columns * 2] = line.tobytes()
    return bytes(data)


def _write_instance(
    directory: Path,
    study: GeneratedStudy,
    series: GeneratedSeries,
    *,
    sop_class_uid: str,
    instance_number: int,
    rows: int,
    columns: int,
    pixel_spacing: tuple[float, float],
    slice_thickness: float,
    window: tuple[float, float],
) -> GeneratedInstance:
    sop_instance_uid = str(generate_uid())
    modality = series.modality
    slice_location = round((instance_number - 1) * slice_thickness, 3)
    series_time = _add_minutes(study.study_time, series.series_number)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = _charset(
        study.patient_name, study.referring_physician, study.institution_name
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.AcquisitionDate = study.study_date
    ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = series_time
    ds.AcquisitionTime = series_time
    ds.ContentTime = series_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = modality
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = study.institution_name
    ds.ReferringPhysicianName = study.referring_physician
    ds.StationName = _STATION[modality]
    ds.StudyDescription = study.study_description
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = _MODEL[modality]
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    if study.issuer_of_patient_id:
        ds.IssuerOfPatientID = study.issuer_of_patient_id
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    ds.PatientAge = _age(study.patient_birth_date, study.study_date)
    ds.BodyPartExamined = series.body_part
    ds.SliceThickness = _ds(slice_thickness)
    if modality == "CT":
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "15"
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = "1.5"
        ds.ImagingFrequency = "63.87"
        ds.ImagedNucleus = "1H"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [
        _ds(-columns * pixel_spacing[1] / 2),
        _ds(-rows * pixel_spacing[0] / 2),
        _ds(slice_location),
    ]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(slice_location)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [_ds(pixel_spacing[0]), _ds(pixel_spacing[1])]
    ds.BitsAllocated = 16
    ds.BitsStored = _BITS_STORED
    ds.HighBit = _BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = _ds(window[0])
    ds.WindowWidth = _ds(window[1])
    if modality == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    ds.PixelData = _pixels(modality, rows, columns, instance_number)
    ds["PixelData"].VR = "OW"

    folder = directory / study.study_instance_uid / f"S{series.series_number:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"I{instance_number:05d}-{sop_instance_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return GeneratedInstance(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        instance_number=instance_number,
        rows=rows,
        columns=columns,
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        slice_thickness=float(slice_thickness),
        slice_location=float(slice_location),
        window_center=float(window[0]),
        window_width=float(window[1]),
        path=path,
    )
