"""encrypted originals in the database, so that every replica can re-index a team

- `document_originals`: the encrypted original of one tenant's document
  (core/knowledge/originals_sql.py), keyed by (tenant_id, document_id): the team's own key
  encrypts it, bound to the tenant and document id (core/crypto.py). Used when the originals
  store is `database` (the default with PostgreSQL); with `files` the table stays empty.
  No foreign key to `documents`: the row and its registry row are written in one transaction,
  and a backup restores tables in any order.

Revision ID: 0009
Revises: 0010 (0010, the ingest jobs, was committed first on 0008; chaining this one after
it keeps a single head. Do not also point 0010 at 0009: that would be a cycle.)
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "document_originals",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("document_id", sa.String(32), primary_key=True),
        sa.Column("blob", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("document_originals")
