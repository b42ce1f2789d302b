"""/app/studies/{id}: one study and its report editor."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
