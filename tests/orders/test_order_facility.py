"""An order's facility, from the HL7 field the department names (ORDER_FACILITY_FIELD: MSH-4,
the sending facility, or PV1-3, the facility of the patient's assigned location), checked
before the AA as every value is, over a real MLLP socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from hl7_samples import ORM_NW_251, with_field
from hospital import running_hospital

ORDER = with_field(ORM_NW_251, "PV1", 3, "RAD^^^NORTH-WING")


@pytest.mark.parametrize(("field", "facility"), [("MSH-4", "GENHOSP"), ("PV1-3", "NORTH-WING")])
def test_the_order_takes_its_facility_from_the_configured_field(
    tmp_path: Path, database_url: str, field: str, facility: str
) -> None:
    with running_hospital(tmp_path, database_url, order_facility_field=field) as his:
        ack = his.send(ORDER)
        assert ack.code == "AA", ack.text
        assert his.order("ACC-24-0001")["facilityId"] == facility


def test_a_facility_that_does_not_fit_is_refused_naming_the_field_read(
    tmp_path: Path, database_url: str
) -> None:
    too_long = with_field(ORM_NW_251, "PV1", 3, "RAD^^^" + "W" * 65)
    with running_hospital(tmp_path, database_url, order_facility_field="PV1-3") as his:
        ack = his.send(too_long)
        assert (ack.code, ack.error_code) == ("AE", 102), ack.text
        assert ack.error_location == "PV1^1^3^1^4", ack.error_location
        assert ack.text.startswith("PV1-3.4 assigned location facility is longer than 64")
        assert his.get("/api/imaging-orders")["total"] == 0
        # The same location, named as the facility, once it fits.
        assert his.send(with_field(ORDER, "MSH", 10, "MSG-FITS")).code == "AA"
        assert his.order("ACC-24-0001")["facilityId"] == "NORTH-WING"


def test_an_unknown_facility_field_is_refused_at_start(tmp_path: Path, database_url: str) -> None:
    with (
        pytest.raises(ValueError, match="order_facility_field"),
        running_hospital(tmp_path, database_url, order_facility_field="PV1-4"),
    ):
        pass
