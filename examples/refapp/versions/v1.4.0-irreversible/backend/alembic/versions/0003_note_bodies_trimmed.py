"""v1.4.0-irreversible: note bodies lose their surrounding blanks; there is no way back.

The kind of data migration real apps ship without a downgrade: the old values are gone, so
``downgrade()`` refuses (NotImplementedError). Rolling back past it takes a restore of the dump
made before it ran (``rsdeploy rollback --restore-backup``).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE notes SET body = btrim(body)")


def downgrade() -> None:
    raise NotImplementedError("0003 trimmed note bodies: the old values are gone; restore the "
                              "dump taken before it ran")
