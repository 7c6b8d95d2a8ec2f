"""Accounts and metering: sub-organizations, tiers, suspension, members, key budgets and scopes,
versioned prices and margins, budget counters, the held amount of each ledger account, and the
record of every request.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("tier", sa.String(20), nullable=False, server_default="free"))
        batch.add_column(sa.Column("tier_pinned", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("suspended_at", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("suspended_reason", sa.Text, nullable=True))
        batch.add_column(sa.Column("resale_percent", sa.String(40), nullable=False, server_default="0"))
        batch.add_column(sa.Column("resale_fixed", sa.String(40), nullable=False, server_default="0"))
        batch.add_column(sa.Column("requests_per_minute", sa.Integer, nullable=True))
        batch.add_column(sa.Column("tokens_per_minute", sa.Integer, nullable=True))
        batch.add_column(sa.Column("max_concurrent", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_organizations_parent_id_organizations", "organizations", ["parent_id"], ["id"])
        batch.create_index("ix_organizations_parent_id", ["parent_id"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("kind", sa.String(10), nullable=False, server_default="api"))
        batch.add_column(sa.Column("expires_at", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("allowed_models", sa.Text, nullable=True))
        batch.add_column(sa.Column("budget_nanos", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("budget_period", sa.String(10), nullable=True))
        batch.add_column(sa.Column("period_budget_nanos", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("requests_per_minute", sa.Integer, nullable=True))
        batch.add_column(sa.Column("tokens_per_minute", sa.Integer, nullable=True))
        batch.add_column(sa.Column("max_concurrent", sa.Integer, nullable=True))
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("held_nanos", sa.BigInteger, nullable=False, server_default="0"))
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("budget_ids", sa.Text, nullable=False, server_default=""))
    op.create_table(
        "members",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_members"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], name="fk_members_org_id_organizations"),
        sa.UniqueConstraint("org_id", "email", name="uq_members_org_id"),
    )
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(120), nullable=False),
        sa.Column("limit_nanos", sa.BigInteger, nullable=False),
        sa.Column("used_nanos", sa.BigInteger, nullable=False),
        sa.Column("held_nanos", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budgets"),
    )
    op.create_table(
        "prices",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("upstream", sa.String(100), nullable=False),
        sa.Column("prompt", sa.String(40), nullable=False),
        sa.Column("completion", sa.String(40), nullable=False),
        sa.Column("cached_prompt", sa.String(40), nullable=True),
        sa.Column("cache_write", sa.String(40), nullable=True),
        sa.Column("request", sa.String(40), nullable=False),
        sa.Column("effective_at", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prices"),
    )
    op.create_index("ix_prices_model_id", "prices", ["model_id", "upstream", "effective_at"])
    op.create_table(
        "margins",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("percent", sa.String(40), nullable=False),
        sa.Column("fixed", sa.String(40), nullable=False),
        sa.Column("effective_at", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_margins"),
    )
    op.create_index("ix_margins_model_id", "margins", ["model_id", "effective_at"])
    op.create_table(
        "requests",
        sa.Column("id", sa.String(80), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("upstream", sa.String(100), nullable=False),
        sa.Column("upstream_model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("endpoint", sa.String(20), nullable=False),
        sa.Column("streamed", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("finish_reason", sa.String(40), nullable=True),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("cached_input_tokens", sa.Integer, nullable=False),
        sa.Column("cache_write_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("usage_source", sa.String(10), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False),
        sa.Column("provider_nanos", sa.BigInteger, nullable=False),
        sa.Column("price_id", ID, nullable=True),
        sa.Column("margin_id", ID, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
    )
    op.create_index("ix_requests_org_id", "requests", ["org_id", "created_at"])
    op.create_index("ix_requests_key_id", "requests", ["key_id", "created_at"])


def downgrade() -> None:
    for table in ("requests", "margins", "prices", "budgets", "members"):
        op.drop_table(table)
    with op.batch_alter_table("holds") as batch:
        batch.drop_column("budget_ids")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("held_nanos")
    with op.batch_alter_table("api_keys") as batch:
        for column in (
            "max_concurrent",
            "tokens_per_minute",
            "requests_per_minute",
            "period_budget_nanos",
            "budget_period",
            "budget_nanos",
            "allowed_models",
            "expires_at",
            "kind",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("organizations") as batch:
        batch.drop_index("ix_organizations_parent_id")
        batch.drop_constraint("fk_organizations_parent_id_organizations", type_="foreignkey")
        for column in (
            "max_concurrent",
            "tokens_per_minute",
            "requests_per_minute",
            "resale_fixed",
            "resale_percent",
            "suspended_reason",
            "suspended_at",
            "tier_pinned",
            "tier",
            "parent_id",
        ):
            batch.drop_column(column)
