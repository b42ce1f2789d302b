"""The UPS-RS search (PS3.18 11.9, the C-FIND of the worklist) and the work item as it is served.

A search names attributes by keyword or tag, through sequences with dots
(`InputInformationSequence.StudyInstanceUID`, `00404021.0020000D`), and matches them as PS3.4
C.2.2.2 says: an empty value matches anything; a UI value is a list of UIDs (commas or
backslashes); a DA, DT or TM value with a hyphen is a range; `*` and `?` are wildcards in other
strings; a person name is matched without regard to case; else the value is matched exactly.
`limit` (at most 1000, default 100), `offset`, `includefield` and `fuzzymatching` (not done:
always exact) are the common parameters. Every attribute a work item has is returned, so
`includefield` is satisfied whatever it names (it must name attributes, or `all`).

Served, a work item never holds its Transaction UID, and each Input Information item names the
study's WADO-RS address on the front the performer came through (Retrieve URL, 0008,1190).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import case, false
from sqlmodel import col, select

from sidecar.analyses import dicom_json
from sidecar.analyses.models import (
    Analysis,
    AnalysisPriority,
    AnalysisTask,
    Workitem,
    WorkitemState,
)
from sidecar.analyses.workitem_states import PROCEDURE_STEP_STATE, TRANSACTION_UID
from sidecar.core.errors import InvalidRequest
from sidecar.studies.models import Study

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
INPUT_INFORMATION: Final = "00404021"
STUDY_INSTANCE_UID: Final = "0020000D"
RETRIEVE_URL: Final = "00081190"
PRIORITY: Final = "00741200"
LABEL: Final = "00741204"
SOP_INSTANCE_UID: Final = "00080018"
_COMMON: Final = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_RANGE_VRS: Final = frozenset({"DA", "DT", "TM"})
_MAX_FILTERS: Final = 32


@dataclass(frozen=True)
class Filter:
    path: list[str]  # tags, through sequences
    value: str


@dataclass
class Search:
    filters: list[Filter] = field(default_factory=list)
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @property
    def state(self) -> WorkitemState | None:
        """The Procedure Step State asked for, for the database to filter on."""
        for found in self.filters:
            if found.path == [PROCEDURE_STEP_STATE] and found.value:
                try:
                    return WorkitemState(found.value)
                except ValueError:
                    raise InvalidRequest(
                        f"(0074,1000) ProcedureStepState {found.value[:32]!r} is not one of "
                        + ", ".join(state.value for state in WorkitemState)
                    ) from None
        return None


def _path(name: str) -> list[str]:
    tags = [dicom_json.tag_of(part) for part in name.split(".")]
    if not name or len(tags) > 4 or any(tag is None for tag in tags):
        raise InvalidRequest(
            f"{name[:80]!r} is not an attribute: name it by keyword or tag, through sequences"
            " with dots (InputInformationSequence.StudyInstanceUID)"
        )
    return [tag for tag in tags if tag is not None]


def _count(name: str, text: str, most: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 9 or int(text) > most:
        raise InvalidRequest(f"{name} is a whole number of at most {most}")
    return int(text)


def parse_search(parameters: Iterable[tuple[str, str]]) -> Search:
    """The search a query string asks for; InvalidRequest (400) naming what is wrong."""
    search = Search()
    for name, value in parameters:
        if name == "limit":
            search.limit = _count(name, value, MAX_LIMIT) or DEFAULT_LIMIT
        elif name == "offset":
            search.offset = _count(name, value, 10**9)
        elif name == "includefield":
            for included in filter(None, value.split(",")):
                if included != "all":
                    _path(included)
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise InvalidRequest("fuzzymatching is true or false")
        else:
            if len(search.filters) >= _MAX_FILTERS:
                raise InvalidRequest(f"at most {_MAX_FILTERS} matching attributes")
            if len(value) > 1024:
                raise InvalidRequest(f"{name[:80]}: a value of at most 1024 characters")
            search.filters.append(Filter(_path(name), value))
    search.state  # noqa: B018 - refuses an unknown state at once
    return search


def matches(dataset: dict[str, Any], search: Search) -> bool:
    return all(_matches(dataset, wanted) for wanted in search.filters)


def _matches(dataset: dict[str, Any], wanted: Filter) -> bool:
    if wanted.value == "":
        return True  # universal matching
    for element in dicom_json.walk(dataset, wanted.path):
        vr = element.get("vr", "")
        for value in element.get("Value") or []:
            if _value_matches(vr, value, wanted.value):
                return True
    return False


def _value_matches(vr: str, value: Any, wanted: str) -> bool:
    if isinstance(value, dict):  # a person name
        value = value.get("Alphabetic", "")
    text = str(value)
    if vr == "UI":
        return text in re.split(r"[,\\]", wanted)
    if vr in _RANGE_VRS and "-" in wanted:
        low, _, high = wanted.partition("-")
        return (not low or text[: len(low)] >= low) and (not high or text[: len(high)] <= high)
    if "*" in wanted or "?" in wanted:
        pattern = "".join(
            ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in wanted
        )
        flags = re.IGNORECASE if vr == "PN" else 0
        return re.fullmatch(pattern, text, flags | re.DOTALL) is not None
    return text.lower() == wanted.lower() if vr == "PN" else text == wanted


def query(search: Search, visible: list[Any]) -> tuple[Any, bool]:
    """The database's part of the search: the work items the caller may see, the most urgent
    first, then the oldest, narrowed by the filters the database can decide (the state, the
    priority, the analyzer, the UIDs of the work item and of its study); and whether those were
    all of them (then the page is cut in the database, and no row beyond it is read)."""
    urgency = case(
        (col(Analysis.priority) == AnalysisPriority.HIGH, 0),
        (col(Analysis.priority) == AnalysisPriority.LOW, 2),
        else_=1,
    )
    statement = (
        select(Workitem)
        .join(AnalysisTask, col(AnalysisTask.id) == col(Workitem.task_id))
        .join(Analysis, col(Analysis.id) == col(AnalysisTask.analysis_id))
        .where(*visible)
        .order_by(urgency, col(Workitem.id))
    )
    whole = True
    for wanted in search.filters:
        condition = _condition(wanted)
        if condition is None:
            whole = False
        elif condition is not _UNIVERSAL:
            statement = statement.where(condition)
    return statement, whole


_UNIVERSAL: Final = object()


def _condition(wanted: Filter) -> Any:
    """The filter as a condition on the work item's columns (those the sidecar wrote and never
    change but with the state), or None when only its dataset can tell."""
    value, path = wanted.value, wanted.path
    if value == "":
        return _UNIVERSAL
    wildcard = "*" in value or "?" in value
    uids = re.split(r"[,\\]", value)
    if path == [PROCEDURE_STEP_STATE]:
        return col(Workitem.state) == WorkitemState(value)
    if path == [PRIORITY] and not wildcard:
        known = value in set(AnalysisPriority)
        return col(Analysis.priority) == AnalysisPriority(value) if known else false()
    if path == [LABEL] and not wildcard:
        return col(AnalysisTask.analyzer) == value
    if path == [SOP_INSTANCE_UID]:
        return col(Workitem.sop_instance_uid).in_(uids)
    if path in ([STUDY_INSTANCE_UID], [INPUT_INFORMATION, STUDY_INSTANCE_UID]):
        studies = select(Study.id).where(col(Study.study_instance_uid).in_(uids))
        return col(Workitem.study_id).in_(studies)
    return None


def served(workitem: Workitem, dicomweb_base: str) -> dict[str, Any]:
    """The work item as DICOM JSON for its reader: its current state, no Transaction UID, the
    study's Retrieve URL on the reader's front (`dicomweb_base`, ".../dicom-web")."""
    dataset = copy.deepcopy(workitem.dataset)
    dataset.pop(TRANSACTION_UID, None)
    dataset[PROCEDURE_STEP_STATE] = dicom_json.string_element("CS", workitem.state.value)
    for item in dicom_json.items(dataset, INPUT_INFORMATION):
        study = dicom_json.first_string(item, STUDY_INSTANCE_UID)
        if study:
            item[RETRIEVE_URL] = dicom_json.string_element("UR", f"{dicomweb_base}/studies/{study}")
    return dict(sorted(dataset.items()))
