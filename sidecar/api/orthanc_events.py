"""Notifications from the Orthanc plugin, authenticated by the plugin's own shared secret."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, status
from pydantic import Field

from sidecar.api.deps import BearerDep, SettingsDep
from sidecar.errors import ApiError, Unauthorized
from sidecar.models.common import ApiInput, ApiModel
from sidecar.orthanc_client import ORTHANC_ID
from sidecar.security import secrets_match

router = APIRouter(prefix="/api/orthanc", tags=["orthanc"])


class NotConfigured(ApiError):
    status_code = 503
    code = "not_configured"


def plugin_caller(settings: SettingsDep, credentials: BearerDep) -> None:
    if not settings.sidecar_plugin_token:
        raise NotConfigured("plugin notifications are off: SIDECAR_PLUGIN_TOKEN is not set")
    if credentials is None or not secrets_match(
        credentials.credentials, settings.sidecar_plugin_token
    ):
        raise Unauthorized("the plugin credential is missing or wrong")


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
def stable_study(body: StableStudyNotice, request: Request) -> StableStudyAccepted:
    # Queued durably, registered by the sync worker: the plugin's callback never waits on it.
    request.app.state.sync.enqueue([body.orthanc_study_id], "plugin")
    return StableStudyAccepted(orthanc_study_id=body.orthanc_study_id, queued=True)
