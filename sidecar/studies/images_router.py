"""One image's attributes (seed 001): reading it, and what its readers keep about it (key image,
label, window preset); the image lists of studies and series page through `image_page`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from sidecar.access.care_scope import CareScopeDep
from sidecar.accounts.dependencies import Clinician, require_roles
from sidecar.accounts.models import Role, User
from sidecar.core import audit
from sidecar.core.dependencies import SessionDep
from sidecar.core.models import api_alias
from sidecar.core.pagination import (
    RecordId,
)
from sidecar.studies.lookup import readable_image_in_series, to_public
from sidecar.studies.models import (
    ImageMetadataUpdate,
    ImagePublic,
)

ImageAnnotator = Annotated[User, Depends(require_roles(Role.ADMIN, Role.RADIOLOGIST))]

images_router = APIRouter(prefix="/api/images", tags=["images"])


@images_router.get("/{image_id}", response_model=ImagePublic)
def get_image(
    image_id: RecordId, session: SessionDep, _: Clinician, scope: CareScopeDep
) -> ImagePublic:
    return to_public(*readable_image_in_series(session, image_id, scope))


@images_router.patch("/{image_id}/metadata", response_model=ImagePublic)
def update_image_metadata(
    image_id: RecordId,
    body: ImageMetadataUpdate,
    session: SessionDep,
    user: ImageAnnotator,
    scope: CareScopeDep,
) -> ImagePublic:
    """A reader's key-image flag, label and window preset: the sidecar's record only, the
    DICOM file is never rewritten. Audited with the names of the fields that changed."""
    image, series_uid = readable_image_in_series(session, image_id, scope)
    wanted = body.model_dump(exclude_unset=True)
    columns = {
        "key_image": "key_image",
        "label": "label",
        "window_center": "preset_window_center",
        "window_width": "preset_window_width",
    }
    changed = sorted(
        name for name, value in wanted.items() if getattr(image, columns[name]) != value
    )
    if changed:
        for name in changed:
            setattr(image, columns[name], wanted[name])
        session.add(image)
        audit.record(
            session,
            actor=user.username,
            action="image.metadata_updated",
            entity_type="image",
            entity_id=image.id,
            study_id=image.study_id,
            fields=[api_alias(name) for name in changed],
        )
        session.commit()
        session.refresh(image)
    return to_public(image, series_uid)
