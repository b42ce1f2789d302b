"""The modality worklist without Orthanc: the sidecar's items and directory, the plugin's cache
against a matcher that follows Orthanc 1.10.1's rules, the entry script with a fake ``orthanc``,
and the rendered Orthanc configuration."""

import dataclasses
import enum
import io
import json
import os
import random
import re
import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian

import worklist_cache
from sidecar.launcher.orthanc import OrthancLayout, plugin_environment, render_configuration
from sidecar.worklist.directory import WorklistDirectory, WorklistDirectoryError
from sidecar.worklist.items import (
    MODALITY_WORKLIST_FIND,
    WorklistItem,
    encode,
    index_keys,
    worklist_dataset,
)

import fake_orthanc  # also puts plugin/ on sys.path for worklist_cache
from fake_orthanc import FakeOrthanc

BRUSSELS = ZoneInfo("Europe/Brussels")


def make_item(key: str = "1", **changes: Any) -> WorklistItem:
    fields: dict[str, Any] = {
        "key": key,
        "accession_number": f"ACC{key}",
        "requested_procedure_id": f"RP{key}",
        "requested_procedure_description": "CT thorax with contrast",
        "study_instance_uid": f"1.2.826.0.1.3680043.10.1.{key}",
        "patient_id": f"PAT{key}",
        "issuer_of_patient_id": "HOSPITAL",
        "patient_name": "DOE^JANE",
        "patient_birth_date": date(1961, 7, 4),
        "patient_sex": "F",
        "referring_physician": "HOUSE^GREGORY",
        "modality": "CT",
        "scheduled_station_aet": "CT01",
        "scheduled_start": datetime(2024, 3, 30, 23, 30, tzinfo=UTC),
        "step_description": "Thorax",
        "step_id": f"SPS{key}",
        "priority": "ROUTINE",
    }
    fields.update(changes)
    return WorklistItem(**fields)


