"""Realistic DICOM images and studies for the quality analyzer, clean or with injected defects,
seeded and deterministic (UIDs included: the same seed gives the same study; give another seed
for a fresh one).

`ImageFactory(seed)` starts studies (`factory.study(...)`, a `StudyBuilder`); a builder's
methods add one image each (a CR/DX chest or hand, a mammogram, a CT slice, a blank image, a
copy of an earlier image, a structured report) and record, per image, the quality checks it
was built to fail (`defects`); `case()` hands over the images, the order they are compared with
(a `StudyContext`) and the study-level defects. The pixels come from quality_phantoms.

Datasets are complete Part-10 instances (file meta, Explicit VR Little Endian): pydicom decodes
them as they are and `ds.save_as(path, enforce_file_format=True)` writes a file Orthanc takes.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    XRayAngiographicImageStorage,
    generate_uid,
)

from sidecar.analyses.findings import StudyContext
from sidecar.analyses.quality import (
    CHECK_BLANK,
    CHECK_BODY_PART,
    CHECK_CLIPPED,
    CHECK_COUNT,
    CHECK_DUPLICATE,
    CHECK_EXPOSURE,
    CHECK_MODALITY,
)

import quality_phantoms as phantoms

__all__ = [
    "CHECK_BLANK",
    "CHECK_BODY_PART",
    "CHECK_CLIPPED",
    "CHECK_COUNT",
    "CHECK_DUPLICATE",
    "CHECK_EXPOSURE",
    "CHECK_MODALITY",
    "Case",
    "ImageFactory",
    "StudyBuilder",
]

_SOP_CLASS = {
    "XA": XRayAngiographicImageStorage,
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "MG": DigitalMammographyXRayImageStorageForPresentation,
    "CT": CTImageStorage,
    "OT": SecondaryCaptureImageStorage,
}
CTStorage = Literal["unsigned12", "signed16", "signed12"]


@dataclass
class Case:
    """One generated study: its instances in the order they arrive, what it was ordered as,
    the image checks each image was built to fail, and the study-level checks it fails."""

    name: str
    context: StudyContext
    images: list[Dataset]
    defects: dict[str, set[str]] = field(default_factory=dict)  # SOP Instance UID: checks
    study_defects: set[str] = field(default_factory=set)

    def with_defect(self, check: str) -> set[str]:
        """SOP Instance UIDs of the images built to fail `check`."""
        return {uid for uid, checks in self.defects.items() if check in checks}


class ImageFactory:
    """Deterministic source of UIDs and noise for generated studies."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._numbers = itertools.count(1)

    def next_number(self) -> int:
        return next(self._numbers)

    def uid(self) -> UID:
        return generate_uid(entropy_srcs=[f"quality-images {self.seed} {self.next_number()}"])

    def study(
        self,
        name: str,
        *,
        ordered_modality: str | None = None,
        ordered_body_part: str | None = None,
    ) -> StudyBuilder:
        return StudyBuilder(self, name, ordered_modality, ordered_body_part)


