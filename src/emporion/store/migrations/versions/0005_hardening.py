"""Hardening: organization names unique within their parent (and among top-level organizations)
instead of globally, and the idempotency keys of generation requests.

Revision ID: 0005
Revises: 0004
"""

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TOP_LEVEL = sa.text("parent_id IS NULL")


@contextlib.contextmanager
def _organizations_rebuilt() -> Iterator[None]:
    """Room for a batch operation that recreates the organizations table. SQLite drops the old
    table to recreate it, and with foreign keys on, that drop's implicit delete would orphan
    every key, member and account pointing at it: so the rows wait in a copy while the table is
    rebuilt empty, and come back after, with the checks deferred to the commit (by which time the
    rows are back). On PostgreSQL the batch is plain ALTER TABLE statements."""
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    op.execute("PRAGMA defer_foreign_keys = ON")
    op.execute("CREATE TABLE _organizations_0005 AS SELECT * FROM organizations")
    op.execute("DELETE FROM organizations")
    yield
    columns = ", ".join(f'"{c["name"]}"' for c in sa.inspect(op.get_bind()).get_columns("_organizations_0005"))
    op.execute(f"INSERT INTO organizations ({columns}) SELECT {columns} FROM _organizations_0005")
    op.execute("DROP TABLE _organizations_0005")


def upgrade() -> None:
    with _organizations_rebuilt(), op.batch_alter_table("organizations") as batch:
        batch.drop_constraint("uq_organizations_name", type_="unique")
    op.create_index("uq_organizations_name_parent_id", "organizations", ["name", "parent_id"], unique=True)
    op.create_index(
        "uq_organizations_name_top_level",
        "organizations",
        ["name"],
        unique=True,
        sqlite_where=TOP_LEVEL,
        postgresql_where=TOP_LEVEL,
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("locked_until", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("headers", sa.Text, nullable=True),
        sa.Column("body", sa.LargeBinary, nullable=True),
        sa.PrimaryKeyConstraint("org_id", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    """Fails if two organizations now share a name (under different parents)."""
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("uq_organizations_name_top_level", table_name="organizations")
    op.drop_index("uq_organizations_name_parent_id", table_name="organizations")
    with _organizations_rebuilt(), op.batch_alter_table("organizations") as batch:
        batch.create_unique_constraint("uq_organizations_name", ["name"])