def parse(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


# --- the item as DICOM ---------------------------------------------------------------------------


def test_dataset_carries_every_worklist_attribute_with_its_vr() -> None:
    ds = worklist_dataset(make_item("7", priority="URGENT"), BRUSSELS)

    expected_top = {
        "AccessionNumber": ("SH", "ACC7"),
        "RequestedProcedureID": ("SH", "RP7"),
        "RequestedProcedureDescription": ("LO", "CT thorax with contrast"),
        "RequestedProcedurePriority": ("SH", "HIGH"),  # URGENT has no DICOM term of its own
        "StudyInstanceUID": ("UI", "1.2.826.0.1.3680043.10.1.7"),
        "PatientID": ("LO", "PAT7"),
        "IssuerOfPatientID": ("LO", "HOSPITAL"),
        "PatientName": ("PN", "DOE^JANE"),
        "PatientBirthDate": ("DA", "19610704"),
        "PatientSex": ("CS", "F"),
        "ReferringPhysicianName": ("PN", "HOUSE^GREGORY"),
    }
    assert {k: (ds[k].VR, str(ds[k].value)) for k in expected_top} == expected_top
    assert "SpecificCharacterSet" not in ds  # plain ASCII needs none
    (step,) = ds.ScheduledProcedureStepSequence
    expected_step = {
        "Modality": ("CS", "CT"),
        "ScheduledStationAETitle": ("AE", "CT01"),
        # 23:30 UTC on 30 March is 00:30 the next day in Brussels (CET, UTC+1).
        "ScheduledProcedureStepStartDate": ("DA", "20240331"),
        "ScheduledProcedureStepStartTime": ("TM", "003000"),
        "ScheduledProcedureStepDescription": ("LO", "Thorax"),
        "ScheduledProcedureStepID": ("SH", "SPS7"),
        "ScheduledProcedureStepStatus": ("CS", "SCHEDULED"),
        "ScheduledPerformingPhysicianName": ("PN", ""),
    }
    assert {k: (step[k].VR, str(step[k].value)) for k in expected_step} == expected_step


@pytest.mark.parametrize(("priority", "dicom"), [("STAT", "STAT"), ("ROUTINE", "ROUTINE")])
def test_priority_maps_to_requested_procedure_priority(priority: str, dicom: str) -> None:
    assert worklist_dataset(make_item(priority=priority), BRUSSELS).RequestedProcedurePriority == (
        dicom
    )


def test_start_is_written_in_the_given_zone_across_daylight_saving() -> None:
    summer = make_item(scheduled_start=datetime(2024, 7, 1, 7, 15, 9, tzinfo=UTC))
    step = worklist_dataset(summer, BRUSSELS).ScheduledProcedureStepSequence[0]
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == (
        "20240701",
        "091509",  # CEST, UTC+2
    )
    assert index_keys(summer, BRUSSELS)["ScheduledProcedureStepStartDate"] == "20240701"


def test_unknown_birth_date_is_an_empty_type_2_value() -> None:
    ds = worklist_dataset(make_item(patient_birth_date=None), BRUSSELS)
    assert "PatientBirthDate" in ds
    assert ds.PatientBirthDate == ""


def test_encoded_file_is_part_10_worklist_and_deterministic() -> None:
    data = encode(make_item(), BRUSSELS)
    ds = parse(data)

    assert data[128:132] == b"DICM"
    assert ds.file_meta.MediaStorageSOPClassUID == MODALITY_WORKLIST_FIND
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert encode(make_item(), BRUSSELS) == data
    assert encode(make_item(step_description="Abdomen"), BRUSSELS) != data


def test_non_ascii_names_are_utf8_with_iso_ir_192() -> None:
    item = make_item(
        patient_name="Łukasiewicz^Zoë=ウカシェヴィチ", referring_physician="Müller^Jürgen"
    )
    data = encode(item, BRUSSELS)
    ds = parse(data)

    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Łukasiewicz^Zoë=ウカシェヴィチ"
    assert str(ds.ReferringPhysicianName) == "Müller^Jürgen"
    assert "Łukasiewicz".encode() in data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"key": "../etc"}, "worklist key"),
        ({"key": ".hidden"}, "worklist key"),
        ({"accession_number": "A" * 17}, "accession_number is longer than 16 characters"),
        ({"accession_number": " "}, "accession_number is required"),
        ({"patient_id": ""}, "patient_id is required"),
        ({"step_id": ""}, "step_id is required"),
        ({"patient_id": "P1\\P2"}, "backslash"),
        ({"step_description": "line\nbreak"}, "control"),
        ({"patient_name": "A" * 65 + "^B"}, "patient_name is longer than 64 characters"),
        ({"referring_physician": "A^B^C^D^E^F"}, "more than five name components"),
        ({"study_instance_uid": "1.2.03"}, "not a DICOM UID"),
        ({"study_instance_uid": "1." + "2" * 70}, "longer than 64 characters (DICOM UI)"),
        ({"modality": "ct"}, "modality"),
        ({"scheduled_station_aet": "ÉCHO1"}, "ASCII"),
        ({"patient_sex": "X"}, "patient_sex"),
        ({"priority": "HIGH"}, "priority"),
        ({"scheduled_start": datetime(2024, 3, 1, 9, 0)}, "timezone-aware"),
    ],
)
def test_invalid_items_are_refused_with_the_field_named(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make_item(**changes)


# --- the directory -------------------------------------------------------------------------------


def wl_files(path: Path) -> set[str]:
    return {p.name for p in path.glob("*.wl")}


def leftovers(path: Path) -> list[str]:
    return [p.name for p in path.iterdir() if p.name.startswith(".tmp-")]


def test_publish_writes_the_file_and_bumps_the_generation(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path / "wl", BRUSSELS)
    before = directory.generation

    directory.publish(make_item("1"))

    assert (tmp_path / "wl" / "1.wl").read_bytes() == encode(make_item("1"), BRUSSELS)
    assert directory.generation > before
    assert directory.keys() == {"1"}
    assert leftovers(tmp_path / "wl") == []


def test_publishing_an_unchanged_item_changes_nothing(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS)
    directory.publish(make_item("1"))
    generation = directory.generation
    inode = (tmp_path / "1.wl").stat().st_ino

    directory.publish(make_item("1"))
    assert directory.generation == generation
    assert (tmp_path / "1.wl").stat().st_ino == inode

    directory.publish(make_item("1", step_description="Abdomen"))
    assert directory.generation > generation
    assert parse((tmp_path / "1.wl").read_bytes()).ScheduledProcedureStepSequence[0][
        "ScheduledProcedureStepDescription"
    ].value == ("Abdomen")


def test_withdraw_removes_the_file_and_reports_unknown_keys(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS)
    directory.publish(make_item("1"))
    directory.publish(make_item("2"))

    assert directory.withdraw("1") is True
    assert directory.withdraw("1") is False
    assert wl_files(tmp_path) == {"2.wl"}
    assert directory.keys() == {"2"}
    with pytest.raises(ValueError, match="worklist key"):
        directory.withdraw("../2")


def test_replace_all_reconciles_and_keeps_unchanged_files(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS)
    for key in ("1", "2", "3"):
        directory.publish(make_item(key))
    unchanged_inode = (tmp_path / "1.wl").stat().st_ino
    (tmp_path / "stray.wl").write_bytes(b"left by hand")
    (tmp_path / ".tmp-2.wl.dead").write_bytes(b"left by a crash")

    directory.replace_all([make_item("1"), make_item("3", modality="MR"), make_item("4")])

    assert wl_files(tmp_path) == {"1.wl", "3.wl", "4.wl"}
    assert leftovers(tmp_path) == []
    assert (tmp_path / "1.wl").stat().st_ino == unchanged_inode
    assert parse((tmp_path / "3.wl").read_bytes()).ScheduledProcedureStepSequence[0].Modality == (
        "MR"
    )
    assert directory.keys() == {"1", "3", "4"}
    assert len(list(tmp_path.glob("journal-*.jsonl"))) == 1


def test_replace_all_refuses_duplicate_keys_before_touching_anything(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS)
    directory.publish(make_item("1"))
    with pytest.raises(ValueError, match="two worklist items"):
        directory.replace_all([make_item("2"), make_item("2")])
    assert wl_files(tmp_path) == {"1.wl"}


def test_two_writers_on_one_directory_see_each_others_changes(tmp_path: Path) -> None:
    first = WorklistDirectory(tmp_path, BRUSSELS)
    second = WorklistDirectory(tmp_path, BRUSSELS)
    first.publish(make_item("1"))
    second.publish(make_item("2"))

    assert first.withdraw("2") is True
    assert second.keys() == {"1"}
    assert first.generation == second.generation


def test_uncommitted_journal_tail_from_a_crash_is_discarded(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS)
    directory.publish(make_item("1"))
    (journal,) = tmp_path.glob("journal-*.jsonl")
    with journal.open("ab") as stream:  # appended, then the writer died before the marker
        stream.write(b'{"op":"del","key":"1","rev":99}\n{"op":"put","ke')

    fresh = WorklistDirectory(tmp_path, BRUSSELS)
    assert fresh.keys() == {"1"}
    fresh.publish(make_item("2"))

    cache = worklist_cache.WorklistCache(str(tmp_path), log=print)
    cache.refresh()
    assert len(cache) == 2


def test_damaged_marker_stops_publish_and_replace_all_rebuilds(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS)
    directory.publish(make_item("1"))
    (tmp_path / "generation").write_bytes(b"{not json")

    with pytest.raises(WorklistDirectoryError, match="replace_all"):
        WorklistDirectory(tmp_path, BRUSSELS).publish(make_item("2"))

    directory.replace_all([make_item("2")])
    assert directory.keys() == {"2"}
    assert wl_files(tmp_path) == {"2.wl"}


def test_journal_is_compacted_when_it_outgrows_the_items(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS, durable=False)
    for round_number in range(200):
        directory.publish(make_item("1", step_description=f"round {round_number}"))
        directory.publish(make_item("2", step_description=f"round {round_number}"))
    (journal,) = tmp_path.glob("journal-*.jsonl")
    assert len(journal.read_bytes().splitlines()) < 2 * 2 + 256 + 1
    assert directory.keys() == {"1", "2"}


# --- a matcher with Orthanc 1.10.1's rules -------------------------------------------------------
# Read in Orthanc's HierarchicalMatcher and DatabaseLookup: the query's Specific Character Set and
# group lengths are ignored; an empty value is universal; a sequence with no item or one empty item
# is universal; a sequence missing from the worklist matches; otherwise one of its items must match
# every key of the query's single item. A constrained attribute missing from the worklist fails.
# DA/DT/TM with "-" are ranges (split at the first "-", string comparison); a "\\" makes a list;
# "*" and "?" are wildcards for AE CS LO LT PN SH ST UC UR UT; anything else is equality. Matching
# is case-sensitive except for PN ("CaseSensitivePN": false by default).

_WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def _value_matches(vr: str, query: str, value: str) -> bool:
    norm: Callable[[str], str] = _fold if vr == "PN" else (lambda s: s)
    if vr in ("DA", "DT", "TM") and "-" in query:
        lower, _, upper = query.partition("-")
        return (not lower or value >= lower) and (not upper or value <= upper)
    if "\\" in query:
        return norm(value) in {norm(part) for part in query.split("\\")}
    if vr in _WILDCARD_VRS and ("*" in query or "?" in query):
        pattern = "".join(
            ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in norm(query)
        )
        return re.fullmatch(pattern, norm(value), re.DOTALL) is not None
    return norm(value) == norm(query)


def orthanc_is_match(query: Dataset, item: Dataset) -> bool:
    for element in query:
        if element.tag == 0x00080005 or element.tag.element == 0:
            continue
        if element.VR == "SQ":
            items = list(element.value)
            if not items or (len(items) == 1 and len(items[0]) == 0):
                continue
            if element.tag not in item:
                continue
            if not any(orthanc_is_match(items[0], child) for child in item[element.tag].value):
                return False
            continue
        wanted = _text(element.value)
        if wanted == "":
            continue
        if element.tag not in item:
            return False
        if not _value_matches(element.VR, wanted, _text(item[element.tag].value)):
            return False
    return True


def short_json(ds: Dataset) -> dict[str, Any]:
    """Orthanc's DicomToJsonFormat.SHORT for what a worklist query holds."""
    result: dict[str, Any] = {}
    for element in ds:
        if element.tag.group == 2 or element.tag.element == 0:
            continue
        tag = f"{element.tag.group:04x},{element.tag.element:04x}"
        if element.VR == "SQ":
            result[tag] = [short_json(child) for child in element.value]
        else:
            result[tag] = _text(element.value)
    return result


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MODALITY_WORKLIST_FIND
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3")
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


_PARSED: dict[bytes, Dataset] = {}  # worklist files parsed once per run: the fake stays fast


class FakeWorklistQuery:
    """The plugin's WorklistQuery: the query as DICOM, and Orthanc's match on an item."""

    def __init__(self, query: Dataset) -> None:
        self.dataset = query
        self.dicom = to_bytes(query)
        self.match_calls = 0

    def WorklistGetDicomQuery(self) -> bytes:
        return self.dicom

    def WorklistIsMatch(self, dicom: bytes) -> bool:
        self.match_calls += 1
        item = _PARSED.get(dicom)
        if item is None:
            item = _PARSED[dicom] = parse(dicom)
        return orthanc_is_match(self.dataset, item)


class FakeWorklistAnswers:
    def __init__(self) -> None:
        self.answers: list[bytes] = []

    def WorklistAddAnswer(self, query: object, dicom: bytes) -> None:
        self.answers.append(dicom)


class DicomToJsonFormat(enum.IntEnum):
    FULL = 1
    SHORT = 2
    HUMAN = 3


class DicomToJsonFlags(enum.IntEnum):
    NONE = 0


class WorklistFakeOrthanc(FakeOrthanc):
    """FakeOrthanc plus what the worklist glue uses."""

    DicomToJsonFormat = DicomToJsonFormat
    DicomToJsonFlags = DicomToJsonFlags

    def __init__(self) -> None:
        super().__init__()
        self.worklist_callback: Callable[..., None] | None = None

    def RegisterWorklistCallback(self, callback: Callable[..., None]) -> None:
        if self.worklist_callback is not None:
            raise RuntimeError("Can only register one Python worklist callback")
        self.worklist_callback = callback

    def DicomBufferToJson(self, dicom: bytes, fmt: int, flags: int, max_length: int) -> str:
        assert (fmt, flags, max_length) == (DicomToJsonFormat.SHORT, DicomToJsonFlags.NONE, 0)
        return json.dumps(short_json(parse(dicom)))

    def c_find(self, query: Dataset) -> list[Dataset]:
        assert self.worklist_callback is not None, "no worklist callback registered"
        answers = FakeWorklistAnswers()
        self.worklist_callback(answers, FakeWorklistQuery(query), "MODALITY", "ORTHANC")
        return [parse(dicom) for dicom in answers.answers]


def mwl_query(**keys: str) -> Dataset:
    """A query: top-level keywords, and ``Step_<Keyword>`` inside a single step item."""
    ds = Dataset()
    step = Dataset()
    for name, value in keys.items():
        if name.startswith("Step_"):
            setattr(step, name[5:], value)
        else:
            setattr(ds, name, value)
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def accessions(datasets: list[Dataset]) -> set[str]:
    return {str(ds.AccessionNumber) for ds in datasets}


# --- the plugin's cache --------------------------------------------------------------------------


class CountingReader:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, path: str) -> bytes:
        self.paths.append(os.path.basename(path))
        with open(path, "rb") as stream:
            return stream.read()

    def item_reads(self) -> list[str]:
        names = [name for name in self.paths if name.endswith(".wl")]
        self.paths.clear()
        return names


