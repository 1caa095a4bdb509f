"""SQLAlchemy engine and sessions for PostgreSQL.

Example::

    with session() as db:
        db.add(Note(body="hello"))
        db.commit()
"""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Session

from app.core.config import get_settings

#: Seconds to wait for PostgreSQL before a health check calls it unreachable.
CONNECT_TIMEOUT = 3


class Base(DeclarativeBase):
    pass


@lru_cache(maxsize=1)
def engine() -> Engine:
    """The process's engine; pre-ping so a restarted database is noticed on the next request."""
    return create_engine(get_settings().database_url, pool_pre_ping=True,
                         connect_args={"connect_timeout": CONNECT_TIMEOUT})


def session() -> Session:
    return Session(engine())


def database_answers() -> bool:
    """True when PostgreSQL really runs ``SELECT 1`` for us right now."""
    try:
        with engine().connect() as connection:
            return connection.execute(text("SELECT 1")).scalar_one() == 1
    except Exception:  # any driver or network error means "not answering"
        return False


def schema_revision() -> str | None:
    """The Alembic revision the database is at, or None when it cannot be read."""
    try:
        with engine().connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:
        return None
