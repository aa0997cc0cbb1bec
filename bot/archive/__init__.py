"""The conversation archive: every turn and thumbs up/down, redacted, in a durable SQL store (issue 13).

``schema.py`` the tables, ``migrations/`` their Alembic history (run at start), ``db.py`` the synchronous
database work, ``writer.py`` the buffered, batched writer the turn pipeline hands rows to, ``rows.py`` what a
finished turn becomes. Nothing here is on a turn's critical path: a slow or absent database costs dropped
(and counted) rows, never a slower or failed answer.
"""

from bot.archive.writer import ArchiveWriter

__all__ = ["ArchiveWriter"]