@pytest.fixture
def published(tmp_path: Path) -> Iterator[tuple[WorklistDirectory, worklist_cache.WorklistCache]]:
    directory = WorklistDirectory(tmp_path, BRUSSELS, durable=False)
    directory.replace_all(make_item(str(n)) for n in range(1, 6))
    cache = worklist_cache.WorklistCache(str(tmp_path), log=print)
    yield directory, cache


def everything() -> worklist_cache.QueryFilter:
    return worklist_cache.QueryFilter({})


def test_cache_holds_exactly_the_published_files(
    published: tuple[WorklistDirectory, worklist_cache.WorklistCache], tmp_path: Path
) -> None:
    _, cache = published
    assert cache.refresh() is True
    assert sorted(cache.candidates(everything())) == sorted(
        p.read_bytes() for p in tmp_path.glob("*.wl")
    )


def test_unchanged_directory_costs_one_marker_read(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS, durable=False)
    directory.replace_all(make_item(str(n)) for n in range(1, 6))
    reader = CountingReader()
    cache = worklist_cache.WorklistCache(str(tmp_path), log=print, read_file=reader)
    cache.refresh()
    assert len(reader.item_reads()) == 5

    assert cache.refresh() is False
    assert reader.paths == ["generation"]


def test_a_change_rereads_only_the_changed_file(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS, durable=False)
    directory.replace_all(make_item(str(n)) for n in range(1, 6))
    reader = CountingReader()
    cache = worklist_cache.WorklistCache(str(tmp_path), log=print, read_file=reader)
    cache.refresh()
    reader.item_reads()

    directory.publish(make_item("3", step_description="Abdomen"))
    directory.withdraw("5")
    cache.refresh()

    assert reader.item_reads() == ["3.wl"]
    assert len(cache) == 4
    assert encode(make_item("3", step_description="Abdomen"), BRUSSELS) in cache.candidates(
        everything()
    )

    # replace_all starts a new journal: still only the changed file is read.
    directory.replace_all([*(make_item(str(n)) for n in (1, 2, 4)), make_item("6")])
    cache.refresh()
    assert sorted(reader.item_reads()) == ["6.wl"]
    assert len(cache) == 4


