"""Waiting for the archive: a turn is archived just after its answer went out, so a test that has the
answer waits (bounded) for the row rather than assuming it is there already."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bot.archive.schema import feedback, turns
from bot.archive.writer import ArchiveWriter

TABLES = {"turns": turns, "feedback": feedback}
PHONE = "13812345678"
RESIDENT_ID = "11010519491231002X"


async def archived(writer: ArchiveWriter, count: int, table: str = "turns", *, within_s: float = 15,
                   **where: Any) -> list[dict[str, Any]]:
    """The table's rows (matching ``where``) once there are at least ``count``."""
    db = await writer.open_db()
    async with asyncio.timeout(within_s):
        while True:
            await writer.flush()
            rows = await asyncio.to_thread(db.rows, TABLES[table], **where)
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.02)


async def eventually(check: Callable[[], bool], *, within_s: float = 10) -> None:
    """Wait (bounded) for something another task does just after the answer went out."""
    async with asyncio.timeout(within_s):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)
