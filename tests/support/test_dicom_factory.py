"""Tests of the synthetic DICOM factory and the C-STORE senders.

The pure tests read the written files back with pydicom. The `orthanc` tests start a throwaway
Orthanc (private launcher below, to be replaced by the project's own OrthancProcess) and send
studies to it with DCMTK's storescu and with pynetdicom, checking the result through the REST API.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dicom_factory import (
    GeneratedStudy,
    add_instances,
    make_invalid_files,
    make_study,
)
from dicom_senders import (
    STORESCU,
    EchoError,
    _parse_storescu_log,
    echo,
    store_pynetdicom,
    storescu_dcmtk,
)
from stack import free_port

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
HOST = "127.0.0.1"


# --- pure tests of the factory --------------------------------------------------------------


def _pixel_values(ds: pydicom.Dataset) -> list[int]:
    data = ds.PixelData
    return [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]


def test_make_study_writes_part10_files_with_the_promised_tags(tmp_path: Path) -> None:
    study = make_study(tmp_path, series_count=2, instances_per_series=3, rows=32, columns=48)

    assert len(study.series) == 2
    assert [s.series_number for s in study.series] == [1, 2]
    assert study.instance_count == 6
    assert len(study.files) == 6
    assert study.files == tuple(i.path for i in study.instances)
    for series in study.series:
        assert [i.instance_number for i in series.instances] == [1, 2, 3]
        for inst in series.instances:
            raw = inst.path.read_bytes()
            assert raw[128:132] == b"DICM", "Part-10 preamble and prefix"
            ds = pydicom.dcmread(inst.path)
            meta = ds.file_meta
            assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert meta.MediaStorageSOPClassUID == CTImageStorage
            assert meta.MediaStorageSOPInstanceUID == inst.sop_instance_uid
            assert ds.SOPClassUID == CTImageStorage
            assert ds.SOPInstanceUID == inst.sop_instance_uid
            assert ds.StudyInstanceUID == study.study_instance_uid
            assert ds.SeriesInstanceUID == series.series_instance_uid
            assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
            assert ds.AccessionNumber == study.accession_number
            assert ds.PatientID == study.patient_id
            assert str(ds.PatientName) == study.patient_name
            assert ds.PatientBirthDate == study.patient_birth_date
            assert len(study.patient_birth_date) == 8 and study.patient_birth_date.isdigit()
            assert ds.PatientSex == study.patient_sex
            assert ds.StudyDate == study.study_date
            assert ds.StudyTime == study.study_time
            assert ds.StudyDescription == study.study_description
            assert str(ds.ReferringPhysicianName) == study.referring_physician
            assert ds.BodyPartExamined == series.body_part == study.body_part
            assert ds.Modality == series.modality == "CT"
            assert ds.SeriesDescription == series.description
            assert ds.SeriesNumber == series.series_number
            assert ds.InstanceNumber == inst.instance_number
            assert (ds.Rows, ds.Columns) == (inst.rows, inst.columns) == (32, 48)
            assert tuple(float(v) for v in ds.PixelSpacing) == inst.pixel_spacing
            assert float(ds.SliceThickness) == inst.slice_thickness
            assert float(ds.SliceLocation) == inst.slice_location
            assert float(ds.WindowCenter) == inst.window_center
            assert float(ds.WindowWidth) == inst.window_width
            assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
            assert ds.PixelRepresentation == 0
            assert ds.SamplesPerPixel == 1
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert len(ds.PixelData) == 32 * 48 * 2
            values = _pixel_values(ds)
            assert min(values) > 0, "no zero pixels: the viewer shows something"
            assert max(values) < 4096, "fits BitsStored 12"
            assert len(set(values)) > 10, "a gradient, not a flat image"


def test_mr_study_uses_mr_image_storage(tmp_path: Path) -> None:
    study = make_study(tmp_path, modality="MR", series_count=1, instances_per_series=2)

    ds = pydicom.dcmread(study.files[0])
    assert ds.SOPClassUID == MRImageStorage
    assert ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
    assert ds.Modality == study.series[0].modality == "MR"
    assert ds.MagneticFieldStrength == 1.5
    assert "RescaleIntercept" not in ds


def test_explicit_arguments_are_written(tmp_path: Path) -> None:
    study = make_study(
        tmp_path,
        series_count=1,
        instances_per_series=1,
        accession_number="ACC123",
        patient_id="PID-42",
        patient_name="DOE^JANE",
        patient_birth_date="19800229",
        patient_sex="F",
        study_instance_uid="1.2.3.4.5.6789",
        study_date="20240131",
        study_time="081500",
        study_description="CT HEAD",
        referring_physician="WHO^DOCTOR",
        body_part="HEAD",
        pixel_spacing=(0.5, 0.6),
        slice_thickness=1.25,
    )

    ds = pydicom.dcmread(study.files[0])
    assert (ds.AccessionNumber, ds.PatientID, str(ds.PatientName)) == (
        "ACC123",
        "PID-42",
        "DOE^JANE",
    )
    assert (ds.PatientBirthDate, ds.PatientSex, ds.PatientAge) == ("19800229", "F", "043Y")
    assert (ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime) == (
        "1.2.3.4.5.6789",
        "20240131",
        "081500",
    )
    assert (ds.StudyDescription, str(ds.ReferringPhysicianName), ds.BodyPartExamined) == (
        "CT HEAD",
        "WHO^DOCTOR",
        "HEAD",
    )
    assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.6]
    assert float(ds.SliceThickness) == 1.25
    assert study.instances[0].pixel_spacing == (0.5, 0.6)


def test_non_latin1_names_get_utf8_character_set(tmp_path: Path) -> None:
    study = make_study(tmp_path, series_count=1, instances_per_series=1, patient_name="山田^太郎")

    ds = pydicom.dcmread(study.files[0])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "山田^太郎"


def test_uids_and_identifiers_are_unique_across_calls(tmp_path: Path) -> None:
    first = make_study(tmp_path, series_count=2, instances_per_series=3)
    second = make_study(tmp_path, series_count=2, instances_per_series=3)

    def uids(study: GeneratedStudy) -> set[str]:
        found = {study.study_instance_uid}
        for series in study.series:
            found |= {series.series_instance_uid, series.frame_of_reference_uid}
            found |= set(series.sop_instance_uids)
        return found

    assert len(uids(first)) == 1 + 2 * 2 + 6, "no UID repeats inside one study"
    assert not uids(first) & uids(second)
    assert first.accession_number != second.accession_number
    assert first.patient_id != second.patient_id
    assert len(first.accession_number) <= 16, "AccessionNumber is SH (16 chars)"
    assert not set(first.files) & set(second.files)
    assert all(p.is_file() for p in first.files + second.files)


def test_seed_makes_demographics_reproducible_but_not_uids(tmp_path: Path) -> None:
    a = make_study(tmp_path, series_count=1, instances_per_series=1, seed=7)
    b = make_study(tmp_path, series_count=1, instances_per_series=1, seed=7)

    assert (a.patient_name, a.patient_birth_date, a.patient_sex) == (
        b.patient_name,
        b.patient_birth_date,
        b.patient_sex,
    )
    assert a.study_instance_uid != b.study_instance_uid
    assert a.accession_number != b.accession_number


def test_instances_have_distinct_pixel_data(tmp_path: Path) -> None:
    study = make_study(tmp_path, series_count=1, instances_per_series=4)

    pixels = {pydicom.dcmread(p).PixelData for p in study.files}
    assert len(pixels) == 4


def test_late_instances_join_the_right_series(tmp_path: Path) -> None:
    study = make_study(tmp_path / "first", series_count=2, instances_per_series=3)

    late = add_instances(study, tmp_path / "late", series_index=1, count=2)

    target = study.series[1]
    assert [i.instance_number for i in late] == [4, 5]
    assert not {i.sop_instance_uid for i in late} & set(study.sop_instance_uids)
    for inst in late:
        assert inst.path.is_relative_to(tmp_path / "late")
        ds = pydicom.dcmread(inst.path)
        assert ds.SOPInstanceUID == inst.sop_instance_uid
        assert ds.StudyInstanceUID == study.study_instance_uid
        assert ds.SeriesInstanceUID == target.series_instance_uid
        assert ds.SeriesInstanceUID != study.series[0].series_instance_uid
        assert ds.FrameOfReferenceUID == target.frame_of_reference_uid
        assert ds.SeriesNumber == target.series_number
        assert ds.SeriesDescription == target.description
        assert ds.AccessionNumber == study.accession_number
        assert ds.PatientID == study.patient_id
        assert (ds.Rows, ds.Columns) == (target.instances[0].rows, target.instances[0].columns)
    updated = study.with_instances(1, late)
    assert [len(s.instances) for s in updated.series] == [3, 5]
    assert updated.instance_count == 8
    assert updated.files[-2:] == tuple(i.path for i in late)
    assert study.instance_count == 6, "the original description is unchanged"


def test_invalid_files_are_what_they_claim(tmp_path: Path) -> None:
    files = make_invalid_files(tmp_path)

    assert set(files) == {"not_dicom", "missing_sop_instance_uid", "missing_study_instance_uid"}
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(files["not_dicom"])

    no_sop = pydicom.dcmread(files["missing_sop_instance_uid"])
    assert "SOPInstanceUID" not in no_sop
    assert "StudyInstanceUID" in no_sop
    assert no_sop.file_meta.MediaStorageSOPInstanceUID, "file meta still names an instance"

    no_study = pydicom.dcmread(files["missing_study_instance_uid"])
    assert "StudyInstanceUID" not in no_study
    assert "SOPInstanceUID" in no_study
    assert "SeriesInstanceUID" in no_study


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported modality"):
        make_study(tmp_path, modality="US")
    with pytest.raises(ValueError):
        make_study(tmp_path, series_count=0)
    study = make_study(tmp_path, series_count=1, instances_per_series=1)
    with pytest.raises(IndexError):
        add_instances(study, tmp_path, series_index=3, count=1)


# --- pure tests of the senders --------------------------------------------------------------


def test_storescu_log_is_matched_to_files_in_order() -> None:
    a, b, c, d = (Path(f"/x/{n}.dcm") for n in "abcd")
    log = "\n".join(
        [
            "I: checking input files ...",
            f"W: missing SOP class (or instance) in file: {b}, ignoring file",
            "I: Requesting Association",
            f"I: Sending file: {a}",
            "D: DIMSE Status                  : 0x0000: Success",
            f"I: Sending file: {c}",
            "D: DIMSE Status                  : 0xa700: Refused: Out of resources",
            f"I: Sending file: {d}",
            "E: Store SCU Failed: 0006:0317 Peer aborted Association",
        ]
    )

    result = _parse_storescu_log([a, b, c, d], log)

    assert [r.status for r in result] == [0x0000, None, 0xA700, None]
    assert [r.ok for r in result] == [True, False, False, False]
    assert "ignoring file" in result[1].message
    assert "Peer aborted" in result[3].message


def test_store_pynetdicom_refuses_a_non_dicom_file_before_connecting(tmp_path: Path) -> None:
    files = make_invalid_files(tmp_path)

    with pytest.raises(ValueError, match="not a DICOM"):
        # port 9 (discard) is never contacted: validation happens first
        store_pynetdicom([files["not_dicom"]], HOST, 9, "NOBODY")


def test_echo_raises_when_nobody_listens() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(EchoError):
        echo(HOST, port, "NOBODY", timeout=2)
    assert time.monotonic() - started < 10


# --- throwaway Orthanc (private; the project's OrthancProcess will replace it) ---------------


@dataclass
class _Orthanc:
    """A throwaway Orthanc on ephemeral 127.0.0.1 ports with its storage under `workdir`."""

    workdir: Path
    aet: str = "ORTHANC"
    http_port: int = 0
    dicom_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def start(self, deadline_s: float = 60) -> None:
        self.http_port, self.dicom_port = free_port(), free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "pytest-orthanc",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
        }
        cfg = self.workdir / "cfg.json"
        cfg.write_text(json.dumps(config, indent=2), encoding="utf-8")
        log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                [str(ORTHANC_BIN), str(cfg)],
                cwd=self.workdir,
                env=dict(os.environ, TCP_NODELAY="1"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self._wait_ready(deadline_s)

    def _wait_ready(self, deadline_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + deadline_s
        last_error = "not polled yet"
        http_ready = False
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self.process.returncode} during start-up:\n"
                    f"{self.log_tail()}"
                )
            try:
                if not http_ready:
                    response = httpx.get(f"{self.url}/system", timeout=2)
                    response.raise_for_status()
                    http_ready = response.json().get("DicomAet") == self.aet
                if http_ready and echo(HOST, self.dicom_port, self.aet, timeout=2) == 0:
                    return
            except (httpx.HTTPError, EchoError, ValueError) as exc:
                last_error = repr(exc)
            # Pace the probes by waiting on the process itself: returns at once if it dies.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.1)
        self.stop()
        raise RuntimeError(
            f"Orthanc not ready within {deadline_s} s (last error: {last_error}):\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: str) -> Any:
        response = httpx.post(f"{self.url}{path}", content=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def find_study(self, study_instance_uid: str) -> dict[str, Any]:
        matches = [
            s
            for s in self.get("/studies?expand")
            if s["MainDicomTags"].get("StudyInstanceUID") == study_instance_uid
        ]
        assert len(matches) == 1, f"expected one study {study_instance_uid}, got {matches}"
        study: dict[str, Any] = matches[0]
        return study

    def series_instance_counts(self, study_instance_uid: str) -> dict[str, int]:
        """SeriesInstanceUID -> number of instances Orthanc holds, for one study."""
        study = self.find_study(study_instance_uid)
        series = self.get(f"/studies/{study['ID']}/series")
        return {s["MainDicomTags"]["SeriesInstanceUID"]: len(s["Instances"]) for s in series}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Orthanc]:
    if not ORTHANC_BIN.exists():
        pytest.skip(f"{ORTHANC_BIN} not installed (apt-get install orthanc)")
    server = _Orthanc(workdir=tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.process is not None and server.process.poll() is not None


def _expected_counts(study: GeneratedStudy) -> dict[str, int]:
    return {s.series_instance_uid: len(s.instances) for s in study.series}


@pytest.mark.orthanc
def test_storescu_round_trip(orthanc: _Orthanc, tmp_path: Path) -> None:
    if not STORESCU.exists():
        pytest.skip(f"{STORESCU} not installed (apt-get install dcmtk)")
    study = make_study(tmp_path, series_count=2, instances_per_series=3)

    result = storescu_dcmtk(study.files, HOST, orthanc.dicom_port, orthanc.aet)

    assert result.statuses == [0] * 6, result.stderr[-2000:]
    assert result.all_success
    assert orthanc.series_instance_counts(study.study_instance_uid) == _expected_counts(study)
    tags = orthanc.find_study(study.study_instance_uid)
    assert tags["MainDicomTags"]["AccessionNumber"] == study.accession_number
    assert tags["PatientMainDicomTags"]["PatientID"] == study.patient_id


@pytest.mark.orthanc
def test_pynetdicom_round_trip_with_late_instances(orthanc: _Orthanc, tmp_path: Path) -> None:
    study = make_study(tmp_path, series_count=2, instances_per_series=3)

    statuses = store_pynetdicom(study.files, HOST, orthanc.dicom_port, orthanc.aet)

    assert statuses == [0] * 6
    assert orthanc.series_instance_counts(study.study_instance_uid) == _expected_counts(study)

    # Late instances, sent as in-memory datasets this time.
    late = add_instances(study, tmp_path, series_index=0, count=2)
    datasets = [pydicom.dcmread(i.path) for i in late]
    assert store_pynetdicom(datasets, HOST, orthanc.dicom_port, orthanc.aet) == [0, 0]
    updated = study.with_instances(0, late)
    assert orthanc.series_instance_counts(study.study_instance_uid) == _expected_counts(updated)
    assert list(_expected_counts(updated).values()) == [5, 3]


def _is_failure(status: int) -> bool:
    """Neither success (0x0000) nor a warning (0x0001, 0xB000-0xBFFF)."""
    return status != 0x0000 and status != 0x0001 and not 0xB000 <= status <= 0xBFFF


@pytest.mark.orthanc
def test_dataset_without_sop_instance_uid_is_refused(orthanc: _Orthanc, tmp_path: Path) -> None:
    files = make_invalid_files(tmp_path)
    broken = files["missing_sop_instance_uid"]
    announced_uid = str(pydicom.dcmread(broken).file_meta.MediaStorageSOPInstanceUID)
    before = set(orthanc.get("/instances"))

    statuses = store_pynetdicom([broken], HOST, orthanc.dicom_port, orthanc.aet)

    assert len(statuses) == 1
    assert _is_failure(statuses[0]), hex(statuses[0])
    assert set(orthanc.get("/instances")) == before
    assert orthanc.post("/tools/lookup", announced_uid) == []


@pytest.mark.orthanc
def test_storescu_reports_each_file_of_a_mixed_batch(orthanc: _Orthanc, tmp_path: Path) -> None:
    if not STORESCU.exists():
        pytest.skip(f"{STORESCU} not installed (apt-get install dcmtk)")
    good = make_study(tmp_path / "good", series_count=1, instances_per_series=2)
    bad = make_invalid_files(tmp_path / "bad")
    batch = [
        good.files[0],
        bad["not_dicom"],
        bad["missing_study_instance_uid"],
        bad["missing_sop_instance_uid"],
        good.files[1],
    ]

    result = storescu_dcmtk(batch, HOST, orthanc.dicom_port, orthanc.aet)

    assert [f.path for f in result.files] == batch
    statuses = result.statuses
    assert statuses[0] == 0 and statuses[4] == 0, "good files around bad ones still stored"
    assert statuses[1] is None and statuses[3] is None, "storescu skips unreadable files"
    assert statuses[2] is not None and _is_failure(statuses[2])
    assert not result.all_success
    assert [f.path for f in result.failed] == batch[1:4]
    assert orthanc.series_instance_counts(good.study_instance_uid) == _expected_counts(good)