def test_recreated_directory_is_read_again_from_scratch(tmp_path: Path) -> None:
    WorklistDirectory(tmp_path / "a", BRUSSELS).replace_all([make_item("1")])
    cache = worklist_cache.WorklistCache(str(tmp_path / "a"), log=print)
    cache.refresh()
    (tmp_path / "a").rename(tmp_path / "old")
    # Same key, same revision numbers, different content: only the lineage tells them apart.
    WorklistDirectory(tmp_path / "a", BRUSSELS).replace_all([make_item("1", modality="MR")])

    cache.refresh()
    (dicom,) = cache.candidates(everything())
    assert parse(dicom).ScheduledProcedureStepSequence[0].Modality == "MR"


def test_missing_directory_serves_nothing_and_logs_once(tmp_path: Path) -> None:
    logs: list[str] = []
    cache = worklist_cache.WorklistCache(str(tmp_path / "absent"), log=logs.append)
    cache.refresh()
    cache.refresh()
    assert cache.candidates(everything()) == []
    assert len(logs) == 1


def test_damaged_marker_keeps_the_previous_items_and_logs_once(tmp_path: Path) -> None:
    WorklistDirectory(tmp_path, BRUSSELS).replace_all(make_item(str(n)) for n in range(1, 6))
    logs: list[str] = []
    cache = worklist_cache.WorklistCache(str(tmp_path), log=logs.append)
    cache.refresh()
    (tmp_path / "generation").write_bytes(b'{"format": 1, "lineage": "x", "epoch": 99, ')

    assert cache.refresh() is False
    assert cache.refresh() is False
    assert len(cache) == 5
    assert len(logs) == 1
    assert "serving the previous items" in logs[0]


