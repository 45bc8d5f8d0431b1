"""token budgets: limits per team and member, counters per period, reservations in flight

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        # "*": the team's own row; else a member's (or an API key's `key:<id>`) override.
        sa.Column("subject", sa.String(255), primary_key=True),
        sa.Column("daily", sa.BigInteger, nullable=True),
        sa.Column("monthly", sa.BigInteger, nullable=True),
        sa.Column("member_daily", sa.BigInteger, nullable=True),
        sa.Column("member_monthly", sa.BigInteger, nullable=True),
        sa.Column("updated_by", sa.String(255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "budget_counters",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(255), primary_key=True),
        sa.Column("period", sa.String(10), primary_key=True),  # 2026-12-02 or 2026-12
        sa.Column("used", sa.BigInteger, nullable=False),
        sa.Column("reserved", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_budget_reservations_tenant_created",
        "budget_reservations",
        ["tenant_id", "created_at"],
    )


def downgrade() -> None:
    op.drop_table("budget_reservations")
    op.drop_table("budget_counters")
    op.drop_table("budgets")
