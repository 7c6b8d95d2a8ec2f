"""The end user and the tags of each request (``requests.end_user``, ``requests.tags``), for
usage reports and statements by end user and by tag.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as table:
        table.add_column(sa.Column("end_user", sa.String(256), nullable=True))
        table.add_column(sa.Column("tags", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as table:
        table.drop_column("tags")
        table.drop_column("end_user")
