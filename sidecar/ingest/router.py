"""Notifications from the Orthanc plugin, authenticated by the plugin's own shared secret."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, status
from pydantic import Field

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


class DeletionAccepted(ApiModel):
    orthanc_id: str
    resource_type: str
    # The sidecar's study queued for a check against Orthanc; null when the sidecar holds
    # nothing under that Orthanc id (nothing to follow).
    study_id: int | None
    queued: bool


@router.post(
    "/deletions",
    response_model=DeletionAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Depends(plugin_caller)],
)
def deletion(
    body: DeletionNotice, watch: Annotated[DeletionWatch, Depends(provide(DeletionWatch))]
) -> DeletionAccepted:
    # Queued durably and checked against Orthanc by the sync worker before anything is
    # dropped: the sidecar's own rewrites delete Orthanc ids too (sidecar.ingest.deletions).
    study_id = watch.notice(body.resource_type, body.orthanc_id)
    return DeletionAccepted(
        orthanc_id=body.orthanc_id,
        resource_type=body.resource_type,
        study_id=study_id,
        queued=study_id is not None,
    )
