"""Previews and thumbnails: Orthanc's PNG rendering of one instance, kept on disk so that a
study list page of 50 thumbnails does not have Orthanc read and render 50 files each time.

A study's thumbnail is its representative instance: the middle instance (by instance number)
of its first series (by series number) of pictures, from the sidecar's own Series and Image
rows. A
thumbnail fits in THUMBNAIL_SIZE pixels either way; a preview is the instance at full size.

The cache (DATA_DIR/thumbnails, one file per Orthanc instance id and kind) is written
atomically (a temporary file renamed into place) and bounded in size (THUMBNAIL_CACHE_MB): past
it, the least recently used files go first (a hit touches its file). A rendering depends only on
the instance, whose Orthanc id is derived from its UIDs, so a kept file never goes stale while
the instance exists; its ETag is a hash of its content.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, func, select

from sidecar.ingest.orthanc_client import ORTHANC_ID, OrthancClient
from sidecar.studies.models import Image, Series

#: The longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 256


class Rendering(StrEnum):
    THUMBNAIL = "thumbnail"
    PREVIEW = "preview"


@dataclass(frozen=True)
class Picture:
    content: bytes
    etag: str
    cached: bool


def etag_of(content: bytes) -> str:
    return f'"{hashlib.sha256(content).hexdigest()[:32]}"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """The request's If-None-Match names this ETag (weak or strong), or is `*`."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


class ThumbnailCache:
    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def path(self, orthanc_id: str, kind: Rendering) -> Path:
        if not ORTHANC_ID.match(orthanc_id):  # never a path of the caller's making
            raise ValueError("not an Orthanc instance id")
        return self.directory / f"{orthanc_id}.{kind.value}.png"

    def get(self, orthanc_id: str, kind: Rendering) -> bytes | None:
        path = self.path(orthanc_id, kind)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        return content

    def put(self, orthanc_id: str, kind: Rendering, content: bytes) -> None:
        target = self.path(orthanc_id, kind)
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(content)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self.evict()

    def evict(self) -> None:
        """Removes the least recently used files until the cache fits its bound."""
        entries = []
        total = 0
        with os.scandir(self.directory) as found:
            for entry in found:
                if not entry.name.endswith(".png"):
                    continue
                with contextlib.suppress(OSError):
                    stat = entry.stat()
                    entries.append((stat.st_mtime_ns, stat.st_size, entry.path))
                    total += stat.st_size
        if total <= self.max_bytes:
            return
        for _, size, path in sorted(entries):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size
            if total <= self.max_bytes:
                return


def render(
    orthanc: OrthancClient, cache: ThumbnailCache, orthanc_id: str, kind: Rendering
) -> Picture:
    """The rendering, from the cache or else from Orthanc (then kept). Orthanc's errors
    (sidecar.ingest.orthanc_client) pass through."""
    kept = cache.get(orthanc_id, kind)
    if kept is not None:
        return Picture(kept, etag_of(kept), cached=True)
    if kind is Rendering.THUMBNAIL:
        content = orthanc.instance_rendered(orthanc_id, "image/png", max_size=THUMBNAIL_SIZE)
    else:
        content = orthanc.instance_preview(orthanc_id)
    cache.put(orthanc_id, kind, content)
    return Picture(content, etag_of(content), cached=False)


def representative_image(session: Session, study_id: int) -> Image | None:
    """The middle instance (by instance number) of the study's first series (by series
    number), among the images Orthanc holds; None when the study has none yet. Series of
    pictures (images with rows) come first: a report or presentation state series (SR, KO, PR:
    nothing to draw) is chosen only when the study has nothing else."""
    for pictures_only in (True, False):
        image = _middle_of_first_series(session, study_id, pictures_only)
        if image is not None:
            return image
    return None


def _middle_of_first_series(session: Session, study_id: int, pictures_only: bool) -> Image | None:
    held: list[Any] = [col(Image.orthanc_id).is_not(None)]
    if pictures_only:
        held.append(col(Image.rows).is_not(None))
    first_series = session.exec(
        select(Series.id)
        .where(
            Series.study_id == study_id,
            select(Image.id).where(Image.series_id == Series.id, *held).exists(),
        )
        .order_by(col(Series.series_number).nulls_last(), col(Series.id))
        .limit(1)
    ).first()
    if first_series is None:
        return None
    in_series = (Image.series_id == first_series, *held)
    count = session.exec(select(func.count()).select_from(Image).where(*in_series)).one()
    return session.exec(
        select(Image)
        .where(*in_series)
        .order_by(col(Image.instance_number).nulls_last(), col(Image.id))
        .offset((count - 1) // 2)
        .limit(1)
    ).first()
