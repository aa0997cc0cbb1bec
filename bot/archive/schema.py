"""The archive's tables (SQLAlchemy Core), portable to SQLite and PostgreSQL.

Changing them means a new Alembic revision in ``migrations/versions`` (``tests/bot/archive`` checks that the
migrations' head matches this metadata). Text columns hold redacted text only (``bot.privacy.pii``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Names for constraints and indexes, so migrations and the metadata agree on every backend.
metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})

# SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets 64 bits.
RowId = BigInteger().with_variant(Integer(), "sqlite")

SOURCES = ("faq", "llm", "dialogue", "agent", "fallback", "safety", "system", "unknown")
OUTCOMES = ("ok", "timeout", "error", "send_error", "resent")

turns = Table(
    "archive_turns",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),  # UTC, when the answer was delivered
    Column("channel", String(32), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("conversation", String(512), nullable=False),  # ConversationRef.key
    Column("event_id", String(256), nullable=False),
    Column("kind", String(16), nullable=False),  # message | event
    Column("question", Text),  # redacted; empty for platform events
    Column("answer", Text),  # redacted; the replies' texts, one per line block
    Column("replies", Integer, nullable=False),
    Column("source", String(16), nullable=False),  # one of SOURCES
    Column("faq_id", String(128)),
    Column("node", String(128)),
    Column("intent", String(128)),
    Column("adapter", String(128)),  # the LoRA adapter that answered, when one did
    Column("arm", String(64)),  # the A/B arm, once A/B tests exist
    Column("latency_ms", Integer),  # accepted to delivered
    Column("outcome", String(16), nullable=False),  # one of OUTCOMES
    Column("lang", String(16)),
    # A redelivered or resent event is archived once (insert-or-ignore on this).
    UniqueConstraint("channel", "tenant", "event_id"),
    Index(None, "conversation"),
    Index(None, "created_at"),
)

feedback = Table(
    "archive_feedback",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("conversation", String(512), nullable=False),
    Column("event_id", String(256), nullable=False),  # the feedback event's own id
    Column("rated_event_id", String(256)),  # the rated turn's event id, when the channel knows it
    Column("answer_id", String(128)),  # the channel's id of the rated answer
    Column("rating", String(8), nullable=False),  # up | down | none (taken back)
    UniqueConstraint("channel", "tenant", "event_id"),
    Index(None, "conversation"),
    Index(None, "created_at"),
    Index(None, "rated_event_id"),
)


# The FAQ curation log (bot/faq/curation.py): append-only, one row per change an agent made in the console; the
# current FAQ is config/faq.yaml with these folded over it in id order. Texts are what the agent wrote for
# customers (answers may carry the company's own phone number), so they are stored as written; retention and
# erasure leave this table alone (it is who changed what, not a conversation).
faq_changes = Table(
    "faq_changes",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),  # UTC
    Column("agent", String(128), nullable=False),  # the console account's name
    Column("action", String(32), nullable=False),  # edit_answer | add_paraphrase | remove_paraphrase | pin | unpin
    Column("faq_id", String(128), nullable=False),  # a pinned entry's is "pin-<id of its pin row>"
    Column("question", Text),  # pin: the question customers keep asking
    Column("text", Text, nullable=False),  # the new answer, or the paraphrase
    Index(None, "faq_id"),
)
