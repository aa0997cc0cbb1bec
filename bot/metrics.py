"""Service metrics (QPS, latency percentiles, error rate) in Prometheus form.

One registry per app instance rather than the library's global one, so tests
and several apps in one process never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("kefu_http_requests", "HTTP requests", ["route", "status"], registry=r)
        self.http_latency = Histogram(
            "kefu_http_latency_seconds", "HTTP handler latency", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.http_errors = Counter("kefu_http_errors", "HTTP error answers", ["route", "status", "reason"], registry=r)
        self.events_accepted = Counter("kefu_events_accepted", "Events accepted", ["channel"], registry=r)
        self.events_duplicate = Counter(
            "kefu_events_duplicate", "Platform redeliveries dropped", ["channel"], registry=r
        )
        self.events_rejected = Counter("kefu_events_rejected", "Events refused (overload)", ["channel"], registry=r)
        self.turns = Counter("kefu_turns", "Turns finished", ["channel", "outcome"], registry=r)
        self.turn_latency = Histogram(
            "kefu_turn_latency_seconds", "Accept-to-reply latency", ["channel"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.answers = Counter("kefu_answers", "Answers by source", ["source"], registry=r)
        self.engine_fallbacks = Counter("kefu_engine_fallbacks", "Engine calls that fell back", ["reason"], registry=r)
        self.state_conflicts = Counter("kefu_state_conflicts", "Compare-and-set conflicts retried", registry=r)
        self.send_errors = Counter("kefu_send_errors", "Replies a channel failed to send", ["channel"], registry=r)
        self.pending = Gauge("kefu_pending_events", "Accepted events not yet answered", registry=r)
        self.turn_step = Histogram(
            "kefu_turn_step_seconds", "Time in each step of a turn", ["step"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.engine_ttft = Histogram(
            "kefu_engine_ttft_seconds", "Engine time to first token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("kefu_queue_depth", "Events waiting in the queue", ["queue"], registry=r)
        self.queue_redeliveries = Counter("kefu_queue_redeliveries", "Events delivered again", registry=r)
        self.queue_dead_lettered = Counter(
            "kefu_queue_dead_lettered", "Events parked after too many deliveries or unreadable", registry=r
        )
        self.safety_verdicts = Counter(  # stage: input | output; action: refuse | mask | handoff | flag | replace
            "kefu_safety_verdicts", "Safety findings and what was done", ["stage", "category", "action"], registry=r
        )
        # The conversation archive (bot/archive/): table = turns | feedback; reason = buffer_full (the database
        # is slower than the traffic or away), write_failed (a batch failed its retries), shutdown (left at close)
        self.archive_written = Counter("kefu_archive_written", "Rows written to the archive", ["table"], registry=r)
        self.archive_dropped = Counter("kefu_archive_dropped", "Archive rows dropped", ["reason"], registry=r)
        # Online A/B tests (bot/ab/): per test and arm, message turns answered, their accept-to-reply latency,
        # those answered by a fallback instead of the model, and votes (rating = up | down | none)
        self.ab_turns = Counter("kefu_ab_turns", "Message turns per A/B arm", ["test", "arm"], registry=r)
        self.ab_latency = Histogram(
            "kefu_ab_latency_seconds", "Turn latency per A/B arm", ["test", "arm"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ab_fallbacks = Counter(
            "kefu_ab_fallbacks", "Turns per A/B arm answered by a fallback, not the model", ["test", "arm"], registry=r
        )
        self.ab_feedback = Counter(
            "kefu_ab_feedback", "Votes per A/B arm", ["test", "arm", "rating"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
