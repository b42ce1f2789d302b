"""The patient data the tests hand the service, as one pattern: the whole run's log lines are
searched for it (conftest.py, `logs_hold_no_patient_data`), and none may match.

Names, ids and birth dates of the HL7 samples, the Orthanc builders and the reporting helpers,
the canaries of the hostile tests, and the shapes of what tests/support/dicom_factory.py generates
(MRN + nine digits, FAMILY^GIVEN from its lists).
"""

from __future__ import annotations

import re

from dicom_factory import FAMILY_NAMES

FIXED = (
    # tests/support/hl7_samples.py
    "Müller-Lüdenscheidt",
    "4711-0815",
    "19700102",
    "Ødegård",
    "55501",
    "19501231",
    "Smith^Anna",
    "900123",
    "198512241530",
    "Doe^John",
    "19800808",
    # tests/support/builders.py, tests/support/reporting.py
    "DOE^JANE",
    "PAT-0001",
    # tests/patients
    "KOWALSK",
    "KOWALCZYK",
    "NOWAK^PIOTR",
    "MRN-7",
    "19610405",
    "1961-04-05",
    # hostile tests' canaries
    "LEAK-CANARY",
    "PAT-CANARY",
)

PATTERN = re.compile(
    "|".join(
        [
            *(re.escape(value) for value in FIXED),
            r"\bMRN[0-9]{9}\b",
            r"\b(?:" + "|".join(FAMILY_NAMES) + r")\^[A-Z]",
        ]
    ),
    re.IGNORECASE,
)


#: Random identifiers the service logs (generated request ids, notification ids, Orthanc's
#: resource ids): hex digits, which hold a patient id of digits ("55501") by chance often enough
#: over a whole run's thousands of ids to fail it. They are masked before the search.
RANDOM_IDS = re.compile(
    r"\b(?:[0-9a-f]{32}"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|[0-9a-f]{8}(?:-[0-9a-f]{8}){4})\b"
)


def found_in(text: str) -> list[str]:
    """Each line of `text` holding patient data (first 20), random identifiers aside."""
    return [line for line in text.splitlines() if PATTERN.search(RANDOM_IDS.sub("<id>", line))][:20]
