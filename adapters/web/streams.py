"""How many widget streams (SSE ``GET /api/web/stream``) one process holds open, and for whom.

An open stream costs a socket, a task and a watched session: cheap, but not free, and an attacker with
one session token or one address could otherwise open them until the process runs out of file
descriptors. Three bounds, all per process (each gateway counts its own; a load balancer spreads them):

- per session (``web.max_streams_per_session``): tabs of one visitor; past it 429 ``too_many_streams``;
- per client address (``web.max_streams_per_ip``): past it 429 ``too_many_streams``;
- in all (``web.max_streams``): past it 503 ``streams_full``, so the widget comes back later, perhaps to
  another process.

Every refusal carries ``Retry-After``; the widget waits at least that long before reconnecting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from bot.http import HttpError

RETRY_AFTER_S = 10


class StreamSlots:
    def __init__(self, *, per_session: int, per_address: int, total: int) -> None:
        self.per_session = per_session
        self.per_address = per_address
        self.total = total
        self._sessions: Counter[str] = Counter()
        self._addresses: Counter[str] = Counter()
        self._open = 0

    @property
    def open(self) -> int:
        return self._open

    def check(self, session_id: str, address: str) -> None:
        """Raise the refusal a new stream would get now (before the response is started)."""
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if self._open >= self.total:
            raise HttpError(503, "streams_full", "this server holds as many open chat windows as it can; "
                            "reconnecting shortly", retry)
        if self._sessions[session_id] >= self.per_session:
            raise HttpError(429, "too_many_streams", "too many open chat windows for this conversation", retry)
        if self._addresses[address] >= self.per_address:
            raise HttpError(429, "too_many_streams", "too many open chat windows from this address", retry)

    def take(self, session_id: str, address: str) -> Callable[[], None]:
        """A place for one stream, refused as :meth:`check` says; call what it returns (once) to give it back."""
        self.check(session_id, address)
        self._open += 1
        self._sessions[session_id] += 1
        self._addresses[address] += 1
        given_back = False

        def release() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                self._open -= 1
                _drop(self._sessions, session_id)
                _drop(self._addresses, address)

        return release


def _drop(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
