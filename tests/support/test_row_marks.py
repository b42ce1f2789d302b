"""row_marks puts a shared database back as it was: every row added since the mark goes (a study
with its series and images, whatever refers to what), every row there at the mark stays."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session, func, select

from sidecar.accounts.models import Role, User
from sidecar.accounts.security import hash_password
from sidecar.ingest.models import PendingStudy
from sidecar.studies.models import Image, Series, Study

from builders import UID_ROOT, orthanc_study, seed_study
from row_marks import RowMark


def count(engine: Engine, table: type) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(table)).one()


def test_rows_added_since_the_mark_go_and_the_rows_before_it_stay(engine: Engine) -> None:
    kept_study = seed_study(engine, orthanc_study(f"{UID_ROOT}.501", accession_number="KEEP1"))
    with Session(engine) as session:
        session.add(PendingStudy(orthanc_id="kept-pending", source="plugin"))
        session.add(User(username="kept-user", password_hash=hash_password("x"), role=Role.ADMIN))
        session.commit()
    before = {table: count(engine, table) for table in (Study, Series, Image, User, PendingStudy)}
    mark = RowMark(engine)

    seed_study(engine, orthanc_study(f"{UID_ROOT}.502", accession_number="GONE1"))
    with Session(engine) as session:
        session.add(PendingStudy(orthanc_id="added-pending", source="plugin"))
        session.add(User(username="added-user", password_hash=hash_password("x"), role=Role.ADMIN))
        session.commit()
    assert count(engine, Image) > before[Image]

    mark.delete_added()

    assert {table: count(engine, table) for table in before} == before
    with Session(engine) as session:
        assert session.get(Study, kept_study) is not None
        assert session.get(PendingStudy, "kept-pending") is not None
        assert session.get(PendingStudy, "added-pending") is None
        names = set(session.exec(select(User.username)).all())
    assert "kept-user" in names and "added-user" not in names
    mark.delete_added()  # nothing more to delete
    assert {table: count(engine, table) for table in before} == before
