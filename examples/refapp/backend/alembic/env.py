"""Alembic environment: migrate the database named by DATABASE_URL (online mode only).

Every pending migration runs in one transaction (PostgreSQL's DDL is transactional): when one
fails, the database stays at the revision it had. With REFAPP_FAIL_MIGRATION=1
(app.core.like_real) an upgrade that applied anything then runs a data step PostgreSQL refuses,
as broken upstream migrations do; an upgrade with nothing to do succeeds, so the previous
release still starts with the same environment.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context

from app.core import like_real
from app.core.database import Base, engine
from app import models  # noqa: F401  (registers the tables on Base.metadata)

if context.config.config_file_name:
    # Keep the app's loggers (created by the imports above) enabled: their warnings belong here.
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

upgraded: list[str] = []  # revisions this run upgraded to


def _applied(ctx, step, heads, run_args) -> None:
    if step.is_upgrade:
        upgraded.append(step.up_revision_id)


with engine().connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      on_version_apply=_applied)
    with context.begin_transaction():
        context.run_migrations()
        if upgraded and like_real.from_environment(os.environ).fail_migration:
            like_real.fail_migration(connection)
