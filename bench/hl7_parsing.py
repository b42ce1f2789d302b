"""Per-message cost of parsing and acknowledging an ORM, hl7apy against this package.

Run: `.venv/bin/python bench/hl7_parsing.py` (a few seconds). The figures in the docstrings of
hl7/orders.py and hl7/ack.py come from here; rerun before building on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from hl7.ack import build_ack, build_with_hl7apy
from hl7.errors import ErrorLocation, RequiredFieldMissing
from hl7.header import read_header
from hl7.orders import parse_order_message

#: A typical five-segment ORM^O01 (MSH, PID, PV1, ORC, OBR).
ORM = (
    "MSH|^~\\&|HIS|GENHOSP|RIS|RADIOLOGY|20240301101500+0100||ORM^O01^ORM_O01|MSG00001|P|2.5.1\r"
    "PID|1||4711-0815^^^GENHOSP^MR||Mustermann^Max^Peter||19700102|M|||Hauptstr. 1^^Berlin\r"
    "PV1|1|O|RAD^^^GENHOSP||||1234^Welby^Marcus^^^Dr|5678^Kildare^James^^^Dr\r"
    "ORC|NW|PLC-1001^HIS|FIL-2001^RIS||SC||^^^20240302081500^^S||20240301101500|||"
    "9012^House^Gregory^^^Dr\r"
    "OBR|1|PLC-1001^HIS|FIL-2001^RIS|CTTHAB^CT Thorax and Abdomen^LOCAL|||||||||"
    "Persistent cough|||9012^House^Gregory^^^Dr||ACC-24-0001|RP-7788|||||CT|||"
    "^^^20240302081500^^S||||R05^Cough^I10\r"
)


def per_call_ms(function: Callable[[], object], minimum_seconds: float = 0.5) -> float:
    """Mean time per call after one warm-up call, repeated for at least `minimum_seconds`."""
    function()
    calls = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < minimum_seconds:
        function()
        calls += 1
    return elapsed / calls * 1000


def main() -> None:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message, parse_segment

    segments = [segment for segment in ORM.split("\r") if segment]
    header = read_header(ORM)
    error = RequiredFieldMissing("PID-3 patient identifier list has no id", ErrorLocation("PID"))
    now = datetime.now(UTC)
    values = {
        "sending_application": "RIS",
        "sending_facility": "RADIOLOGY",
        "receiving_application": "HIS",
        "receiving_facility": "GENHOSP",
        "timestamp": "20240301101500+0000",
        "message_type": "ACK^O01^ACK",
        "control_id": "0123456789ABCDEF0123",
        "processing_id": "P",
        "character_set": "",
        "ack_code": "AE",
        "acknowledged_control_id": "MSG00001",
        "text": "PID-3 patient identifier list has no id",
        "error_location": "PID^1^3",
        "error_code": "101^Required field missing^HL70357",
    }

    def hl7apy_parse(find_groups: bool, level: int) -> Callable[[], object]:
        return lambda: parse_message(ORM, find_groups=find_groups, validation_level=level)

    cases: dict[str, Callable[[], object]] = {}
    for find_groups in (True, False):
        for level_name in ("TOLERANT", "STRICT"):
            if level_name == "STRICT" and not find_groups:
                continue  # hl7apy refuses segments outside their groups when strict
            level = getattr(VALIDATION_LEVEL, level_name)
            name = f"hl7apy parse_message find_groups={find_groups} {level_name.lower()}"
            cases[name] = hl7apy_parse(find_groups, level)
    cases["hl7apy parse_segment x5 (tolerant)"] = lambda: [
        parse_segment(s, version="2.5.1", validation_level=VALIDATION_LEVEL.TOLERANT)
        for s in segments
    ]
    cases["hl7.orders.parse_order_message (str)"] = lambda: parse_order_message(ORM)
    encoded = ORM.encode()
    cases["hl7.orders.parse_order_message (bytes)"] = lambda: parse_order_message(encoded)
    cases["hl7apy ACK build (AE with ERR)"] = lambda: build_with_hl7apy(
        "2.5.1", values, with_error=True
    )
    cases["hl7.ack.build_ack AE + encode"] = lambda: build_ack(
        header, error, control_id="0123456789ABCDEF0123", timestamp=now
    ).encode()
    cases["hl7.ack.build_ack AA + encode"] = lambda: build_ack(
        header, control_id="0123456789ABCDEF0123", timestamp=now
    ).encode()
    for name, function in cases.items():
        print(f"{per_call_ms(function):9.3f} ms  {name}")


if __name__ == "__main__":
    main()
