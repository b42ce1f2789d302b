"""A fake OrthancClient (Orthanc's REST API, as the sidecar sees it) for OrthancSync's tests: it
answers from OrthancStudy builders (builders.py) and a change log the test writes, so sync rounds
run without an Orthanc process. (fake_orthanc.py is the plugin's stand-in, inside Orthanc.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from sidecar.ingest.orthanc_client import OrthancNotFound, OrthancUnavailable

from builders import OrthancStudy


class FakeOrthanc:
    """The OrthancClient methods OrthancSync uses, answering from OrthancStudy builders.

    `down` makes every call raise OrthancUnavailable; `fail[method]` makes one method raise the
    given exception; `before_study` runs inside study(), to act while a study is registered.
    """

    def __init__(self) -> None:
        self.studies: dict[str, OrthancStudy] = {}
        self.change_log: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self.changes_since: list[int] = []
        self.down = False
        self.fail: dict[str, Exception] = {}
        self.before_study: Callable[[str], None] | None = None

    # -- test set-up -------------------------------------------------------------------------

    def store(self, study: OrthancStudy) -> OrthancStudy:
        self.studies[study.orthanc_id] = study
        return study

    def delete(self, study: OrthancStudy) -> None:
        del self.studies[study.orthanc_id]

    def log(self, kind: str, resource_id: str) -> None:
        resource_type = {"NewInstance": "Instance", "NewSeries": "Series"}.get(kind, "Study")
        self.change_log.append(
            {
                "Seq": len(self.change_log) + 1,
                "ChangeType": kind,
                "ID": resource_id,
                "ResourceType": resource_type,
                "Path": f"/{resource_type.lower()}s/{resource_id}",
                "Date": "20240115T100000",
            }
        )

    def log_study_arrival(self, study: OrthancStudy) -> None:
        """What Orthanc logs when a study is stored instance by instance, then becomes stable."""
        self.log("NewStudy", study.orthanc_id)
        for series in study.series_json:
            self.log("NewSeries", series["ID"])
            for instance_id in series["Instances"]:
                self.log("NewInstance", instance_id)
        self.log("StableStudy", study.orthanc_id)

    # -- OrthancClient's interface -----------------------------------------------------------

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        if self.down:
            raise OrthancUnavailable(f"{method}: ConnectError")
        if method in self.fail:
            raise self.fail[method]

    def _get(self, orthanc_id: str) -> OrthancStudy:
        if orthanc_id not in self.studies:
            raise OrthancNotFound(f"/studies/{orthanc_id}")
        return self.studies[orthanc_id]

    def system(self) -> dict[str, Any]:
        self._enter("system")
        return {"Version": "1.12.4", "DicomAet": "ORTHANC"}

    def changes(self, since: int, limit: int) -> dict[str, Any]:
        self._enter("changes")
        self.changes_since.append(since)
        page = [c for c in self.change_log if c["Seq"] > since][:limit]
        last = page[-1]["Seq"] if page else max(since, len(self.change_log))
        return {"Changes": page, "Done": last >= len(self.change_log), "Last": last}

    def study(self, orthanc_id: str) -> dict[str, Any]:
        self._enter("study")
        if self.before_study is not None:
            self.before_study(orthanc_id)
        return self._get(orthanc_id).study_json

    def study_series(self, orthanc_id: str) -> list[dict[str, Any]]:
        self._enter("study_series")
        return self._get(orthanc_id).series_json

    def study_instance_ids(self, orthanc_id: str) -> list[str]:
        self._enter("study_instance_ids")
        return self._get(orthanc_id).instance_ids()

    def study_instances_tags(self, orthanc_id: str) -> dict[str, dict[str, Any]]:
        self._enter("study_instances_tags")
        return self._get(orthanc_id).instances_tags

    def studies_with_uid(self, study_instance_uid: str) -> dict[str, str]:
        self._enter("studies_with_uid")
        return {
            study.orthanc_id: str(study.study_json["PatientMainDicomTags"].get("PatientID", ""))
            for study in self.studies.values()
            if study.uid == study_instance_uid
        }

    def parent_study_of_instance(self, instance_id: str) -> str:
        self._enter("parent_study_of_instance")
        for study in self.studies.values():
            if instance_id in study.instance_ids():
                return study.orthanc_id
        raise OrthancNotFound(f"/instances/{instance_id}/study")

    def parent_study_of_series(self, series_id: str) -> str:
        self._enter("parent_study_of_series")
        for study in self.studies.values():
            if any(series["ID"] == series_id for series in study.series_json):
                return study.orthanc_id
        raise OrthancNotFound(f"/series/{series_id}/study")
