"""The double-entry ledger: accounts, postings, entries, and holds.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=True),
        sa.Column("balance_nanos", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], name="fk_accounts_org_id_organizations"),
    )
    op.create_index("ix_accounts_org_id", "accounts", ["org_id"])
    op.create_table(
        "postings",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("request_id", sa.String(80), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_postings"),
        sa.UniqueConstraint("request_id", "kind", name="uq_postings_request_id"),
    )
    op.create_table(
        "entries",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("posting_id", ID, nullable=False),
        sa.Column("account_id", sa.String(80), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_entries"),
        sa.ForeignKeyConstraint(["posting_id"], ["postings.id"], name="fk_entries_posting_id_postings"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_entries_account_id_accounts"),
    )
    op.create_index("ix_entries_posting_id", "entries", ["posting_id"])
    op.create_index("ix_entries_account_id", "entries", ["account_id"])
    op.create_table(
        "holds",
        sa.Column("request_id", sa.String(80), nullable=False),
        sa.Column("account_id", sa.String(80), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_holds"),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name="fk_holds_account_id_accounts"),
    )
    op.create_index("ix_holds_account_id", "holds", ["account_id"])
    op.create_index("ix_holds_state", "holds", ["state"])
    op.create_index("ix_holds_expires_at", "holds", ["expires_at"])


def downgrade() -> None:
    for table in ("holds", "entries", "postings", "accounts"):
        op.drop_table(table)
