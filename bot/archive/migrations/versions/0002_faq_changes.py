"""FAQ curation log.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "faq_changes",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("agent", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("faq_id", sa.String(128), nullable=False),
        sa.Column("question", sa.Text()),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_faq_changes"),
    )
    op.create_index("ix_faq_changes_faq_id", "faq_changes", ["faq_id"])


def downgrade() -> None:
    op.drop_index("ix_faq_changes_faq_id", table_name="faq_changes")
    op.drop_table("faq_changes")
