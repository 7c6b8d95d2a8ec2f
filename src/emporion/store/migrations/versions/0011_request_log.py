"""The request log (``request_log``), prompt and completion bodies kept under a retention policy
(``request_bodies``), and each organization's policy (``organizations.retention_days``).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organizations") as table:
        table.add_column(sa.Column("retention_days", sa.Integer, nullable=True))
    op.create_table(
        "request_log",
        sa.Column("id", sa.String(80), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("end_user", sa.String(256), nullable=True),
        sa.Column("tags", sa.Text, nullable=True),
        sa.Column("endpoint", sa.String(20), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("served_model", sa.String(200), nullable=True),
        sa.Column("deployment", sa.String(400), nullable=True),
        sa.Column("upstream", sa.String(100), nullable=True),
        sa.Column("provider", sa.String(100), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(80), nullable=True),
        sa.Column("streamed", sa.Boolean, nullable=False),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("cached_input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False),
        sa.Column("latency_ms", sa.Integer, nullable=False),
        sa.Column("ttft_ms", sa.Integer, nullable=True),
        sa.Column("tokens_per_s", sa.Float, nullable=True),
        sa.Column("finish_reason", sa.String(40), nullable=True),
        sa.Column("flags", sa.Text, nullable=True),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_request_log"),
    )
    op.create_index("ix_request_log_org_id_created_ms", "request_log", ["org_id", "created_ms"])
    op.create_index("ix_request_log_status", "request_log", ["status"])
    op.create_table(
        "request_bodies",
        sa.Column("request_id", sa.String(80), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("completion", sa.Text, nullable=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_request_bodies"),
    )
    op.create_index("ix_request_bodies_expires_at", "request_bodies", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_request_bodies_expires_at", table_name="request_bodies")
    op.drop_table("request_bodies")
    op.drop_index("ix_request_log_status", table_name="request_log")
    op.drop_index("ix_request_log_org_id_created_ms", table_name="request_log")
    op.drop_table("request_log")
    with op.batch_alter_table("organizations") as table:
        table.drop_column("retention_days")