class StudyBuilder:
    """One study being generated (see the module's docstring)."""

    def __init__(
        self,
        factory: ImageFactory,
        name: str,
        ordered_modality: str | None,
        ordered_body_part: str | None,
    ) -> None:
        self.factory = factory
        self.rng = factory.rng
        self.name = name
        self.uid = factory.uid()
        self.ordered_modality = ordered_modality
        self.ordered_body_part = ordered_body_part
        self.images: list[Dataset] = []
        self.defects: dict[str, set[str]] = {}
        self.study_defects: set[str] = set()
        self.number = factory.next_number()
        self._series: dict[tuple[str, str, str], tuple[str, int]] = {}
        self._instances: dict[str, int] = {}
        self.pending: set[str] = set()  # defects of the image being built

    # --- projection radiography --------------------------------------------------------

    def chest(
        self,
        *,
        modality: str = "CR",
        body_part: str = "CHEST",
        bits: int = 12,
        monochrome1: bool = False,
        dark_background: bool = False,
        collimation: bool | Literal["oblique"] = False,
        dense_bone: bool = False,
        deviation_index: float | None = 0.0,
        clip: float | None = None,
        stretch: float | None = None,
        signed: bool = False,
        rows: int = 256,
        columns: int = 256,
        defects: Iterable[str] = (),
        series: str = "",
    ) -> Dataset:
        """A PA chest radiograph. `deviation_index` also sets the noise (a quarter of the
        target exposure doubles it); `clip` (the share of the lungs burnt out to black: the
        stored minimum, or the maximum in MONOCHROME1) and `stretch` (a grey-scale gain: both
        ends) saturate it."""
        noise = 0.012 * 10 ** (-(deviation_index or 0.0) / 20)
        phantom = phantoms.chest(
            self.rng,
            rows,
            columns,
            bits=bits,
            noise=noise,
            dark_background=dark_background,
            collimation=collimation,
            dense_bone=dense_bone,
        )
        pixels = self._saturate(phantom, bits, None if clip is None else (clip, "minimum"), stretch)
        return self._projection(
            pixels,
            modality,
            body_part,
            bits,
            monochrome1,
            deviation_index,
            defects,
            series,
            signed=signed,
        )

    def hand(
        self,
        *,
        bits: int = 12,
        monochrome1: bool = False,
        deviation_index: float | None = 0.0,
        clip: float | None = None,
        defects: Iterable[str] = (),
    ) -> Dataset:
        """A PA hand; `clip` burns that share of its soft tissue to black."""
        phantom = phantoms.hand(self.rng, bits=bits)
        pixels = self._saturate(phantom, bits, None if clip is None else (clip, "minimum"), None)
        return self._projection(
            pixels, "DX", "HAND", bits, monochrome1, deviation_index, defects, ""
        )

    def mammogram(
        self,
        *,
        bits: int = 12,
        extent: float = 0.7,
        mlo: bool = False,
        right: bool = False,
        monochrome1: bool = False,
        deviation_index: float | None = None,
        clip: tuple[float, phantoms.End] | None = None,
        defects: Iterable[str] = (),
    ) -> Dataset:
        """A processed mammogram; `clip` saturates a share of its dense tissue to white
        ("maximum") or of its fat to black ("minimum"), the background left as it was."""
        phantom = phantoms.mammogram(self.rng, bits=bits, extent=extent, mlo=mlo, right=right)
        pixels = self._saturate(phantom, bits, clip, None, where=phantom.body)
        return self._projection(
            pixels, "MG", "BREAST", bits, monochrome1, deviation_index, defects, ""
        )

    def blank(
        self,
        *,
        modality: str = "CR",
        body_part: str = "CHEST",
        bits: int = 12,
        level: float = 0.05,
        noise: float = 0.0,
        marker: bool = False,
        rows: int = 256,
        columns: int = 256,
        window: bool = False,
        flat_field: bool = False,
    ) -> Dataset:
        """An image with nothing in it: `level` and `noise` (standard deviation) are shares of
        the bit depth's range; `flat_field` is an exposure with nobody in the beam (the heel
        effect's gradient). It is built to fail the blank check."""
        high = (1 << bits) - 1
        if flat_field:
            pixels = phantoms.flat_field(
                self.rng, rows, columns, level=round(level * high), noise=noise * high, high=high
            )
        else:
            pixels = phantoms.blank(
                self.rng,
                rows,
                columns,
                level=round(level * high),
                noise=noise * high,
                high=high,
                marker=marker,
            )
        ds = self._projection(pixels, modality, body_part, bits, False, None, (CHECK_BLANK,), "")
        if window:  # the protocol's preset, not one computed from the image
            ds.WindowCenter, ds.WindowWidth = str(high // 2), str(high)
        return ds

    def cine(
        self,
        frames: list[Any],
        *,
        modality: str = "XA",
        body_part: str = "CHEST",
        bits: int = 12,
        defects: Iterable[str] = (),
    ) -> Dataset:
        """A multi-frame image of `frames` (stored values, rows x columns each)."""
        ds = self._image(
            np.stack(frames), modality, body_part, bits, False, "MONOCHROME2", defects, "cine"
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        return ds

    # --- CT ----------------------------------------------------------------------------

    def ct_series(
        self,
        count: int,
        *,
        region: Literal["chest", "abdomen", "head"] = "chest",
        body_part: str | None = None,
        storage: CTStorage = "unsigned12",
        metal: bool = False,
        size: int = 128,
        series: str = "",
    ) -> list[Dataset]:
        """`count` slices of a CT series, stored as `storage` says: 12 bits unsigned with a
        rescale intercept of -1024 and padding 0, 16 bits signed with padding -2000, or 12
        bits signed (values clamp at 2047 HU) with padding at -2048."""
        part = body_part or region.upper()
        made = []
        for k in range(count):
            position = -1.0 + 2.0 * k / max(1, count - 1)
            hu, fov = phantoms.ct_slice(
                self.rng, size, region=region, position=position, metal=metal
            )
            made.append(self.ct_image(hu, fov, body_part=part, storage=storage, series=series))
        return made

    def ct_image(
        self,
        hu: Any,
        fov: Any,
        *,
        body_part: str = "CHEST",
        storage: CTStorage = "unsigned12",
        defects: Iterable[str] = (),
        series: str = "",
    ) -> Dataset:
        if storage == "unsigned12":
            bits, signed, intercept, padding = 12, False, -1024.0, 0
            stored = np.clip(np.rint(hu + 1024), 0, 4095)
        elif storage == "signed16":
            bits, signed, intercept, padding = 16, True, 0.0, -2000
            stored = np.clip(np.rint(hu), -1024, 32767)
        else:
            bits, signed, intercept, padding = 12, True, 0.0, -2048
            stored = np.clip(np.rint(hu), -1024, 2047)
        stored = np.where(fov, stored, padding).astype(np.int64)
        ds = self._image(stored, "CT", body_part, bits, signed, "MONOCHROME2", defects, series)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(intercept), "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelPaddingValue = padding
        ds["PixelPaddingValue"].VR = "SS" if signed else "US"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        return ds

    # --- other instances ---------------------------------------------------------------

    def copy_of(self, original: Dataset, *, new_series: bool = False) -> Dataset:
        """The same pixels under a new SOP Instance UID (and instance number), as an image
        sent twice or stored in place of another is. Built to fail the duplicate check."""
        ds = copy.deepcopy(original)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = self.factory.uid()
        if new_series:
            ds.SeriesInstanceUID = self.factory.uid()
            ds.SeriesNumber = int(ds.SeriesNumber) + 100
        ds.InstanceNumber = int(ds.InstanceNumber) + 1000
        return self._add(ds, (CHECK_DUPLICATE,))

    def screen_capture(self) -> Dataset:
        """A secondary capture (a dose screen): modality OT, no body part, 8 bits."""
        pixels = (self.rng.uniform(0, 1, (128, 128)) > 0.9).astype(np.int64) * 255
        ds = self._image(pixels, "OT", "", 8, False, "MONOCHROME2", (), "dose screen")
        del ds.BodyPartExamined
        return ds

    def structured_report(self) -> Dataset:
        """An instance without pixel data (a dose report)."""
        ds = self._base("SR", ComprehensiveSRStorage, "dose report")
        ds.ValueType = "CONTAINER"
        return self._add(ds, ())

    def case(
        self, *, performed: int | None = None, missing: int = 0, contradicts: Iterable[str] = ()
    ) -> Case:
        """The study as generated. `performed` is the image count MPPS reported; `missing`
        adds that many images to it that never arrived (a study-level defect); `contradicts`
        names the order checks the study was built to fail (its order set on purpose against
        its images)."""
        self.study_defects.update(contradicts)
        if missing:
            self.study_defects.add(CHECK_COUNT)
            images = sum(1 for ds in self.images if "PixelData" in ds)
            performed = images + missing
        context = StudyContext(
            study_instance_uid=self.uid,
            ordered_modality=self.ordered_modality,
            ordered_body_part=self.ordered_body_part,
            performed_image_count=performed,
        )
        return Case(self.name, context, list(self.images), self.defects, self.study_defects)

    # --- internals ---------------------------------------------------------------------

    def _saturate(
        self,
        phantom: phantoms.Phantom,
        bits: int,
        clip: tuple[float, phantoms.End] | None,
        gain: float | None,
        where: Any = None,
    ) -> Any:
        high = (1 << bits) - 1
        pixels = phantom.pixels
        if clip is not None or gain is not None:
            self.pending.add(CHECK_CLIPPED)
        if clip is not None:
            share, end = clip
            target = phantom.target
            if end == "minimum" and phantom.dark_target is not None:
                target = phantom.dark_target
            pixels = phantoms.clip_share(pixels, target, share, end, high, where)
        if gain is not None:
            pixels = phantoms.stretch(pixels, gain, high)
        return pixels

    def _projection(
        self,
        pixels: Any,
        modality: str,
        body_part: str,
        bits: int,
        monochrome1: bool,
        deviation_index: float | None,
        defects: Iterable[str],
        series: str,
        signed: bool = False,
    ) -> Dataset:
        high = (1 << bits) - 1
        if monochrome1:
            pixels = phantoms.invert(pixels, high)
        if signed:  # the same grey scale, stored from -2**(bits-1)
            pixels = pixels - (1 << (bits - 1))
        defects = set(defects)
        if deviation_index is not None and abs(deviation_index) > 3:
            defects.add(CHECK_EXPOSURE)
        photometric = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
        ds = self._image(pixels, modality, body_part, bits, signed, photometric, defects, series)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ImagerPixelSpacing = ["0.15", "0.15"]
        if modality in ("DX", "MG"):
            ds.PresentationIntentType = "FOR PRESENTATION"
        if deviation_index is not None:
            ds.DeviationIndex = f"{deviation_index:.2f}"
            ds.ExposureIndex = f"{400 * 10 ** (deviation_index / 10):.1f}"
            ds.TargetExposureIndex = "400"
        return ds

    def _image(
        self,
        pixels: Any,
        modality: str,
        body_part: str,
        bits: int,
        signed: bool,
        photometric: str,
        defects: Iterable[str],
        series: str,
    ) -> Dataset:
        ds = self._base(modality, _SOP_CLASS[modality], series, body_part)
        allocated = 8 if bits <= 8 else 16
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits, bits - 1
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelSpacing = ["0.7", "0.7"]
        dtype = f"<{'i' if signed else 'u'}{allocated // 8}"
        ds.PixelData = np.ascontiguousarray(pixels).astype(dtype).tobytes()
        ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
        return self._add(ds, defects)

    def _base(self, modality: str, sop_class: UID, series: str, body_part: str = "") -> Dataset:
        key = (modality, body_part, series)
        if key not in self._series:
            self._series[key] = (self.factory.uid(), len(self._series) + 1)
        series_uid, series_number = self._series[key]
        instance = self._instances[series_uid] = self._instances.get(series_uid, 0) + 1
        sop_uid = self.factory.uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = self.uid, series_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240301"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = f"QA{self.factory.seed % 10000:04d}{self.number:06d}"
        ds.StudyID = str(self.number)
        ds.Modality = modality
        ds.Manufacturer = "SYNTHETIC"
        ds.PatientName = f"PHANTOM^QUALITY{self.number}"
        ds.PatientID = f"QP{self.factory.seed}-{self.number}"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.BodyPartExamined = body_part
        ds.SeriesNumber, ds.InstanceNumber = series_number, instance
        ds.SeriesDescription = series or f"{modality} {body_part}".strip()
        return ds

    def _add(self, ds: Dataset, defects: Iterable[str]) -> Dataset:
        self.images.append(ds)
        checks = set(defects) | self.pending
        self.pending = set()
        if checks:
            self.defects[str(ds.SOPInstanceUID)] = checks
        return ds