def test_missing_file_is_skipped_with_a_warning(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS)
    directory.replace_all([make_item("1"), make_item("2")])
    (tmp_path / "2.wl").unlink()
    logs: list[str] = []
    cache = worklist_cache.WorklistCache(str(tmp_path), log=logs.append)
    cache.refresh()
    assert len(cache) == 1
    assert logs == ["worklist item 2 (rev 1) has no file; not offered"]


# --- pre-filter: never drops an item Orthanc would match -----------------------------------------

ACCESSIONS = ["A1", "A2", "A3", "a1", "B10"]
PATIENTS = ["P1", "P2", "P3"]
MODALITIES = ["CT", "MR", "US"]
STATIONS = ["CT01", "CT02", "MR01", ""]
DATES = [datetime(2024, 5, day, 9, 0, tzinfo=UTC) for day in (1, 2, 3, 5, 9)]


def random_items(rng: random.Random, count: int) -> list[WorklistItem]:
    return [
        make_item(
            str(n),
            accession_number=rng.choice(ACCESSIONS),
            patient_id=rng.choice(PATIENTS),
            patient_name=rng.choice(["DOE^JANE", "Doe^John", "SMITH^ANNA"]),
            modality=rng.choice(MODALITIES),
            scheduled_station_aet=rng.choice(STATIONS),
            scheduled_start=rng.choice(DATES),
        )
        for n in range(count)
    ]


