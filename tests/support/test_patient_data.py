"""The whole run's log scan (patient_data.found_in) finds patient data, not chance digits in ids."""

from __future__ import annotations

from patient_data import found_in


def test_a_random_id_holding_a_patient_ids_digits_is_not_patient_data() -> None:
    # A generated request id that failed a run: "...72855501447..." holds PID 55501.
    line = '{"message": "GET /api/critical-findings/{finding_id} -> 200", "requestId": '
    assert found_in(line + '"57be7285550144749d49b1e89ed4fa66"}') == []
    assert found_in("study 1f555017-0c3a2b1d-55501aaa-00000000-12345678 registered") == []
    assert found_in("notification 55501abc-1234-4cde-8f00-0123456789ab sent") == []


def test_patient_data_beside_an_id_is_still_found() -> None:
    line = 'requestId "57be7285550144749d49b1e89ed4fa66" patient 55501'
    assert found_in(line) == [line]
    assert found_in("order for Müller-Lüdenscheidt received") != []
    assert found_in("MRN123456789 arrived") != []
