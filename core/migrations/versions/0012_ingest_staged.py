"""ingest staged copies: a queued upload's encrypted copy, where every replica can read it

- `ingest_staged`: one row per queued upload job whose copy is kept in the database (when the
  originals are, core/knowledge/job_staging.py), so that any replica's worker can run the job.
  Deleted when the job ends.

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
        "ingest_staged",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("blob", sa.LargeBinary, nullable=False),
        sa.Column("staged_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ingest_staged")