def random_value(rng: random.Random, pool: list[str]) -> str | None:
    existing = rng.choice([p for p in pool if p] or ["X"])
    return rng.choice(
        [
            None,  # key absent
            "",  # universal
            existing,
            existing.lower(),
            "NOPE",
            f"{existing}\\{rng.choice(pool)}",
            f"{existing[:1]}*",
            f"?{existing[1:]}",
            "*",
            f" {existing}",
            f"{existing}\\",
        ]
    )


def random_date(rng: random.Random) -> str | None:
    days = ["20240501", "20240502", "20240503", "20240505", "20240509", "20240430"]
    a, b = rng.choice(days), rng.choice(days)
    return rng.choice(
        [None, "", a, f"{a}-{b}", f"{a}-", f"-{b}", "-", f" {a}-{b}", "2024050*", f"{a}\\{b}"]
    )


def random_query(rng: random.Random) -> Dataset:
    ds = Dataset()
    for keyword, pool in (("AccessionNumber", ACCESSIONS), ("PatientID", PATIENTS)):
        value = random_value(rng, pool)
        if value is not None:
            setattr(ds, keyword, value)
    if rng.random() < 0.3:
        ds.PatientName = rng.choice(["doe^*", "DOE^JANE", "SMITH*", ""])
    shape = rng.choice(["absent", "empty", "empty item", "item", "item", "item"])
    if shape == "absent":
        return ds
    step = Dataset()
    if shape == "item":
        for keyword, pool in (("Modality", MODALITIES), ("ScheduledStationAETitle", STATIONS)):
            value = random_value(rng, pool)
            if value is not None:
                setattr(step, keyword, value)
        start = random_date(rng)
        if start is not None:
            step.ScheduledProcedureStepStartDate = start
    ds.ScheduledProcedureStepSequence = [] if shape == "empty" else [step]
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")  # odd dates on purpose
def test_prefilter_agrees_with_orthanc_matching_on_random_queries(tmp_path: Path) -> None:
    rng = random.Random(20240501)
    items = random_items(rng, 60)
    directory = WorklistDirectory(tmp_path, BRUSSELS, durable=False)
    directory.replace_all(items)
    cache = worklist_cache.WorklistCache(str(tmp_path), log=print)
    cache.refresh()
    every_file = cache.candidates(everything())
    narrowed = 0

    for _ in range(600):
        query = random_query(rng)
        reference = FakeWorklistQuery(query)
        expected = sorted(f for f in every_file if reference.WorklistIsMatch(f))
        query_filter = worklist_cache.QueryFilter.from_query(short_json(query))
        candidates = cache.candidates(query_filter)
        matched = sorted(f for f in candidates if reference.WorklistIsMatch(f))
        assert matched == expected, f"query {short_json(query)}"
        narrowed += len(candidates) < len(every_file)

    assert narrowed > 300  # and it does narrow most queries down


