"""Every Redis key name is built here, so a prefix change or an audit of what
we store about a user (right to erasure) has one place to look."""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip(":")

    def state(self, conversation_key: str) -> str:
        return f"{self.prefix}:state:{{{conversation_key}}}"

    def dedup(self, dedup_key: str) -> str:
        return f"{self.prefix}:seen:{dedup_key}"

    def reply(self, conversation: str, dedup_key: str) -> str:
        """The reply ledger of one event: its replies from the moment the turn's state is saved until they are
        sent, then only a "sent" marker, so a redelivered event is answered once and with the same words.
        Hash-tagged by the conversation so it is written in the same atomic step as the state."""
        return f"{self.prefix}:reply:{{{conversation}}}:{dedup_key}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    def token(self, name: str) -> str:
        """Platform access tokens shared by every process (WeCom, DingTalk)."""
        return f"{self.prefix}:token:{name}"

    def rate(self, name: str) -> str:
        return f"{self.prefix}:rate:{name}"

    def wecom_stream(self, stream_id: str) -> str:
        """A WeCom AI-bot answer so far, read by the platform's stream refresh callbacks."""
        return f"{self.prefix}:wecom:stream:{stream_id}"

    def wecom_response_url(self, conversation_key: str) -> str:
        """The latest one-shot WeCom AI-bot response_url of a conversation, for proactive replies."""
        return f"{self.prefix}:wecom:response_url:{{{conversation_key}}}"

    def api_outbox(self, conversation_key: str) -> str:
        """List of a ``/chat`` conversation's proactive replies (an agent's) waiting for the customer's next
        request, whichever gateway serves it; bounded and expiring (adapters/api.py)."""
        return f"{self.prefix}:api:outbox:{{{conversation_key}}}"

    def dingtalk_card(self, dedup_key: str) -> str:
        """The DingTalk AI card an event's answer streams into (its outTrackId, and whether it was created),
        so a turn run again on another worker updates the same card instead of opening a second one."""
        return f"{self.prefix}:dingtalk:card:{dedup_key}"

    def web_events(self, conversation_key: str) -> str:
        """Stream of a web-widget conversation's messages and answer deltas, replayed to reconnecting browsers
        (keyed by the conversation, not the session id, so erasure finds it with the other per-conversation keys)."""
        return f"{self.prefix}:web:events:{{{conversation_key}}}"

    def web_streamed(self, conversation_key: str) -> str:
        """Hash of a web-widget conversation's answers that were streamed (message id -> deltas), written with
        each delta and removed when the answer is delivered, by whichever worker runs the turn, so a delivered
        answer is never streamed again from the start. Same hash tag as :meth:`web_events`."""
        return f"{self.prefix}:web:streamed:{{{conversation_key}}}"

    def web_wakeup(self, reader_id: str) -> str:
        """One gateway process's wake-up stream: its web event reader blocks on it with the sessions' streams,
        so a newly watched session joins the blocked read at once. Capped at one entry, expires in a minute."""
        return f"{self.prefix}:web:wakeup:{reader_id}"

    def feedback(self, conversation_key: str) -> str:
        return f"{self.prefix}:feedback:{{{conversation_key}}}"

    def feedback_stream(self) -> str:
        return f"{self.prefix}:feedback"

    def user_index(self, channel: str, user_id: str) -> str:
        """Set of keys named after one user that :meth:`conversation_keys` cannot find (dedup and handoff
        markers, rate counters), erased with the user. Written by the channel whose events create them: so far
        only the web adapter (WeCom's id-less platform events still name the user in their dedup marker)."""
        return f"{self.prefix}:user:{channel}:{user_id}"

    def handoff_notice(self, dedup_key: str) -> str:
        """Marks the team as told of a handoff, so a turn run again never notifies twice."""
        return f"{self.prefix}:handoff:{dedup_key}"

    def console_session(self, digest: str) -> str:
        """One agent's console session, named by the SHA-256 of its cookie (the cookie itself is never stored);
        expires when idle (``console.session_idle_s``)."""
        return f"{self.prefix}:console:session:{digest}"

    def console_board(self) -> str:
        """Hash of the conversations waiting for (or held by) a person: field the conversation key, value the
        inbox row as JSON (bot/console/board.py). One hash for every process, so any gateway lists them."""
        return f"{self.prefix}:console:board"

    def console_feed(self) -> str:
        """Stream of console events (a handoff arrived, a customer wrote, taken, released, FAQ changed), capped;
        each gateway process reads it once and fans it out to its agents' SSE connections."""
        return f"{self.prefix}:console:feed"

    def queue_workers(self, queue: str) -> str:
        """Sorted set of the live queue workers: member the worker id, score its last heartbeat (ms, Redis
        clock). Members older than ``queue.lease_s`` are dropped; the partitions are spread over the rest."""
        return f"{self.prefix}:queue:{queue}:workers"

    def queue_lease(self, queue: str, partition: int) -> str:
        """Lease on one queue partition: the id of the worker consuming it, expiring unless that worker renews
        it, so a dead worker's partitions are claimed by the live ones."""
        return f"{self.prefix}:queue:{queue}:lease:{partition}"

    def conversation_keys(self, conversation_key: str) -> list[str]:
        """Every per-conversation key, for erasure: each method above whose only
        parameter is ``conversation_key`` (so a key added later is erased too)."""
        found = []
        for name in dir(self):
            method = getattr(self, name)
            code = getattr(getattr(method, "__func__", None), "__code__", None)
            if name.startswith("_") or code is None or name == "conversation_keys":
                continue
            if code.co_varnames[: code.co_argcount] == ("self", "conversation_key"):
                found.append(method(conversation_key))
        return found
