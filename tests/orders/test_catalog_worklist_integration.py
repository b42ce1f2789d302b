"""The catalog on the worklist, against the real parts: the catalog imported from a CSV over the
API, an ORM naming only the procedure code in OBR-4 gets AA, and its worklist item (the plugin in
Orthanc, dcmtk findscu -W) carries the catalog's modality, station, protocol and procedure code:
a modality querying by its own AE title finds its items and only its items."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from hl7.ack import parse_ack
from hl7.mllp.client import MllpClient

from findscu import find_dcmtk, findscu_keys
from hl7_samples import ORM_NW_251, with_field
from stack import Stack, wait_for

pytestmark = pytest.mark.orthanc

CATALOG = (
    "code,codingSystem,description,modality,stationAeTitle,stationName,protocolCode\r\n"
    "71020,C4,XR chest 2 views,DX,DX01,DX ROOM 1,CHEST-PA-LAT\r\n"
    "70450,C4,CT head,CT,CT01,CT ROOM 1,HEAD-NC\r\n"
)
#: The return keys beyond the usual ones: the code sequences and the station name.
CODE_KEYS = [
    "RequestedProcedureCodeSequence[0].CodeValue",
    "RequestedProcedureCodeSequence[0].CodingSchemeDesignator",
    "RequestedProcedureCodeSequence[0].CodeMeaning",
    "ScheduledProcedureStepSequence[0].ScheduledStationName",
    "ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence[0].CodeValue",
    "ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence[0].CodingSchemeDesignator",
    "ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence[0].CodeMeaning",
]


def order(control_id: str, accession: str, code: str, uid_suffix: str) -> str:
    """ORM_NW_251 with only a procedure code in OBR-4 and no OBR-24."""
    text = with_field(ORM_NW_251, "MSH", 10, control_id)
    text = with_field(text, "ORC", 2, f"PLC-{accession}")
    text = with_field(text, "OBR", 2, f"PLC-{accession}")
    text = with_field(text, "OBR", 4, code)
    text = with_field(text, "OBR", 18, accession)
    text = with_field(text, "OBR", 24, "")
    return with_field(text, "ZDS", 1, f"1.2.826.0.1.3680043.9.7.1.{uid_suffix}")


def by_station(stack: Stack, out: Path, station: str) -> list[Dataset]:
    keys = findscu_keys({}, {"ScheduledStationAETitle": station})
    keys += [arg for key in CODE_KEYS for arg in ("-k", key)]
    return find_dcmtk(stack.layout.dicom_port, keys, out)


def test_a_station_finds_its_items_and_only_its_items(stack: Stack, tmp_path: Path) -> None:
    imported = stack.api(
        "POST",
        "/api/procedures/import",
        files={"file": ("catalog.csv", CATALOG.encode(), "text/csv")},
    )
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"rows": 2, "created": 2, "updated": 0}
    with MllpClient("127.0.0.1", stack.mllp_port) as his:
        assert parse_ack(his.send(order("M1", "ACC-DX-1", "71020", "1"))).code == "AA"
        assert parse_ack(his.send(order("M2", "ACC-CT-1", "70450", "2"))).code == "AA"

    seen: list[list[Dataset]] = []

    def both_offered() -> bool:
        seen.append(by_station(stack, tmp_path / f"dx{len(seen)}", "DX01"))
        return len(seen[-1]) == 1

    wait_for(both_offered, timeout=15, what="the DX01 item on the worklist")
    (item,) = seen[-1]
    assert item.AccessionNumber == "ACC-DX-1"
    step = item.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle) == ("DX", "DX01")
    assert step.ScheduledStationName == "DX ROOM 1"
    (protocol,) = step.ScheduledProtocolCodeSequence
    assert (protocol.CodeValue, protocol.CodingSchemeDesignator) == ("CHEST-PA-LAT", "99LOCAL")
    (requested,) = item.RequestedProcedureCodeSequence
    assert (requested.CodeValue, requested.CodingSchemeDesignator) == ("71020", "C4")
    assert requested.CodeMeaning == "XR chest 2 views"

    ct = by_station(stack, tmp_path / "ct", "CT01")
    assert [answer.AccessionNumber for answer in ct] == ["ACC-CT-1"]
    assert by_station(stack, tmp_path / "other", "MR01") == []