@pytest.mark.parametrize(
    ("query", "values", "date_range"),
    [
        ({"0008,0050": "A1 "}, {"AccessionNumber": {"A1"}}, None),
        ({"0010,0020": "P1\\P2"}, {"PatientID": {"P1", "P2"}}, None),
        ({"0008,0050": "A*", "0010,0020": ""}, {}, None),
        ({"0040,0100": [{"0040,0002": "20240501-20240502"}]}, {}, ("20240501", "20240502")),
        ({"0040,0100": [{"0040,0002": "20240501"}]}, {}, ("20240501", "20240501")),
        ({"0040,0100": [{"0040,0002": "-20240502"}]}, {}, ("", "20240502")),
        ({"0040,0100": [{"0040,0002": " 20240501-"}]}, {}, None),
        ({"0040,0100": [{"0008,0060": "CT", "0040,0001": None}]}, {"Modality": {"CT"}}, None),
        ({"0040,0100": [{"0008,0060": "CT"}, {"0008,0060": "MR"}]}, {}, None),
        ({"0040,0100": []}, {}, None),
    ],
)
def test_query_filter_takes_only_what_it_can_match_exactly(
    query: dict[str, Any], values: dict[str, set[str]], date_range: tuple[str, str] | None
) -> None:
    query_filter = worklist_cache.QueryFilter.from_query(query)
    assert {k: set(v) for k, v in query_filter.values.items()} == values
    assert query_filter.date_range == date_range


# --- the handler and the entry script ------------------------------------------------------------


def load_worklist_bridge(worklist_dir: Path | None, **environ: str) -> WorklistFakeOrthanc:
    fake = WorklistFakeOrthanc()
    if worklist_dir is not None:
        environ["WORKLIST_DIR"] = str(worklist_dir)
    fake_orthanc.load_bridge(fake, environ)
    return fake


def test_entry_script_answers_c_find_from_the_directory(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS, durable=False)
    directory.replace_all(
        [
            make_item("1", modality="CT"),
            make_item("2", modality="MR", patient_id="PAT1"),
            make_item("3", modality="CT", scheduled_start=datetime(2024, 4, 2, 9, tzinfo=UTC)),
        ]
    )
    fake = load_worklist_bridge(tmp_path)  # no sidecar settings at all

    assert accessions(fake.c_find(mwl_query(AccessionNumber="ACC2"))) == {"ACC2"}
    assert accessions(fake.c_find(mwl_query(PatientID="PAT1"))) == {"ACC1", "ACC2"}
    by_day = mwl_query(Step_Modality="CT", Step_ScheduledProcedureStepStartDate="20240331")
    assert accessions(fake.c_find(by_day)) == {"ACC1"}
    assert accessions(fake.c_find(mwl_query())) == {"ACC1", "ACC2", "ACC3"}

    directory.withdraw("1")
    assert accessions(fake.c_find(mwl_query())) == {"ACC2", "ACC3"}
    # The stable-study notifier is disabled for want of a token; the worklist does not care.
    assert fake.change_callback is None
    assert any("sidecar bridge DISABLED" in m for m in fake.messages("error"))


def test_handler_calls_orthanc_only_on_candidates(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS, durable=False)
    directory.replace_all(make_item(str(n)) for n in range(50))
    fake = WorklistFakeOrthanc()
    cache = worklist_cache.WorklistCache(str(tmp_path), log=fake.LogWarning)
    handler = worklist_cache.WorklistHandler(
        cache,
        query_json=lambda q: json.loads(fake.DicomBufferToJson(q.WorklistGetDicomQuery(), 2, 0, 0)),
        log=fake.LogWarning,
    )
    query, answers = FakeWorklistQuery(mwl_query(AccessionNumber="ACC7")), FakeWorklistAnswers()

    handler(answers, query, "CT01", "ORTHANC")

    assert query.match_calls == 1
    assert accessions([parse(a) for a in answers.answers]) == {"ACC7"}


def test_unreadable_query_is_matched_against_every_item(tmp_path: Path) -> None:
    WorklistDirectory(tmp_path, BRUSSELS).replace_all([make_item("1"), make_item("2")])
    logs: list[str] = []

    def broken(query: object) -> dict[str, Any]:
        raise RuntimeError("DicomBufferToJson failed")

    cache = worklist_cache.WorklistCache(str(tmp_path), log=logs.append)
    handler = worklist_cache.WorklistHandler(cache, query_json=broken, log=logs.append)
    query, answers = FakeWorklistQuery(mwl_query(AccessionNumber="ACC2")), FakeWorklistAnswers()

    handler(answers, query, "CT01", "ORTHANC")

    assert query.match_calls == 2
    assert accessions([parse(a) for a in answers.answers]) == {"ACC2"}
    assert logs == ["worklist query not pre-filtered (RuntimeError: DicomBufferToJson failed)"]


