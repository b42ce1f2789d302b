"""Notifications from the Orthanc plugin, authenticated by the plugin's own shared secret."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, status
from pydantic import Discriminator, Field, Tag

from sidecar.accounts.security import secrets_match
from sidecar.core.dependencies import BearerDep, SettingsDep, provide
from sidecar.core.errors import NotAuthenticated, Unavailable
from sidecar.core.models import ApiInput, ApiModel
from sidecar.ingest.deletion_watch import DeletionWatch
from sidecar.ingest.orthanc_client import ORTHANC_ID
from sidecar.ingest.sync import OrthancSync

router = APIRouter(prefix="/api/orthanc", tags=["orthanc"])


class NotConfigured(Unavailable):
    code = "not_configured"


def plugin_caller(settings: SettingsDep, credentials: BearerDep) -> None:
    if not settings.sidecar_plugin_token:
        raise NotConfigured("plugin notifications are off: SIDECAR_PLUGIN_TOKEN is not set")
    if credentials is None or not secrets_match(
        credentials.credentials, settings.sidecar_plugin_token
    ):
        raise NotAuthenticated("the plugin credential is missing or wrong")


class StableStudyNotice(ApiInput):
    orthanc_study_id: str = Field(pattern=ORTHANC_ID.pattern)


class StableStudyAccepted(ApiModel):
    orthanc_study_id: str
    queued: bool


@router.post(
    "/stable-studies",
    response_model=StableStudyAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(plugin_caller)],
)
def stable_study(
    body: StableStudyNotice, sync: Annotated[OrthancSync, Depends(provide(OrthancSync))]
) -> StableStudyAccepted:
    # Queued durably, registered by the sync worker: the plugin's callback never waits on it.
    sync.enqueue([body.orthanc_study_id], "plugin")
    return StableStudyAccepted(orthanc_study_id=body.orthanc_study_id, queued=True)


class DeletionNotice(ApiInput):
    """Orthanc deleted a study, a series or an instance (its DELETED change event)."""

    resource_type: Literal["Study", "Series", "Instance"]
    orthanc_id: str = Field(pattern=ORTHANC_ID.pattern)


# The plugin sends at most this many per request (plugin/deletion_queue.py, DEFAULT_BATCH_SIZE).
MAX_DELETIONS_PER_BATCH = 500


class DeletionBatch(ApiInput):
    """Deletions the plugin queued, in the order Orthanc reported them."""

    deletions: list[DeletionNotice] = Field(min_length=1, max_length=MAX_DELETIONS_PER_BATCH)


def _body_kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "deletions" in value else "single"


# One item (the plugin before batches, still running in an Orthanc during an upgrade) or a batch;
# told apart by the "deletions" key so a 422 names the fields of the body that was meant.
DeletionBody = Annotated[
    Annotated[DeletionNotice, Tag("single")] | Annotated[DeletionBatch, Tag("batch")],
    Discriminator(_body_kind),
]


class DeletionAccepted(ApiModel):
    orthanc_id: str
    resource_type: str
    # The sidecar's study queued for a check against Orthanc; null when the sidecar holds
    # nothing under that Orthanc id (nothing to follow).
    study_id: int | None
    queued: bool


class DeletionsAccepted(ApiModel):
    received: int
    # Notices whose study the sidecar holds (queued for a check), and the distinct studies.
    matched: int
    studies_queued: int


@router.post(
    "/deletions",
    response_model=DeletionAccepted | DeletionsAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(plugin_caller)],
)
def deletion(
    body: DeletionBody, watch: Annotated[DeletionWatch, Depends(provide(DeletionWatch))]
) -> DeletionAccepted | DeletionsAccepted:
    # Queued durably and checked against Orthanc by the sync worker before anything is
    # dropped: the sidecar's own rewrites delete Orthanc ids too (sidecar.ingest.deletions).
    if isinstance(body, DeletionBatch):
        found = watch.notice_many([(d.resource_type, d.orthanc_id) for d in body.deletions])
        matched = [i for i in found if i is not None]
        return DeletionsAccepted(
            received=len(found), matched=len(matched), studies_queued=len(set(matched))
        )
    study_id = watch.notice(body.resource_type, body.orthanc_id)
    return DeletionAccepted(
        orthanc_id=body.orthanc_id,
        resource_type=body.resource_type,
        study_id=study_id,
        queued=study_id is not None,
    )
