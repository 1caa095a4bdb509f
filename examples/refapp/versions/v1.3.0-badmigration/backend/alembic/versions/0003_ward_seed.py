"""v1.3.0-badmigration: a wards table and its seed rows; the seed always fails.

The deliberate bug rsdeploy's failed-migration tests deploy: the second seed row has no name,
which the table just created forbids, so PostgreSQL refuses the INSERT on every database (fresh
ones too) with ``NotNullViolation``. alembic/env.py runs the whole upgrade in one transaction:
the table goes with it and the database keeps the revision it had (0002, or 0001 when 0002 was
pending too). The downgrade works, for a database where the step was done by hand.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    wards = op.create_table(
        "wards",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(20), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
    )
    # Reference data, as real migrations seed it; "name": None is the bug (see the docstring).
    op.bulk_insert(wards, [{"code": "W1", "name": "Ward 1"}, {"code": "W2", "name": None}])


def downgrade() -> None:
    op.drop_table("wards")
