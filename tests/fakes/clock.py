"""A clock for rate-gate tests: time moves only when the code under test sleeps
(or the test moves it), so queueing is checked without waiting."""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
