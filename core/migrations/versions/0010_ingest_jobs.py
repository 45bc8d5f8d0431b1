"""background indexing jobs: one row per uploaded file, with its progress

- `ingest_jobs`: a file queued for indexing in a team (core/knowledge/jobs.py), its state
  (queued, running, indexed, duplicate, failed), where it stands (pages parsed, chunks
  embedded of about how many), why it failed, and the worker holding it (with a heartbeat,
  so that the jobs of a process that stopped are resumed or failed after a restart).

Revision ID: 0010
Revises: 0008 (0009, the originals storage, is written beside this one: the integrator
chains them)
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("batch_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),  # k of the batch's n, from 1
        sa.Column("batch_size", sa.Integer, nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("uploaded_by", sa.String(255), nullable=False),
        sa.Column("requested_sub", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("pages", sa.Integer, nullable=False),
        sa.Column("chunks_done", sa.Integer, nullable=False),
        sa.Column("chunks_expected", sa.Integer, nullable=False),
        sa.Column("document_id", sa.String(32), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_ingest_jobs_tenant_created", "ingest_jobs", ["tenant_id", "created_at"])
    op.create_index("ix_ingest_jobs_state", "ingest_jobs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_ingest_jobs_state", "ingest_jobs")
    op.drop_index("ix_ingest_jobs_tenant_created", "ingest_jobs")
    op.drop_table("ingest_jobs")
