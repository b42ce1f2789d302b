"""/app/: the home page, a card for each page the user's role may open."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from sidecar.web.session import PageUser
from sidecar.web.templating import pages_for, render

router = APIRouter(include_in_schema=False)


@router.get("/app/", response_class=HTMLResponse)
def home(request: Request, user: PageUser) -> HTMLResponse:
    cards = [page for page in pages_for(user.role) if page.key != "home"]
    return render(request, "home.html", {"cards": cards})
