"""License acceptances (``license_acceptances``): an organization accepted a model's license,
which that model's terms require before it serves the organization.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "license_acceptances",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("license", sa.String(200), nullable=False),
        sa.Column("accepted_by", sa.String(200), nullable=False),
        sa.Column("accepted_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_license_acceptances"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], name="fk_license_acceptances_org_id_organizations"),
        sa.UniqueConstraint("org_id", "model_id", name="uq_license_acceptances_org_id"),
    )
    op.create_index("ix_license_acceptances_org_id", "license_acceptances", ["org_id"])


def downgrade() -> None:
    op.drop_index("ix_license_acceptances_org_id", table_name="license_acceptances")
    op.drop_table("license_acceptances")
