"""Alembic environment: migrate the database named by DATABASE_URL (online mode only)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from app.core.database import Base, engine
from app import models  # noqa: F401  (registers the tables on Base.metadata)

if context.config.config_file_name:
    fileConfig(context.config.config_file_name)

with engine().connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
