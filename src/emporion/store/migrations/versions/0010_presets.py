"""Presets (``presets``): an organization's named request settings, called as ``@preset/NAME``.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "presets",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_presets"),
        sa.UniqueConstraint("org_id", "name", name="uq_presets_org_id"),
    )
    op.create_index("ix_presets_org_id", "presets", ["org_id"])


def downgrade() -> None:
    op.drop_index("ix_presets_org_id", table_name="presets")
    op.drop_table("presets")
