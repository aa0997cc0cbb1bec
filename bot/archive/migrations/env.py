"""Alembic environment: always run from :func:`bot.archive.migrate.upgrade` with an open connection.

There is no alembic.ini: the script location and the connection are set in code, so the database URL (and
its password) never sits in a file next to the code.
"""

from __future__ import annotations

from alembic import context

from bot.archive.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the archive migrations through bot.archive.migrate.upgrade(engine)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  version_table="archive_alembic_version")
with context.begin_transaction():
    context.run_migrations()
