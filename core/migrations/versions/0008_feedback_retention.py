"""feedback on answers, retention overrides per team, the audit chain over a prompt digest

- `conversation_feedback`: one rating (up/down, optional comment) per saved answer, by the
  conversation's owner, with the document ids the answer cited (core/chat/feedback.py).
- `retention_policies`: an admin's override of a team's retention (core/retention/).
- `audit_events.prompt_text_sha256`: the chain hashes this digest instead of the prompt text
  (core/audit/chain.py), so retention can drop old prompt text and the chain still verifies.
  Rows written before this revision keep their own hash form (over the text itself).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversation_feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "conversation_id",
            sa.String(36),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "message_id",
            sa.Integer,
            sa.ForeignKey("conversation_messages.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,  # one rating per answer: rating again replaces it
        ),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("owner_sub", sa.String(255), nullable=False),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("document_ids", sa.Text, nullable=False),  # JSON list
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_conversation_feedback_conversation", "conversation_feedback", ["conversation_id"]
    )
    op.create_index("ix_conversation_feedback_tenant", "conversation_feedback", ["tenant_id"])
    op.create_table(
        "retention_policies",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        # NULL: the team's plugin decides; 0: keep forever; N: delete after N days.
        sa.Column("conversation_days", sa.Integer, nullable=True),
        sa.Column("prompt_text_days", sa.Integer, nullable=True),
        sa.Column("updated_by", sa.String(255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("audit_events", sa.Column("prompt_text_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_events", "prompt_text_sha256")
    op.drop_table("retention_policies")
    op.drop_index("ix_conversation_feedback_tenant", "conversation_feedback")
    op.drop_index("ix_conversation_feedback_conversation", "conversation_feedback")
    op.drop_table("conversation_feedback")
