"""team adapters: each team's LoRA adapter versions and which one its chat turns use

- `team_adapters`: one row per trained version of a team's adapter (core/adapters/): its
  folder under the team's data directory, the base model, how it was trained, and `active`
  (at most one per team, kept so by core/adapters/registry.py in one transaction).

Revision ID: 0011
Revises: 0009 (the chain is 0008 -> 0010 -> 0009 -> 0011 when this was written)
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "team_adapters",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("examples", sa.Integer, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("final_loss", sa.Float, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("team_adapters")
