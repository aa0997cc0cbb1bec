"""Turns and feedback.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "archive_turns",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("conversation", sa.String(512), nullable=False),
        sa.Column("event_id", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("question", sa.Text()),
        sa.Column("answer", sa.Text()),
        sa.Column("replies", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("faq_id", sa.String(128)),
        sa.Column("node", sa.String(128)),
        sa.Column("intent", sa.String(128)),
        sa.Column("adapter", sa.String(128)),
        sa.Column("arm", sa.String(64)),
        sa.Column("latency_ms", sa.Integer()),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("lang", sa.String(16)),
        sa.PrimaryKeyConstraint("id", name="pk_archive_turns"),
        sa.UniqueConstraint("channel", "tenant", "event_id", name="uq_archive_turns_channel_tenant_event_id"),
    )
    op.create_index("ix_archive_turns_conversation", "archive_turns", ["conversation"])
    op.create_index("ix_archive_turns_created_at", "archive_turns", ["created_at"])
    op.create_table(
        "archive_feedback",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("conversation", sa.String(512), nullable=False),
        sa.Column("event_id", sa.String(256), nullable=False),
        sa.Column("rated_event_id", sa.String(256)),
        sa.Column("answer_id", sa.String(128)),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_archive_feedback"),
        sa.UniqueConstraint("channel", "tenant", "event_id", name="uq_archive_feedback_channel_tenant_event_id"),
    )
    op.create_index("ix_archive_feedback_conversation", "archive_feedback", ["conversation"])
    op.create_index("ix_archive_feedback_created_at", "archive_feedback", ["created_at"])
    op.create_index("ix_archive_feedback_rated_event_id", "archive_feedback", ["rated_event_id"])


def downgrade() -> None:
    op.drop_table("archive_feedback")
    op.drop_table("archive_turns")
