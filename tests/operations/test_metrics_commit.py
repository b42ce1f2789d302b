"""sidecar.operations.metrics.on_commit: work is counted when its transaction commits, once,
and never when it rolls back, with the SQLModel sessions the domains use, savepoints included.
A plain callable stands for the counter; each case runs on the test's database."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlmodel import Session

from sidecar.operations.metrics import on_commit


def counter() -> tuple[list[str], Callable[[str], Callable[[], None]]]:
    counted: list[str] = []
    return counted, lambda name: lambda: counted.append(name)


def test_counted_when_committed_once_and_dropped_when_rolled_back(engine: Engine) -> None:
    counted, count = counter()
    with Session(engine) as session:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        on_commit(session, count("rolled back"))
        session.rollback()
        on_commit(session, count("committed"))
        assert counted == []
        session.commit()
        assert counted == ["committed"]
        session.commit()  # a later transaction of the same session counts nothing again
        on_commit(session, count("closed uncommitted"))
    assert counted == ["committed"]


def test_counted_before_any_transaction_waits_for_the_next_commit(engine: Engine) -> None:
    counted, count = counter()
    with Session(engine) as session:
        on_commit(session, count("first"))  # nothing began yet: no transaction in progress
        session.rollback()
        on_commit(session, count("second"))
        session.commit()
    assert counted == ["second"]


def test_a_savepoint_counts_with_its_enclosing_transaction(engine: Engine) -> None:
    counted, count = counter()
    with Session(engine) as session:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        on_commit(session, count("outer"))
        with session.begin_nested():  # released: counted if the transaction commits
            on_commit(session, count("released"))
        assert counted == []
        savepoint = session.begin_nested()
        on_commit(session, count("undone"))
        savepoint.rollback()  # only its own counts go
        session.commit()
    assert counted == ["outer", "released"]

    counted.clear()
    with Session(engine) as session:
        with session.begin_nested():
            on_commit(session, count("released, then rolled back"))
        session.rollback()
    assert counted == []
