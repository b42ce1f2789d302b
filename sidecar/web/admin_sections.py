"""What the administration pages share (sidecar.web.admin_page, sidecar.web.admin_setup_page:
page modules are routers, and routers never import routers): who may open them, and their
sub-pages."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from sidecar.accounts.models import User
from sidecar.web.session import page_roles
from sidecar.web.templating import page_link

PageAdmin = Annotated[User, Depends(page_roles(*page_link("admin").roles))]

#: The sub-pages, for the overview and each page's own navigation.
SECTIONS = (
    ("/app/admin/users", "Users", "Accounts: create, disable or enable, reset a password."),
    ("/app/admin/procedures", "Procedure catalog", "Import the catalog from a CSV file."),
    ("/app/admin/rules", "Assignment rules", "Which radiologists get which studies."),
    ("/app/admin/templates", "Report templates", "The text a report starts from."),
)