def test_item_orthanc_cannot_parse_is_skipped_not_fatal(tmp_path: Path) -> None:
    WorklistDirectory(tmp_path, BRUSSELS).replace_all([make_item("1"), make_item("2")])
    (tmp_path / "1.wl").write_bytes(b"not DICOM")  # damaged behind the writer's back
    fake = load_worklist_bridge(tmp_path)

    assert accessions(fake.c_find(mwl_query())) == {"ACC2"}
    assert any("worklist item skipped" in m for m in fake.messages("warning"))


def test_without_worklist_dir_no_worklist_callback_is_registered() -> None:
    fake = load_worklist_bridge(None, WORKLIST_DIR=" ")
    assert fake.worklist_callback is None


# --- Orthanc's configuration ---------------------------------------------------------------------


def layout(tmp_path: Path, **changes: Any) -> OrthancLayout:
    return OrthancLayout(work_dir=tmp_path, http_port=1, dicom_port=2, **changes)


def test_python_mechanism_configures_the_plugin_and_opens_worklist_find(tmp_path: Path) -> None:
    chosen = layout(tmp_path, worklist_dir=tmp_path / "wl")
    config = render_configuration(chosen)

    assert config["DicomAlwaysAllowFindWorklist"] is True
    assert "Worklists" not in config
    assert not any("ModalityWorklists" in p for p in config["Plugins"])
    assert plugin_environment(chosen)["WORKLIST_DIR"] == str(tmp_path / "wl")


def test_modality_worklists_mechanism_and_no_python_callback(tmp_path: Path) -> None:
    chosen = layout(tmp_path, worklist_dir=tmp_path / "wl", worklist_mechanism="modality-worklists")
    config = render_configuration(chosen)

    assert config["Worklists"] == {"Enable": True, "Database": str(tmp_path / "wl")}
    assert config["Plugins"][-1].endswith("libModalityWorklists.so")
    assert plugin_environment(chosen)["WORKLIST_DIR"] == ""  # one worklist handler in total


def test_worklist_can_be_restricted_to_registered_modalities(tmp_path: Path) -> None:
    config = render_configuration(layout(tmp_path, worklist_dir=tmp_path, worklist_any_ae=False))
    assert config["DicomAlwaysAllowFindWorklist"] is False


def test_no_worklist_dir_means_no_worklist(tmp_path: Path) -> None:
    chosen = layout(tmp_path)
    config = render_configuration(chosen)
    assert "DicomAlwaysAllowFindWorklist" not in config
    assert "Worklists" not in config
    assert plugin_environment(chosen)["WORKLIST_DIR"] == ""


def test_python_mechanism_without_the_plugin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Python plugin"):
        render_configuration(layout(tmp_path, worklist_dir=tmp_path, with_plugin=False))


def test_items_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_item().modality = "MR"  # type: ignore[misc]


def test_update_writes_a_batch_as_one_journal_append(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS)
    directory.publish(make_item("1"))
    directory.publish(make_item("2"))
    generation = directory.generation
    (journal,) = tmp_path.glob("journal-*.jsonl")
    before = len(journal.read_bytes().splitlines())

    withdrawn = directory.update(
        publish=[make_item("3"), make_item("4"), make_item("2")],  # 2 unchanged
        withdraw=["1", "9"],  # 9 was never offered
    )

    assert withdrawn == {"1"}
    assert wl_files(tmp_path) == {"2.wl", "3.wl", "4.wl"}
    assert directory.keys() == {"2", "3", "4"}
    records = [json.loads(line) for line in journal.read_bytes().splitlines()[before:]]
    assert [(r["op"], r["key"], r["rev"]) for r in records] == [
        ("put", "3", generation + 1),
        ("put", "4", generation + 2),
        ("del", "1", generation + 3),
    ]
    assert directory.generation == generation + 3
    cache = worklist_cache.WorklistCache(str(tmp_path), log=print)
    cache.refresh()
    assert len(cache) == 3
    assert leftovers(tmp_path) == []


def test_update_refuses_contradictions_before_touching_anything(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path, BRUSSELS)
    directory.publish(make_item("1"))
    generation = directory.generation
    with pytest.raises(ValueError, match="both published and withdrawn"):
        directory.update(publish=[make_item("2")], withdraw=["2"])
    with pytest.raises(ValueError, match="two worklist items"):
        directory.update(publish=[make_item("3"), make_item("3")])
    with pytest.raises(ValueError, match="worklist key"):
        directory.update(withdraw=["../1"])
    assert directory.generation == generation
    assert wl_files(tmp_path) == {"1.wl"}
